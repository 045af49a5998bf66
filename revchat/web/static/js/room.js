// The room page: plain JavaScript modules, no framework, nothing loaded from elsewhere. This one
// wires the others together: the connection (connection.js), the conversation (timeline.js),
// the member list (members.js) and the message box (composer.js).

import { Composer } from "./composer.js";
import { Connection } from "./connection.js";
import { $ } from "./dom.js";
import { Members } from "./members.js";
import { Timeline } from "./timeline.js";

const body = document.body;
const room = body.dataset.room;
const who = { id: body.dataset.userId };
const maxLength = parseInt(body.dataset.maxLength, 10) || 2000;
const banner = $("banner");
const bannerText = $("banner-text");
const retry = $("retry");
const signIn = $("sign-in");
const baseTitle = document.title;
let unread = 0;

function setState(state) {
  body.dataset.state = state;
}

function setBanner(text) {
  bannerText.textContent = text || "";
  banner.hidden = !text;
}

function showUnread() {
  document.title = (unread ? "(" + unread + ") " : "") + baseTitle;
}

function showSignedOut() {
  connection.stop();
  members.clearTyping();
  setState("signed-out");
  retry.hidden = true;
  signIn.hidden = false;
  setBanner("You are signed out.");
}

const timeline = new Timeline({
  room, who, scroller: $("scroller"), list: $("messages"), older: $("older"),
  beginning: $("beginning"), jump: $("jump"), onSignedOut: showSignedOut,
  onUnread: (n) => { unread += n; showUnread(); },
});
const members = new Members({ who, list: $("members"), count: $("member-count"), typingLine: $("typing") });

const connection = new Connection({
  url: () => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/rooms/" + encodeURIComponent(room) + "/socket";
    if (timeline.lastId !== null) url += "?since=" + encodeURIComponent(timeline.lastId);
    return url;
  },
  onFrame: (frame) => onFrame(frame),
  onOffline: (message) => {
    members.clearTyping();
    setState("offline");
    retry.hidden = false;
    signIn.hidden = true;
    setBanner("Offline. " + message + " Reconnecting…");
  },
  onSignedOut: showSignedOut,
  signedIn: async () => {
    const options = { headers: { accept: "application/json" }, credentials: "same-origin" };
    if (AbortSignal.timeout) options.signal = AbortSignal.timeout(5000);
    const res = await fetch("/rooms/" + encodeURIComponent(room) + "/history?limit=1", options);
    return res.status !== 401;
  },
});

const composer = new Composer({
  form: $("composer"), input: $("text"), count: $("count"), countValue: $("count-value"),
  error: $("composer-error"), maxLength, connection,
});

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      connection.welcomed();
      if (frame.you && frame.you.id) who.id = frame.you.id;
      members.clearTyping();
      timeline.welcome(frame.archive || [], frame.resumed);
      members.set(frame.members || []);
      setState("online");
      setBanner("");
      break;
    case "message":
      members.stopTyping(frame.user.id);
      if (frame.user.id === who.id) composer.delivered(frame.text);
      timeline.append([frame]);
      break;
    case "join":
      members.join(frame.user);
      timeline.append([frame]);
      break;
    case "leave":
      members.leave(frame.user.id);
      timeline.append([frame]);
      break;
    case "typing":
      if (frame.user && frame.user.id !== who.id) members.typing(frame.user);
      break;
    case "error":
      composer.refused(frame);
      break;
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) {
    unread = 0;
    showUnread();
    connection.reconnectNow();  // a phone woke up: do not wait for the timer
  }
});
retry.addEventListener("click", () => connection.reconnectNow());
window.addEventListener("online", () => connection.reconnectNow());
$("jump").addEventListener("click", () => { timeline.toBottom(); $("text").focus(); });
document.querySelector(".skip").addEventListener("click", (ev) => { ev.preventDefault(); $("text").focus(); });

// -- the room switcher: rooms visited lately ---------------------------------------------------

try {
  const key = "revchat.rooms";
  const rooms = (JSON.parse(localStorage.getItem(key) || "[]") || []).filter((r) => typeof r === "string" && r !== room);
  const datalist = $("recent-rooms");
  for (const r of rooms) {
    const option = document.createElement("option");
    option.value = r;
    datalist.appendChild(option);
  }
  localStorage.setItem(key, JSON.stringify([room].concat(rooms).slice(0, 8)));
} catch (e) { /* storage off: no suggestions */ }

composer.showCount();
timeline.showOlder();
connection.connect();
