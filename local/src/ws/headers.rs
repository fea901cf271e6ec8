//! Client frame headers, read as the bytes pass on their way to tungstenite.
//!
//! tungstenite hands the reader whole messages, so the fragments of a message meet the
//! frame rate only once it ends, and the fragments of a message that never ends (empty
//! continuation frames, sent forever) would never meet it at all. Following the headers in
//! the byte stream lets every continuation frame count as it arrives; the frames that begin
//! a message, and control frames, are counted when tungstenite returns them. Nothing here
//! judges a frame: a malformed one is tungstenite's to refuse.

/// The opcode of a continuation frame (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
/// The longest header: two bytes, an eight-byte length, a four-byte mask.
const MAX_HEADER: usize = 14;

/// Where the stream is: inside a header, or inside a payload.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    /// The header read so far.
    header: [u8; MAX_HEADER],
    /// How much of `header` is read.
    have: usize,
    /// Payload bytes still to pass before the next header.
    skip: u64,
}

impl Headers {
    /// Follows `bytes`, the next ones from the client; answers how many continuation
    /// frames began in them.
    pub(crate) fn continuations(&mut self, mut bytes: &[u8]) -> usize {
        let mut found = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let passed = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                bytes = &bytes[passed..];
                self.skip -= passed as u64;
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some((opcode, payload)) = self.complete() {
                found += usize::from(opcode == CONTINUATION);
                self.skip = payload;
                self.have = 0;
            }
        }
        found
    }

    /// The opcode and payload length, once the header read so far is whole.
    fn complete(&self) -> Option<(u8, u64)> {
        // With one byte read, `second` is the last header's: whatever it says, the header
        // is at least two bytes, so the length check below answers `None`.
        let (first, second) = (self.header[0], self.header[1]);
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 == 0 { 0 } else { 4 };
        if self.have < 2 + extended + mask {
            return None;
        }
        let [_, _, a, b, c, d, e, f, g, h, ..] = self.header;
        let payload = match extended {
            2 => u64::from(u16::from_be_bytes([a, b])),
            8 => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
            _ => u64::from(second & 0x7f),
        };
        Some((first & 0x0f, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame: its header (with `opcode` and FIN as given) and `payload`.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        framed(opcode, fin, payload, true)
    }

    /// A frame, masked or not.
    fn framed(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn an_unmasked_frame_has_no_mask_to_skip() {
        // Clients must mask (tungstenite refuses a frame that is not); followed all the same.
        let mut bytes = framed(CONTINUATION, false, &[], false);
        bytes.extend(framed(CONTINUATION, false, b"abc", false));
        bytes.extend(frame(CONTINUATION, true, b"d"));
        assert_eq!(Headers::default().continuations(&bytes), 3);
    }

    fn stream() -> Vec<u8> {
        let mut bytes = frame(0x1, false, b"begin");
        bytes.extend(frame(CONTINUATION, false, &[]));
        bytes.extend(frame(CONTINUATION, false, &[b'x'; 300]));
        bytes.extend(frame(0x9, true, b"ping"));
        bytes.extend(frame(CONTINUATION, false, &[b'y'; 70_000]));
        bytes.extend(frame(CONTINUATION, true, b"end"));
        bytes.extend(frame(0x1, true, b"whole"));
        bytes
    }

    #[test]
    fn counts_the_continuation_frames_whatever_their_lengths() {
        assert_eq!(Headers::default().continuations(&stream()), 4);
    }

    #[test]
    fn counts_the_same_however_the_bytes_are_split() {
        let bytes = stream();
        for size in [1, 2, 3, 7, 14, 127, 4096] {
            let mut headers = Headers::default();
            let found: usize = bytes
                .chunks(size)
                .map(|chunk| headers.continuations(chunk))
                .sum();
            assert_eq!(found, 4, "chunks of {size}");
        }
    }

    #[test]
    fn a_payload_that_looks_like_headers_is_skipped() {
        let mut headers = Headers::default();
        let fake = frame(CONTINUATION, false, &[]);
        let bytes = frame(0x1, true, &fake.repeat(10));
        assert_eq!(headers.continuations(&bytes), 0);
        assert_eq!(
            headers.continuations(&fake),
            1,
            "and the next header is found"
        );
    }

    /// Property tests: any frames, split anywhere, are followed exactly; any bytes at all
    /// are followed without a panic.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Cases per property: a case follows a few hundred kilobytes at most.
        const CASES: u32 = 300;

        /// A frame's opcode, FIN bit and payload length, with lengths of every header form
        /// (7-bit, 16-bit, 64-bit) likely.
        fn frames() -> impl Strategy<Value = Vec<(u8, bool, usize)>> {
            let length = prop_oneof![0usize..126, 126usize..=0xffff, 0x1_0000usize..0x1_2000];
            proptest::collection::vec((0u8..16, any::<bool>(), length), 0..12)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]

            #[test]
            fn any_frames_split_anywhere_are_counted_exactly(
                shape in frames(),
                fill in any::<u8>(),
                cuts in proptest::collection::vec(1usize..5_000, 1..8),
            ) {
                let mut bytes = Vec::new();
                for &(opcode, fin, len) in &shape {
                    bytes.extend(frame(opcode, fin, &vec![fill; len]));
                }
                let expected = shape.iter().filter(|(opcode, _, _)| *opcode == CONTINUATION).count();
                let mut headers = Headers::default();
                let (mut found, mut rest, mut cut) = (0, &bytes[..], cuts.iter().cycle());
                while !rest.is_empty() {
                    let (now, later) = rest.split_at((*cut.next().unwrap()).min(rest.len()));
                    found += headers.continuations(now);
                    rest = later;
                }
                prop_assert_eq!(found, expected);
            }

            #[test]
            fn any_bytes_are_followed_without_a_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..4_096),
                chunk in 1usize..64,
            ) {
                let mut headers = Headers::default();
                let found: usize = bytes.chunks(chunk).map(|c| headers.continuations(c)).sum();
                prop_assert!(found <= bytes.len() / 2, "a header is at least two bytes");
            }
        }
    }
}
