// rt.js: the browser client of rt (PROTOCOL.md section 7).
//
// An ES module, no build step, no dependencies. Import it from the server:
//
//   import { connect } from "/static/rt.js";
//   const rt = connect({ url: location.origin, token, flows: ["general"] });
//   rt.on("timeline", (flow) => render(rt.timeline(flow)));
//   rt.post("general", "SUP");
//
// Public surface: exactly PROTOCOL.md section 7, plus
//   - `rt.on(name, fn)` returns a function that removes the listener;
//   - the "timeline" event: `fn(flow)` whenever what `rt.timeline(flow)`
//     returns has changed (history loaded, a stored event applied, a pending
//     op added, settled or failed, a reset). Coalesced: at most once per flow
//     per task, after the "event" callbacks of that task;
//   - "presence" events carry `users`, the whole sorted list of users online
//     in the flow after the change. The `ready` snapshot is emitted as one
//     `{type: "presence", flow, users, snapshot: true}` per flow; changes as
//     the server's `{type, flow, user, state}` with `users` added;
//   - `rt.state`, the last state emitted; option `storage` (default
//     `localStorage`; `null` keeps the outbox in memory only).
//
// Decisions (written down as PROTOCOL.md asks):
//   - Ops (post, edit, tag, untag, remove) go by HTTP on every transport,
//     one at a time in creation order, so a user's own messages keep their
//     order and an op aimed at a pending post runs after it. The WebSocket
//     only carries `{"op":"ping"}`.
//   - The outbox lives in `localStorage` under `rt:outbox:v1:<url>:<user>`
//     (the user from `GET /me`), a JSON array of ops (never the token).
//     Tabs of one user share it: each tab rewrites only its own entries, and
//     an op sent by two tabs is stored once (same uuid). Ops never expire.
//   - "event" fires for stored events that arrive on the stream after the
//     history that was loaded (events already reflected in a history page
//     are deduplicated by id, not re-emitted), once each, in id order.
//   - `rt.cursor` starts at the smallest `cursor` of the history pages.
//   - The SSE heartbeat is a comment (`: hb`) that EventSource does not
//     report, so an SSE stream with no event for 2.5 heartbeats is renewed
//     at once from the cursor (a "refresh", not a failure: it demotes
//     nothing and does not back off). Every other transport sees its
//     heartbeat bytes.
//   - `evicted` (too many streams of this user) goes `offline` with an
//     `error` and a new client id: coming back at once would evict another
//     tab, which would come back too. `setFlows` or `setTransport` starts
//     again.
//   - A flow whose history answers 403 or 404 is dropped from the flows
//     followed, with an `error`; the others go on.
//   - A stream refusal 401 is retried with a fresh ticket; after three in a
//     row, or when `POST /auth/ticket` or `GET /me` answers 401: `error`
//     (code unauthorized), state `offline`, no loop.
//   - Automatic fallback wraps around after htmlfile, with backoff.
//   - Message ids are integers; a string given as a message id is the uuid
//     of a post (pending or settled on this page, or seen on the stream).
//   - Transports the page cannot use are skipped by "auto": htmlfile needs a
//     document of the server's own origin, jsonp a document, ws WebSocket,
//     sse EventSource. Choosing one that is not available emits `error`
//     (code unsupported) and goes `offline`.
//   - With no flows there is no stream (state `offline`); ops still work.
//   - The pending object's `pending` turns false when `done` settles.
//     `done` never causes an unhandled-rejection warning: failures are also
//     emitted as "error".
//
// The module is split into pure, exported parts (ids, backoff, watchdog,
// retry rules, the four wire parsers, the callback registry, Timeline,
// Outbox) tested under node without a browser, and the browser glue
// (`Client`, `connect`). Nothing touches `window` or `document` at import.

/** Transport names, in the order of automatic fallback. */
export const TRANSPORTS = Object.freeze(["ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile"]);

/** Polling transports: one response per poll. */
const POLLING = new Set(["poll", "jsonp"]);

export const READY_TIMEOUT_MS = 5000;
export const HEALTHY_MS = 30000;
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30000;
const TICK_MS = 1000;
const OP_TIMEOUT_MS = 30000;
const HTTP_TIMEOUT_MS = 15000;
const HEALTH_TIMEOUT_MS = 5000;
const MIN_POLL_GAP_MS = 100; // poll-rate is 10 a second per session
const STALE_CALLBACK_MS = 120000; // a retired jsonp/htmlfile callback stays a no-op this long

const FLOW_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const CLIENT_RE = /^[A-Za-z0-9_-]{16,64}$/;
const UUID_RE = /^[A-Za-z0-9_-]{8,64}$/;
const CALLBACK_RE = /^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$/;

/**
 * @typedef {Object} StoredEvent  An entry of the log (PROTOCOL.md section 2).
 * @property {number} id
 * @property {string} flow
 * @property {"message"|"edit"|"tag"|"delete"|string} type
 * @property {string} user
 * @property {number} sent
 * @property {string} uuid
 * @property {string} [content]
 * @property {number} [message]
 * @property {string[]} [add]
 * @property {string[]} [remove]
 * @property {string[]} [tags]
 */

/**
 * @typedef {Object} MessageView  One entry of `rt.timeline(flow)`.
 * @property {number|null} id       null while pending
 * @property {string} flow
 * @property {string|null} user
 * @property {number} sent          server ms (client ms while pending)
 * @property {string} content       "" once deleted
 * @property {string[]} tags
 * @property {number|false} edited  id of the last edit, or false
 * @property {boolean} deleted
 * @property {boolean} pending      a post not yet stored
 * @property {boolean} [syncing]    ops of this page on it are not settled yet (shown applied)
 * @property {string} [uuid]        when known (posts of this page, stream events)
 */

/**
 * @typedef {Object} OpEntry  One op of the outbox (what is persisted).
 * @property {string} uuid
 * @property {"post"|"edit"|"tag"|"delete"} kind
 * @property {string} flow
 * @property {string} [content]
 * @property {number|string} [message]  an id, or the uuid of a post it waits for
 * @property {string[]} [add]
 * @property {string[]} [remove]
 * @property {number} created           client ms
 * @property {number} [seq]
 * In memory only (never stored):
 * @property {number} [attempts]        failed attempts so far
 * @property {number} [notBefore]       when it may be sent again (ms)
 * @property {boolean} [settled]
 */

/**
 * @typedef {Object} PendingOp  What post/edit/tag/untag/remove return at once.
 * @property {string} uuid
 * @property {string} flow
 * @property {boolean} pending          true until `done` settles
 * @property {Promise<Object>} done     the stored event, or `{changed:false,state}`
 * @property {string} [content]
 * @property {number|string} [message]
 * @property {string[]} [add]
 * @property {string[]} [remove]
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [url]          server base URL (default location.origin)
 * @property {string} token          bearer token
 * @property {string[]} flows        flows to follow
 * @property {string} [transport]    "auto" (default) or a name of TRANSPORTS
 * @property {number} [history]      messages per flow to load (default 50, 0..500)
 * @property {Storage|null} [storage] where the outbox is kept (default localStorage)
 */

// ---------------------------------------------------------------------------
// Errors

/** An error emitted on "error" or rejecting an op's `done`. */
export class RtError extends Error {
  /**
   * @param {string} code     a PROTOCOL.md error code, a close reason, or "network"
   * @param {string} message
   * @param {{status?: number, retry?: boolean, retryAfter?: number|null, flow?: string, uuid?: string, op?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RtError";
    /** @type {string} */ this.code = code;
    /** @type {number|undefined} */ this.status = extra.status;
    /** @type {boolean} */ this.retry = Boolean(extra.retry);
    /** @type {number|null} */ this.retryAfter = extra.retryAfter ?? null;
    /** @type {string|undefined} */ this.flow = extra.flow;
    /** @type {string|undefined} */ this.uuid = extra.uuid;
    /** @type {string|undefined} */ this.op = extra.op;
  }
}

// ---------------------------------------------------------------------------
// Ids

/**
 * `n` random bytes as base64url (no padding).
 * @param {number} n
 * @param {{getRandomValues?: Function}|undefined} [cryptoObj]
 * @returns {string}
 */
export function randomToken(n, cryptoObj = globalThis.crypto) {
  const bytes = new Uint8Array(n);
  if (cryptoObj && typeof cryptoObj.getRandomValues === "function") {
    cryptoObj.getRandomValues(bytes);
  } else {
    for (let i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A client id: 22 characters of [A-Za-z0-9_-], made once per page. */
export function makeClientId(cryptoObj = globalThis.crypto) {
  return randomToken(16, cryptoObj);
}

/** A uuid for one op: crypto.randomUUID() (36 characters), else 22 random characters. */
export function makeUuid(cryptoObj = globalThis.crypto) {
  if (cryptoObj && typeof cryptoObj.randomUUID === "function") return cryptoObj.randomUUID();
  return randomToken(16, cryptoObj);
}

/** @param {unknown} s */
export const isClientId = (s) => typeof s === "string" && CLIENT_RE.test(s);
/** @param {unknown} s */
export const isUuid = (s) => typeof s === "string" && UUID_RE.test(s);
/** @param {unknown} s */
export const isFlow = (s) => typeof s === "string" && FLOW_RE.test(s);
/** @param {unknown} s */
export const isCallbackName = (s) => typeof s === "string" && s.length <= 64 && CALLBACK_RE.test(s);

// ---------------------------------------------------------------------------
// Backoff, watchdog and retry rules

/**
 * The reconnection delay after `n` failures: random(0, min(30 s, 0.5 s × 2^n)).
 * @param {number} n
 * @param {() => number} [random]  in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(n, random = Math.random) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, Math.min(n, 30)));
  return random() * ceiling;
}

/** The failure count of reconnection, reset after 30 s of a healthy stream. */
export class Backoff {
  /** @param {{random?: () => number, healthyMs?: number}} [opts] */
  constructor(opts = {}) {
    this.random = opts.random ?? Math.random;
    this.healthyMs = opts.healthyMs ?? HEALTHY_MS;
    /** failures since the last healthy stream */
    this.n = 0;
    /** @type {number|null} when the current stream became healthy (its `ready`) */
    this.openedAt = null;
  }
  /** The delay before the next attempt; counts one more failure. */
  next() {
    const delay = backoffDelay(this.n, this.random);
    this.n += 1;
    return delay;
  }
  /** A stream is open (its `ready` arrived) at `now`. */
  opened(now) { this.openedAt = now; }
  /** Called while a stream is open and when it ends: 30 s of health reset n. */
  check(now) {
    if (this.openedAt !== null && now - this.openedAt >= this.healthyMs) this.n = 0;
  }
  /** The stream ended at `now`. */
  closed(now) {
    this.check(now);
    this.openedAt = null;
  }
}

/**
 * Decides when a connection failed: no `ready` within `readyMs`, or no bytes
 * for `silentMs` once ready. Wall-clock based (Date.now()): a tick that comes
 * late (a throttled or sleeping tab) first grants `graceMs` for the bytes
 * that were held up to arrive, instead of misfiring.
 */
export class Watchdog {
  /** @param {{readyMs?: number, silentMs: number, tickMs?: number, graceMs?: number}} opts */
  constructor(opts) {
    this.readyMs = opts.readyMs ?? READY_TIMEOUT_MS;
    this.silentMs = opts.silentMs;
    this.tickMs = opts.tickMs ?? TICK_MS;
    this.graceMs = opts.graceMs ?? 5000;
    this.ready = false;
    this.started = 0;
    this.lastBytes = 0;
    this.lastTick = 0;
    this.graceUntil = 0;
  }
  start(now) { this.started = this.lastBytes = this.lastTick = now; this.ready = false; this.graceUntil = 0; }
  bytes(now) { this.lastBytes = Math.max(this.lastBytes, now); }
  opened(now) { this.ready = true; this.bytes(now); }
  /**
   * @param {number} now
   * @returns {null|"no-ready"|"silent"}
   */
  tick(now) {
    const late = now - this.lastTick > 3 * this.tickMs;
    this.lastTick = now;
    if (late) { this.graceUntil = now + this.graceMs; return null; }
    if (now < this.graceUntil) return null;
    if (!this.ready) return now - this.started > this.readyMs ? "no-ready" : null;
    return now - this.lastBytes > this.silentMs ? "silent" : null;
  }
}

/**
 * Milliseconds to wait from a Retry-After header (delta-seconds or an HTTP date).
 * @param {string|null|undefined} value
 * @param {number} [now]
 * @returns {number|null}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(parseFloat(text) * 1000);
  const at = Date.parse(text);
  if (Number.isNaN(at)) return null;
  return Math.max(0, at - now);
}

/**
 * Whether an op that got HTTP `status` may be retried with the same uuid
 * (PROTOCOL.md section 4). 0 stands for a network error (no response).
 * @param {number} status
 * @returns {"ok"|"retry"|"fail"}
 */
export function classifyStatus(status) {
  if (status >= 200 && status < 300) return "ok";
  if (status === 0 || status === 429 || status >= 500) return "retry";
  return "fail";
}

/**
 * The wait before retrying an op: Retry-After when the server gave one,
 * else backoff by the number of attempts so far.
 * @param {number|null} retryAfterMs
 * @param {number} attempts  failed attempts so far (>= 1)
 * @param {() => number} [random]
 */
export function retryDelay(retryAfterMs, attempts, random = Math.random) {
  if (retryAfterMs !== null && retryAfterMs !== undefined) return retryAfterMs;
  return backoffDelay(Math.max(0, attempts - 1), random);
}

// ---------------------------------------------------------------------------
// Wire parsers (PROTOCOL.md section 3.1). Each takes chunks as they come
// (Uint8Array, ArrayBuffer or already-decoded strings), in any cut, and
// returns what is complete.

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
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

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

// ---------------------------------------------------------------------------
// Timeline: messages per flow in id order, pending ones last.

/**
 * The state of each flow's messages: the stored ones (from history pages,
 * stream events and op answers) in id order, and this page's pending ops.
 * Applying events is idempotent, so acks and echoes may come in any order.
 */
export class Timeline {
  constructor() {
    /** @type {Map<string, {byId: Map<number, any>, ids: number[], floor: number}>} */
    this.flows = new Map();
    /** @type {OpEntry[]} pending ops in creation order */
    this.pending = [];
  }
  _flow(flow) {
    let f = this.flows.get(flow);
    if (!f) { f = { byId: new Map(), ids: [], floor: -1 }; this.flows.set(flow, f); }
    return f;
  }
  _insert(f, m) {
    f.byId.set(m.id, m);
    const ids = f.ids;
    if (!ids.length || ids[ids.length - 1] < m.id) { ids.push(m.id); return; }
    let lo = 0, hi = ids.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ids[mid] < m.id) lo = mid + 1; else hi = mid; }
    ids.splice(lo, 0, m.id);
  }
  /** The highest id already reflected for `flow` (-1 if none). */
  floor(flow) { return this.flows.get(flow)?.floor ?? -1; }
  /**
   * Merge a history page's message states. `cursor`, for the page that
   * starts a flow, marks every event up to it as reflected (the stream then
   * skips them); older pages (loadOlder) pass `floor: false`.
   * @param {string} flow
   * @param {Object[]} states
   * @param {number} cursor  the page's `cursor` (head when it was read)
   * @param {{floor?: boolean}} [opts]
   * @returns {Object[]} the states that were new
   */
  load(flow, states, cursor, opts = {}) {
    const f = this._flow(flow);
    const added = [];
    for (const s of states) {
      if (!s || typeof s.id !== "number") continue;
      const had = f.byId.get(s.id);
      // A message held already (from an op's answer) is replaced only by a
      // page that reflects at least as much of it.
      if (had && (opts.floor === false || had.editRev > cursor || had.tagRev > cursor || had.deleted)) continue;
      const m = {
        id: s.id, flow, user: s.user ?? null, sent: s.sent ?? 0,
        content: s.deleted ? "" : (s.content ?? ""), tags: Array.isArray(s.tags) ? [...s.tags] : [],
        edited: s.edited ?? false, deleted: Boolean(s.deleted),
        uuid: s.uuid ?? had?.uuid, editRev: cursor, tagRev: cursor,
      };
      if (had) { f.byId.set(m.id, m); continue; }
      this._insert(f, m);
      added.push(s);
    }
    if (opts.floor !== false && cursor > f.floor) f.floor = cursor;
    return added;
  }
  /**
   * Whether a stream event is new for its flow (id above the floor); if so
   * the floor moves to it. Events at or below were reflected already.
   * @param {StoredEvent} e
   */
  admit(e) {
    const f = this._flow(e.flow);
    if (e.id <= f.floor) return false;
    f.floor = e.id;
    return true;
  }
  /**
   * Apply a stored event to the message it concerns. Idempotent; an edit or
   * tag older than what is held is ignored; events about messages not held
   * change nothing.
   * @param {StoredEvent} e
   * @returns {boolean} whether the timeline changed
   */
  apply(e) {
    if (!e || typeof e.id !== "number") return false;
    const f = this._flow(e.flow);
    if (e.type === "message") {
      const had = f.byId.get(e.id);
      if (had) { if (!had.uuid && e.uuid) had.uuid = e.uuid; return false; }
      this._insert(f, {
        id: e.id, flow: e.flow, user: e.user ?? null, sent: e.sent ?? 0, content: e.content ?? "",
        tags: [], edited: false, deleted: false, uuid: e.uuid, editRev: e.id, tagRev: e.id,
      });
      return true;
    }
    const m = f.byId.get(e.message);
    if (!m) return false;
    if (e.type === "edit") {
      if (m.deleted || e.id <= m.editRev) return false;
      m.content = e.content ?? "";
      m.edited = e.id;
      m.editRev = e.id;
      return true;
    }
    if (e.type === "tag") {
      if (m.deleted || e.id <= m.tagRev || !Array.isArray(e.tags)) return false;
      m.tags = [...e.tags];
      m.tagRev = e.id;
      return true;
    }
    if (e.type === "delete") {
      if (m.deleted) return false;
      m.deleted = true;
      m.content = "";
      return true;
    }
    return false;
  }
  /** @param {OpEntry} entry */
  addPending(entry) {
    if (this.pending.some((p) => p.uuid === entry.uuid)) return;
    this.pending.push(entry);
    this.pending.sort(byCreation);
  }
  /**
   * An op settled: its pending copy goes, and a stored event it answered
   * with is applied (an echo or an ack: whichever comes first).
   * @param {string} uuid
   * @param {StoredEvent|null} [event]
   * @returns {string|null} the op's flow, or null if it was not pending
   */
  settle(uuid, event = null) {
    const i = this.pending.findIndex((p) => p.uuid === uuid);
    const flow = i >= 0 ? this.pending[i].flow : null;
    if (i >= 0) this.pending.splice(i, 1);
    if (event && typeof event.id === "number") this.apply(event);
    return flow ?? event?.flow ?? null;
  }
  /** The id of a message held with this uuid (posted here, or seen on the stream). */
  idForUuid(flow, uuid) {
    const f = this.flows.get(flow);
    if (!f) return null;
    for (const m of f.byId.values()) if (m.uuid === uuid) return m.id;
    return null;
  }
  /** Smallest id held for `flow`, or null. */
  oldest(flow) {
    const ids = this.flows.get(flow)?.ids;
    return ids && ids.length ? ids[0] : null;
  }
  /** Forget the stored messages (and floors) of `flow`, or of every flow. Pending ops stay. */
  clear(flow) {
    if (flow === undefined) this.flows.clear();
    else this.flows.delete(flow);
  }
  /** Flows that hold messages or pending ops. */
  flowNames() {
    const names = new Set(this.flows.keys());
    for (const p of this.pending) names.add(p.flow);
    return [...names];
  }
  /**
   * The messages of `flow`: stored ones in id order, then pending posts in
   * creation order. This page's unsettled edits, tags and deletes are shown
   * applied (with `syncing: true`). Fresh objects: safe to keep or change.
   * @param {string} flow
   * @param {string|null} [me]  the user name shown on pending posts
   * @returns {MessageView[]}
   */
  list(flow, me = null) {
    const f = this.flows.get(flow);
    const ops = new Map();
    for (const p of this.pending) {
      if (p.flow !== flow || p.kind === "post") continue;
      const key = String(p.message);
      if (!ops.has(key)) ops.set(key, []);
      ops.get(key).push(p);
    }
    const out = [];
    if (f) {
      for (const id of f.ids) {
        const m = f.byId.get(id);
        const view = {
          id: m.id, flow: m.flow, user: m.user, sent: m.sent, content: m.content, tags: [...m.tags],
          edited: m.edited, deleted: m.deleted, pending: false,
        };
        if (m.uuid) view.uuid = m.uuid;
        const mine = ops.get(String(m.id)) || (m.uuid ? ops.get(m.uuid) : undefined);
        out.push(mine ? overlay(view, mine) : view);
      }
    }
    for (const p of this.pending) {
      if (p.flow !== flow || p.kind !== "post") continue;
      const view = {
        id: null, flow, user: me, sent: p.created, content: p.content ?? "", tags: [],
        edited: false, deleted: false, pending: true, uuid: p.uuid,
      };
      const mine = ops.get(p.uuid);
      out.push(mine ? overlay(view, mine) : view);
    }
    return out;
  }
}

function byCreation(a, b) {
  return (a.created - b.created) || ((a.seq ?? 0) - (b.seq ?? 0));
}

function overlay(view, ops) {
  const v = { ...view, syncing: true };
  for (const op of ops) {
    if (v.deleted) break;
    if (op.kind === "edit") v.content = op.content ?? v.content;
    else if (op.kind === "tag") {
      const tags = new Set(v.tags);
      for (const t of op.add || []) tags.add(approxTag(t));
      for (const t of op.remove || []) tags.delete(approxTag(t));
      v.tags = [...tags].sort();
    } else if (op.kind === "delete") { v.deleted = true; v.content = ""; }
  }
  return v;
}

// The server's tag form is NFC(casefold(NFC(t))); until it answers, this is close.
function approxTag(t) {
  const s = String(t).normalize("NFC").toLowerCase().normalize("NFC");
  return s;
}

// ---------------------------------------------------------------------------
// Outbox: ops waiting to be stored, kept in storage so a reload resends
// them with the same uuids.

const OUTBOX_PREFIX = "rt:outbox:v1:";

/** The storage key of the outbox of `user` on the server at `url`. */
export function outboxKey(url, user) {
  return OUTBOX_PREFIX + String(url).replace(/\/+$/, "") + ":" + user;
}

/**
 * The ops of this page not yet stored, in creation order. With a storage
 * (localStorage or anything with getItem/setItem/removeItem) and a key,
 * every change is written through; a new Outbox on the same storage and key
 * (a reload) finds the same ops with the same uuids. Tabs sharing a key
 * each rewrite only their own entries.
 */
export class Outbox {
  /** @param {{storage?: any, key?: string|null}} [opts] */
  constructor(opts = {}) {
    this.storage = opts.storage ?? null;
    this.key = opts.key ?? null;
    /** @type {Map<string, OpEntry>} */
    this.ops = new Map();
    /** uuids this outbox completed or failed (dropped from storage when saving) */
    this.finished = new Set();
    this.seq = 0;
    if (this.storage && this.key) this._loadStored();
  }
  /**
   * Start persisting under `key` (known once the user is): entries stored
   * there by an earlier page join the ones already here.
   * @returns {OpEntry[]} the entries found in storage
   */
  bind(storage, key) {
    this.storage = storage ?? null;
    this.key = key;
    const found = this.storage && this.key ? this._loadStored() : [];
    this.save();
    return found;
  }
  _read() {
    if (!this.storage || !this.key) return [];
    try {
      const raw = this.storage.getItem(this.key);
      const list = raw ? JSON.parse(raw) : [];
      return Array.isArray(list) ? list.filter(validEntry) : [];
    } catch {
      return [];
    }
  }
  _loadStored() {
    const found = [];
    for (const e of this._read()) {
      if (this.ops.has(e.uuid) || this.finished.has(e.uuid)) continue;
      this.ops.set(e.uuid, e);
      found.push(e);
      this.seq = Math.max(this.seq, e.seq ?? 0);
    }
    return found;
  }
  /** Write this outbox's entries (keeping other tabs' ones). */
  save() {
    if (!this.storage || !this.key) return;
    const keep = this._read().filter((e) => !this.ops.has(e.uuid) && !this.finished.has(e.uuid));
    const all = [...keep, ...this.ops.values()].map(persistable).sort(byCreation);
    try {
      if (all.length) this.storage.setItem(this.key, JSON.stringify(all));
      else this.storage.removeItem(this.key);
    } catch {
      // storage full or refused: the ops stay in memory
    }
  }
  /**
   * Add an op (it must have a uuid, kind, flow and created).
   * @param {OpEntry} entry
   */
  add(entry) {
    if (!validEntry(entry)) throw new TypeError("outbox: an op needs uuid, kind, flow and created");
    if (this.ops.has(entry.uuid)) return this.ops.get(entry.uuid);
    if (entry.seq === undefined) entry.seq = ++this.seq;
    this.ops.set(entry.uuid, entry);
    this.save();
    return entry;
  }
  /** @param {string} uuid */
  get(uuid) { return this.ops.get(uuid); }
  /** @returns {OpEntry[]} in creation order */
  entries() { return [...this.ops.values()].sort(byCreation); }
  /** The op to send next: the oldest. */
  first() { return this.entries()[0]; }
  get size() { return this.ops.size; }
  /**
   * The op is done (stored, or failed for good): it leaves the outbox. A
   * post that got its id passes it to the ops that waited for it.
   * @param {string} uuid
   * @param {number} [id]  the stored id of a post
   */
  complete(uuid, id) {
    const entry = this.ops.get(uuid);
    this.ops.delete(uuid);
    this.finished.add(uuid);
    if (entry && typeof id === "number") {
      for (const e of this.ops.values()) if (e.message === uuid) e.message = id;
    }
    this.save();
    return entry;
  }
  /** The ops that wait for the post `uuid` to get an id. */
  dependents(uuid) { return this.entries().filter((e) => e.message === uuid); }
  /** Persist a change made to an entry in place. */
  update() { this.save(); }
}

function validEntry(e) {
  return e && typeof e === "object" && isUuid(e.uuid) && ["post", "edit", "tag", "delete"].includes(e.kind)
    && typeof e.flow === "string" && typeof e.created === "number";
}

function persistable(e) {
  const out = { uuid: e.uuid, kind: e.kind, flow: e.flow, created: e.created, seq: e.seq };
  for (const k of ["content", "message", "add", "remove"]) if (e[k] !== undefined) out[k] = e[k];
  return out;
}

/**
 * The HTTP request that performs an op (PROTOCOL.md section 4).
 * @param {OpEntry} e  with `message` an id
 * @returns {{method: string, path: string, body: Object|null}}
 */
export function opRequest(e) {
  const base = "/flows/" + encodeURIComponent(e.flow) + "/messages";
  switch (e.kind) {
    case "post": return { method: "POST", path: base, body: { content: e.content, uuid: e.uuid } };
    case "edit": return { method: "PATCH", path: `${base}/${e.message}`, body: { content: e.content, uuid: e.uuid } };
    case "tag": return {
      method: "POST", path: `${base}/${e.message}/tags`,
      body: { add: e.add || [], remove: e.remove || [], uuid: e.uuid },
    };
    case "delete": return { method: "DELETE", path: `${base}/${e.message}?uuid=${encodeURIComponent(e.uuid)}`, body: null };
    default: throw new TypeError("unknown op " + e.kind);
  }
}

const EVENT_OF_OP = { post: "message", edit: "edit", tag: "tag", delete: "delete" };

/** Whether stored event `e` is the echo of op `entry` (same uuid, flow, kind). */
export function isEchoOf(e, entry) {
  return Boolean(e && entry && e.uuid === entry.uuid && e.flow === entry.flow && EVENT_OF_OP[entry.kind] === e.type);
}

// ---------------------------------------------------------------------------
// Transports: each opens one connection and reports to handlers
//   objects(list)  what arrived, in order
//   bytes()        anything at all arrived (liveness)
//   end(info)      the connection is over: {kind: "ended"} (closed or failed),
//                  {kind: "refused", status, code, retryAfter} (HTTP status),
//                  {kind: "closed", code, reason} (WebSocket close)
// and stops with stop(), after which it reports nothing.

/** What every transport's connection shares: ending once, then telling the client. */
class Connection {
  /** Stop (the subclass's `stop`) and report how the connection ended, once. */
  _end(info) {
    if (this.stopped) return;
    const h = this.ctx.h;
    this.stop();
    h.end(info);
  }
}

class WsConnection extends Connection {
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

// The event names an rt SSE stream uses besides "message" (stored events).
const SSE_NAMES = ["ready", "close", "presence", "typing", "heartbeat", "pong", "ack", "error"];

class SseConnection extends Connection {
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
class FetchStreamConnection extends Connection {
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
async function refusal(res, env) {
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
class PollConnection extends Connection {
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
class JsonpConnection extends Connection {
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
class HtmlFileConnection extends Connection {
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

const CONNECTIONS = {
  ws: (ctx) => new WsConnection(ctx),
  sse: (ctx) => new SseConnection(ctx),
  xhr: (ctx) => new FetchStreamConnection(ctx, "xhr"),
  multipart: (ctx) => new FetchStreamConnection(ctx, "multipart"),
  poll: (ctx) => new PollConnection(ctx),
  jsonp: (ctx) => new JsonpConnection(ctx),
  htmlfile: (ctx) => new HtmlFileConnection(ctx),
};

// WebSocket close codes (PROTOCOL.md section 6) and what they mean here
// when no `close` frame came before them.
const WS_CLOSE_REASONS = {
  1001: "shutdown", 4001: "unauthorized", 4009: "superseded", 4010: "lagging", 4011: "evicted",
};
const WS_REFUSALS = { 4001: 401, 4003: 403, 4004: 404, 4400: 400, 1009: 413, 4029: 429 };

// ---------------------------------------------------------------------------
// The client

class Fatal extends Error {
  /** @param {RtError} error */
  constructor(error) { super(error.message); this.error = error; }
}
class Retry extends Error {
  /** @param {string} message @param {number|null} [delay] */
  constructor(message, delay = null) { super(message); this.delay = delay; }
}

/** The browser's environment, read when a client is made (never at import). */
function defaultEnv() {
  const g = globalThis;
  let storage = null;
  try { storage = g.localStorage ?? null; } catch { storage = null; }
  const hasStreams = typeof g.Response === "function" && typeof g.ReadableStream === "function"
    && "body" in g.Response.prototype;
  return {
    fetch: typeof g.fetch === "function" ? g.fetch.bind(g) : null,
    streamingFetch: hasStreams,
    XMLHttpRequest: g.XMLHttpRequest ?? null,
    WebSocket: g.WebSocket ?? null,
    EventSource: g.EventSource ?? null,
    document: g.document ?? null,
    location: g.location ?? null,
    window: g.window ?? null,
    root: g,
    crypto: g.crypto ?? null,
    storage,
    now: () => Date.now(),
    random: Math.random,
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (id) => g.clearTimeout(id),
    setInterval: (fn, ms) => g.setInterval(fn, ms),
    clearInterval: (id) => g.clearInterval(id),
  };
}

/** Where on a page a jsonp/htmlfile callback registry lives: one per global object. */
const REGISTRIES = new WeakMap();
function registryFor(root) {
  let r = REGISTRIES.get(root);
  if (!r) { r = new CallbackRegistry(root); REGISTRIES.set(root, r); }
  return r;
}

/**
 * One page's connection to an rt server: history, one stream on one of the
 * seven transports with fallback and resumption, the outbox, the timelines.
 * Made by `connect(options)`.
 */
export class Client {
  /**
   * @param {ConnectOptions} options
   * @param {Object} [env]  the environment (tests inject fakes; default: the browser's)
   */
  constructor(options, env) {
    const opts = options || /** @type {any} */ ({});
    this._env = { ...defaultEnv(), ...(env || {}) };
    const env_ = this._env;
    const base = opts.url ?? env_.location?.origin;
    if (typeof base !== "string" || !/^https?:\/\//i.test(base)) throw new TypeError("connect: url must be the server's http(s) base URL");
    if (typeof opts.token !== "string" || !opts.token) throw new TypeError("connect: token is required");
    const flows = opts.flows ?? [];
    checkFlows(flows);
    const transport = opts.transport ?? "auto";
    if (transport !== "auto" && !TRANSPORTS.includes(transport)) throw new TypeError("connect: unknown transport " + transport);
    const history = opts.history ?? 50;
    if (!Number.isInteger(history) || history < 0 || history > 500) throw new TypeError("connect: history must be an integer 0..500");

    this._url = base.replace(/\/+$/, "");
    this._token = opts.token;
    this._flows = [...new Set(flows)];
    this._mode = transport;
    this._history = history;
    this._storage = opts.storage === undefined ? env_.storage : opts.storage;

    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    this._state = "connecting";
    this._clientId = makeClientId(env_.crypto);
    this._me = null;
    this._meSettled = false;
    this._meWaiters = [];
    this._cursor = null;
    this._epoch = null;
    this._loaded = new Set();
    this._presence = new Map();
    this._timeline = new Timeline();
    this._outbox = new Outbox();
    this._handles = new Map();
    this._uuidIds = new Map();
    this._backoff = new Backoff({ random: env_.random });
    this._tIndex = 0;
    this._transport = this._candidates()[0] ?? (transport === "auto" ? TRANSPORTS[0] : transport);
    this._gen = 0;
    this._conn = null;
    this._interrupt = null;
    this._wake = null;
    this._outboxWake = null;
    this._running = false;
    this._closed = false;
    this._everOpen = false;
    this._unauthorizedRefusals = 0;
    this._resetsInRow = 0;
    this._older = new Map();
    this._touched = new Set();
    this._flushQueued = false;
    this._seq = 0;

    this._onOnline = () => {
      // Back online: reconnect and resend now rather than after the backoff.
      for (const e of this._outbox.entries()) e.notBefore = 0;
      this._wakeUp();
    };
    env_.window?.addEventListener?.("online", this._onOnline);

    // Start after the caller had the chance to add listeners.
    Promise.resolve().then(() => {
      if (this._closed) return;
      this._start();
      this._runOutbox().catch((err) => this._emitError(asRtError(err)));
    });
  }

  // -- public surface (PROTOCOL.md section 7) ---------------------------------

  /** The transport in use now (or being tried). */
  get transport() { return this._transport; }
  /** The last stored id processed (null before the history is loaded). */
  get cursor() { return this._cursor; }
  /** "connecting" | "open" | "reconnecting" | "offline" */
  get state() { return this._state; }

  /**
   * Listen to "event", "presence", "typing", "state", "reset", "error" or
   * "timeline". Returns a function that removes the listener.
   * @param {string} name
   * @param {Function} fn
   * @returns {() => void}
   */
  on(name, fn) {
    if (typeof fn !== "function") throw new TypeError("on: fn must be a function");
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => { this._listeners.get(name)?.delete(fn); };
  }

  /**
   * Post `content` to `flow`. Returns at once; `done` resolves with the
   * stored message event.
   * @param {string} flow
   * @param {string} content
   * @returns {PendingOp}
   */
  post(flow, content) {
    checkFlow(flow);
    if (typeof content !== "string") throw new TypeError("post: content must be a string");
    return this._enqueue({ kind: "post", flow, content });
  }
  /**
   * Edit message `id` (or the pending post with that uuid).
   * @param {string} flow @param {number|string} id @param {string} content
   * @returns {PendingOp}
   */
  edit(flow, id, content) {
    checkFlow(flow);
    checkTarget(id);
    if (typeof content !== "string") throw new TypeError("edit: content must be a string");
    return this._enqueue({ kind: "edit", flow, message: id, content });
  }
  /** Add tags. @param {string} flow @param {number|string} id @param {string[]} tags @returns {PendingOp} */
  tag(flow, id, tags) {
    checkFlow(flow);
    checkTarget(id);
    checkTags(tags);
    return this._enqueue({ kind: "tag", flow, message: id, add: [...tags], remove: [] });
  }
  /** Remove tags. @param {string} flow @param {number|string} id @param {string[]} tags @returns {PendingOp} */
  untag(flow, id, tags) {
    checkFlow(flow);
    checkTarget(id);
    checkTags(tags);
    return this._enqueue({ kind: "tag", flow, message: id, add: [], remove: [...tags] });
  }
  /** Delete a message. @param {string} flow @param {number|string} id @returns {PendingOp} */
  remove(flow, id) {
    checkFlow(flow);
    checkTarget(id);
    return this._enqueue({ kind: "delete", flow, message: id });
  }

  /**
   * The messages of `flow` in id order with their state, pending posts last.
   * @param {string} flow
   * @returns {MessageView[]}
   */
  timeline(flow) { return this._timeline.list(flow, this._me); }

  /**
   * Load one more page of history before the oldest message held.
   * @param {string} flow
   * @returns {Promise<Object[]>} the message states loaded (empty: no more)
   */
  loadOlder(flow) {
    checkFlow(flow);
    if (!this._flows.includes(flow)) return Promise.reject(new RtError("not_found", `not following ${flow}`, { flow }));
    const running = this._older.get(flow);
    if (running) return running;
    const p = this._loadOlder(flow).finally(() => this._older.delete(flow));
    this._older.set(flow, p);
    return p;
  }

  /**
   * Follow these flows from now on (history is loaded for the new ones).
   * @param {string[]} flows
   */
  setFlows(flows) {
    checkFlows(flows);
    const next = [...new Set(flows)];
    for (const f of this._flows) {
      if (!next.includes(f)) {
        this._loaded.delete(f);
        this._timeline.clear(f);
        this._presence.delete(f);
        this._touch(f);
      }
    }
    this._flows = next;
    this._restart();
  }

  /**
   * Switch to `name` now ("auto" for automatic fallback), resuming from rt.cursor.
   * @param {string} name
   */
  setTransport(name) {
    if (name !== "auto" && !TRANSPORTS.includes(name)) throw new TypeError("setTransport: unknown transport " + name);
    this._mode = name;
    this._tIndex = 0;
    this._transport = this._candidates()[0] ?? name;
    this._restart();
  }

  /** Close the stream and stop sending (the outbox stays stored for the next page). */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._kick();
    this._outboxWake?.();
    this._env.window?.removeEventListener?.("online", this._onOnline);
    for (const fn of this._meWaiters) fn();
    this._meWaiters = [];
    this._setState("offline");
  }

  // -- events ------------------------------------------------------------------

  _emit(name, arg) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(arg); } catch (err) { this._env.setTimeout(() => { throw err; }, 0); }
    }
  }
  _emitError(err) { this._emit("error", err); }
  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit("state", s);
  }
  /** Queue a "timeline" event for `flow` (coalesced per task). */
  _touch(flow) {
    if (!flow) return;
    this._touched.add(flow);
    if (this._flushQueued) return;
    this._flushQueued = true;
    queueMicrotask(() => {
      this._flushQueued = false;
      const flows = [...this._touched];
      this._touched.clear();
      for (const f of flows) this._emit("timeline", f);
    });
  }

  // -- the connection loop -------------------------------------------------------

  _candidates() {
    if (this._mode !== "auto") return [this._mode];
    return TRANSPORTS.filter((t) => this._supports(t));
  }
  _supports(t) {
    const e = this._env;
    switch (t) {
      case "ws": return typeof e.WebSocket === "function";
      case "sse": return typeof e.EventSource === "function";
      case "xhr":
      case "multipart": return Boolean((e.fetch && e.streamingFetch) || e.XMLHttpRequest);
      case "poll": return Boolean(e.fetch);
      case "jsonp": return Boolean(e.document);
      case "htmlfile": return Boolean(e.document && this._sameOrigin());
      default: return false;
    }
  }
  _sameOrigin() {
    try { return new URL(this._url).origin === this._env.location?.origin; } catch { return false; }
  }

  _restart() {
    if (this._closed) return;
    this._kick();
    if (!this._running) {
      if (this._state === "offline") this._setState(this._everOpen ? "reconnecting" : "connecting");
      this._start();
    }
  }
  _kick() {
    this._gen++;
    const interrupt = this._interrupt;
    this._interrupt = null;
    interrupt?.();
    this._wakeUp();
  }
  _wakeUp() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
    this._outboxWake?.();
  }
  _start() {
    if (this._running || this._closed) return;
    this._running = true;
    this._main()
      .catch((err) => { if (!this._closed) this._fatal(asRtError(err)); })
      .finally(() => { this._running = false; });
  }
  _sleep(ms) {
    return new Promise((resolve) => {
      const id = this._env.setTimeout(() => { this._wake = null; resolve(); }, ms);
      this._wake = () => { this._env.clearTimeout(id); resolve(); };
    });
  }
  _fatal(error) {
    this._emitError(error);
    this._setState("offline");
  }

  async _main() {
    while (!this._closed) {
      const gen = this._gen;
      let delay = 0;
      try {
        await this._whoami();
        if (gen !== this._gen) continue;
        await this._loadHistory();
        if (gen !== this._gen) continue;
        if (!this._flows.length) { this._setState("offline"); return; }
        const candidates = this._candidates();
        if (!candidates.length || (this._mode !== "auto" && !this._supports(this._mode))) {
          throw new Fatal(new RtError("unsupported", `transport ${this._mode} is not available here`));
        }
        if (this._tIndex >= candidates.length) this._tIndex = 0;
        const name = candidates[this._tIndex];
        this._transport = name;
        const outcome = await this._stream(name, gen);
        delay = await this._after(outcome, name);
      } catch (err) {
        if (this._closed) return;
        if (err instanceof Fatal) { this._fatal(err.error); return; }
        if (gen !== this._gen) continue;
        delay = err instanceof Retry && err.delay !== null ? err.delay : this._backoff.next();
      }
      if (this._closed) return;
      if (delay === null) return; // went offline
      if (gen === this._gen && delay > 0) {
        if (this._state === "open") this._setState("reconnecting");
        await this._sleep(delay);
      }
    }
  }

  /** What to do after a stream ended: the delay before the next, or null to stop. */
  async _after(o, name) {
    const env = this._env;
    if (this._closed) return null;
    this._backoff.closed(env.now());
    // A rotation or an SSE refresh is routine: the state stays "open" unless
    // the next stream fails to come up.
    const routine = o.kind === "refresh" || (o.kind === "close" && o.reason === "rotate");
    if (!routine && this._state === "open") this._setState("reconnecting");
    switch (o.kind) {
      case "interrupted":
      case "refresh":
        return 0;
      case "close":
        return this._afterClose(o.reason, o.retry_ms);
      case "reset": {
        this._resetsInRow++;
        this._reset();
        return this._resetsInRow > 1 ? this._backoff.next() : 0;
      }
      case "refused":
        return this._afterRefusal(o, name);
      case "ended":
        if (o.code !== undefined && WS_CLOSE_REASONS[o.code] && o.ready) {
          return this._afterClose(WS_CLOSE_REASONS[o.code], null);
        }
        if (o.code !== undefined && !o.ready && WS_REFUSALS[o.code]) {
          return this._afterRefusal({ kind: "refused", status: WS_REFUSALS[o.code], code: o.reason || null }, name);
        }
        if (o.ready) return this._backoff.next();
        return this._afterFailure(name);
      case "failed":
        return this._afterFailure(name);
      default:
        return this._backoff.next();
    }
  }

  _afterClose(reason, retryMs) {
    const random = this._env.random;
    switch (reason) {
      case "rotate": return 0;
      case "lagging": return typeof retryMs === "number" ? retryMs : random() * 1000;
      case "shutdown": return typeof retryMs === "number" ? retryMs : 1000 + random() * 4000;
      case "superseded":
        // Someone else claimed this client id: never come back with it.
        this._clientId = makeClientId(this._env.crypto);
        return this._backoff.next();
      case "evicted":
        this._clientId = makeClientId(this._env.crypto);
        this._fatal(new RtError("evicted", "this user has too many streams open; this one was closed"));
        return null;
      case "unauthorized":
        this._fatal(new RtError("unauthorized", "the token was revoked or lost access to a flow", { status: 401 }));
        return null;
      default:
        return this._backoff.next();
    }
  }

  async _afterRefusal(o, name) {
    const status = o.status;
    if (status === 401) {
      this._unauthorizedRefusals++;
      if (this._unauthorizedRefusals >= 3) {
        this._fatal(new RtError("unauthorized", "the server refuses this token", { status }));
        return null;
      }
      return 0; // a fresh ticket next time
    }
    if (status === 429 || status === 503) return o.retryAfter ?? this._backoff.next();
    if ((status === 400 || status === 403 || status === 404) && o.code) {
      this._fatal(new RtError(o.code, o.message || `the stream was refused (${status})`, { status }));
      return null;
    }
    return this._afterFailure(name);
  }

  /** The transport failed: demote it if the server answers /health, else back off. */
  async _afterFailure(name) {
    const healthy = await this._health();
    if (healthy && this._mode === "auto") {
      const candidates = this._candidates();
      this._tIndex += 1;
      if (this._tIndex >= candidates.length) { this._tIndex = 0; return this._backoff.next(); }
      this._transport = candidates[this._tIndex];
      return 0;
    }
    return this._backoff.next();
  }

  async _health() {
    try {
      const r = await this._request("GET", "/health", null, { auth: false, timeout: HEALTH_TIMEOUT_MS });
      return r.status === 200 && r.json?.status === "ok";
    } catch {
      return false;
    }
  }

  _reset() {
    this._emit("reset");
    for (const f of this._timeline.flowNames()) this._touch(f);
    this._timeline.clear();
    this._loaded.clear();
    this._cursor = null;
    this._epoch = null;
  }

  /** Open one connection on `name` and wait for how it ends. */
  async _stream(name, gen) {
    const ticket = await this._ticket();
    if (gen !== this._gen || this._closed) return { kind: "interrupted" };
    const env = this._env;
    const polling = POLLING.has(name);
    const conn = { name, ready: false, finished: false, heartbeatMs: 15000, pollTimeoutMs: 25000 };
    const dog = new Watchdog({ silentMs: 37500 });
    return new Promise((resolve) => {
      let impl = null;
      let ticker = null;
      const finish = (outcome) => {
        if (conn.finished) return;
        conn.finished = true;
        if (ticker !== null) env.clearInterval(ticker);
        impl?.stop();
        if (this._conn === conn) this._conn = null;
        if (this._interrupt === interrupt) this._interrupt = null;
        resolve({ ...outcome, ready: conn.ready });
      };
      const interrupt = () => finish({ kind: "interrupted" });
      conn.finish = finish;
      this._conn = conn;
      this._interrupt = interrupt;
      const h = {
        objects: (objs) => { if (!conn.finished) this._onObjects(conn, objs, impl, dog); },
        bytes: () => { if (!conn.finished) dog.bytes(env.now()); },
        end: (info) => {
          if (conn.finished) return;
          if (info.kind === "closed") finish({ kind: "ended", code: info.code, reason: info.reason });
          else finish(info);
        },
      };
      const url = (extra = {}) => this._streamUrl(name, ticket, extra);
      impl = CONNECTIONS[name]({ env, h, url, registry: registryFor(env.root) });
      dog.start(env.now());
      ticker = env.setInterval(() => {
        if (conn.finished) return;
        const now = env.now();
        if (conn.ready) this._backoff.check(now);
        const verdict = dog.tick(now);
        if (!verdict) return;
        if (verdict === "silent" && name === "sse") finish({ kind: "refresh" });
        else finish({ kind: "failed", why: verdict });
      }, TICK_MS);
      try {
        impl.start();
      } catch (err) {
        finish({ kind: "failed", why: "start", error: err });
      }
    });
  }

  _streamUrl(name, ticket, extra) {
    const q = [
      "flows=" + this._flows.map(encodeURIComponent).join(","),
      "client=" + encodeURIComponent(this._clientId),
      "ticket=" + encodeURIComponent(ticket),
      "v=1",
    ];
    if (this._cursor !== null && this._epoch !== null) {
      q.push("cursor=" + this._cursor, "epoch=" + encodeURIComponent(this._epoch));
    }
    if (extra.callback) q.push("callback=" + extra.callback);
    let base = this._url;
    if (name === "ws") base = base.replace(/^http/i, "ws");
    return `${base}/stream/${name}?${q.join("&")}`;
  }

  _onObjects(conn, objs, impl, dog) {
    const env = this._env;
    if (!conn.ready && POLLING.has(conn.name) && this._lastReady && this._cursor !== null &&
        this._epoch !== null && !(objs.length && objs[0].type === "ready")) {
      // A poll with our cursor and epoch continued the server's polling session
      // (PROTOCOL.md 3.2: no new `ready`): the view is still gap-free from our cursor.
      const presence = {};
      for (const [flow, users] of this._presence) presence[flow] = [...users];
      this._onReady(conn, { ...this._lastReady, cursor: this._cursor, epoch: this._epoch,
        reset: false, presence }, impl, dog);
    }
    for (const obj of objs) {
      if (conn.finished) return;
      const type = obj.type;
      if (type === "ready") {
        this._onReady(conn, obj, impl, dog);
        continue;
      }
      if (type === "close") {
        conn.finish({ kind: "close", reason: obj.reason, retry_ms: obj.retry_ms });
        return;
      }
      if (!conn.ready) continue;
      if (typeof obj.id === "number") { this._onStored(obj); continue; }
      if (type === "presence") { this._onPresence(obj); continue; }
      if (type === "typing") { this._emit("typing", obj); continue; }
      if (type === "error") {
        this._emitError(new RtError(obj.code || "internal", obj.message || "stream error", { retry: obj.retry }));
        continue;
      }
      // heartbeat, pong, ack and unknown types: nothing (liveness is counted by bytes)
    }
    dog.bytes(env.now());
  }

  _onReady(conn, r, impl, dog) {
    const env = this._env;
    const now = env.now();
    if (r.reset || (this._epoch !== null && r.epoch !== this._epoch)) {
      conn.ready = true;
      conn.finish({ kind: "reset" });
      return;
    }
    conn.ready = true;
    this._lastReady = r;
    if (this._cursor === null && typeof r.cursor === "number") this._cursor = r.cursor;
    if (this._epoch === null) this._epoch = r.epoch;
    conn.heartbeatMs = Math.max(1, Number(r.heartbeat) || 15) * 1000;
    conn.pollTimeoutMs = Math.max(1, Number(r.poll_timeout) || 25) * 1000;
    dog.silentMs = POLLING.has(conn.name) ? conn.pollTimeoutMs + 5000 : 2.5 * conn.heartbeatMs;
    dog.opened(now);
    this._backoff.opened(now);
    this._unauthorizedRefusals = 0;
    this._resetsInRow = 0;
    this._everOpen = true;
    impl?.ready(r);
    // presence snapshot, taken with the subscription
    const snapshot = isObject(r.presence) ? r.presence : {};
    for (const flow of this._flows) {
      const users = new Set(Array.isArray(snapshot[flow]) ? snapshot[flow] : []);
      this._presence.set(flow, users);
      this._emit("presence", { type: "presence", flow, users: [...users].sort(), snapshot: true });
    }
    this._setState("open");
    // The server answers again: an op waiting out a network error's backoff goes now
    // (ops waiting for a Retry-After keep waiting; the uuid makes a resend safe).
    const waiting = this._outbox.first();
    if (waiting && waiting.networkRetry) {
      waiting.notBefore = 0;
      waiting.networkRetry = false;
      this._outboxWake?.();
    }
  }

  _onPresence(p) {
    if (!this._flows.includes(p.flow)) return;
    let users = this._presence.get(p.flow);
    if (!users) { users = new Set(); this._presence.set(p.flow, users); }
    if (p.state === "online") users.add(p.user);
    else if (p.state === "offline") users.delete(p.user);
    this._emit("presence", { ...p, users: [...users].sort() });
  }

  /** A stored event from the stream: dedupe by id, apply, settle its op, emit. */
  _onStored(e) {
    if (this._cursor !== null && e.id <= this._cursor) {
      this._matchEcho(e);
      return;
    }
    this._cursor = e.id;
    const fresh = this._flows.includes(e.flow) && this._timeline.admit(e);
    if (fresh && this._timeline.apply(e)) this._touch(e.flow);
    this._matchEcho(e);
    if (fresh) this._emit("event", e);
  }

  _matchEcho(e) {
    const entry = this._outbox.get(e.uuid);
    if (!entry || !isEchoOf(e, entry)) return;
    if (this._me !== null && e.user !== this._me) return;
    this._settleOp(entry, e);
  }

  // -- HTTP --------------------------------------------------------------------

  /**
   * @returns {Promise<{status: number, json: any, headers: Headers}>}  throws on network errors
   */
  async _request(method, path, body, opts = {}) {
    const env = this._env;
    if (!env.fetch) throw new Error("fetch is not available");
    const headers = {};
    if (opts.auth !== false) headers.Authorization = "Bearer " + this._token;
    if (body !== null && body !== undefined) headers["Content-Type"] = "application/json";
    const controller = new AbortController();
    const timer = env.setTimeout(() => controller.abort(), opts.timeout ?? HTTP_TIMEOUT_MS);
    try {
      const res = await env.fetch(this._url + path, {
        method, headers, body: body === null || body === undefined ? undefined : JSON.stringify(body),
        signal: controller.signal, cache: "no-store", credentials: "omit",
      });
      let json = null;
      const text = await res.text();
      if (text) { try { json = JSON.parse(text); } catch { json = null; } }
      return { status: res.status, json, headers: res.headers };
    } finally {
      env.clearTimeout(timer);
    }
  }

  _errorOf(r, what, extra = {}) {
    const code = r.json?.error?.code ?? (r.status >= 500 ? "internal" : "http_" + r.status);
    const message = r.json?.error?.message ?? `${what}: HTTP ${r.status}`;
    return new RtError(code, message, {
      status: r.status, retry: classifyStatus(r.status) === "retry",
      retryAfter: parseRetryAfter(r.headers?.get?.("Retry-After"), this._env.now()), ...extra,
    });
  }

  async _whoami() {
    if (this._me !== null) return;
    let r;
    try { r = await this._request("GET", "/me", null); } catch { throw new Retry("GET /me failed"); }
    if (r.status === 200 && typeof r.json?.user === "string") {
      this._me = r.json.user;
      this._bindOutbox();
      this._settleMe();
      return;
    }
    if (r.status === 401) {
      this._settleMe();
      throw new Fatal(this._errorOf(r, "GET /me"));
    }
    throw new Retry("GET /me: HTTP " + r.status, parseRetryAfter(r.headers?.get?.("Retry-After"), this._env.now()));
  }
  _settleMe() {
    this._meSettled = true;
    for (const fn of this._meWaiters) fn();
    this._meWaiters = [];
  }

  async _ticket() {
    let r;
    try { r = await this._request("POST", "/auth/ticket", { client: this._clientId }); } catch { throw new Retry("POST /auth/ticket failed"); }
    if (r.status === 200 && typeof r.json?.ticket === "string") return r.json.ticket;
    if (r.status === 401) throw new Fatal(this._errorOf(r, "POST /auth/ticket"));
    throw new Retry("POST /auth/ticket: HTTP " + r.status, parseRetryAfter(r.headers?.get?.("Retry-After"), this._env.now()));
  }

  /** Load the newest `history` messages of every followed flow not loaded yet. */
  async _loadHistory() {
    const missing = this._flows.filter((f) => !this._loaded.has(f));
    if (!missing.length) return;
    const limit = Math.max(1, this._history);
    const results = await Promise.all(missing.map(async (flow) => {
      try {
        return { flow, r: await this._request("GET", `/flows/${encodeURIComponent(flow)}/messages?limit=${limit}`, null) };
      } catch (err) {
        return { flow, err };
      }
    }));
    const pages = [];
    let retry = null;
    for (const { flow, r, err } of results) {
      if (err) { retry = new Retry("history of " + flow + " failed"); continue; }
      if (r.status === 200 && r.json && typeof r.json.cursor === "number") { pages.push({ flow, page: r.json }); continue; }
      if (r.status === 401) throw new Fatal(this._errorOf(r, "history"));
      if (r.status === 400 || r.status === 403 || r.status === 404) {
        // This flow cannot be followed: drop it, go on with the others.
        this._flows = this._flows.filter((f) => f !== flow);
        this._emitError(this._errorOf(r, "history of " + flow, { flow }));
        continue;
      }
      retry = new Retry("history of " + flow + ": HTTP " + r.status,
        parseRetryAfter(r.headers?.get?.("Retry-After"), this._env.now()));
    }
    const epochs = new Set(pages.map((p) => p.page.epoch));
    if (this._epoch !== null) epochs.add(this._epoch);
    if (epochs.size > 1) {
      // The log changed under us (a restore): drop everything and start over.
      const held = this._epoch !== null;
      if (held) this._reset();
      throw new Retry("epochs differ", held ? 0 : null);
    }
    for (const { flow, page } of pages) {
      if (!this._flows.includes(flow)) continue;
      const states = this._history > 0 ? (page.messages || []) : [];
      this._timeline.load(flow, states, page.cursor);
      this._loaded.add(flow);
      if (this._epoch === null) this._epoch = page.epoch;
      if (this._cursor === null || page.cursor < this._cursor) this._cursor = page.cursor;
      this._touch(flow);
    }
    if (retry) throw retry;
  }

  async _loadOlder(flow) {
    const oldest = this._timeline.oldest(flow);
    const floor = this._timeline.floor(flow);
    const before = oldest !== null ? oldest : floor >= 0 ? floor + 1 : null;
    if (before !== null && before <= 1) return [];
    const limit = Math.max(1, this._history || 50);
    const q = before === null ? `limit=${limit}` : `before=${before}&limit=${limit}`;
    const r = await this._request("GET", `/flows/${encodeURIComponent(flow)}/messages?${q}`, null);
    if (r.status !== 200 || !r.json) throw this._errorOf(r, "loadOlder " + flow, { flow });
    if (this._epoch !== null && r.json.epoch !== this._epoch) {
      this._restartAfterReset();
      return [];
    }
    if (!this._flows.includes(flow)) return [];
    const added = this._timeline.load(flow, r.json.messages || [], r.json.cursor, { floor: false });
    if (added.length) this._touch(flow);
    return added;
  }
  _restartAfterReset() {
    this._reset();
    this._restart();
  }

  // -- the outbox ----------------------------------------------------------------

  _bindOutbox() {
    let found = [];
    try {
      found = this._outbox.bind(this._storage, outboxKey(this._url, this._me));
    } catch {
      found = [];
    }
    for (const entry of found) {
      this._timeline.addPending(entry);
      this._handleFor(entry);
      this._touch(entry.flow);
    }
  }

  _enqueue(fields) {
    if (this._closed) throw new Error("rt: the client is closed");
    const env = this._env;
    const entry = { uuid: makeUuid(env.crypto), ...fields, created: env.now(), seq: ++this._seq };
    this._outbox.add(entry);
    this._timeline.addPending(entry);
    const handle = this._handleFor(entry);
    this._touch(entry.flow);
    this._outboxWake?.();
    return handle;
  }

  _handleFor(entry) {
    const existing = this._handles.get(entry.uuid);
    if (existing) return existing.handle;
    let resolve;
    let reject;
    const done = new Promise((a, b) => { resolve = a; reject = b; });
    done.catch(() => {}); // failures are also emitted as "error"
    const handle = { uuid: entry.uuid, flow: entry.flow, pending: true, done };
    for (const k of ["content", "message", "add", "remove"]) if (entry[k] !== undefined) handle[k] = entry[k];
    this._handles.set(entry.uuid, { handle, resolve, reject });
    return handle;
  }

  _settleOp(entry, result) {
    if (entry.settled) return;
    entry.settled = true;
    const id = entry.kind === "post" && typeof result?.id === "number" ? result.id : undefined;
    if (id !== undefined) this._uuidIds.set(entry.uuid, id);
    this._outbox.complete(entry.uuid, id);
    const stored = result && typeof result.id === "number" && typeof result.type === "string" ? result : null;
    this._timeline.settle(entry.uuid, stored);
    this._touch(entry.flow);
    const h = this._handles.get(entry.uuid);
    this._handles.delete(entry.uuid);
    if (h) { h.handle.pending = false; h.resolve(result); }
  }

  _failOp(entry, error) {
    if (entry.settled) return;
    entry.settled = true;
    this._outbox.complete(entry.uuid);
    this._timeline.settle(entry.uuid, null);
    this._touch(entry.flow);
    const h = this._handles.get(entry.uuid);
    this._handles.delete(entry.uuid);
    if (h) { h.handle.pending = false; h.reject(error); }
    this._emitError(error);
    if (entry.kind === "post") {
      for (const dep of this._outbox.dependents(entry.uuid)) {
        this._failOp(dep, new RtError("not_found", "the message this op aimed at could not be posted",
          { flow: dep.flow, uuid: dep.uuid, op: dep.kind }));
      }
    }
  }

  _waitOutbox(ms) {
    return new Promise((resolve) => {
      const id = ms === null ? null : this._env.setTimeout(() => { this._outboxWake = null; resolve(); }, ms);
      this._outboxWake = () => { this._outboxWake = null; if (id !== null) this._env.clearTimeout(id); resolve(); };
    });
  }

  /** Send ops one at a time, oldest first, each retried with its uuid while its error says retry. */
  async _runOutbox() {
    if (!this._meSettled) await new Promise((resolve) => this._meWaiters.push(resolve));
    const env = this._env;
    while (!this._closed) {
      const entry = this._outbox.first();
      if (!entry) { await this._waitOutbox(null); continue; }
      const wait = (entry.notBefore ?? 0) - env.now();
      if (wait > 0) { await this._waitOutbox(wait); continue; }
      await this._sendOp(entry);
    }
  }

  async _sendOp(entry) {
    const env = this._env;
    if (entry.kind !== "post" && typeof entry.message === "string") {
      const id = this._uuidIds.get(entry.message) ?? this._timeline.idForUuid(entry.flow, entry.message);
      if (id === null || id === undefined) {
        this._failOp(entry, new RtError("not_found", `no message with uuid ${entry.message} here`,
          { flow: entry.flow, uuid: entry.uuid, op: entry.kind }));
        return;
      }
      entry.message = id;
      this._outbox.update();
    }
    const req = opRequest(entry);
    let r;
    try {
      r = await this._request(req.method, req.path, req.body, { timeout: OP_TIMEOUT_MS });
    } catch {
      r = null; // a network error: the op may or may not have been stored; the uuid makes retrying safe
    }
    if (entry.settled || this._closed) return;
    const status = r ? r.status : 0;
    const verdict = classifyStatus(status);
    if (verdict === "ok") { this._settleOp(entry, r.json); return; }
    if (verdict === "retry") {
      entry.attempts = (entry.attempts ?? 0) + 1;
      const after = r ? parseRetryAfter(r.headers?.get?.("Retry-After"), env.now()) : null;
      entry.notBefore = env.now() + retryDelay(after, entry.attempts, env.random);
      entry.networkRetry = !r; // a stream coming back is worth a try before the backoff ends
      return;
    }
    this._failOp(entry, this._errorOf(r, `${entry.kind} in ${entry.flow}`, { flow: entry.flow, uuid: entry.uuid, op: entry.kind }));
  }
}

function asRtError(err) {
  if (err instanceof RtError) return err;
  if (err instanceof Fatal) return err.error;
  return new RtError("internal", String(err?.message ?? err));
}

function checkFlow(flow) {
  if (!isFlow(flow)) throw new TypeError(`not a flow name: ${JSON.stringify(flow)}`);
}
function checkFlows(flows) {
  if (!Array.isArray(flows)) throw new TypeError("flows must be an array of flow names");
  for (const f of flows) checkFlow(f);
}
function checkTarget(id) {
  if (Number.isInteger(id) && id > 0) return;
  if (isUuid(id)) return;
  throw new TypeError(`not a message id or a pending message's uuid: ${JSON.stringify(id)}`);
}
function checkTags(tags) {
  if (!Array.isArray(tags) || !tags.length || !tags.every((t) => typeof t === "string" && t.length)) {
    throw new TypeError("tags must be a non-empty array of strings");
  }
}

/**
 * Connect to an rt server (PROTOCOL.md section 7).
 * @param {ConnectOptions} options
 * @returns {Client}
 */
export function connect(options) {
  return new Client(options);
}
