// The room's socket: connecting, resuming with ?since=, and reconnecting with backoff as the
// server's close code advises (codes.js). No DOM here: the page listens through the callbacks.

import { delay, WAIT } from "./backoff.js";
import { CLOSES } from "./codes.js";

const GIVE_UP = 10000;  // a handshake that has not completed by then is abandoned

export class Connection {
  // url(): where to connect, with ?since= of the newest event shown
  // onFrame(frame), onOffline(message), onSignedOut(): what the page does about them
  // signedIn(): resolves false when the session is over (asked only when a socket is refused)
  constructor({ url, onFrame, onOffline, onSignedOut, signedIn }) {
    Object.assign(this, { url, onFrame, onOffline, onSignedOut, signedIn });
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  // After a welcome: the next loss starts the schedule again.
  welcomed() {
    this.attempt = 0;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket || this.stopped) return;
    const ws = new WebSocket(this.url());
    this.socket = ws;
    let welcomed = false;
    const giveUp = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, GIVE_UP);
    ws.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame.type === "welcome") welcomed = true;
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      clearTimeout(giveUp);
      if (this.socket !== ws) return;
      this.socket = null;
      this.closed(ev, welcomed);
    };
  }

  reconnectNow() {
    if (!this.socket && !this.stopped) this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async closed(ev, welcomed) {
    const known = CLOSES[ev.code];
    if (known && known.advice === "sign_in") { this.stop(); this.onSignedOut(); return; }
    let message = known ? known.message : "The connection was lost.";
    if (known && known.advice === "wait" && ev.reason) message = sentence(ev.reason);
    this.onOffline(message);
    this.attempt += 1;
    if (!welcomed) {
      // Refused before the welcome: a server that is down, or a session that has ended (403).
      try {
        if (!(await this.signedIn())) { this.stop(); this.onSignedOut(); return; }
      } catch (e) { /* the server is unreachable: keep trying */ }
      if (this.socket) return;  // "Reconnect now" was pressed meanwhile
    }
    clearTimeout(this.timer);
    const wait = known && known.advice === "wait" ? WAIT : delay(this.attempt);
    this.timer = setTimeout(() => this.connect(), wait);
  }
}

function sentence(text) {
  return text.charAt(0).toUpperCase() + text.slice(1) + ".";
}
