// A client under test for `rt chaos` (LAB.md section 2), in Node 20 with no dependencies:
// SSE over fetch, resumed from its cursor; each post one uuid through every retry;
// a read watchdog that gives up on a connection silent for 2.5 heartbeats.
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";

const { RT_URL: url, RT_TOKEN: token, RT_FLOWS: flows } = process.env;
const auth = { Authorization: `Bearer ${token}` };
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let cursor = null, epoch = null, client = randomUUID(), silence = 40000, inFlight = 0, stopping = false;

async function follow() {
  for (;; await sleep(100 + Math.random() * 900)) {
    const abort = new AbortController(), query = new URLSearchParams({ flows, client });
    let watchdog = setTimeout(() => abort.abort(), silence);
    if (cursor !== null) { query.set("cursor", cursor); query.set("epoch", epoch); }
    try {
      const res = await fetch(`${url}/stream/sse?${query}`, { headers: auth, signal: abort.signal });
      let text = "";
      for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(), silence);
        for (text += chunk; text.includes("\n\n"); text = text.slice(text.indexOf("\n\n") + 2)) {
          const data = text.slice(0, text.indexOf("\n\n")).split("\n").find((l) => l.startsWith("data: "));
          const o = data ? JSON.parse(data.slice(6)) : {};
          if (o.type === "ready") {
            if (o.reset || cursor === null) out({ view: o.cursor });
            [cursor, epoch, silence] = [o.cursor, o.epoch, o.heartbeat * 2500];
          } else if (o.type === "close" && ["superseded", "evicted"].includes(o.reason)) {
            client = randomUUID(); // this client id must not come back
          } else if (Number.isInteger(o.id) && o.id > cursor) {
            out({ seen: o });
            cursor = o.id;
          }
        }
      }
    } catch {} // cut, reset, or the watchdog: resume from the cursor
    clearTimeout(watchdog);
  }
}

async function post(flow, content) {
  inFlight++;
  const uuid = randomUUID(); // one uuid for every retry: the server stores the post once
  for (let wait = 250; ; await sleep(wait), wait = Math.min(2 * wait, 5000)) {
    try {
      const res = await fetch(`${url}/flows/${flow}/messages`, { method: "POST", signal: AbortSignal.timeout(5000),
        headers: { ...auth, "Content-Type": "application/json" }, body: JSON.stringify({ content, uuid }) });
      const body = await res.json();
      if (res.ok) { out({ acked: content, id: body.id }); break; }
      if (res.status !== 429 && res.status < 500) { out({ gave_up: content, error: body.error.code }); break; }
      wait = Number(res.headers.get("Retry-After")) * 1000 || wait;
    } catch {} // a network error or a timeout: the same op again
  }
  if (--inFlight === 0 && stopping) stop();
}

const stop = () => { out({ stopped: true }); process.exit(0); };
createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "post") post(command.flow, command.content);
  if (command.cmd === "stop" && (stopping = true) && inFlight === 0) stop();
});
follow();
