// The transports by name, and what WebSocket close codes mean to the client.

import { FetchStreamConnection } from "./fetch.js";
import { HtmlFileConnection } from "./htmlfile.js";
import { JsonpConnection } from "./jsonp.js";
import { PollConnection } from "./poll.js";
import { SseConnection } from "./sse.js";
import { WsConnection } from "./ws.js";

export const CONNECTIONS = {
  ws: (ctx) => new WsConnection(ctx),
  sse: (ctx) => new SseConnection(ctx),
  xhr: (ctx) => new FetchStreamConnection(ctx, "xhr"),
  multipart: (ctx) => new FetchStreamConnection(ctx, "multipart"),
  poll: (ctx) => new PollConnection(ctx),
  jsonp: (ctx) => new JsonpConnection(ctx),
  htmlfile: (ctx) => new HtmlFileConnection(ctx),
};

// WebSocket close codes (PROTOCOL.md section 6) and what they mean here
// when no `close` frame came before them.
export const WS_CLOSE_REASONS = {
  1001: "shutdown", 4001: "unauthorized", 4009: "superseded", 4010: "lagging", 4011: "evicted",
};
// A close before `ready` with one of these codes is a refusal with that HTTP status
// (PROTOCOL.md 6); 1001 there means the server is draining (503, retry later).
export const WS_REFUSALS = { 4001: 401, 4003: 403, 4004: 404, 4400: 400, 1009: 413, 4029: 429, 1001: 503 };
