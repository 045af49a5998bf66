// The message box: Enter sends, Shift+Enter starts a line, a character count, typing notices,
// and the server's refusals shown beside it with the refused text given back.

import { GIVE_BACK } from "./codes.js";

const TYPING_EVERY = 2500;  // how often this page repeats its own typing notice

export class Composer {
  constructor({ form, input, count, countValue, error, maxLength, connection }) {
    Object.assign(this, { form, input, countEl: count, countValue, errorEl: error, maxLength, connection });
    this.lastTypingSent = 0;
    this.lastSent = null;  // the text of the last say, put back if the server refuses it
    form.addEventListener("submit", (ev) => { ev.preventDefault(); this.send(); input.focus(); });
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        this.send();
      }
    });
    input.addEventListener("input", () => {
      this.showCount();
      if (this.errorEl.textContent) this.showError("");
      const now = Date.now();
      if (this.connection.open && input.value.trim() && now - this.lastTypingSent > TYPING_EVERY) {
        this.lastTypingSent = now;
        this.connection.send({ type: "typing" });
      }
    });
  }

  showError(text) {
    this.errorEl.textContent = text || "";
  }

  showCount() {
    const n = Array.from(this.input.value).length;
    this.countValue.textContent = String(n);
    this.countEl.classList.toggle("near", n > this.maxLength * 0.9 && n <= this.maxLength);
    this.countEl.classList.toggle("over", n > this.maxLength);
  }

  send() {
    const text = this.input.value.trim();
    if (!text) return;
    // The server is the judge of the length (it answers with an error frame), so a message over
    // the limit still goes; the counter has already said that it is too long.
    if (!this.connection.send({ type: "say", text: text })) {
      this.showError("Not connected. Your message is still here: send it again once you are back online.");
      return;
    }
    this.lastSent = text;
    this.input.value = "";
    this.lastTypingSent = 0;
    this.showCount();
    this.showError("");
  }

  // Our own message came back: it was sent.
  delivered(text) {
    if (text === this.lastSent) this.lastSent = null;
  }

  refused(frame) {
    this.showError("Not sent: " + frame.message);
    if (GIVE_BACK.includes(frame.code) && this.lastSent !== null && !this.input.value) {
      this.input.value = this.lastSent;  // give the refused text back rather than lose it
      this.showCount();
    }
    this.lastSent = null;
  }
}
