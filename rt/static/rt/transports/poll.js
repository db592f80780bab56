// The long-polling transport (`/stream/poll`): one JSON array per poll, by fetch.

import { MIN_POLL_GAP_MS } from "../constants.js";
import { isObject } from "../parsers.js";
import { parseRetryAfter } from "../retry.js";
import { Connection } from "./base.js";
import { refusal } from "./fetch.js";

export class PollConnection extends Connection {
  constructor(ctx) { super(); this.ctx = ctx; this.stopped = false; this.abort = null; this.timer = null; this.lastStart = 0; }
  start() { this._poll(); }
  ready() {}
  _next() {
    if (this.stopped) return;
    const { env } = this.ctx;
    const wait = Math.max(0, this.lastStart + MIN_POLL_GAP_MS - env.now());
    this.timer = env.setTimeout(() => { this.timer = null; this._poll(); }, wait);
  }
  async _poll() {
    if (this.stopped) return;
    const { env, h } = this.ctx;
    this.lastStart = env.now();
    const controller = new AbortController();
    this.abort = controller;
    let res;
    let body;
    try {
      res = await env.fetch(this.ctx.url(), { signal: controller.signal, cache: "no-store", credentials: "omit" });
      if (this.stopped) return;
      if (res.status === 429) {
        // polled too fast: same session, after the wait
        const wait = parseRetryAfter(res.headers.get("Retry-After"), env.now()) ?? 1000;
        h.bytes();
        this.timer = env.setTimeout(() => { this.timer = null; this._poll(); }, wait);
        return;
      }
      if (res.status !== 200) { this._end(await refusal(res, env)); return; }
      body = await res.json();
    } catch (err) {
      this._end({ kind: "ended", error: err });
      return;
    }
    if (this.stopped) return;
    h.bytes();
    if (!Array.isArray(body)) { this._end({ kind: "ended", error: new Error("poll: not an array") }); return; }
    h.objects(body.filter(isObject));
    this._next();
  }
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) this.ctx.env.clearTimeout(this.timer);
    try { this.abort?.abort(); } catch { /* done */ }
  }
}

/** JSONP polling: one script tag per poll, each with its own callback name. */
