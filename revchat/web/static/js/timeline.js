// The conversation: events in the room's one order, each shown once, with scroll-back through
// GET /rooms/{room}/history and a "new messages" button while the reader is scrolled up.

import { avatar, el, timeOf } from "./dom.js";

const GROUP_GAP = 5 * 60 * 1000;  // messages of one author closer than this are grouped
const HISTORY_PAGE = 50;

export class Timeline {
  // who: {id} of the signed-in user; onSignedOut(): the history said 401;
  // onUnread(n): messages from others arrived while the page was hidden
  constructor({ room, who, scroller, list, older, beginning, jump, onSignedOut, onUnread }) {
    Object.assign(this, { room, who, scroller, list, older, beginning, jump, onSignedOut, onUnread });
    this.seen = new Set();   // ids of the events shown: nothing is shown twice
    this.lastId = null;      // the newest id shown: ?since= on reconnect, so nothing is lost
    this.oldestId = null;    // the oldest id shown: scroll-back asks for what is before it
    this.moreHistory = true;
    this.loadingHistory = false;
    this.generation = 0;     // bumped when the list is rebuilt; late history answers are dropped
    scroller.addEventListener("scroll", () => {
      this.nearTop();
      if (this.atBottom()) jump.hidden = true;
    }, { passive: true });
    older.addEventListener("click", () => this.loadOlder());
  }

  render(event) {
    const mine = event.user.id === this.who.id;
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
  regroup(item) {
    if (!item || !item.classList.contains("message")) return;
    const prev = item.previousElementSibling;
    const cont = !!prev && prev.classList.contains("message") && prev.dataset.user === item.dataset.user &&
      Number(item.dataset.ts) - Number(prev.dataset.ts) < GROUP_GAP;
    item.classList.toggle("cont", cont);
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.jump.hidden = true;
  }

  append(events) {
    const stick = this.atBottom();
    let fromOthers = 0;
    let ownMessage = false;
    for (const event of events) {
      if (!event || this.seen.has(event.id)) continue;
      this.seen.add(event.id);
      const item = this.render(event);
      this.list.appendChild(item);
      this.regroup(item);
      this.lastId = event.id;
      if (this.oldestId === null) this.oldestId = event.id;
      if (event.type === "message") {
        if (event.user.id === this.who.id) ownMessage = true;
        else fromOthers += 1;
      }
    }
    if (stick || ownMessage) this.toBottom();
    else if (fromOthers) this.jump.hidden = false;
    if (fromOthers && document.hidden) this.onUnread(fromOthers);
    this.showOlder();
    this.nearTop();  // a list too short to scroll cannot be scrolled up: load what is before it
  }

  // The archive of a welcome: everything after what is shown (resumed) or a fresh start.
  welcome(archive, resumed) {
    if (!resumed && this.lastId !== null) this.reset();  // too much was missed: start over
    this.list.setAttribute("aria-busy", "true");
    this.append(archive);
    this.list.removeAttribute("aria-busy");
    this.nearTop();
  }

  prepend(events) {
    const first = this.list.firstElementChild;
    const height = this.scroller.scrollHeight;
    const top = this.scroller.scrollTop;
    const fragment = document.createDocumentFragment();
    const items = [];
    for (const event of events) {
      if (this.seen.has(event.id)) continue;
      this.seen.add(event.id);
      const item = this.render(event);
      fragment.appendChild(item);
      items.push(item);
    }
    this.list.insertBefore(fragment, first);
    items.forEach((item) => this.regroup(item));
    this.regroup(first);
    if (events.length) this.oldestId = events[0].id;
    if (this.lastId === null && events.length) this.lastId = events[events.length - 1].id;
    // keep what the reader was looking at where it was
    this.scroller.scrollTop = top + (this.scroller.scrollHeight - height);
  }

  reset() {
    this.generation += 1;
    this.list.replaceChildren();
    this.seen.clear();
    this.lastId = null;
    this.oldestId = null;
    this.moreHistory = true;
  }

  showOlder() {
    this.older.hidden = !this.moreHistory || this.oldestId === null;
    this.beginning.hidden = this.moreHistory;
  }

  async loadOlder() {
    if (this.loadingHistory || !this.moreHistory || this.oldestId === null) return;
    this.loadingHistory = true;
    const gen = this.generation;
    const older = this.older;
    older.disabled = true;
    older.textContent = "Loading older messages…";
    try {
      const url = "/rooms/" + encodeURIComponent(this.room) + "/history?limit=" + HISTORY_PAGE +
        "&before=" + encodeURIComponent(this.oldestId);
      const res = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
      if (res.status === 401) { this.onSignedOut(); return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      const data = await res.json();
      if (gen !== this.generation) return;
      this.list.setAttribute("aria-busy", "true");
      this.prepend(data.events);
      this.list.removeAttribute("aria-busy");
      this.moreHistory = Boolean(data.more) && data.events.length > 0;
    } catch (err) {
      older.textContent = "Could not load older messages. Try again";
      older.disabled = false;
      this.loadingHistory = false;
      return;
    }
    older.disabled = false;
    older.textContent = "Load older messages";
    this.loadingHistory = false;
    this.showOlder();
    this.nearTop();
  }

  // Reading back to the top (or a list too short to scroll) loads the older events.
  nearTop() {
    if (this.moreHistory && this.scroller.scrollTop < 80) this.loadOlder();
  }
}
