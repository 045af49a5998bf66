// Generated from revchat/core/codes.py by codes.javascript(): do not edit (a test checks it).
export const CLOSE = {
  "GOING_AWAY": 1001,
  "NO_PONG": 1011,
  "SIGNED_OUT": 4401,
  "SLOW_CONSUMER": 1013,
  "TOO_BIG": 1009,
  "TOO_MANY_SOCKETS": 1008,
  "UNAVAILABLE": 4503
};

export const CLOSES = {
  "1001": {
    "reason": "server shutting down",
    "advice": "reconnect",
    "message": "The server is restarting."
  },
  "1008": {
    "reason": "too many sockets",
    "advice": "wait",
    "message": "You have too many connections open to this server."
  },
  "1009": {
    "reason": "frame too big",
    "advice": "reconnect",
    "message": "A message was too big to send."
  },
  "1011": {
    "reason": "no answer to ping",
    "advice": "reconnect",
    "message": "The connection stopped answering."
  },
  "1013": {
    "reason": "slow consumer",
    "advice": "reconnect",
    "message": "The connection was too slow."
  },
  "4401": {
    "reason": "signed out",
    "advice": "sign_in",
    "message": "You are signed out."
  },
  "4503": {
    "reason": "service unavailable, try again later",
    "advice": "reconnect",
    "message": "The server cannot store messages right now."
  }
};

export const ERRORS = {
  "bad_request": "The frame was malformed; nothing happened.",
  "too_long": "The message is longer than the server takes; nothing was sent.",
  "rate_limited": "Too many messages too fast; nothing was sent.",
  "unavailable": "The server could not store the message; nothing was sent, try again."
};

export const GIVE_BACK = [
  "too_long",
  "rate_limited",
  "unavailable"
];
