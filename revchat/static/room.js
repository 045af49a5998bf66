// revchat room page: plain JavaScript, no framework, nothing loaded from elsewhere.
// Every string that comes from users goes into the page through textContent (or a form
// control's value), never through innerHTML, so it can only ever show as text.
"use strict";

(function () {
  const body = document.body;
  const room = body.dataset.room;
  let me = body.dataset.userId;
  const maxLength = parseInt(body.dataset.maxLength, 10) || 2000;
  const $ = (id) => document.getElementById(id);

  const scroller = $("scroller");
  const list = $("messages");
  const older = $("older");
  const beginning = $("beginning");
  const jump = $("jump");
  const membersList = $("members");
  const memberCount = $("member-count");
  const typingLine = $("typing");
  const banner = $("banner");
  const bannerText = $("banner-text");
  const retry = $("retry");
  const signIn = $("sign-in");
  const form = $("composer");
  const input = $("text");
  const count = $("count");
  const countValue = $("count-value");
  const composerError = $("composer-error");

  const GROUP_GAP = 5 * 60 * 1000; // messages of one author closer than this are grouped
  const TYPING_SHOWN = 4000;       // how long "X is typing…" stays without a new notice
  const TYPING_EVERY = 2500;       // how often this page repeats its own typing notice
  const HISTORY_PAGE = 50;

  const seen = new Set();   // ids of the events shown: nothing is shown twice
  let lastId = null;        // the newest id shown: ?since= on reconnect, so nothing is lost
  let oldestId = null;      // the oldest id shown: scroll-back asks for what is before it
  let moreHistory = true;
  let loadingHistory = false;
  let generation = 0;       // bumped when the list is rebuilt; late history answers are dropped

  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  let offlineReason = null;
  let signedOut = false;

  let members = new Map();
  const typists = new Map();  // user id -> {name, timer}
  let lastTypingSent = 0;
  let lastSent = null;        // the text of the last say, put back if the server refuses it
  let unread = 0;
  const baseTitle = document.title;

  // -- small helpers -------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function initials(name) {
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

  function avatar(user) {
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

  function timeOf(ts) {
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

  // -- the message list ------------------------------------------------------------------------

  function render(event) {
    const mine = event.user.id === me;
    const item = el("li", "event " + event.type + (mine ? " mine" : ""));
    item.dataset.id = event.id;
    item.dataset.user = event.user.id;
    item.dataset.ts = String(event.timestamp);
    if (event.type === "message") {
      item.appendChild(avatar(event.user));
      const bubble = el("div", "bubble");
      const meta = el("p", "meta");
      meta.appendChild(el("span", "name", event.user.name));
      if (mine) meta.appendChild(el("span", "you", "you"));
      meta.appendChild(timeOf(event.timestamp));
      bubble.appendChild(meta);
      bubble.appendChild(el("p", "text", event.text));
      item.appendChild(bubble);
    } else {
      const note = el("p", "notice");
      note.appendChild(el("span", "arrow", event.type === "join" ? "→" : "←")).setAttribute("aria-hidden", "true");
      note.appendChild(el("span", "name", event.user.name));
      if (mine) note.appendChild(el("span", "you", "you"));
      note.appendChild(document.createTextNode(event.type === "join" ? " joined · " : " left · "));
      note.appendChild(timeOf(event.timestamp));
      item.appendChild(note);
    }
    return item;
  }

  // A message right after one of the same author (and soon after it) drops its avatar and name.
  function regroup(item) {
    if (!item || !item.classList.contains("message")) return;
    const prev = item.previousElementSibling;
    const cont = !!prev && prev.classList.contains("message") && prev.dataset.user === item.dataset.user &&
      Number(item.dataset.ts) - Number(prev.dataset.ts) < GROUP_GAP;
    item.classList.toggle("cont", cont);
  }

  function atBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
  }

  function toBottom() {
    scroller.scrollTop = scroller.scrollHeight;
    jump.hidden = true;
  }

  function append(events) {
    const stick = atBottom();
    let fromOthers = 0;
    let ownMessage = false;
    for (const event of events) {
      if (!event || seen.has(event.id)) continue;
      seen.add(event.id);
      const item = render(event);
      list.appendChild(item);
      regroup(item);
      lastId = event.id;
      if (oldestId === null) oldestId = event.id;
      if (event.type === "message") {
        if (event.user.id === me) ownMessage = true;
        else fromOthers += 1;
      }
    }
    if (stick || ownMessage) toBottom();
    else if (fromOthers) jump.hidden = false;
    if (fromOthers && document.hidden) {
      unread += fromOthers;
      showUnread();
    }
    showOlder();
    nearTop();  // a list too short to scroll cannot be scrolled up: load what is before it
  }

  function prepend(events) {
    const first = list.firstElementChild;
    const height = scroller.scrollHeight;
    const top = scroller.scrollTop;
    const fragment = document.createDocumentFragment();
    const items = [];
    for (const event of events) {
      if (seen.has(event.id)) continue;
      seen.add(event.id);
      const item = render(event);
      fragment.appendChild(item);
      items.push(item);
    }
    list.insertBefore(fragment, first);
    items.forEach(regroup);
    regroup(first);
    if (events.length) oldestId = events[0].id;
    if (lastId === null && events.length) lastId = events[events.length - 1].id;
    // keep what the reader was looking at where it was
    scroller.scrollTop = top + (scroller.scrollHeight - height);
  }

  function reset() {
    generation += 1;
    list.replaceChildren();
    seen.clear();
    lastId = null;
    oldestId = null;
    moreHistory = true;
  }

  function showOlder() {
    older.hidden = !moreHistory || oldestId === null;
    beginning.hidden = moreHistory;
  }

  async function loadOlder() {
    if (loadingHistory || !moreHistory || oldestId === null) return;
    loadingHistory = true;
    const gen = generation;
    older.disabled = true;
    older.textContent = "Loading older messages…";
    let ok = false;
    try {
      const url = "/rooms/" + encodeURIComponent(room) + "/history?limit=" + HISTORY_PAGE +
        "&before=" + encodeURIComponent(oldestId);
      const res = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
      if (res.status === 401) { showSignedOut(); return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      const data = await res.json();
      if (gen !== generation) return;
      list.setAttribute("aria-busy", "true");
      prepend(data.events);
      list.removeAttribute("aria-busy");
      moreHistory = Boolean(data.more) && data.events.length > 0;
      ok = true;
    } catch (err) {
      older.textContent = "Could not load older messages. Try again";
      older.disabled = false;
      loadingHistory = false;
      return;
    }
    older.disabled = false;
    older.textContent = "Load older messages";
    loadingHistory = false;
    showOlder();
    if (ok) nearTop();
  }

  // Reading back to the top (or a list too short to scroll) loads the older events.
  function nearTop() {
    if (moreHistory && scroller.scrollTop < 80) loadOlder();
  }

  scroller.addEventListener("scroll", () => {
    nearTop();
    if (atBottom()) jump.hidden = true;
  }, { passive: true });
  older.addEventListener("click", loadOlder);
  jump.addEventListener("click", () => { toBottom(); input.focus(); });

  // -- members and typing ----------------------------------------------------------------------

  function showMembers() {
    const sorted = Array.from(members.values()).sort((a, b) =>
      (b.id === me) - (a.id === me) || a.name.localeCompare(b.name));
    membersList.replaceChildren(...sorted.map((user) => {
      const item = el("li", user.id === me ? "member mine" : "member");
      item.appendChild(avatar(user));
      item.appendChild(el("span", "name", user.name));
      if (user.id === me) item.appendChild(el("span", "you", "you"));
      return item;
    }));
    const n = members.size;
    memberCount.textContent = n + (n === 1 ? " member" : " members");
  }

  function showTyping() {
    const names = Array.from(typists.values()).map((t) => t.name);
    if (!names.length) typingLine.textContent = "";
    else if (names.length === 1) typingLine.textContent = names[0] + " is typing…";
    else if (names.length <= 3) typingLine.textContent = names.slice(0, -1).join(", ") + " and " + names[names.length - 1] + " are typing…";
    else typingLine.textContent = "Several people are typing…";
  }

  function typing(user) {
    const old = typists.get(user.id);
    if (old) clearTimeout(old.timer);
    const timer = setTimeout(() => { typists.delete(user.id); showTyping(); }, TYPING_SHOWN);
    typists.set(user.id, { name: user.name, timer: timer });
    showTyping();
  }

  function stopTyping(userId) {
    const old = typists.get(userId);
    if (old) { clearTimeout(old.timer); typists.delete(userId); showTyping(); }
  }

  function clearTyping() {
    for (const t of typists.values()) clearTimeout(t.timer);
    typists.clear();
    showTyping();
  }

  // -- connection state ----------------------------------------------------------------------

  function setState(state) {
    body.dataset.state = state;
  }

  function setBanner(text) {
    bannerText.textContent = text || "";
    banner.hidden = !text;
  }

  function showSignedOut() {
    signedOut = true;
    clearTimeout(retryTimer);
    setState("signed-out");
    retry.hidden = true;
    signIn.hidden = false;
    setBanner("You are signed out.");
  }

  function showUnread() {
    document.title = (unread ? "(" + unread + ") " : "") + baseTitle;
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unread = 0;
      showUnread();
      if (!socket && !signedOut) reconnectNow();  // a phone woke up: do not wait for the timer
    }
  });

  // -- the composer ----------------------------------------------------------------------------

  function showError(text) {
    composerError.textContent = text || "";
  }

  function showCount() {
    const n = Array.from(input.value).length;
    countValue.textContent = String(n);
    count.classList.toggle("near", n > maxLength * 0.9 && n <= maxLength);
    count.classList.toggle("over", n > maxLength);
  }

  function send() {
    const text = input.value.trim();
    if (!text) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected. Your message is still here: send it again once you are back online.");
      return;
    }
    // The server is the judge of the length (it answers with an error frame), so a message over
    // the limit still goes; the counter has already said that it is too long.
    socket.send(JSON.stringify({ type: "say", text: text }));
    lastSent = text;
    input.value = "";
    lastTypingSent = 0;
    showCount();
    showError("");
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); send(); input.focus(); });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      send();
    }
  });
  input.addEventListener("input", () => {
    showCount();
    if (composerError.textContent) showError("");
    const now = Date.now();
    if (socket && socket.readyState === WebSocket.OPEN && input.value.trim() && now - lastTypingSent > TYPING_EVERY) {
      lastTypingSent = now;
      socket.send(JSON.stringify({ type: "typing" }));
    }
  });

  // -- the socket ----------------------------------------------------------------------------

  function onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        attempt = 0;
        offlineReason = null;
        if (frame.you && frame.you.id) me = frame.you.id;
        members = new Map((frame.members || []).map((u) => [u.id, u]));
        if (!frame.resumed && lastId !== null) reset();  // too much was missed: start over
        clearTyping();
        list.setAttribute("aria-busy", "true");
        append(frame.archive || []);
        list.removeAttribute("aria-busy");
        showMembers();
        setState("online");
        setBanner("");
        nearTop();
        break;
      case "message":
        stopTyping(frame.user.id);
        if (frame.user.id === me && frame.text === lastSent) lastSent = null;
        append([frame]);
        break;
      case "join":
        members.set(frame.user.id, frame.user);
        showMembers();
        append([frame]);
        break;
      case "leave":
        members.delete(frame.user.id);
        stopTyping(frame.user.id);
        showMembers();
        append([frame]);
        break;
      case "typing":
        if (frame.user && frame.user.id !== me) typing(frame.user);
        break;
      case "error":
        showError("Not sent: " + frame.message);
        if (["too_long", "rate_limited", "unavailable"].includes(frame.code) && lastSent !== null && !input.value) {
          input.value = lastSent;  // give the refused text back rather than lose it
          showCount();
        }
        lastSent = null;
        break;
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket || signedOut) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/rooms/" + encodeURIComponent(room) + "/socket";
    if (lastId !== null) url += "?since=" + encodeURIComponent(lastId);
    const ws = new WebSocket(url);
    socket = ws;
    let welcomed = false;
    const giveUp = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, 10000);
    ws.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame.type === "welcome") welcomed = true;
      onFrame(frame);
    };
    ws.onclose = (ev) => {
      clearTimeout(giveUp);
      if (socket !== ws) return;
      socket = null;
      disconnected(ev, welcomed);
    };
  }

  async function disconnected(ev, welcomed) {
    clearTyping();
    setState("offline");
    if (ev.code === 1008 && ev.reason === "signed out") { showSignedOut(); return; }
    if (offlineReason === null) {
      offlineReason = closeReason(ev);
    }
    retry.hidden = false;
    signIn.hidden = true;
    setBanner("Offline. " + offlineReason + " Reconnecting…");
    attempt += 1;
    if (!welcomed) {
      // Refused before the welcome: a server that is down, or a session that has ended (403).
      try {
        const options = { headers: { accept: "application/json" }, credentials: "same-origin" };
        if (AbortSignal.timeout) options.signal = AbortSignal.timeout(5000);
        const res = await fetch("/rooms/" + encodeURIComponent(room) + "/history?limit=1", options);
        if (res.status === 401) { showSignedOut(); return; }
      } catch (e) { /* the server is unreachable: keep trying */ }
      if (socket) return;  // "Reconnect now" was pressed meanwhile
    }
    const delay = Math.min(15000, 500 * 2 ** Math.min(attempt - 1, 5)) * (0.75 + Math.random() / 2);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  }

  // What the server's close codes mean to a person (docs/protocol.md lists them).
  function closeReason(ev) {
    if (ev.code === 1001) return "The server is restarting.";
    if (ev.code === 1013 && ev.reason === "slow consumer") return "The connection was too slow.";
    if (ev.code === 1013) return "The server cannot take messages right now.";
    if (ev.code === 1008 && ev.reason) return ev.reason.charAt(0).toUpperCase() + ev.reason.slice(1) + ".";
    if (ev.code === 1011) return "The connection stopped answering.";
    return "The connection was lost.";
  }

  function reconnectNow() {
    if (socket || signedOut) return;
    connect();
  }

  retry.addEventListener("click", reconnectNow);
  document.querySelector(".skip").addEventListener("click", (ev) => { ev.preventDefault(); input.focus(); });
  window.addEventListener("online", reconnectNow);

  // -- the room switcher: rooms visited lately -------------------------------------------------

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

  showCount();
  showOlder();
  connect();
})();
