// rt.js: the browser client of rt (PROTOCOL.md section 7).
//
// An ES module, no build step, no dependencies. Import it from the server:
//
//   import { connect } from "/static/rt.js";
//   const rt = connect({ url: location.origin, token, flows: ["general"] });
//   rt.on("timeline", (flow) => render(rt.timeline(flow)));
//   rt.post("general", "SUP");
//
// Public surface: exactly PROTOCOL.md section 7, plus
//   - `rt.on(name, fn)` returns a function that removes the listener;
//   - the "timeline" event: `fn(flow)` whenever what `rt.timeline(flow)`
//     returns has changed (history loaded, a stored event applied, a pending
//     op added, settled or failed, a reset). Coalesced: at most once per flow
//     per task, after the "event" callbacks of that task;
//   - "presence" events carry `users`, the whole sorted list of users online
//     in the flow after the change. The `ready` snapshot is emitted as one
//     `{type: "presence", flow, users, snapshot: true}` per flow; changes as
//     the server's `{type, flow, user, state}` with `users` added;
//   - `rt.state`, the last state emitted; option `storage` (default
//     `localStorage`; `null` keeps the outbox in memory only).
//
// Decisions (written down as PROTOCOL.md asks):
//   - Ops (post, edit, tag, untag, remove) go by HTTP on every transport,
//     one at a time in creation order, so a user's own messages keep their
//     order and an op aimed at a pending post runs after it. The WebSocket
//     only carries `{"op":"ping"}`.
//   - The outbox lives in `localStorage` under `rt:outbox:v1:<url>:<user>`
//     (the user from `GET /me`), a JSON array of ops (never the token).
//     Tabs of one user share it: each tab rewrites only its own entries, and
//     an op sent by two tabs is stored once (same uuid). Ops never expire.
//   - "event" fires for stored events that arrive on the stream after the
//     history that was loaded (events already reflected in a history page
//     are deduplicated by id, not re-emitted), once each, in id order.
//   - `rt.cursor` starts at the smallest `cursor` of the history pages.
//   - The SSE heartbeat is a comment (`: hb`) that EventSource does not
//     report, so an SSE stream with no event for 2.5 heartbeats is renewed
//     at once from the cursor (a "refresh", not a failure: it demotes
//     nothing and does not back off). Every other transport sees its
//     heartbeat bytes.
//   - `evicted` (too many streams of this user) goes `offline` with an
//     `error` and a new client id: coming back at once would evict another
//     tab, which would come back too. `setFlows` or `setTransport` starts
//     again.
//   - A flow whose history answers 403 or 404 is dropped from the flows
//     followed, with an `error`; the others go on.
//   - A stream refusal 401 is retried with a fresh ticket; after three in a
//     row, or when `POST /auth/ticket` or `GET /me` answers 401: `error`
//     (code unauthorized), state `offline`, no loop.
//   - Automatic fallback wraps around after htmlfile, with backoff.
//   - Message ids are integers; a string given as a message id is the uuid
//     of a post (pending or settled on this page, or seen on the stream).
//   - Transports the page cannot use are skipped by "auto": htmlfile needs a
//     document of the server's own origin, jsonp a document, ws WebSocket,
//     sse EventSource. Choosing one that is not available emits `error`
//     (code unsupported) and goes `offline`.
//   - With no flows there is no stream (state `offline`); ops still work.
//   - The pending object's `pending` turns false when `done` settles.
//     `done` never causes an unhandled-rejection warning: failures are also
//     emitted as "error".
//
// The module is split into pure, exported parts (ids, backoff, watchdog,
// retry rules, the four wire parsers, the callback registry, Timeline,
// Outbox) tested under node without a browser, and the browser glue
// (`Client`, `connect`). Nothing touches `window` or `document` at import.

//
// The code lives in native ES modules under /static/rt/ (served as they are, no
// build step); this file is the public entry point and re-exports them.


/**
 * @typedef {Object} StoredEvent  An entry of the log (PROTOCOL.md section 2).
 * @property {number} id
 * @property {string} flow
 * @property {"message"|"edit"|"tag"|"delete"|string} type
 * @property {string} user
 * @property {number} sent
 * @property {string} uuid
 * @property {string} [content]
 * @property {number} [message]
 * @property {string[]} [add]
 * @property {string[]} [remove]
 * @property {string[]} [tags]
 */

/**
 * @typedef {Object} MessageView  One entry of `rt.timeline(flow)`.
 * @property {number|null} id       null while pending
 * @property {string} flow
 * @property {string|null} user
 * @property {number} sent          server ms (client ms while pending)
 * @property {string} content       "" once deleted
 * @property {string[]} tags
 * @property {number|false} edited  id of the last edit, or false
 * @property {boolean} deleted
 * @property {boolean} pending      a post not yet stored
 * @property {boolean} [syncing]    ops of this page on it are not settled yet (shown applied)
 * @property {string} [uuid]        when known (posts of this page, stream events)
 */

/**
 * @typedef {Object} OpEntry  One op of the outbox (what is persisted).
 * @property {string} uuid
 * @property {"post"|"edit"|"tag"|"delete"} kind
 * @property {string} flow
 * @property {string} [content]
 * @property {number|string} [message]  an id, or the uuid of a post it waits for
 * @property {string[]} [add]
 * @property {string[]} [remove]
 * @property {number} created           client ms
 * @property {number} [seq]
 * In memory only (never stored):
 * @property {number} [attempts]        failed attempts so far
 * @property {number} [notBefore]       when it may be sent again (ms)
 * @property {boolean} [settled]
 */

/**
 * @typedef {Object} PendingOp  What post/edit/tag/untag/remove return at once.
 * @property {string} uuid
 * @property {string} flow
 * @property {boolean} pending          true until `done` settles
 * @property {Promise<Object>} done     the stored event, or `{changed:false,state}`
 * @property {string} [content]
 * @property {number|string} [message]
 * @property {string[]} [add]
 * @property {string[]} [remove]
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [url]          server base URL (default location.origin)
 * @property {string} token          bearer token
 * @property {string[]} flows        flows to follow
 * @property {string} [transport]    "auto" (default) or a name of TRANSPORTS
 * @property {number} [history]      messages per flow to load (default 50, 0..500)
 * @property {Storage|null} [storage] where the outbox is kept (default localStorage)
 */


export { Client, connect } from "./rt/client.js";
export { TRANSPORTS, READY_TIMEOUT_MS, HEALTHY_MS, BACKOFF_BASE_MS, BACKOFF_CAP_MS } from "./rt/constants.js";
export { RtError } from "./rt/errors.js";
export { randomToken, makeClientId, makeUuid, isClientId, isUuid, isFlow, isCallbackName } from "./rt/ids.js";
export { outboxKey, Outbox, opRequest, isEchoOf } from "./rt/outbox.js";
export { splitWsFrame, NdjsonParser, SseParser, boundaryFromContentType, MultipartParser, CallbackRegistry, JsonpRegistry } from "./rt/parsers.js";
export { backoffDelay, Backoff, Watchdog, parseRetryAfter, classifyStatus, retryDelay } from "./rt/retry.js";
export { Timeline } from "./rt/timeline.js";
