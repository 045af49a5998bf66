// When to try again after a lost connection: doubling from half a second to fifteen, each delay
// drawn within ±25%, so that a server restart does not make every client come back at once.

export const FIRST = 500;
export const MOST = 15000;
export const WAIT = 60000;  // after a close whose advice is "wait" (e.g. too many connections)

export function delay(attempt, random = Math.random) {
  const base = Math.min(MOST, FIRST * 2 ** Math.min(Math.max(attempt, 1) - 1, 5));
  return base * (0.75 + random() / 2);
}
