//! WebSocket frames from the gateway to a client, as bytes on the wire (RFC 6455 §5.2).
//!
//! A server's frames are not masked, so a notification's frame is the same bytes for every
//! recipient: it is encoded once per publish and every writer sends those bytes as they
//! are, with no per-recipient framing or copy in user space. tungstenite still reads each
//! connection (unmasking, reassembly, limits); only the writing side is done here.
//!
//! A frame keeps its opcode and where its payload starts ([`Encoded`]), so the transports
//! that are not WebSockets (SSE, long polling) read a queued notification's payload as it
//! is, without parsing the frame back.
//!
//! Each frame is stamped, when encoded, with the next number of one process-wide sequence
//! ([`Encoded::sequence`]): a socket that reads from several queues (its outbox and the
//! rings of its rooms, `ring.rs`) merges them by it, so that what one publisher sent one
//! after another reaches each client in that order.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// A UTF-8 text message.
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// The closing handshake.
    Close = 0x8,
}

/// The FIN bit: every frame sent here is a whole message.
const FIN: u8 = 0x80;

/// A frame as it goes on the wire, with what it carries.
#[derive(Debug, Clone)]
pub struct Encoded {
    bytes: Bytes,
    /// `None` for bytes tungstenite framed itself (the pongs it answers pings with), which
    /// only a WebSocket writer sends.
    opcode: Option<Opcode>,
    payload_at: usize,
    sequence: u64,
}

/// The sequence every frame is stamped from; 0 is never handed out, so that a reader whose
/// snapshot is 0 has seen nothing.
static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// The next number of the sequence.
fn stamp() -> u64 {
    SEQUENCE.fetch_add(1, Ordering::SeqCst)
}

/// The last number handed out so far: every frame stamped up to it was stamped before this
/// call, so a queue locked after it holds each of those it will ever hold that was pushed
/// before the frame stamped next.
pub fn sequence_now() -> u64 {
    SEQUENCE.load(Ordering::SeqCst) - 1
}

/// Two frames are the same when they carry the same bytes, whenever they were stamped.
impl PartialEq for Encoded {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
            && self.opcode == other.opcode
            && self.payload_at == other.payload_at
    }
}

impl Eq for Encoded {}

impl Encoded {
    /// Bytes tungstenite framed itself: sent as they are, carrying nothing another
    /// transport reads.
    pub fn control(bytes: Bytes) -> Self {
        let payload_at = bytes.len();
        Self {
            bytes,
            opcode: None,
            payload_at,
            sequence: stamp(),
        }
    }

    /// Where the frame stands in the process-wide order of frames (see the module header).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The frame's opcode, when it was encoded here.
    pub fn opcode(&self) -> Option<Opcode> {
        self.opcode
    }

    /// What the frame carries: a notification's JSON, a close frame's code and reason.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.payload_at..]
    }

    /// The text a notification frame carries; `None` for any other frame.
    pub fn text(&self) -> Option<&[u8]> {
        (self.opcode == Some(Opcode::Text)).then(|| self.payload())
    }
}

impl Deref for Encoded {
    type Target = [u8];

    /// The whole frame, as the writer sends it.
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// One unfragmented, unmasked frame carrying `payload`.
pub fn encode(opcode: Opcode, payload: &[u8]) -> Encoded {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(FIN | opcode as u8);
    // The length takes 7 bits, or 126 then 16 bits, or 127 then 64 bits.
    match payload.len() {
        n @ 0..=125 => frame.put_u8(n as u8),
        n @ 126..=0xffff => {
            frame.put_u8(126);
            frame.put_u16(n as u16);
        }
        n => {
            frame.put_u8(127);
            frame.put_u64(n as u64);
        }
    }
    let payload_at = frame.len();
    frame.put_slice(payload);
    Encoded {
        bytes: frame.freeze(),
        opcode: Some(opcode),
        payload_at,
        sequence: stamp(),
    }
}

/// A close frame with `code` and `reason`, the reason cut (at a character boundary) to the
/// 123 bytes a control frame leaves for it.
pub fn close(code: u16, reason: &str) -> Encoded {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(Opcode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor, Read, Write};

    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    use super::*;
    use crate::connection::close_code;

    /// The opcode byte and payload of a frame, parsed back: the tests' check that
    /// [`encode`] wrote a frame as RFC 6455 reads it.
    fn decode(frame: &[u8]) -> Option<(u8, &[u8])> {
        let (&first, rest) = frame.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let (len, payload) = match len {
            126 => {
                let (n, rest) = rest.split_at_checked(2)?;
                (usize::from(u16::from_be_bytes([n[0], n[1]])), rest)
            }
            127 => {
                let (n, rest) = rest.split_at_checked(8)?;
                let n = u64::from_be_bytes(n.try_into().ok()?);
                (usize::try_from(n).ok()?, rest)
            }
            n => (usize::from(n), rest),
        };
        (payload.len() == len).then_some((first & 0x0f, payload))
    }

    #[test]
    fn a_frame_knows_its_payload_at_every_length_form() {
        for len in [0, 125, 126, 0xffff, 0x1_0000] {
            let payload = vec![b'x'; len];
            let frame = encode(Opcode::Text, &payload);
            assert_eq!(
                decode(&frame),
                Some((Opcode::Text as u8, &payload[..])),
                "{len}"
            );
            assert_eq!(frame.payload(), &payload[..], "{len}");
            assert_eq!(frame.text(), Some(&payload[..]), "{len}");
            let binary = encode(Opcode::Binary, &payload);
            assert_eq!(binary.text(), None, "{len}");
            assert_eq!(binary.opcode(), Some(Opcode::Binary));
            assert_eq!(decode(&frame[..frame.len() - 1]), None, "cut short");
        }
        let closing = close(1000, "bye");
        assert_eq!(
            decode(&closing).map(|(op, _)| op),
            Some(Opcode::Close as u8)
        );
        assert_eq!(closing.opcode(), Some(Opcode::Close));
        assert_eq!(closing.payload(), b"\x03\xe8bye");
        let pong = Encoded::control(Bytes::from_static(b"\x8a\x00"));
        assert_eq!(
            (pong.opcode(), pong.payload(), &pong[..]),
            (None, &b""[..], &b"\x8a\x00"[..])
        );
    }

    /// What a client receives: `bytes` read by tungstenite in the client role.
    struct Received(Cursor<Vec<u8>>);

    impl Read for Received {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Received {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The one message `bytes` hold, as a client reads it; fails if anything is left over.
    fn receive(bytes: &[u8]) -> Message {
        let stream = Received(Cursor::new(bytes.to_vec()));
        let mut ws = WebSocket::from_raw_socket(stream, Role::Client, None);
        let message = ws.read().expect("a valid frame");
        let rest = &ws.get_ref().0;
        assert_eq!(rest.position(), bytes.len() as u64, "one whole frame");
        message
    }

    #[test]
    fn every_length_encoding_reads_back_whole() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 128 * 1024] {
            let payload = "x".repeat(len);
            let message = receive(&encode(Opcode::Text, payload.as_bytes()));
            assert_eq!(message, Message::Text(Utf8Bytes::from(payload)), "{len}");
        }
        let message = receive(&encode(Opcode::Binary, &[0xff, 0]));
        assert_eq!(message, Message::Binary(vec![0xff, 0].into()));
    }

    #[test]
    fn close_frames_carry_the_code_and_a_reason_cut_to_fit() {
        let Message::Close(Some(frame)) =
            receive(&close(close_code::POLICY_VIOLATION, "slow consumer"))
        else {
            panic!("a close frame with a code");
        };
        assert_eq!(u16::from(frame.code), close_code::POLICY_VIOLATION);
        assert_eq!(frame.reason.as_str(), "slow consumer");

        let long = "é".repeat(100);
        let Message::Close(Some(frame)) = receive(&close(close_code::GOING_AWAY, &long)) else {
            panic!("a close frame with a code");
        };
        assert_eq!(
            frame.reason.as_str(),
            "é".repeat(61),
            "123 bytes at most, whole characters"
        );
    }
}
