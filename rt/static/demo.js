// rt demo chat: plain ES module on top of the browser client (PROTOCOL.md section 7).
//
// Rules this file keeps:
// - user content (names, messages, tags, flow names) goes into the page as text
//   only: textContent, createTextNode, dataset and setAttribute; never innerHTML;
// - no inline styles (the page runs under a CSP without 'unsafe-inline'): look
//   is driven by classes and data attributes in demo.css;
// - what the page shows comes from rt: rt.timeline(flow) for the messages, the
//   rt events for presence, typing, state; the HTTP API for accounts and flows.

import { connect } from "./rt.js";

const TRANSPORTS = ["auto", "ws", "sse", "xhr", "multipart", "poll", "jsonp", "htmlfile"];
const HISTORY = 50;            // messages per flow loaded at start
const MAX_FOLLOW = 100;        // flows per stream (server's max-flows default)
const TYPING_EVERY_MS = 1000;  // send at most one typing event a second
const TYPING_SHOWN_MS = 3000;  // show "x is typing" this long after their event
const HEALTH_EVERY_MS = 5000;  // time GET /health this often for the round trip
const FLOWS_EVERY_MS = 30000;  // refresh the flow list this often
const MAX_CONTENT_BYTES = 16 * 1024;
const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const FLOW_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const VISIBLE_RE = /[^\s\p{Cf}]/u;  // content needs a character outside White_Space and Cf

const KEYS = {
  token: "rt-demo:token",
  user: "rt-demo:user",
  transport: "rt-demo:transport",
  flow: "rt-demo:flow",
};

// ---- small helpers ------------------------------------------------------------

const $ = (id) => document.getElementById(id);

const saved = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try {
      if (value == null) localStorage.removeItem(key);
      else localStorage.setItem(key, value);
    } catch { /* private mode: nothing is remembered */ }
  },
};

/** An element with classes, attributes and text children; text is never parsed as HTML. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "hidden") el.hidden = true;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child == null || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

function errorText(err) {
  if (err == null) return "something went wrong";
  if (typeof err === "string") return err;
  return err.message || err.code || String(err);
}

function errorCode(err) {
  return (err && (err.code || (err.error && err.error.code))) || null;
}

const utf8Length = (text) => new TextEncoder().encode(text).length;

const isNarrow = () => window.matchMedia("(max-width: 760px)").matches;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call the HTTP API (PROTOCOL.md section 4); resolves to the JSON body or null. */
async function api(method, path, body, token = state.token) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, location.origin), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, "network", "Cannot reach the server. Check the connection and try again.");
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || `http_${response.status}`,
                       error.message || `The server answered ${response.status}.`);
  }
  return data;
}

const flowPath = (flow) => `/flows/${encodeURIComponent(flow)}`;

// ---- state ------------------------------------------------------------------------

const state = {
  token: null,
  me: null,
  rt: null,
  flows: [],                 // [{name, private, owner}] as GET /flows lists them
  current: null,             // the flow on screen
  shownFlow: null,           // the flow whose messages the list holds
  unread: new Map(),         // flow -> messages from others since it was last on screen
  presence: new Map(),       // flow -> Set of users online
  typing: new Map(),         // flow -> Map(user -> time their typing lapses)
  noOlder: new Set(),        // flows whose whole history is held
  loadingOlder: false,
  lastTypingSent: 0,
  sentAt: new Map(),         // uuid of an own post -> performance.now() when sent
  rtt: null,
  stickToBottom: true,
  timers: [],
};

// Message elements of the current flow, found by stored id or (while pending) uuid.
const shown = { byId: new Map(), byUuid: new Map() };

// ---- views --------------------------------------------------------------------------

function showView(view) {
  $("app").dataset.view = view;
  $("login-view").hidden = view !== "login";
  $("chat-view").hidden = view !== "chat";
  if (view === "login") {
    setDrawer(false);
    document.title = "rt demo chat";
  }
}

function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("menu-toggle").setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
  if (open) {
    const current = document.querySelector('[data-testid="flow-item"][aria-current="true"]');
    (current || $("new-flow-name")).focus();
  }
}

let toastSeen = new Map();

/** A dismissible notice; the same text twice within 5 s shows once. */
function toast(text, kind = "error") {
  const now = Date.now();
  if ((toastSeen.get(text) || 0) > now - 5000) return;
  toastSeen.set(text, now);
  const box = $("toasts");
  while (box.children.length >= 3) box.firstElementChild.remove();
  const close = h("button", { type: "button", "aria-label": "Dismiss", text: "×" });
  const item = h("div", { class: `toast ${kind}`, "data-testid": "toast" }, h("p", { text }), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

// ---- signing in and out -----------------------------------------------------------

function showLoginError(text) {
  $("login-error").textContent = text;
}

async function loginAsGuest(event) {
  event.preventDefault();
  const name = $("login-name").value.trim().toLowerCase();
  showLoginError("");
  if (!name) {
    showLoginError("Enter a name to join.");
    $("login-name").focus();
    return;
  }
  if (!NAME_RE.test(name)) {
    showLoginError("A name is 1 to 32 lowercase letters, digits, - or _, starting with a letter or digit.");
    $("login-name").focus();
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  try {
    const result = await api("POST", "/auth/guest", { name }, null);
    await signIn(result.token, result.user);
  } catch (err) {
    if (err.status === 409) {
      showLoginError(`The name “${name}” is taken. Choose another name.`);
    } else if (err.status === 404) {
      showLoginError("Guest accounts are off on this server. Sign in with a token instead.");
    } else if (err.status === 429) {
      showLoginError("Too many new accounts from your address. Wait a minute and try again.");
    } else {
      showLoginError(errorText(err));
    }
    $("login-name").focus();
    $("login-name").select();
  } finally {
    button.disabled = false;
  }
}

async function loginWithToken(event) {
  event.preventDefault();
  const token = $("login-token").value.trim();
  showLoginError("");
  if (!token) {
    showLoginError("Paste a token to sign in.");
    return;
  }
  try {
    const me = await api("GET", "/me", undefined, token);
    $("login-token").value = "";
    await signIn(token, me.user);
  } catch (err) {
    showLoginError(err.status === 401 ? "That token is not valid (or it was revoked)." : errorText(err));
  }
}

async function signIn(token, user) {
  state.token = token;
  state.me = user;
  saved.set(KEYS.token, token);
  saved.set(KEYS.user, user);
  $("me-name").textContent = user;
  showLoginError("");
  showView("chat");
  await refreshFlows({ first: true });
  startTimers();
}

function signOut(message = "") {
  stopTimers();
  if (state.rt) {
    try { state.rt.close(); } catch { /* already closed */ }
  }
  state.rt = null;
  state.token = null;
  state.me = null;
  state.flows = [];
  state.current = null;
  state.shownFlow = null;
  state.unread.clear();
  state.presence.clear();
  state.typing.clear();
  state.noOlder.clear();
  state.sentAt.clear();
  state.rtt = null;
  saved.set(KEYS.token, null);
  saved.set(KEYS.user, null);
  clearMessages();
  $("flow-list").replaceChildren();
  $("presence-list").replaceChildren();
  $("typing").textContent = "";
  $("me-name").textContent = "";
  $("composer").value = "";
  showConnection("offline");
  showRtt(null);
  showView("login");
  showLoginError(message);
  $("login-name").focus();
}

/** At page load: use the remembered token if the server still knows it. */
async function resume() {
  if (state.token) return;  // signed in meanwhile
  const token = saved.get(KEYS.token);
  if (!token) {
    showView("login");
    return;
  }
  if ($("app").dataset.view !== "login") showView("loading");
  try {
    const me = await api("GET", "/me", undefined, token);
    if (state.token) return;
    await signIn(token, me.user);
  } catch (err) {
    if (state.token) return;
    if (err.status === 401) {
      saved.set(KEYS.token, null);
      showView("login");
      showLoginError("Your saved session has ended. Sign in again.");
    } else if (err.status === 0 || err.status >= 500) {
      showView("login");
      showLoginError("Cannot reach the server. Retrying…");
      setTimeout(resume, 3000);
    } else {
      showView("login");
      showLoginError(errorText(err));
    }
  }
}

// ---- the rt client ------------------------------------------------------------------

function followed() {
  const names = state.flows.map((f) => f.name).slice(0, MAX_FOLLOW);
  if (state.current && !names.includes(state.current)) names[names.length ? names.length - 1 : 0] = state.current;
  return names;
}

function startClient() {
  const flows = followed();
  if (!flows.length) return;
  let transport = saved.get(KEYS.transport) || "auto";
  if (!TRANSPORTS.includes(transport)) transport = "auto";
  $("transport-select").value = transport;
  let rt;
  try {
    rt = connect({ url: location.origin, token: state.token, flows, transport, history: HISTORY });
  } catch (err) {
    toast(`Could not start the client: ${errorText(err)}`);
    return;
  }
  state.rt = rt;
  // A client that was closed (sign out, reconnect) may still call back: ignore it.
  const mine = (fn) => (arg) => { if (state.rt === rt) fn(arg); };
  rt.on("event", mine(onEvent));
  rt.on("presence", mine(onPresence));
  rt.on("typing", mine(onTyping));
  rt.on("state", mine(onState));
  rt.on("reset", mine(onReset));
  rt.on("error", mine(onError));
  // rt.js's own addition to section 7: "timeline" fires (coalesced, with the
  // flow) whenever rt.timeline(flow) changed: history, events, pending ops.
  rt.on("timeline", mine(onTimeline));
  showConnection("connecting");
  scheduleRender();
}

function restartClient() {
  if (state.rt) {
    try { state.rt.close(); } catch { /* already closed */ }
  }
  state.rt = null;
  clearMessages();
  startClient();
}

function onEvent(event) {
  if (!event || !state.rt) return;
  const t0 = event.uuid ? state.sentAt.get(event.uuid) : undefined;
  if (t0 !== undefined) {
    state.sentAt.delete(event.uuid);
    showRtt(performance.now() - t0, "post → echo");
  }
  if (event.type === "message") {
    stopTyping(event.flow, event.user);
    if (event.flow !== state.current && event.user !== state.me) {
      state.unread.set(event.flow, (state.unread.get(event.flow) || 0) + 1);
      renderUnread(event.flow);
    }
  }
  if (event.flow === state.current) scheduleRender();
}

function onTimeline(flow) {
  const name = typeof flow === "string" ? flow : flow && flow.flow;
  if (!name || name === state.current) renderMessages();
}

function onPresence(p) {
  if (!p || !p.flow) return;
  if (Array.isArray(p.users)) {
    // rt.js sends the whole list with each change (and the ready snapshot).
    state.presence.set(p.flow, new Set(p.users));
  } else {
    let users = state.presence.get(p.flow);
    if (!users) state.presence.set(p.flow, (users = new Set()));
    if (p.state === "offline") users.delete(p.user);
    else if (p.user) users.add(p.user);
  }
  if (p.flow === state.current) renderPresence();
}

function onTyping(t) {
  if (!t || !t.flow || !t.user || t.user === state.me) return;
  let users = state.typing.get(t.flow);
  if (!users) state.typing.set(t.flow, (users = new Map()));
  users.set(t.user, Date.now() + TYPING_SHOWN_MS);
  if (t.flow === state.current) renderTyping();
}

function stopTyping(flow, user) {
  const users = state.typing.get(flow);
  if (users && users.delete(user) && flow === state.current) renderTyping();
}

function onState(s) {
  const value = typeof s === "string" ? s : (s && s.state) || "offline";
  showConnection(value);
  scheduleRender();
}

function onReset() {
  state.noOlder.clear();
  clearMessages();
  state.stickToBottom = true;
  scheduleRender();
}

async function onError(err) {
  const code = errorCode(err);
  if (code === "unauthorized" && state.token) {
    // A ticket can lapse; a revoked token cannot come back. Ask the server which.
    try {
      await api("GET", "/me");
    } catch (e) {
      if (e.status === 401) {
        signOut("Your session has ended (the token was revoked). Sign in again.");
        return;
      }
    }
  }
  if (err && err.op) {
    // A failed op: rt.js has dropped its pending copy already.
    const what = { post: "send the message", edit: "edit the message", tag: "change the tags",
                   delete: "delete the message" }[err.op] || err.op;
    toast(`Could not ${what}: ${errorText(err)}`);
  } else {
    toast(errorText(err));
  }
  scheduleRender();
}

/**
 * Run an rt operation. A refusal at once (a bad argument) is reported here;
 * a failure later comes as an "error" event (onError), which rt.js emits as
 * well as rejecting `done`.
 */
function runOp(what, start) {
  let op;
  try {
    op = start();
  } catch (err) {
    toast(`${what} failed: ${errorText(err)}`);
    return null;
  }
  scheduleRender();
  if (op && op.done && typeof op.done.then === "function") {
    op.done.then(scheduleRender, scheduleRender);
  }
  return op;
}

// ---- connection, transport, round trip ---------------------------------------

const STATE_LABELS = {
  connecting: "connecting",
  open: "open",
  reconnecting: "reconnecting",
  offline: "offline",
};

function showConnection(value) {
  const el = $("connection-state");
  el.dataset.state = value;
  el.textContent = STATE_LABELS[value] || value;
  $("conn-state-detail").textContent = STATE_LABELS[value] || value;
  $("reconnect").hidden = !(value === "offline" && state.token);
  showTransport();
}

function showTransport() {
  const rt = state.rt;
  const transport = (rt && rt.transport) || "–";
  if ($("transport-current").textContent !== transport) {
    $("transport-current").textContent = transport;
    $("conn-transport-detail").textContent = transport;
  }
  const cursor = rt && rt.cursor != null ? String(rt.cursor) : "–";
  if ($("conn-cursor-detail").textContent !== cursor) $("conn-cursor-detail").textContent = cursor;
}

function showRtt(ms, source) {
  const el = $("rtt");
  if (ms == null) {
    el.textContent = "– ms";
    el.dataset.ms = "";
    $("conn-rtt-detail").textContent = "–";
    return;
  }
  const rounded = Math.max(0, Math.round(ms));
  state.rtt = rounded;
  el.textContent = `${rounded} ms`;
  el.dataset.ms = String(rounded);
  el.dataset.source = source;
  el.title = `Round-trip time (${source})`;
  $("conn-rtt-detail").textContent = `${rounded} ms (${source})`;
}

async function pingHealth() {
  if (!state.token || document.visibilityState === "hidden") return;
  const t0 = performance.now();
  try {
    const response = await fetch(new URL("/health", location.origin), { cache: "no-store", credentials: "omit" });
    await response.text();
    if (response.ok && state.token) showRtt(performance.now() - t0, "GET /health");
  } catch { /* offline: the state shows it */ }
}

function startTimers() {
  stopTimers();
  pingHealth();
  state.timers.push(setInterval(pingHealth, HEALTH_EVERY_MS));
  state.timers.push(setInterval(showTransport, 1000));
  state.timers.push(setInterval(() => refreshFlows().catch(() => {}), FLOWS_EVERY_MS));
  state.timers.push(setInterval(() => {
    // forget posts whose echo never came (failed or long gone)
    const old = performance.now() - 60000;
    for (const [uuid, t0] of state.sentAt) if (t0 < old) state.sentAt.delete(uuid);
  }, 30000));
}

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

// ---- flows --------------------------------------------------------------------------

async function refreshFlows({ first = false } = {}) {
  if (!state.token) return;
  let data;
  try {
    data = await api("GET", "/flows");
  } catch (err) {
    if (err.status === 401) {
      signOut("Your session has ended. Sign in again.");
      return;
    }
    if (first) toast(`Could not list the flows: ${errorText(err)}`);
    if (first) setTimeout(() => refreshFlows({ first: true }), 3000);
    return;
  }
  if (!state.token) return;
  const before = followed().join(",");
  const listed = JSON.stringify(state.flows);
  state.flows = (data.flows || []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const names = state.flows.map((f) => f.name);
  const lost = !state.current || !names.includes(state.current);
  if (lost) {
    const wanted = [decodeHash(), saved.get(KEYS.flow), "general", names[0]];
    state.current = wanted.find((n) => n && names.includes(n)) || null;
  }
  // Rebuild the list only when it changed (a rebuild would take the keyboard focus away).
  if (lost || JSON.stringify(state.flows) !== listed) renderFlows();
  if (!state.rt) {
    startClient();
    selectFlow(state.current, { focus: false });
    return;
  }
  if (followed().join(",") !== before) {
    try { state.rt.setFlows(followed()); } catch (err) { toast(errorText(err)); }
  }
  if (lost) selectFlow(state.current, { focus: false });
  else scheduleRender();
}

function decodeHash() {
  try { return decodeURIComponent(location.hash.slice(1)); } catch { return ""; }
}

function renderFlows() {
  const list = $("flow-list");
  const items = state.flows.map((flow) => {
    const current = flow.name === state.current;
    const button = h("button", {
      type: "button",
      class: "flow-item",
      "data-testid": "flow-item",
      "aria-current": current ? "true" : "false",
      title: `#${flow.name}${flow.private ? " (private)" : ""}`,
      dataset: { flow: flow.name },
    },
    h("span", { class: "name", text: `#${flow.name}` }),
    flow.private ? h("span", { class: "lock", text: "private" }) : null,
    h("span", { class: "unread", "data-testid": "flow-unread", hidden: true }));
    showUnread(button.querySelector(".unread"), flow.name);
    return h("li", {}, button);
  });
  list.replaceChildren(...items);
  if (!state.flows.length) {
    list.append(h("li", { class: "hint", text: "No flows yet: create one below." }));
  }
}

function unreadText(flow) {
  const n = state.unread.get(flow) || 0;
  return n ? (n > 99 ? "99+" : String(n)) : "";
}

function showUnread(badge, flow) {
  const text = unreadText(flow);
  badge.hidden = !text;
  badge.replaceChildren(text, h("span", { class: "visually-hidden", text: " unread" }));
  badge.dataset.count = String(state.unread.get(flow) || 0);
}

function renderUnread(flow) {
  for (const button of $("flow-list").querySelectorAll('[data-testid="flow-item"]')) {
    if (button.dataset.flow === flow) showUnread(button.querySelector(".unread"), flow);
  }
}

function selectFlow(name, { focus = true } = {}) {
  const changed = name !== state.shownFlow;
  state.current = name;
  state.shownFlow = name;
  $("flow-name").textContent = name || "";
  document.title = name ? `#${name} · rt demo chat` : "rt demo chat";
  $("composer").disabled = !name;
  $("send").disabled = !name;
  $("presence-flow").textContent = name ? `#${name}` : "this flow";
  $("composer").placeholder = !name ? "Message"
    : name.length > 24 ? `Message #${name.slice(0, 22)}…` : `Message #${name}`;
  if (!name) {
    clearMessages();
    renderPresence();
    renderTyping();
    return;
  }
  saved.set(KEYS.flow, name);
  if (decodeHash() !== name) history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  state.unread.set(name, 0);
  for (const button of $("flow-list").querySelectorAll('[data-testid="flow-item"]')) {
    button.setAttribute("aria-current", button.dataset.flow === name ? "true" : "false");
  }
  renderUnread(name);
  if (changed) {
    clearMessages();
    state.stickToBottom = true;
    $("composer").value = "";
    sizeComposer();
  }
  if (state.rt && !followed().includes(name)) {
    try { state.rt.setFlows(followed()); } catch (err) { toast(errorText(err)); }
  }
  renderMessages();
  renderPresence();
  renderTyping();
  if (!state.presence.has(name)) refreshPresence(name);
  const fromDrawer = $("app").classList.contains("drawer-open");
  setDrawer(false);
  if (focus) {
    // On a phone, focusing the composer would pop the keyboard up: focus the list.
    if (isNarrow()) { if (fromDrawer) $("message-list").focus(); }
    else $("composer").focus();
  }
}

async function createFlow(event) {
  event.preventDefault();
  const input = $("new-flow-name");
  const error = $("new-flow-error");
  const name = input.value.trim().toLowerCase().replace(/^#/, "");
  error.textContent = "";
  if (!FLOW_RE.test(name)) {
    error.textContent = "A flow name is 1 to 64 lowercase letters, digits, - or _, starting with a letter or digit.";
    input.focus();
    return;
  }
  const button = $("new-flow-submit");
  button.disabled = true;
  try {
    await api("POST", "/flows", { name, private: $("new-flow-private").checked });
    input.value = "";
    $("new-flow-private").checked = false;
    await refreshFlows();
    selectFlow(name);
  } catch (err) {
    error.textContent = err.status === 409 ? `A flow named “${name}” exists already.` : errorText(err);
    input.focus();
  } finally {
    button.disabled = false;
  }
}

// ---- presence and typing -----------------------------------------------------------

/** Presence from the API, for a flow the stream has not reported yet. */
async function refreshPresence(flow) {
  try {
    const data = await api("GET", `${flowPath(flow)}/presence`);
    if (state.presence.has(flow)) return;  // the stream's snapshot came first: it is newer
    state.presence.set(flow, new Set(data.users || []));
    if (flow === state.current) renderPresence();
  } catch { /* the stream's presence events still come */ }
}

function renderPresence() {
  const list = $("presence-list");
  const users = [...(state.presence.get(state.current) || [])].sort((a, b) => a.localeCompare(b));
  list.replaceChildren(...users.map((user) => h("li", {
    "data-testid": "presence-user",
    dataset: { user },
  }, user, user === state.me ? h("span", { class: "you", text: " (you)" }) : null)));
}

let typingTimer = null;

function renderTyping() {
  clearTimeout(typingTimer);
  const now = Date.now();
  const users = state.typing.get(state.current) || new Map();
  for (const [user, until] of users) if (until <= now) users.delete(user);
  const names = [...users.keys()].sort((a, b) => a.localeCompare(b));
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length === 3) text = `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  else if (names.length > 3) text = "Several people are typing…";
  const el = $("typing");
  if (el.textContent !== text) el.textContent = text;
  el.dataset.users = names.join(",");
  if (names.length) {
    const next = Math.min(...users.values()) - now;
    typingTimer = setTimeout(renderTyping, Math.max(50, next + 20));
  }
}

function sendTyping() {
  const flow = state.current;
  if (!flow || !state.token) return;
  const now = Date.now();
  if (now - state.lastTypingSent < TYPING_EVERY_MS) return;
  state.lastTypingSent = now;
  api("POST", `${flowPath(flow)}/typing`).catch(() => { /* best effort */ });
}

// ---- messages -----------------------------------------------------------------------

function clearMessages() {
  $("message-list").replaceChildren();
  $("jump").hidden = true;
  shown.byId.clear();
  shown.byUuid.clear();
  $("empty").hidden = true;
}

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => {
    if (!renderQueued) return;
    renderQueued = false;
    renderMessages();
  };
  requestAnimationFrame(run);
  setTimeout(run, 100);  // rAF does not run in a hidden tab
}

const refOf = (m) => (m.id != null ? m.id : m.uuid);
const isOwn = (m) => (m.user ? m.user === state.me : !!m.pending);

function timelineOf(flow) {
  if (!state.rt || !flow) return [];
  try {
    return state.rt.timeline(flow) || [];
  } catch {
    return [];
  }
}

/** Bring the list in line with rt.timeline(current), keeping elements (and focus) alive. */
function renderMessages() {
  renderQueued = false;
  const list = $("message-list");
  const flow = state.current;
  const items = timelineOf(flow).filter((m) => m && !m.deleted);

  // Where the reader is: stuck to the bottom, or anchored to a visible message.
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const stick = state.stickToBottom || atBottom;
  let anchor = null;
  let anchorOffset = 0;
  if (!stick) {
    for (const el of list.children) {
      if (el.offsetTop + el.offsetHeight > list.scrollTop) {
        anchor = el;
        anchorOffset = el.offsetTop - list.scrollTop;
        break;
      }
    }
  }

  const ordered = [];
  const used = new Set();
  for (const m of items) {
    let el = (m.id != null && shown.byId.get(m.id)) || (m.uuid && shown.byUuid.get(m.uuid)) || null;
    if (!el || used.has(el)) el = createMessage(m);
    updateMessage(el, m);
    used.add(el);
    ordered.push(el);
  }
  shown.byId.clear();
  shown.byUuid.clear();
  for (const el of ordered) {
    const m = el._m;
    if (m.id != null) shown.byId.set(m.id, el);
    if (m.uuid) shown.byUuid.set(m.uuid, el);
  }
  // A message not on screen yet at the end: something new arrived.
  const newAtEnd = ordered.length > 0 && !ordered[ordered.length - 1].isConnected && list.children.length > 0;
  for (const child of [...list.children]) if (!used.has(child)) child.remove();
  let ref = list.firstElementChild;
  for (const el of ordered) {
    if (el === ref) ref = ref.nextElementSibling;
    else list.insertBefore(el, ref);
  }

  if (stick) {
    list.scrollTop = list.scrollHeight;
    state.stickToBottom = false;
    $("jump").hidden = true;
  } else {
    if (anchor && anchor.isConnected) list.scrollTop = anchor.offsetTop - anchorOffset;
    // Something new below while the reader is up in the history: offer a way down.
    if (newAtEnd) $("jump").hidden = false;
  }
  // "No messages yet" only once the history is in (rt.cursor is set with it).
  $("empty").hidden = !(flow && state.rt && state.rt.cursor != null && ordered.length === 0);
  renderLoadOlder();
  showTransport();
}

function renderLoadOlder() {
  const button = $("load-older");
  const flow = state.current;
  if (state.loadingOlder) {
    button.disabled = true;
    button.textContent = "Loading…";
  } else if (flow && state.noOlder.has(flow)) {
    button.disabled = true;
    button.textContent = "Start of the flow";
  } else {
    button.disabled = !flow || !state.rt;
    button.textContent = "Load older messages";
  }
}

function createMessage(m) {
  const own = isOwn(m);
  // The author may edit and delete; the flow's owner may delete too (PROTOCOL.md section 2).
  const flow = state.flows.find((f) => f.name === (m.flow || state.current));
  const canDelete = own || (!!flow && !!state.me && flow.owner === state.me);
  const key = String(m.id != null ? m.id : m.uuid).replace(/[^A-Za-z0-9_-]/g, "_");
  const tagId = `tag-input-${key}-${Math.random().toString(36).slice(2, 8)}`;
  const el = h("li", { class: own ? "msg own" : "msg", "data-testid": "message" },
    h("div", { class: "msg-meta" },
      h("span", { class: "msg-author", "data-testid": "message-author" }),
      h("time", { class: "msg-time" }),
      h("span", { class: "msg-edited", "data-testid": "message-edited", text: "(edited)", hidden: true }),
      h("span", { class: "msg-pending-label", "data-testid": "message-pending", text: "sending…", hidden: true }),
      h("span", { class: "msg-pending-label msg-syncing-label", "data-testid": "message-syncing", text: "saving…", hidden: true }),
      canDelete ? h("span", { class: "msg-actions" },
        own ? h("button", { type: "button", "data-testid": "message-edit", "data-action": "edit", text: "Edit" }) : null,
        h("button", { type: "button", class: "danger", "data-testid": "message-delete", "data-action": "delete", text: "Delete" }))
        : null),
    h("p", { class: "msg-content", "data-testid": "message-content" }),
    h("div", { class: "msg-foot" },
      h("span", { class: "tags" }),
      h("form", { class: "tag-form", novalidate: true },
        h("label", { class: "visually-hidden", for: tagId, text: "Add a tag" }),
        h("input", { id: tagId, type: "text", "data-testid": "tag-input", placeholder: "+ tag",
                     autocomplete: "off", autocapitalize: "none", spellcheck: "false", maxlength: "64" }))));
  el._tags = null;
  return el;
}

function updateMessage(el, m) {
  const previous = el._m;
  el._m = m;
  const pending = !!m.pending;
  el.dataset.id = m.id != null ? String(m.id) : "";
  if (m.uuid) el.dataset.uuid = m.uuid;
  else delete el.dataset.uuid;
  el.dataset.pending = String(pending);
  el.dataset.user = m.user || state.me || "";
  el.classList.toggle("pending", pending);
  if (pending || m.syncing) el.setAttribute("aria-busy", "true");
  else el.removeAttribute("aria-busy");

  const author = el.querySelector(".msg-author");
  const name = m.user || state.me || "";
  if (author.textContent !== name) author.textContent = name;

  const time = el.querySelector(".msg-time");
  if (m.sent && (!previous || previous.sent !== m.sent)) {
    const when = new Date(m.sent);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
    time.title = when.toLocaleString();
  } else if (!m.sent) {
    time.textContent = "";
    time.removeAttribute("datetime");
  }

  el.querySelector(".msg-edited").hidden = !m.edited;
  el.querySelector('[data-testid="message-pending"]').hidden = !pending;
  el.querySelector('[data-testid="message-syncing"]').hidden = pending || !m.syncing;
  el.classList.toggle("syncing", !pending && !!m.syncing);

  const content = el.querySelector(".msg-content");
  const text = m.content == null ? "" : String(m.content);
  if (content.textContent !== text) content.textContent = text;

  const tags = Array.isArray(m.tags) ? m.tags : [];
  const signature = JSON.stringify(tags);
  if (el._tags !== signature) {
    el._tags = signature;
    el.querySelector(".tags").replaceChildren(...tags.map(tagChip));
  }
  const input = el.querySelector('[data-testid="tag-input"]');
  input.setAttribute("aria-label", `Add a tag to the message by ${name}`);
}

function tagChip(tag) {
  return h("span", { class: "chip", "data-testid": "tag-chip", dataset: { tag } },
    h("span", { class: "chip-text", text: tag }),
    h("button", { type: "button", class: "chip-remove", "data-testid": "tag-remove",
                  "data-action": "untag", "aria-label": `Remove tag ${tag}`, title: `Remove tag ${tag}`,
                  text: "×" }));
}

function messageOf(target) {
  const el = target.closest('[data-testid="message"]');
  return el && el._m ? { el, m: el._m } : null;
}

function onMessageClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const found = messageOf(button);
  if (!found || !state.rt) return;
  const { el, m } = found;
  const flow = m.flow || state.current;
  const action = button.dataset.action;
  if (action === "untag") {
    const tag = button.closest('[data-testid="tag-chip"]').dataset.tag;
    runOp("Removing the tag", () => state.rt.untag(flow, refOf(m), [tag]));
  } else if (action === "edit") {
    startEdit(el);
  } else if (action === "delete") {
    runOp("Deleting", () => state.rt.remove(flow, refOf(m)));
  } else if (action === "save") {
    saveEdit(el);
  } else if (action === "cancel") {
    endEdit(el);
  }
}

function onTagSubmit(event) {
  const form = event.target.closest(".tag-form");
  if (!form) return;
  event.preventDefault();
  const found = messageOf(form);
  if (!found || !state.rt) return;
  const input = form.querySelector("input");
  const tags = input.value.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
  if (!tags.length) return;
  const { m } = found;
  input.value = "";
  runOp("Adding the tag", () => state.rt.tag(m.flow || state.current, refOf(m), tags));
}

function startEdit(el) {
  if (el.querySelector(".edit-form")) {
    el.querySelector(".edit-form textarea").focus();
    return;
  }
  const m = el._m;
  const id = `edit-${Math.random().toString(36).slice(2, 10)}`;
  const textarea = h("textarea", { id, rows: "3", "data-testid": "message-edit-input" });
  textarea.value = m.content || "";
  const form = h("form", { class: "edit-form", novalidate: true },
    h("label", { class: "visually-hidden", for: id, text: "Edit message" }),
    textarea,
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "primary", "data-action": "save", "data-testid": "message-edit-save", text: "Save" }),
      h("button", { type: "button", class: "secondary", "data-action": "cancel", "data-testid": "message-edit-cancel", text: "Cancel" })));
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      saveEdit(el);
    } else if (event.key === "Escape") {
      event.preventDefault();
      endEdit(el);
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(el);
  });
  el.querySelector(".msg-content").hidden = true;
  el.querySelector(".msg-content").after(form);
  el.classList.add("editing");
  textarea.focus();
  textarea.setSelectionRange(textarea.value.length, textarea.value.length);
}

function endEdit(el) {
  const form = el.querySelector(".edit-form");
  if (form) form.remove();
  el.querySelector(".msg-content").hidden = false;
  el.classList.remove("editing");
  const edit = el.querySelector('[data-testid="message-edit"]');
  if (edit && el.contains(document.activeElement) === false) edit.focus();
}

function saveEdit(el) {
  const m = el._m;
  const textarea = el.querySelector(".edit-form textarea");
  if (!textarea || !state.rt) return;
  const text = textarea.value;
  if (!VISIBLE_RE.test(text)) {
    toast("A message cannot be empty; use Delete to remove it.");
    return;
  }
  if (utf8Length(text) > MAX_CONTENT_BYTES) {
    toast("That message is too long (16 KiB at most).");
    return;
  }
  endEdit(el);
  if (text === m.content) return;
  runOp("Editing", () => state.rt.edit(m.flow || state.current, refOf(m), text));
}

async function loadOlder() {
  const flow = state.current;
  if (!flow || !state.rt || state.loadingOlder || state.noOlder.has(flow)) return;
  state.loadingOlder = true;
  renderLoadOlder();
  const before = timelineOf(flow).filter((m) => m.id != null).length;
  try {
    const result = await state.rt.loadOlder(flow);
    const after = timelineOf(flow).filter((m) => m.id != null).length;
    // rt.loadOlder resolves to the message states it added: none means no more.
    const got = Array.isArray(result) ? result.length : typeof result === "number" ? result : after - before;
    if (got <= 0) state.noOlder.add(flow);
  } catch (err) {
    toast(`Could not load older messages: ${errorText(err)}`);
  } finally {
    state.loadingOlder = false;
    if (flow === state.current) renderMessages();
    else renderLoadOlder();
  }
}

// ---- the composer ---------------------------------------------------------------------

/** Grow the composer with its text (wrapped lines too), up to 8 rows; via `rows`, not styles. */
function sizeComposer() {
  const composer = $("composer");
  composer.rows = 1;
  if (!composer.value) return;
  const style = getComputedStyle(composer);
  const line = parseFloat(style.lineHeight) || 20;
  const padding = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
  const rows = Math.round((composer.scrollHeight - padding) / line);
  composer.rows = Math.min(8, Math.max(1, rows));
}

function send() {
  const composer = $("composer");
  const text = composer.value;
  const flow = state.current;
  if (!flow || !state.rt) return;
  if (!VISIBLE_RE.test(text)) return;
  if (utf8Length(text) > MAX_CONTENT_BYTES) {
    toast("That message is too long (16 KiB at most).");
    return;
  }
  const t0 = performance.now();
  const op = runOp("Sending", () => state.rt.post(flow, text));
  if (!op) return;
  if (op.uuid) state.sentAt.set(op.uuid, t0);
  composer.value = "";
  sizeComposer();
  state.stickToBottom = true;
  state.lastTypingSent = 0;
  renderMessages();
  composer.focus();
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", loginAsGuest);
  $("token-form").addEventListener("submit", loginWithToken);
  $("sign-out").addEventListener("click", () => signOut());
  $("reconnect").addEventListener("click", restartClient);
  $("new-flow").addEventListener("submit", createFlow);

  $("flow-list").addEventListener("click", (event) => {
    const button = event.target.closest('[data-testid="flow-item"]');
    if (button) selectFlow(button.dataset.flow);
  });

  $("menu-toggle").addEventListener("click", () => {
    setDrawer(!$("app").classList.contains("drawer-open"));
  });
  $("scrim").addEventListener("click", () => setDrawer(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && $("app").classList.contains("drawer-open")) {
      setDrawer(false);
      $("menu-toggle").focus();
    }
  });
  window.matchMedia("(max-width: 760px)").addEventListener("change", () => setDrawer(false));

  $("transport-select").addEventListener("change", (event) => {
    const transport = event.target.value;
    saved.set(KEYS.transport, transport);
    if (!state.rt) return;
    try {
      state.rt.setTransport(transport);
    } catch (err) {
      toast(`Could not switch transport: ${errorText(err)}`);
    }
    showTransport();
  });

  const list = $("message-list");
  list.addEventListener("click", onMessageClick);
  list.addEventListener("submit", onTagSubmit);
  list.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.target.matches('[data-testid="tag-input"]')) {
      event.target.value = "";
      event.target.blur();
    }
  });
  list.addEventListener("scroll", () => {
    if (list.scrollTop < 60 && list.scrollHeight > list.clientHeight) loadOlder();
    if (list.scrollHeight - list.scrollTop - list.clientHeight < 40) $("jump").hidden = true;
  }, { passive: true });
  $("jump").addEventListener("click", () => {
    list.scrollTop = list.scrollHeight;
    $("jump").hidden = true;
    list.focus();
  });
  $("load-older").addEventListener("click", loadOlder);

  const composer = $("composer");
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      send();
    }
  });
  composer.addEventListener("input", () => {
    sizeComposer();
    if (VISIBLE_RE.test(composer.value)) sendTyping();
  });
  $("composer-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });

  window.addEventListener("hashchange", () => {
    const name = decodeHash();
    if (name && name !== state.current && state.flows.some((f) => f.name === name)) selectFlow(name);
  });
}

wire();
renderLoadOlder();
if (saved.get(KEYS.token)) showView("loading");  // no flash of the sign-in form
resume();
