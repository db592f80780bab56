// A fake browser for Client tests: a clock whose timers the test advances,
// and a fake rt server behind `fetch` (history, tickets, ops, and xhr /
// poll streams the test writes to). Not a test file itself.
import { Client } from "../../rt/static/rt.js";
import { memoryStorage } from "./fixtures.mjs";

/** Let promise chains and fetch bodies run. */
export async function settle() {
  for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => this._add(fn, ms, null);
    this.setInterval = (fn, ms) => this._add(fn, ms, ms);
    this.clearTimeout = (id) => { this.timers.delete(id); };
    this.clearInterval = (id) => { this.timers.delete(id); };
  }
  _add(fn, ms, every) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, Number(ms) || 0), fn, every });
    return id;
  }
  /** Move time forward by `ms`, running the timers due on the way. */
  async advance(ms = 0) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      const [id, tm] = next;
      this.t = Math.max(this.t, tm.at);
      if (tm.every) tm.at += Math.max(1, tm.every); else this.timers.delete(id);
      tm.fn();
    }
    this.t = end;
    await settle();
  }
}

const json = (obj, status = 200, headers = {}) => new Response(JSON.stringify(obj), {
  status, headers: { "Content-Type": "application/json; charset=utf-8", ...headers },
});
export const errorResponse = (status, code, headers = {}) => json({ error: { code, message: code } }, status, headers);

export const state = (id, flow, content, extra = {}) => ({
  id, flow, user: "bob", sent: 1700000000000 + id, content, tags: [], edited: false, deleted: false, ...extra,
});
export const msg = (id, flow, content, extra = {}) => ({
  id, flow, type: "message", user: "bob", uuid: "uuid-" + String(id).padStart(6, "0"), content, sent: 1700000000000 + id, ...extra,
});

/** A stream the fake server holds open: the test writes objects to it. */
class StreamHandle {
  constructor(req, transport) {
    this.req = req;
    this.transport = transport;
    this.aborted = false;
    this.ended = false;
    const self = this;
    this.body = new ReadableStream({ start(c) { self.controller = c; } });
  }
  get query() { return this.req.query; }
  send(...objs) {
    if (this.transport === "multipart") {
      this.raw(`--B\r\nContent-Type: application/json\r\n\r\n${JSON.stringify(objs)}\r\n`);
    } else {
      this.raw(objs.map((o) => JSON.stringify(o) + "\n").join(""));
    }
  }
  raw(text) { if (!this.ended && !this.aborted) this.controller.enqueue(new TextEncoder().encode(text)); }
  end() { if (!this.ended && !this.aborted) { this.ended = true; this.controller.close(); } }
  abort() {
    this.aborted = true;
    try { this.controller.error(new DOMException("aborted", "AbortError")); } catch { /* closed */ }
  }
}

/** A poll the fake server holds: the test answers it. */
class PollHandle {
  constructor(req) {
    this.req = req;
    this.answered = false;
    this.promise = new Promise((resolve) => { this.resolve = resolve; });
  }
  get query() { return this.req.query; }
  answer(objs) { if (!this.answered) { this.answered = true; this.resolve(json(objs)); } }
}

export class FakeServer {
  constructor() {
    this.epoch = "EpochTest01";
    this.head = 0;
    this.user = "alice";
    this.token = "tok";
    /** message states by flow (history) */
    this.flows = { general: [], random: [] };
    /** cursor a history page reports, by flow (default: head) */
    this.pageCursor = {};
    this.requests = [];
    this.streams = [];
    this.polls = [];
    this.sockets = [];
    this.tickets = 0;
    this.healthy = true;
    /** (req) => Response | Promise<Response> | undefined: ops; undefined = store it */
    this.onOp = null;
    /** (req) => Response | undefined: stream requests; undefined = open it */
    this.onStream = null;
    this.fetch = (url, init = {}) => this._fetch(url, init);
  }
  requestsTo(prefix) { return this.requests.filter((r) => r.path.startsWith(prefix)); }
  get lastStream() { return this.streams[this.streams.length - 1]; }
  get lastPoll() { return this.polls[this.polls.length - 1]; }
  ready(stream, extra = {}) {
    const q = stream.query;
    return {
      type: "ready", protocol: 1, cursor: q.cursor !== undefined ? Number(q.cursor) : this.head, epoch: this.epoch,
      reset: false, flows: q.flows.split(","), client: q.client, transport: stream.transport ?? "poll",
      heartbeat: 15, poll_timeout: 25, presence: {}, ...extra,
    };
  }
  async _fetch(url, init) {
    const u = new URL(url);
    const method = init.method || "GET";
    const req = {
      method, path: u.pathname, query: Object.fromEntries(u.searchParams), url,
      body: typeof init.body === "string" ? JSON.parse(init.body) : null, headers: init.headers || {},
    };
    this.requests.push(req);
    await null;
    if (u.pathname === "/health") {
      if (!this.healthy) throw new TypeError("fetch failed");
      return json({ status: "ok" });
    }
    if (!this.healthy) throw new TypeError("fetch failed");
    if (u.pathname.startsWith("/stream/")) {
      if (req.headers.Authorization) throw new Error("streams must use tickets, not the token");
      const transport = u.pathname.slice("/stream/".length);
      const custom = this.onStream?.(req, transport);
      if (custom) return custom;
      if (transport === "poll") {
        const p = new PollHandle(req);
        this.polls.push(p);
        init.signal?.addEventListener("abort", () => p.answer([]));
        return p.promise;
      }
      const s = new StreamHandle(req, transport);
      this.streams.push(s);
      init.signal?.addEventListener("abort", () => s.abort());
      const type = transport === "multipart" ? 'multipart/x-mixed-replace; boundary="B"' : "application/x-ndjson; charset=utf-8";
      return new Response(s.body, { status: 200, headers: { "Content-Type": type } });
    }
    if (req.headers.Authorization !== "Bearer " + this.token) return errorResponse(401, "unauthorized");
    if (u.pathname === "/me") return json({ user: this.user, flows: Object.keys(this.flows) });
    if (u.pathname === "/auth/ticket") return json({ ticket: "ticket-" + ++this.tickets, expires: 0 });
    const m = /^\/flows\/([^/]+)\/messages(?:\/(\d+))?(\/tags)?$/.exec(u.pathname);
    if (m && method === "GET" && !m[2]) {
      const flow = decodeURIComponent(m[1]);
      if (!this.flows[flow]) return errorResponse(404, "not_found");
      const limit = Number(req.query.limit || 50);
      let list = this.flows[flow];
      if (req.query.before) list = list.filter((s) => s.id < Number(req.query.before));
      return json({ cursor: this.pageCursor[flow] ?? this.head, epoch: this.epoch, messages: list.slice(-limit) });
    }
    if (m) {
      const custom = await this.onOp?.(req);
      if (custom) return custom;
      const id = ++this.head;
      const uuid = req.body?.uuid ?? req.query.uuid;
      const flow = decodeURIComponent(m[1]);
      if (method === "POST" && !m[2]) {
        return json({ id, flow, type: "message", user: this.user, uuid, content: req.body.content, sent: 1 }, 201);
      }
      if (method === "PATCH") return json({ id, flow, type: "edit", user: this.user, uuid, message: Number(m[2]), content: req.body.content, sent: 1 });
      if (m[3]) return json({ id, flow, type: "tag", user: this.user, uuid, message: Number(m[2]), add: req.body.add, remove: req.body.remove, tags: req.body.add, sent: 1 });
      if (method === "DELETE") return json({ id, flow, type: "delete", user: this.user, uuid, message: Number(m[2]), sent: 1 });
    }
    return errorResponse(404, "not_found");
  }
}

/** A WebSocket that connects to nothing (never opens) unless the test says so. */
export function fakeWebSocketClass(server) {
  return class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      server.sockets.push(this);
    }
    send(data) { this.sent.push(data); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen?.({}); }
    message(...objs) { this.onmessage?.({ data: objs.map((o) => JSON.stringify(o)).join("\n") }); }
    serverClose(code, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  };
}

/**
 * A Client on the fake server and clock. Records events in `seen`.
 * @returns {{rt: Client, seen: Record<string, any[]>}}
 */
export function makeClient(server, clock, options = {}, env = {}) {
  const fullEnv = {
    fetch: server.fetch, streamingFetch: true, XMLHttpRequest: null, WebSocket: null, EventSource: null,
    document: null, location: null, window: null, root: {}, crypto: globalThis.crypto,
    storage: memoryStorage(), now: clock.now, random: () => 0.5,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
    setInterval: clock.setInterval, clearInterval: clock.clearInterval,
    ...env,
  };
  const rt = new Client({ url: "http://rt.test", token: "tok", flows: ["general"], transport: "xhr", ...options }, fullEnv);
  const seen = { event: [], state: [], reset: [], error: [], presence: [], typing: [], timeline: [] };
  for (const name of Object.keys(seen)) rt.on(name, (x) => seen[name].push(x));
  return { rt, seen };
}
