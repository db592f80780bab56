// The wire parsers of rt.js, fed the server's exact bytes one byte at a time
// and in odd cuts; and the stale-answer check of jsonp and htmlfile callbacks.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  CallbackRegistry, MultipartParser, NdjsonParser, SseParser, boundaryFromContentType,
  isCallbackName, splitWsFrame,
} from "../../rt/static/rt.js";
import {
  BOUNDARY, CLOSE, EDIT, HOSTILE, JSONP_BODY, MSG, MULTIPART_BODY, MULTIPART_TYPE, PRESENCE, READY,
  SSE_BODY, WS_FRAMES, XHR_BODY, feedBytes, feedChunks, utf8,
} from "./fixtures.mjs";

/** The objects every fixture carries, in order (the heartbeat aside). */
function checkSequence(objs, transport) {
  assert.deepEqual(objs.map((o) => o.type), ["ready", "message", "edit", "presence", "close"]);
  assert.equal(objs[0].transport, transport);
  assert.equal(objs[0].cursor, 6);
  assert.deepEqual(objs[0].presence, { general: ["alice"] });
  assert.equal(objs[1].id, 7);
  assert.equal(objs[1].content, HOSTILE);
  assert.equal(objs[2].content, "SUP\n");
  assert.equal(objs[3].user, "bob");
  assert.deepEqual(objs[4], { type: "close", reason: "rotate", retry_ms: 0 });
}

test("hostile content is escaped in every fixture: no raw <, >, &, U+2028/9, CR or LF inside OBJ", () => {
  for (const obj of [MSG, EDIT, PRESENCE, READY("x"), CLOSE]) {
    assert.doesNotMatch(obj, /[<>&\u2028\u2029\r\n]/);
  }
});

test("ws: splitWsFrame reads each text frame (objects joined by \\n)", () => {
  const objs = WS_FRAMES.flatMap((f) => splitWsFrame(f));
  assert.deepEqual(objs.map((o) => o.type), ["ready", "message", "edit", "presence", "heartbeat", "close"]);
  checkSequence(objs.filter((o) => o.type !== "heartbeat"), "ws");
  assert.deepEqual(splitWsFrame(MSG), [JSON.parse(MSG)]);
  assert.deepEqual(splitWsFrame("\n\n"), []);
});

test("xhr: NdjsonParser fed byte by byte", () => {
  const p = new NdjsonParser();
  const objs = feedBytes(p, utf8(XHR_BODY));
  checkSequence(objs, "xhr");
  assert.equal(p.rest(), "");
});

test("xhr: NdjsonParser in odd cuts, and whole", () => {
  for (const sizes of [[2], [3, 7], [5, 1, 13], [1000]]) {
    checkSequence(feedChunks(new NdjsonParser(), utf8(XHR_BODY), sizes), "xhr");
  }
});

test("xhr: an object is handed over as soon as its newline arrives, not before", () => {
  const p = new NdjsonParser();
  const bytes = utf8(MSG + "\n");
  assert.deepEqual(p.push(bytes.subarray(0, bytes.length - 1)), []);
  assert.equal(p.push(bytes.subarray(bytes.length - 1))[0].content, HOSTILE);
  assert.deepEqual(p.push(utf8("\n")), []); // heartbeat
  assert.deepEqual(p.push("\n\n"), []); // strings (XHR responseText) are accepted too
});

test("sse: SseParser fed byte by byte", () => {
  const p = new SseParser();
  const events = feedBytes(p, utf8(SSE_BODY));
  assert.deepEqual(events.map((e) => e.type), ["ready", "message", "message", "presence", "close"]);
  assert.deepEqual(events.map((e) => e.lastEventId), [
    "EpochAbc123:6", "EpochAbc123:7", "EpochAbc123:8", "EpochAbc123:8", "EpochAbc123:8",
  ]);
  checkSequence(events.map((e) => JSON.parse(e.data)), "sse");
  assert.equal(p.retry, 1550);
  assert.equal(p.comments, 1); // the `: hb` heartbeat
});

test("sse: CRLF and CR line ends, multi-line data, BOM, a CR cut from its LF", () => {
  const p = new SseParser();
  const text = "\ufeffdata: a\r\ndata: b\r\n\r\nevent: x\rdata: c\r\r";
  const events = feedBytes(p, utf8(text));
  assert.deepEqual(events.map((e) => [e.type, e.data]), [["message", "a\nb"], ["x", "c"]]);
  // a CRLF cut between its CR and LF is one line end, not two
  const q = new SseParser();
  assert.deepEqual(q.push("data: 1\r"), []);
  assert.deepEqual(q.push("\ndata: 2\r"), []);
  assert.deepEqual(q.push("\n\r").map((e) => e.data), ["1\n2"]);
});

test("multipart: boundary from Content-Type, quoted or not", () => {
  assert.equal(boundaryFromContentType(MULTIPART_TYPE), BOUNDARY);
  assert.equal(boundaryFromContentType("multipart/mixed; boundary=abc-1"), "abc-1");
  assert.equal(boundaryFromContentType("multipart/mixed; charset=x; Boundary=\"q q\""), "q q");
  assert.equal(boundaryFromContentType("application/json"), null);
});

test("multipart: MultipartParser fed byte by byte, `CRLF--B` inside JSON strings is no delimiter", () => {
  const p = new MultipartParser(BOUNDARY);
  const parts = feedBytes(p, utf8(MULTIPART_BODY));
  assert.equal(parts.length, 4);
  assert.deepEqual(parts[2], []); // the heartbeat part
  checkSequence(parts.flat(), "multipart");
  assert.equal(p.closed, true);
});

test("multipart: odd cuts give the same parts", () => {
  for (const sizes of [[2], [3, 7], [17, 1, 5], [100000]]) {
    const parts = feedChunks(new MultipartParser(BOUNDARY), utf8(MULTIPART_BODY), sizes);
    checkSequence(parts.flat(), "multipart");
  }
});

test("multipart: a part is handed over at its first CRLF, before the next delimiter arrives", () => {
  const p = new MultipartParser(BOUNDARY);
  const first = `--${BOUNDARY}\r\nContent-Type: application/json\r\n\r\n[${MSG}]\r\n`;
  const parts = p.push(utf8(first));
  assert.equal(parts.length, 1);
  assert.equal(parts[0][0].content, HOSTILE);
  // then the delimiter that must follow, and the next part
  assert.deepEqual(p.push(utf8(`--${BOUNDARY}`)), []);
  assert.deepEqual(p.push(utf8(`\r\nContent-Type: application/json\r\n\r\n[]\r\n`)), [[]]);
});

test("multipart: preamble, transport padding, no part headers; text bodies wait for the delimiter", () => {
  const p = new MultipartParser("B");
  const body = "ignored preamble\r\n--B  \r\n\r\n[1]\r\n--B\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--B--\r\nepilogue";
  const parts = feedBytes(p, utf8(body));
  assert.deepEqual(parts, [[1], "line1\r\nline2"]);
});

test("multipart: a body that goes on after an early hand-over is a protocol error", () => {
  const p = new MultipartParser("B");
  p.push("--B\r\n\r\n[1]\r\n");
  assert.throws(() => p.push("xx"), /past its first CRLF/);
});

test("jsonp: the answer calls the live callback; stale ones are recognised and ignored", () => {
  const root = {};
  const reg = new CallbackRegistry(root);
  const got = [];
  const a = reg.create((objs) => got.push(["a", objs]));
  assert.ok(isCallbackName(a), a);
  // the next poll supersedes the first: its late answer is stale
  reg.retire(a);
  const b = reg.create((objs) => got.push(["b", objs]));
  assert.notEqual(a, b);
  const run = (name, body) => new Function("__rt", body.replace(/^\/\*\*\//, "").replace(name, "__rt." + name.split(".")[1]))(root.__rt);
  run(a, JSONP_BODY(a));
  assert.deepEqual(got, []);
  assert.equal(reg.stale, 1);
  run(b, JSONP_BODY(b));
  assert.equal(got.length, 1);
  assert.equal(got[0][0], "b");
  assert.equal(got[0][1][0].content, HOSTILE);
  // an answer repeated after the callback was retired (a retried script) is stale too
  reg.retire(b);
  run(b, JSONP_BODY(b));
  assert.equal(got.length, 1);
  assert.equal(reg.stale, 2);
  assert.equal(reg.isLive(b), false);
  // dropped: the function is gone
  reg.drop(a);
  assert.equal(root.__rt[a.split(".")[1]], undefined);
});

test("htmlfile: batches from an old iframe (rotated or superseded) are ignored", () => {
  const root = {};
  const reg = new CallbackRegistry(root);
  const got = [];
  const first = reg.create((batch) => got.push(...batch));
  const p1 = root.__rt[first.split(".")[1]]; // what the iframe's preamble binds: var p=parent.F
  p1([JSON.parse(READY("htmlfile"))]);
  p1([]); // heartbeat
  reg.retire(first); // the client moved to a new iframe
  const second = reg.create((batch) => got.push(...batch));
  const p2 = root.__rt[second.split(".")[1]];
  p1([JSON.parse(MSG)]); // the old iframe still talking
  p2([JSON.parse(EDIT)]);
  assert.deepEqual(got.map((o) => o.type), ["ready", "edit"]);
  assert.equal(reg.stale, 1);
});

test("callback names fit the protocol's grammar and length", () => {
  const reg = new CallbackRegistry({});
  for (let i = 0; i < 50; i++) {
    const name = reg.create(() => {});
    assert.ok(isCallbackName(name) && name.length <= 64, name);
  }
  assert.equal(isCallbackName("a.b"), true);
  assert.equal(isCallbackName("a..b"), false);
  assert.equal(isCallbackName("1a"), false);
  assert.equal(isCallbackName("x".repeat(65)), false);
});
