// The browser glue (Client) on a fake server and clock: start, dedupe,
// fallback, close reasons, reset, watchdog, transport and flow switches, and
// the outbox's retries end to end.
import { test } from "node:test";
import assert from "node:assert/strict";

import { isClientId, isUuid, outboxKey } from "../../rt/static/rt.js";
import { memoryStorage } from "./fixtures.mjs";
import { FakeClock, FakeServer, errorResponse, fakeWebSocketClass, makeClient, msg, state } from "./harness.mjs";

/** A client on xhr with its stream open (ready sent). */
async function openClient(options = {}, env = {}) {
  const server = new FakeServer();
  const clock = new FakeClock();
  server.flows.general = [state(1, "general", "one"), state(2, "general", "two")];
  server.head = 2;
  const c = makeClient(server, clock, options, env);
  await clock.advance(0);
  const s = server.lastStream;
  if (s) {
    s.send(server.ready(s));
    await clock.advance(0);
  }
  return { server, clock, ...c, stream: s };
}

test("start: history first, then the stream from the smallest page cursor, deduplicated by id", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  server.flows.general = [state(1, "general", "one"), state(2, "general", "two")];
  server.flows.random = [state(3, "random", "three"), state(6, "random", "six")];
  server.pageCursor = { general: 5, random: 6 }; // random's page was read later
  server.head = 6;
  const { rt, seen } = makeClient(server, clock, { flows: ["general", "random"], history: 10 });
  assert.equal(rt.state, "connecting");
  assert.equal(server.requests.length, 0, "nothing happens before the caller's listeners are on");
  await clock.advance(0);
  assert.deepEqual(seen.state, []);
  const paths = server.requests.map((r) => r.method + " " + r.path);
  assert.deepEqual(paths.slice(0, 3), ["GET /me", "GET /flows/general/messages", "GET /flows/random/messages"]);
  assert.equal(server.requests[1].query.limit, "10");
  const s = server.lastStream;
  assert.equal(s.transport, "xhr");
  assert.equal(s.query.cursor, "5");
  assert.equal(s.query.epoch, "EpochTest01");
  assert.equal(s.query.flows, "general,random");
  assert.ok(isClientId(s.query.client));
  assert.match(s.query.ticket, /^ticket-/);
  assert.doesNotMatch(s.req.url, /tok(&|$)/);
  assert.equal(rt.cursor, 5);

  s.send(server.ready(s, { presence: { general: ["bob"], random: [] } }));
  s.send(msg(6, "random", "six")); // already in random's page
  s.send(msg(7, "general", "seven"));
  s.send(msg(7, "general", "seven")); // a duplicate
  await clock.advance(0);
  assert.equal(rt.state, "open");
  assert.deepEqual(seen.state, ["open"]);
  assert.deepEqual(seen.event.map((e) => e.id), [7]);
  assert.equal(rt.cursor, 7);
  assert.deepEqual(rt.timeline("general").map((m) => m.id), [1, 2, 7]);
  assert.deepEqual(rt.timeline("random").map((m) => m.id), [3, 6]);
  assert.deepEqual(seen.presence.map((p) => [p.flow, p.users, p.snapshot]), [["general", ["bob"], true], ["random", [], true]]);
  assert.ok(seen.timeline.includes("general") && seen.timeline.includes("random"));

  s.send({ type: "presence", flow: "random", user: "carol", state: "online" }, { type: "typing", flow: "general", user: "bob" },
    { type: "heartbeat" }, { type: "some-future-frame" });
  await clock.advance(0);
  assert.deepEqual(seen.presence.at(-1).users, ["carol"]);
  assert.deepEqual(seen.typing, [{ type: "typing", flow: "general", user: "bob" }]);
  rt.close();
  assert.equal(rt.state, "offline");
  assert.equal(s.aborted, true);
});

test("post: pending at once, settled by its echo or its ack, never twice", async () => {
  const { server, clock, rt, seen, stream } = await openClient();
  let release;
  server.onOp = () => new Promise((r) => { release = r; });
  const p = rt.post("general", "SUP");
  assert.equal(p.pending, true);
  assert.equal(p.flow, "general");
  assert.equal(p.content, "SUP");
  assert.ok(isUuid(p.uuid));
  await clock.advance(0);
  assert.deepEqual(rt.timeline("general").map((m) => [m.id, m.content, m.pending]), [[1, "one", false], [2, "two", false], [null, "SUP", true]]);
  const post = server.requestsTo("/flows/general/messages").at(-1);
  assert.equal(post.method, "POST");
  assert.deepEqual(post.body, { content: "SUP", uuid: p.uuid });
  // the echo comes first (the HTTP answer is slow)
  const echo = { ...msg(3, "general", "SUP"), user: "alice", uuid: p.uuid };
  stream.send(echo);
  await clock.advance(0);
  assert.deepEqual(await p.done, echo);
  assert.equal(p.pending, false);
  assert.deepEqual(rt.timeline("general").map((m) => [m.id, m.pending]), [[1, false], [2, false], [3, false]]);
  release(new Response(JSON.stringify(echo), { status: 201 }));
  await clock.advance(0);
  assert.deepEqual(seen.event.map((e) => e.id), [3]);
  assert.equal(rt.timeline("general").length, 3);
});

test("ops retry with the same uuid on 503/429 after Retry-After, on 5xx and network errors with backoff", async () => {
  const { server, clock, rt } = await openClient();
  const answers = [
    () => errorResponse(503, "shutting_down", { "Retry-After": "2" }),
    () => errorResponse(429, "rate_limited", { "Retry-After": "1" }),
    () => errorResponse(500, "internal"),
    () => { throw new TypeError("network down"); },
  ];
  server.onOp = () => answers.shift()?.();
  const p = rt.post("general", "hi");
  const posts = () => server.requestsTo("/flows/general/messages").filter((r) => r.method === "POST");
  await clock.advance(0);
  assert.equal(posts().length, 1);
  await clock.advance(1900);
  assert.equal(posts().length, 1, "Retry-After: 2 is honoured");
  await clock.advance(200);
  assert.equal(posts().length, 2);
  await clock.advance(800);
  assert.equal(posts().length, 2, "Retry-After: 1 is honoured");
  await clock.advance(300);
  assert.equal(posts().length, 3);
  await clock.advance(40000); // the 5xx and the network error back off, then it lands
  assert.equal(posts().length, 5);
  assert.ok(posts().every((r) => r.body.uuid === p.uuid), "every attempt has the same uuid");
  const stored = await p.done;
  assert.equal(stored.uuid, p.uuid);
  assert.equal(stored.content, "hi");
});

test("ops that fail with 400/401/403/404/409 are not retried: done rejects, error is emitted", async () => {
  for (const [status, code] of [[400, "bad_request"], [401, "unauthorized"], [403, "forbidden"], [404, "not_found"], [409, "deleted"]]) {
    const { server, clock, rt, seen } = await openClient();
    server.onOp = () => errorResponse(status, code);
    const p = rt.edit("general", 1, "x");
    await clock.advance(60000);
    assert.equal(server.requestsTo("/flows/general/messages/1").length, 1, `${status} is not retried`);
    await assert.rejects(p.done, (err) => err.code === code && err.status === status);
    assert.equal(p.pending, false);
    assert.equal(seen.error.at(-1).code, code);
    assert.equal(rt.timeline("general")[0].syncing, undefined);
    rt.close();
  }
});

test("a no-op answer ({changed:false,state}) resolves done", async () => {
  const { server, clock, rt } = await openClient();
  const S = state(1, "general", "one", { tags: ["x"] });
  server.onOp = () => new Response(JSON.stringify({ changed: false, state: S }), { status: 200 });
  const p = rt.tag("general", 1, ["x"]);
  await clock.advance(0);
  assert.deepEqual(await p.done, { changed: false, state: S });
});

test("ops aimed at a pending post wait for its id, then use it", async () => {
  const { server, clock, rt } = await openClient();
  let release;
  server.onOp = (req) => (req.method === "POST" && !req.path.endsWith("/tags") ? new Promise((r) => { release = r; }) : undefined);
  const p = rt.post("general", "draft");
  const e = rt.edit("general", p.uuid, "final");
  const t = rt.tag("general", p.uuid, ["x"]);
  const d = rt.remove("general", p.uuid);
  assert.equal(e.message, p.uuid);
  await clock.advance(0);
  const view = rt.timeline("general").at(-1);
  assert.deepEqual([view.pending, view.syncing, view.deleted], [true, true, true]);
  assert.equal(server.requests.filter((r) => r.method !== "GET" && r.path.startsWith("/flows/general/messages/")).length, 0);
  release(new Response(JSON.stringify({ ...msg(9, "general", "draft"), user: "alice", uuid: p.uuid }), { status: 201 }));
  await clock.advance(0);
  const after = server.requests.filter((r) => r.path.startsWith("/flows/general/messages/9"));
  assert.deepEqual(after.map((r) => r.method), ["PATCH", "POST", "DELETE"]);
  assert.equal(after[2].query.uuid, d.uuid);
  assert.equal((await e.done).message, 9);
  assert.equal((await t.done).type, "tag");
  assert.equal((await d.done).type, "delete");
});

test("when a post fails, the ops that waited for it fail too", async () => {
  const { server, clock, rt, seen } = await openClient();
  server.onOp = () => errorResponse(400, "bad_request");
  const p = rt.post("general", "x".repeat(10));
  const e = rt.edit("general", p.uuid, "y");
  await clock.advance(0);
  await assert.rejects(p.done, { code: "bad_request" });
  await assert.rejects(e.done, { code: "not_found" });
  assert.equal(seen.error.length, 2);
  assert.equal(rt.timeline("general").length, 2);
});

test("a reload resends the outbox with the same uuids (never a duplicate)", async () => {
  const storage = memoryStorage();
  const first = await openClient({ storage });
  first.server.onOp = () => { throw new TypeError("offline"); };
  const p = first.rt.post("general", "survives");
  const e = first.rt.edit("general", p.uuid, "survives!");
  await first.clock.advance(0);
  first.rt.close();
  const stored = JSON.parse(storage.getItem(outboxKey("http://rt.test", "alice")));
  assert.deepEqual(stored.map((x) => x.uuid), [p.uuid, e.uuid]);

  // the page reloads: a new client on the same storage
  const second = await openClient({ storage });
  await second.clock.advance(0);
  const sent = second.server.requests.filter((r) => r.method !== "GET" && r.path.startsWith("/flows/"));
  assert.deepEqual(sent.map((r) => [r.method, r.body?.uuid]), [["POST", p.uuid], ["PATCH", e.uuid]]);
  assert.equal(storage.getItem(outboxKey("http://rt.test", "alice")), null);
});

test("the reloaded outbox shows its posts as pending until they settle", async () => {
  const storage = memoryStorage();
  storage.setItem(outboxKey("http://rt.test", "alice"), JSON.stringify([
    { uuid: "uuid-from-last-page", kind: "post", flow: "general", content: "again", created: 1, seq: 1 },
  ]));
  const server = new FakeServer();
  const clock = new FakeClock();
  server.onOp = () => new Promise(() => {}); // never answers
  const { rt } = makeClient(server, clock, { storage });
  await clock.advance(0);
  assert.deepEqual(rt.timeline("general").map((m) => [m.uuid, m.pending, m.user]), [["uuid-from-last-page", true, "alice"]]);
});

test("auto: a transport with no ready within 5 s is demoted when /health answers", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const WS = fakeWebSocketClass(server);
  const { rt } = makeClient(server, clock, { transport: "auto" }, { WebSocket: WS });
  await clock.advance(0);
  assert.equal(rt.transport, "ws");
  assert.equal(server.sockets.length, 1);
  assert.match(server.sockets[0].url, /^ws:\/\/rt\.test\/stream\/ws\?flows=general&client=[\w-]+&ticket=ticket-1&v=1&cursor=0&epoch=EpochTest01$/);
  await clock.advance(4000);
  assert.equal(server.requestsTo("/health").length, 0);
  await clock.advance(2000);
  assert.equal(server.requestsTo("/health").length, 1);
  assert.equal(rt.transport, "xhr"); // sse is not available in this environment
  assert.equal(server.streams.length, 1);
  assert.equal(server.sockets.length, 1);
});

test("auto: a server that is down demotes nothing", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const WS = fakeWebSocketClass(server);
  const { rt } = makeClient(server, clock, { transport: "auto" }, { WebSocket: WS });
  await clock.advance(0);
  server.healthy = false;
  await clock.advance(60000);
  assert.equal(rt.transport, "ws");
  assert.ok(server.requestsTo("/health").length >= 1);
  assert.equal(server.streams.length, 0);
  assert.equal(rt.state, "connecting");
});

test("auto: a WebSocket that closes before ready (blocked by a proxy) falls back; ws refusals do not", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const WS = fakeWebSocketClass(server);
  const { rt, seen } = makeClient(server, clock, { transport: "auto" }, { WebSocket: WS });
  await clock.advance(0);
  server.sockets[0].serverClose(1006);
  await clock.advance(0);
  assert.equal(rt.transport, "xhr");

  const b = makeClient(server, clock, { transport: "auto" }, { WebSocket: WS });
  await clock.advance(0);
  const sock = server.sockets.at(-1);
  sock.open();
  sock.serverClose(4003, "forbidden"); // rt's refusal: an accepted upgrade closed before ready
  await clock.advance(0);
  assert.equal(b.rt.state, "offline");
  assert.equal(b.seen.error[0].code, "forbidden");
  assert.equal(seen.error.length, 0);
});

test("ws: pings every heartbeat, and when server heartbeats arrive", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const WS = fakeWebSocketClass(server);
  const { rt } = makeClient(server, clock, { transport: "ws" }, { WebSocket: WS });
  await clock.advance(0);
  const sock = server.sockets[0];
  sock.open();
  sock.message({ ...server.ready({ query: Object.fromEntries(new URL(sock.url).searchParams), transport: "ws" }), heartbeat: 2 });
  await clock.advance(0);
  assert.equal(rt.state, "open");
  assert.deepEqual(sock.sent, ['{"op":"ping"}']);
  await clock.advance(2000);
  assert.equal(sock.sent.length, 2);
  // a server heartbeat half a heartbeat after our last ping: ping now (timers
  // may be throttled in a background tab, messages are not)
  await clock.advance(1000);
  sock.message({ type: "heartbeat" });
  assert.equal(sock.sent.length, 3);
  sock.message({ type: "heartbeat" });
  assert.equal(sock.sent.length, 3, "not more than one per half heartbeat");
  // silence for more than 2.5 heartbeats: the stream is dead
  await clock.advance(5000);
  assert.equal(rt.state, "open");
  await clock.advance(1000);
  assert.equal(rt.state, "reconnecting");
});

test("close rotate reconnects at once from the cursor, staying open", async () => {
  const { server, clock, rt, seen, stream } = await openClient();
  stream.send(msg(3, "general", "three"), { type: "close", reason: "rotate", retry_ms: 0 });
  stream.end();
  await clock.advance(0);
  assert.equal(server.streams.length, 2);
  assert.equal(server.lastStream.query.cursor, "3");
  assert.equal(server.lastStream.query.client, stream.query.client);
  assert.notEqual(server.lastStream.query.ticket, stream.query.ticket, "a fresh ticket");
  server.lastStream.send(server.ready(server.lastStream));
  await clock.advance(0);
  assert.deepEqual(seen.state, ["open"]);
  assert.equal(rt.cursor, 3);
});

test("close lagging and shutdown wait retry_ms", async () => {
  for (const [reason, retryMs] of [["lagging", 700], ["shutdown", 3000]]) {
    const { server, clock, stream } = await openClient();
    stream.send({ type: "close", reason, retry_ms: retryMs });
    await clock.advance(retryMs - 100);
    assert.equal(server.streams.length, 1, reason);
    await clock.advance(200);
    assert.equal(server.streams.length, 2, reason);
  }
});

test("close superseded: a new client id, never the same one again", async () => {
  const { server, clock, stream } = await openClient();
  stream.send({ type: "close", reason: "superseded" });
  await clock.advance(1000);
  assert.equal(server.streams.length, 2);
  assert.notEqual(server.lastStream.query.client, stream.query.client);
  assert.ok(isClientId(server.lastStream.query.client));
});

test("close unauthorized: error, offline, no loop; evicted likewise", async () => {
  for (const reason of ["unauthorized", "evicted"]) {
    const { server, clock, rt, seen, stream } = await openClient();
    stream.send({ type: "close", reason });
    await clock.advance(120000);
    assert.equal(rt.state, "offline");
    assert.equal(seen.error.length, 1);
    assert.equal(seen.error[0].code, reason);
    assert.equal(server.streams.length, 1, "no reconnection");
    assert.equal(server.requestsTo("/auth/ticket").length, 1);
  }
});

test("a revoked token: the ticket request answers 401, the client goes offline once", async () => {
  const { server, clock, rt, seen, stream } = await openClient();
  server.token = "revoked";
  stream.end();
  await clock.advance(120000);
  assert.equal(rt.state, "offline");
  assert.equal(seen.error.length, 1);
  assert.equal(seen.error[0].code, "unauthorized");
  assert.equal(server.requestsTo("/auth/ticket").length, 2);
});

test("stream refusals: 401 retries with a fresh ticket, then gives up; 404 goes offline", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  server.onStream = () => errorResponse(401, "unauthorized");
  const { rt, seen } = makeClient(server, clock);
  await clock.advance(10000);
  assert.equal(server.requestsTo("/stream/").length, 3);
  assert.equal(server.requestsTo("/auth/ticket").length, 3);
  assert.equal(rt.state, "offline");
  assert.equal(seen.error[0].code, "unauthorized");

  const s2 = new FakeServer();
  s2.onStream = () => errorResponse(404, "not_found");
  const b = makeClient(s2, clock);
  await clock.advance(10000);
  assert.equal(s2.requestsTo("/stream/").length, 1);
  assert.equal(b.rt.state, "offline");
  assert.equal(b.seen.error[0].code, "not_found");
});

test("a stream that ends without close reconnects with backoff from the cursor", async () => {
  const { server, clock, rt, seen, stream } = await openClient();
  stream.send(msg(3, "general", "three"));
  stream.end();
  await clock.advance(0);
  assert.equal(rt.state, "reconnecting");
  await clock.advance(1000);
  assert.equal(server.streams.length, 2);
  assert.equal(server.lastStream.query.cursor, "3");
  server.lastStream.send(server.ready(server.lastStream));
  await clock.advance(0);
  assert.deepEqual(seen.state, ["open", "reconnecting", "open"]);
});

test("xhr: no bytes for 2.5 heartbeats is a failure (demoted in auto, kept when chosen)", async () => {
  for (const [transport, next] of [["auto", "multipart"], ["xhr", "xhr"]]) {
    const server = new FakeServer();
    const clock = new FakeClock();
    const { rt } = makeClient(server, clock, { transport });
    await clock.advance(0);
    const s = server.lastStream;
    s.send({ ...server.ready(s), heartbeat: 2 });
    await clock.advance(4000);
    s.raw("\n"); // a heartbeat
    await clock.advance(4000);
    assert.equal(rt.transport, "xhr", "heartbeats keep it alive");
    await clock.advance(2000);
    assert.equal(rt.transport, next);
    assert.equal(s.aborted, true);
  }
});

test("ready with reset: emit reset, drop held state, reload history", async () => {
  const { server, clock, rt, seen, stream } = await openClient();
  assert.equal(rt.timeline("general").length, 2);
  server.epoch = "EpochNew002";
  server.flows.general = [state(1, "general", "restored")];
  server.head = 1;
  stream.send(server.ready(stream, { reset: true, cursor: 1 }));
  await clock.advance(0);
  assert.equal(seen.reset.length, 1);
  assert.equal(server.requestsTo("/flows/general/messages").length, 2);
  assert.deepEqual(rt.timeline("general").map((m) => m.content), ["restored"]);
  assert.equal(server.lastStream.query.epoch, "EpochNew002");
  assert.equal(server.lastStream.query.cursor, "1");
});

test("setTransport switches now, resuming from rt.cursor", async () => {
  const { server, clock, rt, stream } = await openClient();
  stream.send(msg(3, "general", "three"));
  await clock.advance(0);
  rt.setTransport("poll");
  await clock.advance(0);
  assert.equal(stream.aborted, true);
  assert.equal(rt.transport, "poll");
  const poll = server.lastPoll;
  assert.equal(poll.query.cursor, "3");
  poll.answer([server.ready(poll), msg(4, "general", "four")]);
  await clock.advance(200);
  assert.equal(rt.state, "open");
  assert.equal(rt.cursor, 4);
  // the next poll carries the new cursor
  assert.equal(server.lastPoll.query.cursor, "4");
  assert.throws(() => rt.setTransport("carrier-pigeon"), TypeError);
});

test("poll: a poll that outlives poll_timeout + 5 s is a failure", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const { rt } = makeClient(server, clock, { transport: "poll" });
  await clock.advance(0);
  server.lastPoll.answer([{ ...server.ready(server.lastPoll), poll_timeout: 3 }]);
  await clock.advance(500);
  assert.equal(rt.state, "open");
  assert.equal(server.polls.length, 2);
  await clock.advance(7000);
  assert.equal(rt.state, "open");
  await clock.advance(1600);
  assert.equal(rt.state, "reconnecting");
});

test("setFlows: history for the added flow, the stream restarted with both, same cursor", async () => {
  const { server, clock, rt, stream } = await openClient();
  server.flows.random = [state(3, "random", "r3")];
  server.head = 3;
  rt.setFlows(["general", "random"]);
  await clock.advance(0);
  assert.equal(stream.aborted, true);
  assert.equal(server.requestsTo("/flows/random/messages").length, 1);
  assert.equal(server.requestsTo("/flows/general/messages").length, 1, "general is not reloaded");
  assert.equal(server.lastStream.query.flows, "general,random");
  assert.equal(server.lastStream.query.cursor, "2");
  assert.deepEqual(rt.timeline("random").map((m) => m.content), ["r3"]);
  rt.setFlows(["random"]);
  await clock.advance(0);
  assert.deepEqual(rt.timeline("general"), []);
  assert.equal(server.lastStream.query.flows, "random");
});

test("loadOlder: one more page before the oldest held", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  server.flows.general = [1, 2, 3, 4, 5].map((i) => state(i, "general", "m" + i));
  server.head = 5;
  const { rt } = makeClient(server, clock, { history: 2 });
  await clock.advance(0);
  assert.deepEqual(rt.timeline("general").map((m) => m.id), [4, 5]);
  const older = await rt.loadOlder("general");
  assert.deepEqual(older.map((m) => m.id), [2, 3]);
  assert.equal(server.requestsTo("/flows/general/messages").at(-1).query.before, "4");
  assert.deepEqual(rt.timeline("general").map((m) => m.id), [2, 3, 4, 5]);
  await rt.loadOlder("general");
  assert.deepEqual(await rt.loadOlder("general"), []);
  assert.deepEqual(rt.timeline("general").map((m) => m.id), [1, 2, 3, 4, 5]);
});

test("argument checks throw at once", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const { rt } = makeClient(server, clock);
  assert.throws(() => rt.post("Bad Flow", "x"), TypeError);
  assert.throws(() => rt.post("general", 5), TypeError);
  assert.throws(() => rt.edit("general", 0, "x"), TypeError);
  assert.throws(() => rt.tag("general", 1, []), TypeError);
  assert.throws(() => makeClient(server, clock, { token: "" }), TypeError);
  assert.throws(() => makeClient(server, clock, { transport: "telegraph" }), TypeError);
  rt.close();
});

test("poll: after a failed poll, a continued session's answer without ready is accepted", async () => {
  const server = new FakeServer();
  const clock = new FakeClock();
  const { rt } = makeClient(server, clock, { transport: "poll" });
  const events = [];
  rt.on("event", (e) => events.push(e.id));
  await clock.advance(0);
  server.lastPoll.answer([{ ...server.ready(server.lastPoll), poll_timeout: 3 }]);
  await clock.advance(500);
  assert.equal(rt.state, "open");
  await clock.advance(8600); // the pending poll outlives poll_timeout + 5 s: a failure
  assert.equal(rt.state, "reconnecting");
  const before = server.polls.length;
  for (let i = 0; i < 400 && server.polls.length === before; i++) await clock.advance(100);
  const poll = server.lastPoll; // the new loop's first poll, with our cursor
  assert.ok(poll.query.cursor !== undefined && poll.query.epoch !== undefined);
  // PROTOCOL.md 3.2: the server continues the session, so no `ready` this time
  poll.answer([msg(Number(poll.query.cursor) + 1, "general", "after the gap")]);
  await clock.advance(200);
  assert.equal(rt.state, "open");
  assert.deepEqual(events, [Number(poll.query.cursor) + 1]);
});

test("an op backing off after a network error is resent as soon as a stream is ready again", async () => {
  const { server, clock, rt, stream } = await openClient();
  const answers = [
    () => { throw new TypeError("network down"); },
    () => { throw new TypeError("network down"); },
    () => { throw new TypeError("network down"); },
  ];
  server.onOp = () => answers.shift()?.();
  const p = rt.post("general", "while cut off");
  const posts = () => server.requestsTo("/flows/general/messages").filter((r) => r.method === "POST");
  await clock.advance(0);
  for (let i = 0; i < 60 && posts().length < 3; i++) await clock.advance(100);
  assert.equal(posts().length, 3); // three network errors: now a long backoff
  stream.end();
  await clock.advance(0);
  for (let i = 0; i < 100 && server.streams.length < 2; i++) await clock.advance(50);
  const sent = posts().length;
  server.lastStream.send(server.ready(server.lastStream));
  await clock.advance(0);
  assert.equal(posts().length, sent + 1, "the ready stream woke the outbox at once");
  const stored = await p.done;
  assert.equal(stored.uuid, p.uuid);
});
