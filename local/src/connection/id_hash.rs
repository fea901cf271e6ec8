//! How the gateway hashes connection ids in the tables a publish reads once per recipient
//! (the sockets, a ring's members, a room's queued members).

use std::hash::Hasher;

/// Hashes connection ids for the tables a publish reads once per recipient.
///
/// The ids in the table are random (this gateway generates them), so they need no keyed
/// hash to resist collisions chosen by a client, as SipHash provides at several times the
/// cost: mixing their bytes is enough.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
