// The Server-Sent Events transport (`/stream/sse`), on the browser's EventSource.

import { isObject } from "../parsers.js";
import { Connection } from "./base.js";

// The event names an rt SSE stream uses besides "message" (stored events).
const SSE_NAMES = ["ready", "close", "presence", "typing", "heartbeat", "pong", "ack", "error"];

export class SseConnection extends Connection {
  constructor(ctx) { super(); this.ctx = ctx; this.es = null; this.stopped = false; }
  start() {
    const { env, h } = this.ctx;
    // Never left to reconnect by itself: on any error it is closed, and the
    // client opens a new one with a fresh URL (cursor, epoch, ticket).
    const es = new env.EventSource(this.ctx.url());
    this.es = es;
    const onData = (ev) => {
      if (this.stopped) return;
      h.bytes();
      let obj;
      try { obj = JSON.parse(ev.data); } catch (err) { this._end({ kind: "ended", error: err }); return; }
      if (isObject(obj)) h.objects([obj]);
    };
    es.onopen = () => { if (!this.stopped) h.bytes(); };
    es.onmessage = onData;
    for (const name of SSE_NAMES) {
      es.addEventListener(name, (ev) => {
        if (name === "error" && (ev === null || typeof ev.data !== "string")) {
          this._end({ kind: "ended" }); // the connection failed (not a frame)
          return;
        }
        onData(ev);
      });
    }
  }
  ready() {}
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    try { this.es?.close(); } catch { /* gone */ }
  }
}

/** xhr (NDJSON) and multipart, read from a fetch body (or XHR progress where bodies do not stream). */
