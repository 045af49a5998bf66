// revchat room page: plain JavaScript, no framework. Every string from users goes through
// textContent, never innerHTML.
"use strict";

(function () {
  const body = document.body;
  const room = body.dataset.room;
  const me = body.dataset.userId;
  const maxLength = parseInt(body.dataset.maxLength, 10) || 2000;

  const list = document.getElementById("messages");
  const membersList = document.getElementById("members");
  const memberCount = document.getElementById("member-count");
  const typingLine = document.getElementById("typing");
  const banner = document.getElementById("banner");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const count = document.getElementById("count");
  const composerError = document.getElementById("composer-error");

  const seen = new Set();       // event ids already shown: nothing is shown twice
  let lastId = null;            // newest id seen: ?since= on reconnect
  let oldestId = null;          // oldest id shown: scroll-back starts here
  let moreHistory = true;
  let loadingHistory = false;
  let socket = null;
  let attempt = 0;
  let members = new Map();
  const typists = new Map();    // user id -> {name, timer}
  let lastTypingSent = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function initials(name) {
    return name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => Array.from(w)[0]).join("").toUpperCase() || "?";
  }

  function avatar(user) {
    if (user.avatar && /^https:\/\//.test(user.avatar)) {
      const img = el("img", "avatar");
      img.src = user.avatar;
      img.alt = "";
      img.referrerPolicy = "no-referrer";
      return img;
    }
    const span = el("span", "avatar initials", initials(user.name));
    span.setAttribute("aria-hidden", "true");
    return span;
  }

  function timeOf(ts) {
    const d = new Date(ts);
    const t = el("time", "time", d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    return t;
  }

  function render(event) {
    const item = el("li", "event " + event.type);
    item.dataset.id = event.id;
    if (event.user.id === me) item.classList.add("mine");
    if (event.type === "message") {
      item.appendChild(avatar(event.user));
      const main = el("div", "bubble");
      const meta = el("div", "meta");
      meta.appendChild(el("span", "name", event.user.name + (event.user.id === me ? " (you)" : "")));
      meta.appendChild(timeOf(event.timestamp));
      main.appendChild(meta);
      main.appendChild(el("p", "text", event.text));
      item.appendChild(main);
    } else {
      const verb = event.type === "join" ? " joined" : " left";
      const note = el("p", "notice");
      note.appendChild(el("span", "name", event.user.name));
      note.appendChild(document.createTextNode(verb + " · "));
      note.appendChild(timeOf(event.timestamp));
      item.appendChild(note);
    }
    return item;
  }

  function nearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function append(events) {
    const stick = nearBottom();
    for (const event of events) {
      if (seen.has(event.id)) continue;
      seen.add(event.id);
      list.appendChild(render(event));
      lastId = event.id;
      if (oldestId === null) oldestId = event.id;
    }
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function prepend(events) {
    const before = list.scrollHeight;
    const first = list.firstChild;
    for (const event of events) {
      if (seen.has(event.id)) continue;
      seen.add(event.id);
      list.insertBefore(render(event), first);
    }
    if (events.length) oldestId = events[0].id;
    list.scrollTop += list.scrollHeight - before;
  }

  function showMembers() {
    membersList.replaceChildren();
    const sorted = Array.from(members.values()).sort((a, b) => a.name.localeCompare(b.name));
    for (const user of sorted) {
      const item = el("li", user.id === me ? "member mine" : "member");
      item.appendChild(avatar(user));
      item.appendChild(el("span", "name", user.name + (user.id === me ? " (you)" : "")));
      membersList.appendChild(item);
    }
    memberCount.textContent = "· " + members.size + (members.size === 1 ? " member" : " members");
  }

  function showTyping() {
    const names = Array.from(typists.values()).map((t) => t.name);
    if (!names.length) typingLine.textContent = "";
    else if (names.length === 1) typingLine.textContent = names[0] + " is typing…";
    else typingLine.textContent = names.join(", ") + " are typing…";
  }

  function typing(user) {
    const old = typists.get(user.id);
    if (old) clearTimeout(old.timer);
    const timer = setTimeout(() => { typists.delete(user.id); showTyping(); }, 4000);
    typists.set(user.id, { name: user.name, timer: timer });
    showTyping();
  }

  function stopTyping(userId) {
    const old = typists.get(userId);
    if (old) { clearTimeout(old.timer); typists.delete(userId); showTyping(); }
  }

  function setBanner(text) {
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function showError(text) {
    composerError.textContent = text || "";
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        attempt = 0;
        setBanner("");
        members = new Map(frame.members.map((u) => [u.id, u]));
        if (!frame.resumed && lastId !== null) {
          // Too much was missed to replay: start over from the archive.
          list.replaceChildren(); seen.clear(); lastId = null; oldestId = null; moreHistory = true;
        }
        append(frame.archive);
        showMembers();
        break;
      case "message":
        stopTyping(frame.user.id);
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
        if (frame.user.id !== me) typing(frame.user);
        break;
      case "error":
        showError(frame.message);
        break;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/rooms/" + encodeURIComponent(room) + "/socket";
    if (lastId !== null) url += "?since=" + encodeURIComponent(lastId);
    socket = new WebSocket(url);
    socket.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      onFrame(frame);
    };
    socket.onclose = (ev) => {
      socket = null;
      attempt += 1;
      const delay = Math.min(30000, 500 * 2 ** Math.min(attempt - 1, 6)) * (0.75 + Math.random() / 2);
      const why = ev.code === 1001 ? "The server is restarting." : ev.code === 1013 ? "The connection was too slow." : "Connection lost.";
      setBanner(why + " Reconnecting in " + Math.ceil(delay / 1000) + " s…");
      setTimeout(connect, delay);
    };
  }

  async function loadOlder() {
    if (loadingHistory || !moreHistory || oldestId === null) return;
    loadingHistory = true;
    try {
      const res = await fetch("/rooms/" + encodeURIComponent(room) + "/history?limit=50&before=" + encodeURIComponent(oldestId),
                              { headers: { accept: "application/json" } });
      if (res.ok) {
        const data = await res.json();
        moreHistory = data.more;
        prepend(data.events);
      }
    } finally {
      loadingHistory = false;
    }
  }

  list.addEventListener("scroll", () => { if (list.scrollTop < 40) loadOlder(); });

  function send() {
    const text = input.value.trim();
    if (!text) return;
    if (Array.from(text).length > maxLength) { showError("The message is longer than " + maxLength + " characters."); return; }
    if (!socket || socket.readyState !== WebSocket.OPEN) { showError("Not connected; your message is kept, try again in a moment."); return; }
    socket.send(JSON.stringify({ type: "say", text: text }));
    input.value = "";
    count.textContent = "0";
    showError("");
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
  });
  input.addEventListener("input", () => {
    count.textContent = String(Array.from(input.value).length);
    const now = Date.now();
    if (socket && socket.readyState === WebSocket.OPEN && now - lastTypingSent > 2000 && input.value.trim()) {
      lastTypingSent = now;
      socket.send(JSON.stringify({ type: "typing" }));
    }
  });

  connect();
})();
