// The client: `Client` and `connect`, the browser glue over the pure parts (PROTOCOL.md 7).

import { HEALTH_TIMEOUT_MS, HTTP_TIMEOUT_MS, OP_TIMEOUT_MS, POLLING, TICK_MS, TRANSPORTS } from "./constants.js";
import { RtError } from "./errors.js";
import { isFlow, isUuid, makeClientId, makeUuid } from "./ids.js";
import { Outbox, isEchoOf, opRequest, outboxKey } from "./outbox.js";
import { CallbackRegistry, isObject } from "./parsers.js";
import { Backoff, Watchdog, classifyStatus, parseRetryAfter, retryDelay } from "./retry.js";
import { Timeline } from "./timeline.js";
import { CONNECTIONS, WS_CLOSE_REASONS, WS_REFUSALS } from "./transports/index.js";

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
