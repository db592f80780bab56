// Order sync: the server's order wins everywhere; echoes and acks in any
// order; edits, tags and deletes applied; duplicates ignored.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Timeline } from "../../rt/static/rt.js";

let clock = 1000;
const pendingPost = (flow, content, uuid) => ({ uuid, kind: "post", flow, content, created: ++clock });
const op = (fields) => ({ created: ++clock, ...fields });
const message = (id, user, content, uuid, flow = "general") => ({
  id, flow, type: "message", user, uuid, content, sent: 1700000000000 + id,
});
const contents = (tl, flow = "general") => tl.list(flow).map((m) => m.content);
const ids = (tl, flow = "general") => tl.list(flow).map((m) => m.id);

/** What the client does with a stored event from the stream. */
function fromStream(tl, e) {
  const fresh = tl.admit(e);
  if (fresh) tl.apply(e);
  tl.settle(e.uuid, null); // the echo of a pending op, if it is one (no-op otherwise)
  return fresh;
}

test("SUP/LOL/FOO/BAR: both clients end in the server's order", () => {
  // A posts SUP and FOO; B posts LOL and BAR, concurrently. The server
  // stores LOL=1, SUP=2, BAR=3, FOO=4.
  const A = new Timeline();
  const B = new Timeline();
  A.addPending(pendingPost("general", "SUP", "uuid-SUP-0"));
  B.addPending(pendingPost("general", "LOL", "uuid-LOL-0"));
  A.addPending(pendingPost("general", "FOO", "uuid-FOO-0"));
  B.addPending(pendingPost("general", "BAR", "uuid-BAR-0"));
  assert.deepEqual(contents(A), ["SUP", "FOO"]);
  assert.deepEqual(contents(B), ["LOL", "BAR"]);
  assert.ok(A.list("general").every((m) => m.pending && m.id === null));

  const log = [
    message(1, "b", "LOL", "uuid-LOL-0"),
    message(2, "a", "SUP", "uuid-SUP-0"),
    message(3, "b", "BAR", "uuid-BAR-0"),
    message(4, "a", "FOO", "uuid-FOO-0"),
  ];
  // A, step by step: each echo replaces its pending copy and takes its place by id
  fromStream(A, log[0]);
  assert.deepEqual(contents(A), ["LOL", "SUP", "FOO"]);
  assert.deepEqual(A.list("general").map((m) => m.pending), [false, true, true]);
  fromStream(A, log[1]);
  assert.deepEqual(contents(A), ["LOL", "SUP", "FOO"]);
  assert.deepEqual(ids(A), [1, 2, null]);
  fromStream(A, log[2]);
  assert.deepEqual(contents(A), ["LOL", "SUP", "BAR", "FOO"]);
  assert.deepEqual(ids(A), [1, 2, 3, null]);
  fromStream(A, log[3]);
  assert.deepEqual(ids(A), [1, 2, 3, 4]);

  // B: its LOL settles by the ack first (id 1), then the stream
  B.settle("uuid-LOL-0", log[0]);
  assert.deepEqual(contents(B), ["LOL", "BAR"]);
  for (const e of log) fromStream(B, e);
  assert.deepEqual(contents(B), ["LOL", "SUP", "BAR", "FOO"]);
  assert.deepEqual(ids(B), [1, 2, 3, 4]);
  assert.deepEqual(A.list("general"), B.list("general"));
  assert.equal(A.pending.length + B.pending.length, 0);
});

test("echo before ack: the ack then changes nothing", () => {
  const tl = new Timeline();
  tl.addPending(pendingPost("general", "hi", "uuid-hi-01"));
  const e = message(5, "me", "hi", "uuid-hi-01");
  fromStream(tl, e);
  const after = tl.list("general");
  assert.deepEqual(after.map((m) => [m.id, m.pending]), [[5, false]]);
  tl.settle("uuid-hi-01", e); // the HTTP answer arrives late
  assert.deepEqual(tl.list("general"), after);
});

test("ack before echo: the message takes its id at once, the echo is no duplicate", () => {
  const tl = new Timeline();
  tl.load("general", [{ id: 1, flow: "general", user: "x", sent: 1, content: "old", tags: [], edited: false, deleted: false }], 1);
  tl.addPending(pendingPost("general", "mine", "uuid-mine-1"));
  tl.addPending(pendingPost("general", "later", "uuid-later-1"));
  const e = message(3, "me", "mine", "uuid-mine-1");
  tl.settle("uuid-mine-1", e);
  assert.deepEqual(tl.list("general").map((m) => [m.id, m.content, m.pending]),
    [[1, "old", false], [3, "mine", false], [null, "later", true]]);
  // someone else's message 2 arrives: it goes before ours, by id
  fromStream(tl, message(2, "other", "theirs", "uuid-theirs1"));
  fromStream(tl, e); // the echo
  assert.deepEqual(tl.list("general").map((m) => m.id), [1, 2, 3, null]);
  assert.equal(tl.list("general").filter((m) => m.id === 3).length, 1);
});

test("edits, tags and deletes are applied; a deleted message is blank", () => {
  const tl = new Timeline();
  fromStream(tl, message(1, "a", "SUP", "u-message-1"));
  fromStream(tl, { id: 2, flow: "general", type: "edit", user: "a", uuid: "u-edit-0002", message: 1, content: "SUP!", sent: 2 });
  fromStream(tl, { id: 3, flow: "general", type: "tag", user: "b", uuid: "u-tag-00003", message: 1, add: ["x", "y"], remove: [], tags: ["x", "y"], sent: 3 });
  fromStream(tl, { id: 4, flow: "general", type: "tag", user: "b", uuid: "u-tag-00004", message: 1, add: [], remove: ["x"], tags: ["y"], sent: 4 });
  let [m] = tl.list("general");
  assert.equal(m.content, "SUP!");
  assert.equal(m.edited, 2);
  assert.deepEqual(m.tags, ["y"]);
  assert.equal(m.deleted, false);
  fromStream(tl, { id: 5, flow: "general", type: "delete", user: "a", uuid: "u-del-00005", message: 1, sent: 5 });
  [m] = tl.list("general");
  assert.equal(m.deleted, true);
  assert.equal(m.content, "");
  assert.deepEqual(Object.keys(m).sort(), ["content", "deleted", "edited", "flow", "id", "pending", "sent", "tags", "user", "uuid"]);
});

test("an older edit or tag arriving after a newer one (an ack ahead of the stream) is ignored", () => {
  const tl = new Timeline();
  fromStream(tl, message(1, "a", "v0", "u-message-1"));
  // my edit's ack (id 11) and my tag's ack (id 12) come before the stream reaches 10
  tl.settle("x", { id: 11, flow: "general", type: "edit", user: "a", uuid: "u-edit-0011", message: 1, content: "v2", sent: 11 });
  tl.settle("y", { id: 12, flow: "general", type: "tag", user: "a", uuid: "u-tag-00012", message: 1, add: ["b"], remove: [], tags: ["a", "b"], sent: 12 });
  fromStream(tl, { id: 9, flow: "general", type: "tag", user: "b", uuid: "u-tag-00009", message: 1, add: ["a"], remove: [], tags: ["a"], sent: 9 });
  fromStream(tl, { id: 10, flow: "general", type: "edit", user: "a", uuid: "u-edit-0010", message: 1, content: "v1", sent: 10 });
  fromStream(tl, { id: 11, flow: "general", type: "edit", user: "a", uuid: "u-edit-0011", message: 1, content: "v2", sent: 11 });
  fromStream(tl, { id: 12, flow: "general", type: "tag", user: "a", uuid: "u-tag-00012", message: 1, add: ["b"], remove: [], tags: ["a", "b"], sent: 12 });
  const [m] = tl.list("general");
  assert.equal(m.content, "v2");
  assert.equal(m.edited, 11);
  assert.deepEqual(m.tags, ["a", "b"]);
});

test("duplicates are ignored: replays below the history's cursor, repeated events", () => {
  const tl = new Timeline();
  const page = [
    { id: 3, flow: "general", user: "a", sent: 3, content: "three, edited", tags: ["t"], edited: 5, deleted: false },
    { id: 4, flow: "general", user: "b", sent: 4, content: "four", tags: [], edited: false, deleted: false },
  ];
  tl.load("general", page, 6); // read when the head was 6
  assert.equal(tl.floor("general"), 6);
  // the stream resumes from a smaller cursor (another flow's page): ids <= 6 are replays
  assert.equal(fromStream(tl, message(4, "b", "four", "u-four-0004")), false);
  assert.equal(fromStream(tl, { id: 5, flow: "general", type: "edit", user: "a", uuid: "u-edit-0005", message: 3, content: "three, edited", sent: 5 }), false);
  assert.equal(fromStream(tl, { id: 6, flow: "general", type: "tag", user: "a", uuid: "u-tag-00006", message: 3, add: ["t"], remove: [], tags: ["t"], sent: 6 }), false);
  assert.equal(fromStream(tl, message(7, "c", "seven", "u-seven-007")), true);
  assert.equal(fromStream(tl, message(7, "c", "seven", "u-seven-007")), false);
  assert.deepEqual(ids(tl), [3, 4, 7]);
  assert.equal(tl.apply(message(7, "c", "seven", "u-seven-007")), false);
  assert.equal(tl.apply({ id: 8, flow: "general", type: "delete", message: 4, user: "b", uuid: "u-del-00008", sent: 8 }), true);
  assert.equal(tl.apply({ id: 8, flow: "general", type: "delete", message: 4, user: "b", uuid: "u-del-00008", sent: 8 }), false);
});

test("older pages (loadOlder) go before, and do not move the floor", () => {
  const tl = new Timeline();
  tl.load("general", [{ id: 10, flow: "general", user: "a", sent: 10, content: "ten", tags: [], edited: false, deleted: false }], 12);
  fromStream(tl, message(13, "a", "thirteen", "u-thirteen1"));
  const added = tl.load("general", [
    { id: 8, flow: "general", user: "a", sent: 8, content: "eight", tags: [], edited: false, deleted: false },
    { id: 10, flow: "general", user: "a", sent: 10, content: "ten?", tags: [], edited: false, deleted: false },
  ], 20, { floor: false });
  assert.deepEqual(added.map((s) => s.id), [8]);
  assert.deepEqual(contents(tl), ["eight", "ten", "thirteen"]);
  assert.equal(tl.floor("general"), 13);
  assert.equal(tl.oldest("general"), 8);
});

test("pending ops show applied on their message (syncing), pending posts last in creation order", () => {
  const tl = new Timeline();
  fromStream(tl, message(1, "a", "one", "u-message-1"));
  tl.addPending(pendingPost("general", "p1", "uuid-p1-001"));
  tl.addPending(pendingPost("general", "p2", "uuid-p2-001"));
  tl.addPending(op({ uuid: "uuid-edit-01", kind: "edit", flow: "general", message: 1, content: "uno" }));
  tl.addPending(op({ uuid: "uuid-tag-001", kind: "tag", flow: "general", message: 1, add: ["X"], remove: [] }));
  tl.addPending(op({ uuid: "uuid-edit-02", kind: "edit", flow: "general", message: "uuid-p2-001", content: "p2!" }));
  tl.addPending(op({ uuid: "uuid-del-001", kind: "delete", flow: "general", message: "uuid-p1-001" }));
  const list = tl.list("general", "me");
  assert.deepEqual(list.map((m) => [m.id, m.content, m.pending, Boolean(m.syncing)]), [
    [1, "uno", false, true], [null, "", true, true], [null, "p2!", true, true],
  ]);
  assert.deepEqual(list[0].tags, ["x"]);
  assert.equal(list[1].deleted, true);
  assert.equal(list[2].user, "me");
  // the ops settle: the overlay goes, the stored state is what remains
  for (const u of ["uuid-edit-01", "uuid-tag-001", "uuid-edit-02", "uuid-del-001"]) tl.settle(u, null);
  assert.deepEqual(tl.list("general").map((m) => [m.content, Boolean(m.syncing)]), [["one", false], ["p1", false], ["p2", false]]);
  // a view is a copy
  tl.list("general")[0].content = "changed";
  assert.equal(tl.list("general")[0].content, "one");
});

test("flows are separate; clear drops stored state but keeps pending posts", () => {
  const tl = new Timeline();
  fromStream(tl, message(1, "a", "g", "u-message-1"));
  fromStream(tl, message(2, "a", "r", "u-message-2", "random"));
  tl.addPending(pendingPost("random", "p", "uuid-p-00001"));
  assert.deepEqual(contents(tl), ["g"]);
  assert.deepEqual(contents(tl, "random"), ["r", "p"]);
  assert.equal(tl.idForUuid("random", "u-message-2"), 2);
  tl.clear();
  assert.deepEqual(contents(tl), []);
  assert.deepEqual(contents(tl, "random"), ["p"]);
  assert.equal(tl.floor("general"), -1);
});
