// Backoff, watchdog and retry rules

import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, HEALTHY_MS, READY_TIMEOUT_MS, TICK_MS } from "./constants.js";

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
