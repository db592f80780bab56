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

export function byCreation(a, b) {
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
