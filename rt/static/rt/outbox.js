// Outbox: ops waiting to be stored, kept in storage so a reload resends
// them with the same uuids.

import { isUuid } from "./ids.js";
import { byCreation } from "./timeline.js";

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
