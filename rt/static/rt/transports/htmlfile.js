// The HTMLFile transport (`/stream/htmlfile`): the forever iframe of the oldest browsers.

import { STALE_CALLBACK_MS } from "../constants.js";
import { isObject } from "../parsers.js";
import { Connection } from "./base.js";

export class HtmlFileConnection extends Connection {
  constructor(ctx) { super(); this.ctx = ctx; this.stopped = false; this.iframe = null; this.name = null; }
  start() {
    const { env, registry, h } = this.ctx;
    const name = registry.create((objs) => {
      if (this.stopped || name !== this.name) return;
      h.bytes();
      if (!Array.isArray(objs)) return;
      // Objects made in the iframe's realm: copy them into ours.
      let copy;
      try { copy = JSON.parse(JSON.stringify(objs)); } catch { return; }
      h.objects(copy.filter(isObject));
    });
    this.name = name;
    const doc = env.document;
    const iframe = doc.createElement("iframe");
    iframe.style.display = "none";
    iframe.setAttribute("aria-hidden", "true");
    iframe.tabIndex = -1;
    iframe.onload = () => {
      // The document ended: the response is over (after `close`, or cut).
      if (!this.stopped) this._end({ kind: "ended" });
    };
    iframe.src = this.ctx.url({ callback: name });
    this.iframe = iframe;
    (doc.body || doc.documentElement).appendChild(iframe);
  }
  ready() {}
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    const { registry, env } = this.ctx;
    if (this.name) {
      const old = this.name;
      registry.retire(old);
      env.setTimeout(() => registry.drop(old), STALE_CALLBACK_MS);
    }
    if (this.iframe) {
      this.iframe.onload = null;
      try { this.iframe.src = "about:blank"; } catch { /* detached */ }
      this.iframe.remove();
      this.iframe = null;
    }
  }
}
