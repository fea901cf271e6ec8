// Close codes the client sends or reads, by name, and the error every failure is given as.

/** WebSocket close codes (RFC 6455 §7.4.1, and the client's own in the 4000 range). */
export const CloseCode = Object.freeze({
  /** The app or the client closed on purpose. */
  NORMAL: 1000,
  /** No close frame came: the connection died (also what a missing pong is treated as). */
  ABNORMAL: 1006,
  /** The client replaced its own connection (a new token, a WebSocket again after a fallback). */
  REPLACED: 4000,
});

/** An error with a protocol code (`forbidden`, `rate_limited`, ... or the client's own). */
export class HeraldError extends Error {
  constructor(code, message, details = {}) {
    super(message ?? code);
    this.name = "HeraldError";
    this.code = code;
    Object.assign(this, details);
  }
}
