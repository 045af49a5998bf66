// Building the page's elements. Every string that comes from users goes into the page through
// textContent (or a form control's value), never through innerHTML, so it can only show as text.

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function initials(name) {
  const words = name.split(/\s+/).filter(Boolean).slice(0, 2);
  const letters = words.map((w) => {
    const m = w.match(/[\p{L}\p{N}]/u);
    return m ? m[0] : Array.from(w)[0];
  });
  return letters.join("").toUpperCase() || "?";
}

function hue(id) {
  let h = 0;
  for (const ch of id) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 8;
}

export function avatar(user) {
  const span = el("span", "avatar hue-" + hue(user.id), initials(user.name));
  span.setAttribute("aria-hidden", "true");
  if (user.avatar && /^https:\/\//i.test(user.avatar)) {
    const img = document.createElement("img");
    img.alt = "";
    img.referrerPolicy = "no-referrer";
    img.loading = "lazy";
    img.decoding = "async";
    img.addEventListener("error", () => img.remove());  // the initials stay underneath
    img.src = user.avatar;
    span.appendChild(img);
  }
  return span;
}

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

export function timeOf(ts) {
  const d = new Date(ts);
  const now = new Date();
  let text = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (!sameDay(d, now)) {
    const options = { month: "short", day: "numeric" };
    if (d.getFullYear() !== now.getFullYear()) options.year = "numeric";
    text = d.toLocaleDateString([], options) + ", " + text;
  }
  const t = el("time", "time", text);
  t.dateTime = d.toISOString();
  t.title = d.toLocaleString();
  return t;
}
