// Transports: each opens one connection and reports to handlers
//   objects(list)  what arrived, in order
//   bytes()        anything at all arrived (liveness)
//   end(info)      the connection is over: {kind: "ended"} (closed or failed),
//                  {kind: "refused", status, code, retryAfter} (HTTP status),
//                  {kind: "closed", code, reason} (WebSocket close)
// and stops with stop(), after which it reports nothing.

/** What every transport's connection shares: ending once, then telling the client. */
export class Connection {
  /** Stop (the subclass's `stop`) and report how the connection ended, once. */
  _end(info) {
    if (this.stopped) return;
    const h = this.ctx.h;
    this.stop();
    h.end(info);
  }
}
