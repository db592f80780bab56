// Wire parsers (PROTOCOL.md section 3.1). Each takes chunks as they come
// (Uint8Array, ArrayBuffer or already-decoded strings), in any cut, and
// returns what is complete.

import { randomToken } from "./ids.js";

class TextChunks {
  constructor() { this.decoder = new TextDecoder("utf-8"); }
  /** @param {Uint8Array|ArrayBuffer|string} chunk */
  text(chunk) {
    if (typeof chunk === "string") return chunk;
    return this.decoder.decode(chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk, { stream: true });
  }
  end() { return this.decoder.decode(); }
}

/** @param {unknown} v */
export const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * The objects of one WebSocket text frame: one or more OBJ separated by `\n`.
 * @param {string} text
 * @returns {Object[]}
 */
export function splitWsFrame(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const obj = JSON.parse(line);
    if (isObject(obj)) out.push(obj);
  }
  return out;
}

/** XHR-streaming: `OBJ\n` per object; a lone `\n` is a heartbeat. */
export class NdjsonParser {
  constructor() { this.chunks = new TextChunks(); this.buf = ""; }
  /**
   * @param {Uint8Array|ArrayBuffer|string} chunk
   * @returns {Object[]} the objects completed by this chunk
   */
  push(chunk) {
    this.buf += this.chunks.text(chunk);
    const out = [];
    let start = 0;
    let nl;
    while ((nl = this.buf.indexOf("\n", start)) >= 0) {
      let line = this.buf.slice(start, nl);
      start = nl + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line.trim() === "") continue;
      const obj = JSON.parse(line);
      if (isObject(obj)) out.push(obj);
    }
    this.buf = this.buf.slice(start);
    return out;
  }
  /** Bytes left without their newline when the body ended ("" when clean). */
  rest() { return this.buf + this.chunks.end(); }
}

/**
 * Server-Sent Events, as the WHATWG event stream parser: lines end with
 * CRLF, LF or CR; `data` lines join with `\n`; an event dispatches at a
 * blank line; comments (`: hb`) dispatch nothing.
 */
export class SseParser {
  constructor() {
    this.chunks = new TextChunks();
    this.buf = "";
    this.first = true;
    this.skipLF = false;
    this.data = "";
    this.hasData = false;
    this.type = "";
    /** the last event id seen (kept across events, as EventSource does) */
    this.lastEventId = "";
    /** @type {number|null} the last `retry:` */
    this.retry = null;
    /** comment lines seen (`: hb` heartbeats) */
    this.comments = 0;
  }
  /**
   * @param {Uint8Array|ArrayBuffer|string} chunk
   * @returns {{type: string, data: string, lastEventId: string}[]}
   */
  push(chunk) {
    let text = this.chunks.text(chunk);
    if (this.first && text.length) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    this.buf += text;
    const out = [];
    let start = 0;
    const n = this.buf.length;
    for (;;) {
      // A CR ends its line at once; an LF right after it (maybe in the next
      // chunk) belongs to the same line end.
      if (this.skipLF && start < n) {
        if (this.buf[start] === "\n") start++;
        this.skipLF = false;
      }
      let i = start;
      while (i < n && this.buf[i] !== "\n" && this.buf[i] !== "\r") i++;
      if (i >= n) break;
      this._line(this.buf.slice(start, i), out);
      if (this.buf[i] === "\r") this.skipLF = true;
      start = i + 1;
    }
    this.buf = this.buf.slice(start);
    return out;
  }
  _line(line, out) {
    if (line === "") {
      if (this.hasData) {
        out.push({ type: this.type || "message", data: this.data, lastEventId: this.lastEventId });
      }
      this.data = "";
      this.hasData = false;
      this.type = "";
      return;
    }
    if (line[0] === ":") { this.comments++; return; }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") {
      this.data = this.hasData ? this.data + "\n" + value : value;
      this.hasData = true;
    } else if (field === "event") {
      this.type = value;
    } else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) this.retry = parseInt(value, 10);
    }
  }
}

/**
 * The boundary of a multipart Content-Type (quoted or not), or null.
 * @param {string|null|undefined} contentType
 * @returns {string|null}
 */
export function boundaryFromContentType(contentType) {
  if (!contentType) return null;
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))/i.exec(contentType);
  if (!m) return null;
  return m[1] ?? m[2];
}

/**
 * XHR multipart (RFC 2046): parts delimited by `CRLF--B`, the first
 * delimiter possibly at the very start of the body, `--B--` closing.
 * Each part holds `[OBJ,...]`. Since OBJ never holds a raw CR or LF, a part
 * whose body up to its first CRLF parses as JSON is handed over at once,
 * before the next delimiter arrives (PROTOCOL.md section 3.1); the
 * delimiter is then required to follow.
 */
export class MultipartParser {
  /** @param {string} boundary */
  constructor(boundary) {
    if (!boundary) throw new Error("multipart: no boundary");
    this.delim = "--" + boundary;
    this.chunks = new TextChunks();
    this.buf = "";
    /** @type {"start"|"boundary"|"headers"|"body"|"delim"|"done"} */
    this.state = "start";
    /** @type {Record<string, string>} the current part's headers */
    this.headers = {};
    this.scan = 0;
    /** true once the close delimiter `--B--` was read */
    this.closed = false;
  }
  /**
   * @param {Uint8Array|ArrayBuffer|string} chunk
   * @returns {unknown[]} the parsed bodies of the parts completed by this chunk
   */
  push(chunk) {
    this.buf += this.chunks.text(chunk);
    const out = [];
    const delim = this.delim;
    for (;;) {
      const buf = this.buf;
      if (this.state === "start") {
        if (buf.length < delim.length && delim.startsWith(buf)) break;
        if (buf.startsWith(delim)) { this.buf = buf.slice(delim.length); this.state = "boundary"; continue; }
        const i = buf.indexOf("\r\n" + delim);
        if (i < 0) { this.buf = buf.slice(Math.max(0, buf.length - delim.length - 1)); break; }
        this.buf = buf.slice(i + 2 + delim.length);
        this.state = "boundary";
        continue;
      }
      if (this.state === "boundary") {
        // After `--B`: `--` closes; else optional transport padding, then CRLF.
        if (buf.length < 2) break;
        if (buf.startsWith("--")) { this.state = "done"; this.closed = true; this.buf = ""; break; }
        const i = buf.indexOf("\r\n");
        if (i < 0) {
          if (/^[ \t]*\r?$/.test(buf)) break;
          throw new Error("multipart: bad delimiter line");
        }
        if (!/^[ \t]*$/.test(buf.slice(0, i))) throw new Error("multipart: bad delimiter line");
        this.buf = buf.slice(i + 2);
        this.state = "headers";
        this.headers = {};
        continue;
      }
      if (this.state === "headers") {
        const i = buf.indexOf("\r\n");
        if (i < 0) break;
        const line = buf.slice(0, i);
        this.buf = buf.slice(i + 2);
        if (line === "") { this.state = "body"; this.scan = 0; continue; }
        const colon = line.indexOf(":");
        if (colon > 0) this.headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        continue;
      }
      if (this.state === "body") {
        const i = buf.indexOf("\r\n", this.scan);
        if (i < 0) { this.scan = Math.max(0, buf.length - 1); break; }
        const after = buf.slice(i + 2, i + 2 + delim.length);
        if (after === delim) {
          out.push(this._body(buf.slice(0, i)));
          this.buf = buf.slice(i + 2 + delim.length);
          this.state = "boundary";
          continue;
        }
        if (after.length < delim.length && delim.startsWith(after)) {
          // The delimiter may be arriving: hand a JSON body over now if it is
          // whole (other bodies wait for the delimiter itself).
          if (!this._json()) break;
          const body = buf.slice(0, i);
          let parsed;
          try { parsed = this._body(body); } catch { break; }
          out.push(parsed);
          this.buf = buf.slice(i + 2);
          this.state = "delim";
          continue;
        }
        this.scan = i + 1; // a CRLF inside the body
        continue;
      }
      if (this.state === "delim") {
        if (buf.length < delim.length) {
          if (delim.startsWith(buf)) break;
          throw new Error("multipart: a part's body went on past its first CRLF");
        }
        if (!buf.startsWith(delim)) throw new Error("multipart: a part's body went on past its first CRLF");
        this.buf = buf.slice(delim.length);
        this.state = "boundary";
        continue;
      }
      // done: the epilogue is ignored
      this.buf = "";
      break;
    }
    return out;
  }
  _json() { return (this.headers["content-type"] || "application/json").toLowerCase().includes("json"); }
  _body(text) { return this._json() ? JSON.parse(text) : text; }
}

/**
 * Global callbacks for jsonp and htmlfile (`?callback=F`). Each poll or
 * iframe gets a fresh name; a retired name stays a no-op for a while, so an
 * answer from a superseded or older script is recognised and ignored (and
 * counted in `stale`) rather than delivered or thrown.
 */
export class CallbackRegistry {
  /**
   * @param {Object} root    the global object the names resolve from (window)
   * @param {string} [ns]    property of root holding the functions
   */
  constructor(root, ns = "__rt") {
    this.root = root;
    this.ns = ns;
    this.prefix = "c" + randomToken(4).replace(/[^A-Za-z0-9]/g, "x") + "_";
    this.seq = 0;
    /** @type {Map<string, Function>} live callbacks by key */
    this.live = new Map();
    /** answers ignored because their callback was retired */
    this.stale = 0;
    if (!root[ns] || typeof root[ns] !== "object") root[ns] = {};
  }
  /**
   * A new global function name F (`__rt.c…_N`) that calls `handler` with
   * the answer's arguments while live.
   * @param {(...args: any[]) => void} handler
   * @returns {string}
   */
  create(handler) {
    const key = this.prefix + ++this.seq;
    this.live.set(key, handler);
    const holder = this.root[this.ns] || (this.root[this.ns] = {});
    holder[key] = (...args) => this._call(key, args);
    return this.ns + "." + key;
  }
  _call(key, args) {
    const handler = this.live.get(key);
    if (!handler) { this.stale++; return false; }
    handler(...args);
    return true;
  }
  /** @param {string} name */
  isLive(name) { return this.live.has(this._key(name)); }
  /** From now on answers to `name` are stale: ignored. @param {string} name */
  retire(name) { this.live.delete(this._key(name)); }
  /** Remove the function itself (a later answer then throws in its own script). */
  drop(name) {
    const key = this._key(name);
    this.live.delete(key);
    const holder = this.root[this.ns];
    if (holder) delete holder[key];
  }
  _key(name) { return name.startsWith(this.ns + ".") ? name.slice(this.ns.length + 1) : name; }
}
/** The same registry serves JSONP polls. */
export { CallbackRegistry as JsonpRegistry };
