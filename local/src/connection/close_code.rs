//! WebSocket close codes by name (RFC 6455 §7.4.1), as the gateway sends them and as
//! `$disconnect` reports them.

/// The connection did what it was for.
pub const NORMAL: u16 = 1000;
/// The server is going away: shutdown, idle timeout, maximum duration.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol (an unmasked frame, reserved bits, a bad opcode).
pub const PROTOCOL_ERROR: u16 = 1002;
/// The endpoint received data it cannot accept (for API Gateway: a binary frame).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Reported, never sent: the client's close frame had no code.
pub const NO_STATUS: u16 = 1005;
/// Reported, never sent: the connection ended without a close frame.
pub const ABNORMAL: u16 = 1006;
/// A text message that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The peer broke a policy (here: a slow consumer whose queue overflowed).
pub const POLICY_VIOLATION: u16 = 1008;
/// A message or frame over the size limits.
pub const MESSAGE_TOO_BIG: u16 = 1009;
