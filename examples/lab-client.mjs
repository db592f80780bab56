// A client under test for `rt chaos` (LAB.md section 2): Node 20, no dependencies.
// It follows its flows over SSE (fetch), resumes from its cursor, posts each content
// once with one uuid through every retry, and gives up on a socket that went silent.
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

const { RT_URL: url, RT_TOKEN: token, RT_FLOWS: flows } = process.env;
const auth = { Authorization: `Bearer ${token}` };
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let cursor = null, epoch = null, client = randomUUID(), silence = 40000;
let inFlight = 0, stopping = false;

async function follow() {
  for (;;) {
    const abort = new AbortController();
    let watchdog = setTimeout(() => abort.abort(), silence);
    try {
      const query = new URLSearchParams({ flows, client });
      if (cursor !== null) { query.set("cursor", cursor); query.set("epoch", epoch); }
      const res = await fetch(`${url}/stream/sse?${query}`, { headers: auth, signal: abort.signal });
      let text = "";
      for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(), silence);  // no byte for 2.5 heartbeats: dead
        text += chunk;
        for (let end; (end = text.indexOf("\n\n")) >= 0; text = text.slice(end + 2)) {
          const data = text.slice(0, end).split("\n").find((line) => line.startsWith("data: "));
          const o = data ? JSON.parse(data.slice(6)) : {};
          if (o.type === "ready") {
            if (o.reset || cursor === null) out({ view: o.cursor });
            [cursor, epoch, silence] = [o.cursor, o.epoch, o.heartbeat * 2500];
          } else if (o.type === "close" && ["superseded", "evicted"].includes(o.reason)) {
            client = randomUUID();  // this client id must not come back
          } else if (Number.isInteger(o.id) && o.id > cursor) {
            out({ seen: o });
            cursor = o.id;
          }
        }
      }
    } catch {}
    clearTimeout(watchdog);
    await sleep(100 + Math.random() * 900);
  }
}

async function post(flow, content) {
  inFlight++;
  const uuid = randomUUID();  // one uuid for every retry: the server stores it once
  for (let wait = 250; ; wait = Math.min(2 * wait, 5000)) {
    try {
      const res = await fetch(`${url}/flows/${flow}/messages`, {
        method: "POST", headers: { ...auth, "Content-Type": "application/json" },
        body: JSON.stringify({ content, uuid }), signal: AbortSignal.timeout(5000) });
      const body = await res.json();
      if (res.ok) { out({ acked: content, id: body.id }); break; }
      if (res.status !== 429 && res.status < 500) { out({ gave_up: content, error: body.error.code }); break; }
      wait = Number(res.headers.get("Retry-After")) * 1000 || wait;
    } catch {}  // a network error or a timeout: the same op again
    await sleep(wait);
  }
  if (--inFlight === 0 && stopping) finish();
}

function finish() { out({ stopped: true }); process.exit(0); }

createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "post") post(command.flow, command.content);
  if (command.cmd === "stop") { stopping = true; if (inFlight === 0) finish(); }
});
follow();
