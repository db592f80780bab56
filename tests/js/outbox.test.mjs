// The exactly-once outbox: persistence across a reload with the same uuids,
// tabs sharing a key, dedupe, ops waiting for a pending post's id, and the
// HTTP request of each op.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Outbox, isEchoOf, opRequest, outboxKey } from "../../rt/static/rt.js";
import { memoryStorage } from "./fixtures.mjs";

const KEY = outboxKey("http://127.0.0.1:8000/", "alice");
let t = 0;
const entry = (fields) => ({ created: ++t, ...fields });

test("the key is per server URL and user", () => {
  assert.equal(KEY, "rt:outbox:v1:http://127.0.0.1:8000:alice");
  assert.notEqual(outboxKey("http://a", "alice"), outboxKey("http://b", "alice"));
  assert.notEqual(outboxKey("http://a", "alice"), outboxKey("http://a", "bob"));
});

test("ops survive a reload: a new Outbox on the same storage has them, same uuids, same order", () => {
  const storage = memoryStorage();
  const a = new Outbox({ storage, key: KEY });
  a.add(entry({ uuid: "uuid-post-1", kind: "post", flow: "general", content: "SUP" }));
  a.add(entry({ uuid: "uuid-edit-1", kind: "edit", flow: "general", message: "uuid-post-1", content: "SUP!" }));
  a.add(entry({ uuid: "uuid-tag-01", kind: "tag", flow: "general", message: 7, add: ["x"], remove: [] }));
  a.add(entry({ uuid: "uuid-del-01", kind: "delete", flow: "random", message: 9 }));
  // in-memory fields are never stored
  a.get("uuid-post-1").attempts = 3;
  a.get("uuid-post-1").settled = false;
  a.update();

  const reloaded = new Outbox({ storage, key: KEY });
  assert.deepEqual(reloaded.entries().map((e) => e.uuid), ["uuid-post-1", "uuid-edit-1", "uuid-tag-01", "uuid-del-01"]);
  const post = reloaded.get("uuid-post-1");
  assert.equal(post.content, "SUP");
  assert.equal(post.attempts, undefined);
  assert.deepEqual(reloaded.get("uuid-tag-01").add, ["x"]);
  assert.equal(reloaded.get("uuid-edit-1").message, "uuid-post-1");
  // the stored text holds no token or other secrets: just the ops
  assert.doesNotMatch(storage.getItem(KEY), /token|Bearer/i);
});

test("bind: ops made before the user was known join the stored ones and persist", () => {
  const storage = memoryStorage();
  const before = new Outbox({ storage, key: KEY });
  before.add(entry({ uuid: "uuid-old-01", kind: "post", flow: "general", content: "from the last page" }));

  const box = new Outbox(); // the user is not known yet: memory only
  box.add(entry({ uuid: "uuid-new-01", kind: "post", flow: "general", content: "typed early" }));
  const found = box.bind(storage, KEY);
  assert.deepEqual(found.map((e) => e.uuid), ["uuid-old-01"]);
  assert.deepEqual(box.entries().map((e) => e.uuid), ["uuid-old-01", "uuid-new-01"]);
  assert.deepEqual(new Outbox({ storage, key: KEY }).entries().map((e) => e.uuid), ["uuid-old-01", "uuid-new-01"]);
});

test("completing an op removes it from storage; a post's id goes to the ops that waited for it", () => {
  const storage = memoryStorage();
  const box = new Outbox({ storage, key: KEY });
  box.add(entry({ uuid: "uuid-post-2", kind: "post", flow: "general", content: "a" }));
  box.add(entry({ uuid: "uuid-edit-2", kind: "edit", flow: "general", message: "uuid-post-2", content: "b" }));
  box.add(entry({ uuid: "uuid-tag-02", kind: "tag", flow: "general", message: "uuid-post-2", add: ["t"], remove: [] }));
  assert.deepEqual(box.dependents("uuid-post-2").map((e) => e.uuid), ["uuid-edit-2", "uuid-tag-02"]);
  assert.equal(box.first().uuid, "uuid-post-2");
  box.complete("uuid-post-2", 42);
  assert.equal(box.first().uuid, "uuid-edit-2");
  // a reload now resends the edit aimed at id 42, never the post again
  const reloaded = new Outbox({ storage, key: KEY });
  assert.deepEqual(reloaded.entries().map((e) => [e.uuid, e.message]), [["uuid-edit-2", 42], ["uuid-tag-02", 42]]);
  box.complete("uuid-edit-2");
  box.complete("uuid-tag-02");
  assert.equal(storage.getItem(KEY), null);
});

test("dedupe: the same uuid is one op", () => {
  const box = new Outbox({ storage: memoryStorage(), key: KEY });
  const first = box.add(entry({ uuid: "uuid-dup-01", kind: "post", flow: "general", content: "once" }));
  const again = box.add(entry({ uuid: "uuid-dup-01", kind: "post", flow: "general", content: "once" }));
  assert.equal(first, again);
  assert.equal(box.size, 1);
  // completed: a late copy from storage (another tab's stale write) is not taken back
  box.complete("uuid-dup-01");
  box.storage.setItem(KEY, JSON.stringify([first]));
  box.bind(box.storage, KEY);
  assert.equal(box.size, 0);
});

test("tabs sharing a key keep each other's ops", () => {
  const storage = memoryStorage();
  const tab1 = new Outbox({ storage, key: KEY });
  const tab2 = new Outbox({ storage, key: KEY });
  tab1.add(entry({ uuid: "uuid-tab1-1", kind: "post", flow: "general", content: "1" }));
  tab2.add(entry({ uuid: "uuid-tab2-1", kind: "post", flow: "general", content: "2" }));
  tab1.complete("uuid-tab1-1");
  const left = new Outbox({ storage, key: KEY }).entries().map((e) => e.uuid);
  assert.deepEqual(left, ["uuid-tab2-1"]);
});

test("broken or foreign storage content is ignored; a storage that throws keeps ops in memory", () => {
  const storage = memoryStorage();
  storage.setItem(KEY, "{not json");
  assert.equal(new Outbox({ storage, key: KEY }).size, 0);
  storage.setItem(KEY, JSON.stringify([{ uuid: "x", kind: "post" }, { uuid: "uuid-good-1", kind: "post", flow: "f", created: 1, content: "c" }]));
  assert.deepEqual(new Outbox({ storage, key: KEY }).entries().map((e) => e.uuid), ["uuid-good-1"]);
  const full = { getItem: () => null, setItem: () => { throw new Error("QuotaExceededError"); }, removeItem: () => {} };
  const box = new Outbox({ storage: full, key: KEY });
  box.add(entry({ uuid: "uuid-mem-01", kind: "post", flow: "general", content: "kept" }));
  assert.equal(box.size, 1);
  assert.throws(() => box.add({ uuid: "short", kind: "post", flow: "general", created: 1 }), TypeError);
});

test("opRequest: the HTTP request of each op (PROTOCOL.md section 4)", () => {
  assert.deepEqual(opRequest({ uuid: "uuid-0001", kind: "post", flow: "general", content: "hi" }),
    { method: "POST", path: "/flows/general/messages", body: { content: "hi", uuid: "uuid-0001" } });
  assert.deepEqual(opRequest({ uuid: "uuid-0002", kind: "edit", flow: "general", message: 7, content: "yo" }),
    { method: "PATCH", path: "/flows/general/messages/7", body: { content: "yo", uuid: "uuid-0002" } });
  assert.deepEqual(opRequest({ uuid: "uuid-0003", kind: "tag", flow: "general", message: 7, add: ["x"], remove: [] }),
    { method: "POST", path: "/flows/general/messages/7/tags", body: { add: ["x"], remove: [], uuid: "uuid-0003" } });
  assert.deepEqual(opRequest({ uuid: "uuid-0004", kind: "tag", flow: "general", message: 7, add: [], remove: ["x"] }).body,
    { add: [], remove: ["x"], uuid: "uuid-0004" });
  assert.deepEqual(opRequest({ uuid: "uuid-0005", kind: "delete", flow: "general", message: 7 }),
    { method: "DELETE", path: "/flows/general/messages/7?uuid=uuid-0005", body: null });
});

test("isEchoOf matches by uuid, flow and kind", () => {
  const post = { uuid: "uuid-0001", kind: "post", flow: "general" };
  assert.ok(isEchoOf({ id: 1, uuid: "uuid-0001", flow: "general", type: "message" }, post));
  assert.ok(!isEchoOf({ id: 1, uuid: "uuid-0001", flow: "random", type: "message" }, post));
  assert.ok(!isEchoOf({ id: 1, uuid: "uuid-0001", flow: "general", type: "edit" }, post));
  assert.ok(!isEchoOf({ id: 1, uuid: "uuid-0002", flow: "general", type: "message" }, post));
});
