// `RtError`: what "error" events carry and failed ops reject with.

/** An error emitted on "error" or rejecting an op's `done`. */
export class RtError extends Error {
  /**
   * @param {string} code     a PROTOCOL.md error code, a close reason, or "network"
   * @param {string} message
   * @param {{status?: number, retry?: boolean, retryAfter?: number|null, flow?: string, uuid?: string, op?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RtError";
    /** @type {string} */ this.code = code;
    /** @type {number|undefined} */ this.status = extra.status;
    /** @type {boolean} */ this.retry = Boolean(extra.retry);
    /** @type {number|null} */ this.retryAfter = extra.retryAfter ?? null;
    /** @type {string|undefined} */ this.flow = extra.flow;
    /** @type {string|undefined} */ this.uuid = extra.uuid;
    /** @type {string|undefined} */ this.op = extra.op;
  }
}
