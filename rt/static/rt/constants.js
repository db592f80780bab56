// Constants of the browser client: transport names, timings, the grammars of PROTOCOL.md 1.

/** Transport names, in the order of automatic fallback. */
export const TRANSPORTS = Object.freeze(["ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile"]);

/** Polling transports: one response per poll. */
export const POLLING = new Set(["poll", "jsonp"]);

export const READY_TIMEOUT_MS = 5000;
export const HEALTHY_MS = 30000;
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30000;
export const TICK_MS = 1000;
export const OP_TIMEOUT_MS = 30000;
export const HTTP_TIMEOUT_MS = 15000;
export const HEALTH_TIMEOUT_MS = 5000;
export const MIN_POLL_GAP_MS = 100; // poll-rate is 10 a second per session
export const STALE_CALLBACK_MS = 120000; // a retired jsonp/htmlfile callback stays a no-op this long

export const FLOW_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const CLIENT_RE = /^[A-Za-z0-9_-]{16,64}$/;
export const UUID_RE = /^[A-Za-z0-9_-]{8,64}$/;
export const CALLBACK_RE = /^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$/;
