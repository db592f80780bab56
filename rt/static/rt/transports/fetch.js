// The streaming transports read with fetch: XHR-streaming (NDJSON) and XHR multipart.

import { MultipartParser, NdjsonParser, boundaryFromContentType, isObject } from "../parsers.js";
import { parseRetryAfter } from "../retry.js";
import { Connection } from "./base.js";

export class FetchStreamConnection extends Connection {
  constructor(ctx, kind) { super(); this.ctx = ctx; this.kind = kind; this.stopped = false; this.abort = null; this.xhr = null; }
  start() {
    if (this.ctx.env.fetch && this.ctx.env.streamingFetch) this._fetch();
    else this._xhr();
  }
  ready() {}
  _parser(contentType) {
    if (this.kind === "xhr") {
      if (!/ndjson/i.test(contentType || "")) throw new Error("xhr stream: unexpected content type " + contentType);
      const p = new NdjsonParser();
      return { push: (c) => p.push(c) };
    }
    const boundary = boundaryFromContentType(contentType);
    if (!boundary || !/^multipart\//i.test(contentType)) throw new Error("multipart stream: no boundary in " + contentType);
    const p = new MultipartParser(boundary);
    return { push: (c) => p.push(c).flatMap((part) => (Array.isArray(part) ? part.filter(isObject) : [])) };
  }
  async _fetch() {
    const { env, h } = this.ctx;
    const controller = new AbortController();
    this.abort = controller;
    let res;
    try {
      res = await env.fetch(this.ctx.url(), { signal: controller.signal, cache: "no-store", credentials: "omit" });
    } catch (err) {
      this._end({ kind: "ended", error: err });
      return;
    }
    if (this.stopped) { controller.abort(); return; }
    if (res.status !== 200) { this._end(await refusal(res, env)); return; }
    let parser;
    try { parser = this._parser(res.headers.get("Content-Type")); } catch (err) {
      controller.abort();
      this._end({ kind: "ended", error: err });
      return;
    }
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.stopped) return;
        if (done) break;
        h.bytes();
        const objs = parser.push(value);
        if (objs.length) h.objects(objs);
        if (this.stopped) return;
      }
    } catch (err) {
      this._end({ kind: "ended", error: err });
      return;
    }
    this._end({ kind: "ended" });
  }
  _xhr() {
    const { env, h } = this.ctx;
    const xhr = new env.XMLHttpRequest();
    this.xhr = xhr;
    let seen = 0;
    let parser = null;
    const pump = () => {
      if (this.stopped) return;
      if (!parser) {
        try { parser = this._parser(xhr.getResponseHeader("Content-Type")); } catch (err) {
          this._end({ kind: "ended", error: err });
          return;
        }
      }
      const text = xhr.responseText;
      if (text.length > seen) {
        const chunk = text.slice(seen);
        seen = text.length;
        h.bytes();
        let objs;
        try { objs = parser.push(chunk); } catch (err) { this._end({ kind: "ended", error: err }); return; }
        if (objs.length) h.objects(objs);
      }
    };
    xhr.onreadystatechange = () => {
      if (this.stopped) return;
      if (xhr.readyState >= 2 && xhr.status !== 200 && xhr.status !== 0) {
        if (xhr.readyState === 4) {
          let code = null;
          try { code = JSON.parse(xhr.responseText).error.code; } catch { /* not rt's */ }
          this._end({ kind: "refused", status: xhr.status, code,
            retryAfter: parseRetryAfter(xhr.getResponseHeader("Retry-After"), env.now()) });
        }
        return;
      }
      if (xhr.readyState === 3) pump();
      if (xhr.readyState === 4) { pump(); this._end({ kind: "ended" }); }
    };
    xhr.onprogress = pump;
    xhr.onerror = () => this._end({ kind: "ended", error: new Error("network error") });
    xhr.open("GET", this.ctx.url());
    xhr.send();
  }
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    try { this.abort?.abort(); } catch { /* done */ }
    try { this.xhr?.abort(); } catch { /* done */ }
  }
}

/** Answers of a refused stream request or op, read into an end record. */
export async function refusal(res, env) {
  let code = null;
  let message = "";
  try {
    const body = await res.json();
    code = body?.error?.code ?? null;
    message = body?.error?.message ?? "";
  } catch { /* not rt's JSON */ }
  return {
    kind: "refused", status: res.status, code, message,
    retryAfter: parseRetryAfter(res.headers.get("Retry-After"), env.now()),
  };
}

/** Long-polling: a fetch loop, each poll carrying the client's cursor. */
