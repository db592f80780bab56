// The JSONP polling transport (`/stream/jsonp`): a script per poll, for cross-origin pages.

import { MIN_POLL_GAP_MS, STALE_CALLBACK_MS } from "../constants.js";
import { isObject } from "../parsers.js";
import { Connection } from "./base.js";

export class JsonpConnection extends Connection {
  constructor(ctx) { super();
    this.ctx = ctx; this.stopped = false; this.script = null; this.name = null; this.timer = null; this.lastStart = 0;
  }
  start() { this._poll(); }
  ready() {}
  _poll() {
    if (this.stopped) return;
    const { env, registry } = this.ctx;
    this._retire();
    this.lastStart = env.now();
    let answered = false;
    const name = registry.create((objs) => {
      if (this.stopped || name !== this.name) return;
      answered = true;
      this._answer(objs);
    });
    this.name = name;
    const doc = env.document;
    const script = doc.createElement("script");
    script.async = true;
    script.src = this.ctx.url({ callback: name });
    script.onerror = () => {
      if (this.stopped || name !== this.name) return;
      this._end({ kind: "ended", error: new Error("jsonp: the script failed to load") });
    };
    script.onload = () => {
      if (this.stopped || name !== this.name || answered) return;
      this._end({ kind: "ended", error: new Error("jsonp: the script did not answer") });
    };
    this.script = script;
    (doc.head || doc.documentElement).appendChild(script);
  }
  _answer(objs) {
    const { env, h } = this.ctx;
    this._retire();
    h.bytes();
    if (Array.isArray(objs)) h.objects(objs.filter(isObject));
    if (this.stopped) return;
    const wait = Math.max(0, this.lastStart + MIN_POLL_GAP_MS - env.now());
    this.timer = env.setTimeout(() => { this.timer = null; this._poll(); }, wait);
  }
  _retire() {
    if (this.name) {
      const { registry, env } = this.ctx;
      const old = this.name;
      registry.retire(old);
      env.setTimeout(() => registry.drop(old), STALE_CALLBACK_MS);
      this.name = null;
    }
    if (this.script) {
      this.script.onload = this.script.onerror = null;
      this.script.remove();
      this.script = null;
    }
  }
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) this.ctx.env.clearTimeout(this.timer);
    this._retire();
  }
}

/** HTMLFile: a hidden iframe whose scripts call `parent.F(batch)`; same origin only. */
