// Bytes exactly as rt's framers write them (rt/transports/*.py, PROTOCOL.md
// section 3.1), made with the Python framers and copied here, with hostile
// content: `</script>`, `<!--`, U+2028, U+2029, `\r\n--B\r\n` (the multipart
// boundary), `&`, and multi-byte UTF-8 (é, an emoji) that byte-by-byte
// feeding cuts in the middle. Not a test file itself (no `.test.` in the name).

export const BOUNDARY = "rt-mixed-5f0c3a";
export const MULTIPART_TYPE = `multipart/x-mixed-replace; boundary="${BOUNDARY}"`;

/** What the hostile message's content decodes to. */
export const HOSTILE = "</script><!-- \u2028\u2029 \r\n--rt-mixed-5f0c3a\r\n & é 😀";

// OBJ as the codec writes it: no raw newline; <, >, &, U+2028, U+2029 escaped.
export const READY = (transport) => String.raw`{"type":"ready","protocol":1,"cursor":6,"epoch":"EpochAbc123","reset":false,"flows":["general"],"client":"client-0000000000001","transport":"` + transport + String.raw`","heartbeat":15,"poll_timeout":25,"presence":{"general":["alice"]}}`;
export const MSG = String.raw`{"id":7,"flow":"general","type":"message","user":"alice","uuid":"uuid-0001","content":"\u003c/script\u003e\u003c!-- \u2028\u2029 \r\n--rt-mixed-5f0c3a\r\n \u0026 é 😀","sent":1700000000000}`;
export const EDIT = String.raw`{"id":8,"flow":"general","type":"edit","user":"alice","uuid":"uuid-0002","message":7,"content":"SUP\n","sent":1700000000001}`;
export const PRESENCE = String.raw`{"type":"presence","flow":"general","user":"bob","state":"online"}`;
export const HEARTBEAT_WS = String.raw`{"type":"heartbeat"}`;
export const CLOSE = String.raw`{"type":"close","reason":"rotate","retry_ms":0}`;

/** WebSocket: one text frame per batch, objects joined by `\n`. */
export const WS_FRAMES = [READY("ws"), [MSG, EDIT, PRESENCE].join("\n"), HEARTBEAT_WS, CLOSE];

/** XHR-streaming: `OBJ\n` per object, a lone `\n` heartbeat. */
export const XHR_BODY = `${READY("xhr")}\n${MSG}\n${EDIT}\n${PRESENCE}\n\n${CLOSE}\n`;

/** Multipart: one part per batch, `[]` heartbeat, `--B--` at the end. */
const part = (objs) => `--${BOUNDARY}\r\nContent-Type: application/json\r\n\r\n[${objs.join(",")}]\r\n`;
export const MULTIPART_BODY = part([READY("multipart")]) + part([MSG, EDIT, PRESENCE]) + part([]) + part([CLOSE]) + `--${BOUNDARY}--\r\n`;

/** SSE: `retry:` first; stored events with `id: E:<id>`; others named; `: hb`. */
export const SSE_BODY = "retry: 1550\n\n"
  + `id: EpochAbc123:6\nevent: ready\ndata: ${READY("sse")}\n\n`
  + `id: EpochAbc123:7\ndata: ${MSG}\n\n`
  + `id: EpochAbc123:8\ndata: ${EDIT}\n\n`
  + `event: presence\ndata: ${PRESENCE}\n\n`
  + ": hb\n\n"
  + `event: close\ndata: ${CLOSE}\n\n`;

/** JSONP: `/**\/F([OBJ,...]);` */
export const JSONP_BODY = (callback) => `/**/${callback}([${MSG},${EDIT}]);`;

export const utf8 = (s) => new TextEncoder().encode(s);

/** Feed `bytes` one byte at a time; collect what `push` returns. */
export function feedBytes(parser, bytes) {
  const out = [];
  for (let i = 0; i < bytes.length; i++) out.push(...parser.push(bytes.subarray(i, i + 1)));
  return out;
}

/** Feed `bytes` in chunks cut at the given sizes, cycling. */
export function feedChunks(parser, bytes, sizes) {
  const out = [];
  let i = 0;
  let k = 0;
  while (i < bytes.length) {
    const n = sizes[k++ % sizes.length];
    out.push(...parser.push(bytes.subarray(i, i + n)));
    i += n;
  }
  return out;
}

/** A Storage-like object in memory (localStorage's interface). */
export function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => { m.set(k, String(v)); },
    removeItem: (k) => { m.delete(k); },
    get length() { return m.size; },
    key: (i) => [...m.keys()][i] ?? null,
    map: m,
  };
}
