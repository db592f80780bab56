// Client ids and uuids (random, of the grammars of PROTOCOL.md 1), and the checks of names.

import { CALLBACK_RE, CLIENT_RE, FLOW_RE, UUID_RE } from "./constants.js";

/**
 * `n` random bytes as base64url (no padding).
 * @param {number} n
 * @param {{getRandomValues?: Function}|undefined} [cryptoObj]
 * @returns {string}
 */
export function randomToken(n, cryptoObj = globalThis.crypto) {
  const bytes = new Uint8Array(n);
  if (cryptoObj && typeof cryptoObj.getRandomValues === "function") {
    cryptoObj.getRandomValues(bytes);
  } else {
    for (let i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A client id: 22 characters of [A-Za-z0-9_-], made once per page. */
export function makeClientId(cryptoObj = globalThis.crypto) {
  return randomToken(16, cryptoObj);
}

/** A uuid for one op: crypto.randomUUID() (36 characters), else 22 random characters. */
export function makeUuid(cryptoObj = globalThis.crypto) {
  if (cryptoObj && typeof cryptoObj.randomUUID === "function") return cryptoObj.randomUUID();
  return randomToken(16, cryptoObj);
}

/** @param {unknown} s */
export const isClientId = (s) => typeof s === "string" && CLIENT_RE.test(s);
/** @param {unknown} s */
export const isUuid = (s) => typeof s === "string" && UUID_RE.test(s);
/** @param {unknown} s */
export const isFlow = (s) => typeof s === "string" && FLOW_RE.test(s);
/** @param {unknown} s */
export const isCallbackName = (s) => typeof s === "string" && s.length <= 64 && CALLBACK_RE.test(s);
