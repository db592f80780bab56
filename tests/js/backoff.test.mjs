// Reconnection backoff, the wall-clock watchdog, and the retry rules of ops.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BACKOFF_CAP_MS, Backoff, HEALTHY_MS, Watchdog, backoffDelay, classifyStatus, isClientId, isUuid,
  makeClientId, makeUuid, parseRetryAfter, retryDelay,
} from "../../rt/static/rt.js";

test("backoffDelay: random(0, min(30 s, 0.5 s × 2^n)) for n = 0..10", () => {
  const expectedMax = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000];
  for (let n = 0; n <= 10; n++) {
    assert.equal(backoffDelay(n, () => 0), 0, `n=${n} random 0`);
    assert.equal(backoffDelay(n, () => 1), expectedMax[n], `n=${n} random 1`);
    const mid = backoffDelay(n, () => 0.5);
    assert.ok(mid >= 0 && mid <= expectedMax[n]);
  }
  assert.equal(backoffDelay(1000, () => 1), BACKOFF_CAP_MS); // no overflow
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3);
    assert.ok(d >= 0 && d < 4000);
  }
});

test("Backoff counts failures and resets after 30 s of a healthy stream", () => {
  const b = new Backoff({ random: () => 1 });
  assert.deepEqual([b.next(), b.next(), b.next()], [500, 1000, 2000]);
  assert.equal(b.n, 3);
  // a stream that stayed up 29 s is not healthy enough
  b.opened(0);
  b.closed(HEALTHY_MS - 1);
  assert.equal(b.n, 3);
  assert.equal(b.next(), 4000);
  // 30 s up: back to the first step
  b.opened(100000);
  b.closed(100000 + HEALTHY_MS);
  assert.equal(b.n, 0);
  assert.equal(b.next(), 500);
  // the reset also happens while the stream is still open (check on ticks)
  b.next();
  b.opened(0);
  b.check(HEALTHY_MS);
  assert.equal(b.n, 0);
  b.closed(HEALTHY_MS + 1);
  // closed without having opened: nothing resets
  b.next();
  b.closed(10 ** 9);
  assert.equal(b.n, 1);
});

test("Watchdog: no ready within 5 s; silence of 2.5 heartbeats; wall-clock ticks", () => {
  const d = new Watchdog({ silentMs: 37500 });
  d.start(0);
  let t = 0;
  const tick = (ms) => { t += ms; return d.tick(t); };
  for (let i = 0; i < 5; i++) assert.equal(tick(1000), null);
  assert.equal(tick(1000), "no-ready");

  d.start(0); t = 0;
  tick(1000);
  d.opened(t);
  for (let i = 0; i < 37; i++) assert.equal(tick(1000), null);
  d.bytes(t); // a heartbeat arrives
  for (let i = 0; i < 37; i++) assert.equal(tick(1000), null);
  assert.equal(tick(1000), "silent");
});

test("Watchdog: a late tick (throttled or sleeping tab) grants a grace instead of misfiring", () => {
  const d = new Watchdog({ silentMs: 37500, graceMs: 5000 });
  d.start(0);
  d.opened(0);
  // the tab slept for 10 minutes: the first tick after it is late
  assert.equal(d.tick(600000), null);
  // the bytes held up meanwhile arrive
  d.bytes(600500);
  assert.equal(d.tick(601000), null);
  assert.equal(d.tick(602000), null);
  // but if nothing comes within the grace, the stream is dead
  const e = new Watchdog({ silentMs: 37500, graceMs: 5000 });
  e.start(0);
  e.opened(0);
  assert.equal(e.tick(600000), null);
  let verdict = null;
  for (let t = 601000; t <= 606000 && !verdict; t += 1000) verdict = e.tick(t);
  assert.equal(verdict, "silent");
});

test("Retry-After: seconds or an HTTP date", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(" 0 "), 0);
  const now = Date.parse("Wed, 21 Oct 2026 07:28:00 GMT");
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:28:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:27:00 GMT", now), 0);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter("soon"), null);
});

test("retry classes: 429, 503, 5xx and network errors retry; other 4xx fail", () => {
  for (const s of [200, 201, 204]) assert.equal(classifyStatus(s), "ok");
  for (const s of [0, 429, 500, 502, 503, 504]) assert.equal(classifyStatus(s), "retry", String(s));
  for (const s of [400, 401, 403, 404, 409, 413, 422]) assert.equal(classifyStatus(s), "fail", String(s));
});

test("retry delay: Retry-After when given, else backoff by attempts", () => {
  assert.equal(retryDelay(2000, 1, () => 1), 2000);
  assert.equal(retryDelay(0, 5, () => 1), 0);
  assert.equal(retryDelay(null, 1, () => 1), 500);
  assert.equal(retryDelay(null, 3, () => 1), 2000);
  assert.equal(retryDelay(null, 20, () => 1), 30000);
});

test("ids: client ids and uuids fit their grammars and differ", () => {
  const seen = new Set();
  for (let i = 0; i < 100; i++) {
    const c = makeClientId();
    const u = makeUuid();
    assert.ok(isClientId(c), c);
    assert.ok(isUuid(u), u);
    seen.add(c);
    seen.add(u);
  }
  assert.equal(seen.size, 200);
  // without crypto.randomUUID: random bytes
  const u = makeUuid({ getRandomValues: (a) => globalThis.crypto.getRandomValues(a) });
  assert.ok(isUuid(u) && u.length === 22, u);
  assert.ok(isClientId(makeClientId(undefined)));
});
