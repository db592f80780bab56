// The WebSocket transport (`/stream/ws`): objects in text frames, `ping` ops as heartbeats.

import { splitWsFrame } from "../parsers.js";
import { Connection } from "./base.js";

export class WsConnection extends Connection {
  constructor(ctx) { super(); this.ctx = ctx; this.ws = null; this.pinger = null; this.lastPing = 0; this.stopped = false; }
  start() {
    const { env, h } = this.ctx;
    const ws = new env.WebSocket(this.ctx.url());
    this.ws = ws;
    ws.onopen = () => { if (!this.stopped) h.bytes(); };
    ws.onmessage = (m) => {
      if (this.stopped) return;
      h.bytes();
      if (typeof m.data !== "string") return;
      let objs;
      try { objs = splitWsFrame(m.data); } catch (err) { this._end({ kind: "ended", error: err }); return; }
      if (objs.some((o) => o.type === "heartbeat")) this._pingIfDue();
      h.objects(objs);
    };
    ws.onerror = () => {};
    ws.onclose = (c) => this._end({ kind: "closed", code: c.code, reason: c.reason });
  }
  /** After `ready`: ping every heartbeat (and when the server's heartbeats show the timer lagging). */
  ready(r) {
    const { env } = this.ctx;
    this.heartbeatMs = Math.max(1, Number(r.heartbeat) || 15) * 1000;
    this._ping();
    this.pinger = env.setInterval(() => this._ping(), this.heartbeatMs);
  }
  _pingIfDue() {
    if (this.heartbeatMs && this.ctx.env.now() - this.lastPing >= this.heartbeatMs / 2) this._ping();
  }
  _ping() {
    if (this.stopped || !this.ws || this.ws.readyState !== 1) return;
    this.lastPing = this.ctx.env.now();
    try { this.ws.send('{"op":"ping"}'); } catch { /* closing */ }
  }
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.pinger !== null) this.ctx.env.clearInterval(this.pinger);
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
  }
}
