// Who is in the room (the welcome's members, then joins and leaves) and who is typing.

import { avatar, el } from "./dom.js";

const TYPING_SHOWN = 4000;  // how long "X is typing…" stays without a new notice

export class Members {
  constructor({ who, list, count, typingLine }) {
    Object.assign(this, { who, list, count, typingLine });
    this.members = new Map();
    this.typists = new Map();  // user id -> {name, timer}
  }

  set(users) {
    this.members = new Map(users.map((u) => [u.id, u]));
    this.show();
  }

  join(user) {
    this.members.set(user.id, user);
    this.show();
  }

  leave(userId) {
    this.members.delete(userId);
    this.stopTyping(userId);
    this.show();
  }

  show() {
    const me = this.who.id;
    const sorted = Array.from(this.members.values()).sort((a, b) =>
      (b.id === me) - (a.id === me) || a.name.localeCompare(b.name));
    this.list.replaceChildren(...sorted.map((user) => {
      const item = el("li", user.id === me ? "member mine" : "member");
      item.appendChild(avatar(user));
      item.appendChild(el("span", "name", user.name));
      if (user.id === me) item.appendChild(el("span", "you", "you"));
      return item;
    }));
    const n = this.members.size;
    this.count.textContent = n + (n === 1 ? " member" : " members");
  }

  showTyping() {
    const names = Array.from(this.typists.values()).map((t) => t.name);
    const line = this.typingLine;
    if (!names.length) line.textContent = "";
    else if (names.length === 1) line.textContent = names[0] + " is typing…";
    else if (names.length <= 3) line.textContent = names.slice(0, -1).join(", ") + " and " + names[names.length - 1] + " are typing…";
    else line.textContent = "Several people are typing…";
  }

  typing(user) {
    const old = this.typists.get(user.id);
    if (old) clearTimeout(old.timer);
    const timer = setTimeout(() => { this.typists.delete(user.id); this.showTyping(); }, TYPING_SHOWN);
    this.typists.set(user.id, { name: user.name, timer: timer });
    this.showTyping();
  }

  stopTyping(userId) {
    const old = this.typists.get(userId);
    if (old) { clearTimeout(old.timer); this.typists.delete(userId); this.showTyping(); }
  }

  clearTyping() {
    for (const t of this.typists.values()) clearTimeout(t.timer);
    this.typists.clear();
    this.showTyping();
  }
}
