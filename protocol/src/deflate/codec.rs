//! Compressing and inflating the messages of one direction (RFC 7692 §7.2):
//! raw deflate, every frame flushed, the `00 00 ff ff` tail of a message
//! stripped when sending and restored when receiving.

use flate2::{Decompress, FlushDecompress, Status};

use super::zlib::RawDeflate;
use super::MIN_DEFLATE_WINDOW_BITS;
use crate::ProtocolError;

/// What a sync flush ends with; removed from the end of every message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is grown by at most this much at a time while inflating, so that
/// a decompression bomb stops near the limit.
const INFLATE_STEP: usize = 16 * 1024;

/// The compressing side of one direction.
pub struct MessageDeflater {
    z: RawDeflate,
    no_context_takeover: bool,
}

impl MessageDeflater {
    /// `level` 1–9; `window_bits` 9–15 (smaller is raised to 9, zlib's
    /// least); `mem_level` 1–9 sizes zlib's hash table and block buffer
    /// (2^(mem_level + 9) bytes together). `None` without memory.
    pub fn new(
        level: u32,
        window_bits: u8,
        mem_level: u8,
        no_context_takeover: bool,
    ) -> Option<Self> {
        let bits = window_bits.clamp(MIN_DEFLATE_WINDOW_BITS, 15);
        let z = RawDeflate::new(level.clamp(1, 9), bits, mem_level.clamp(1, 9))?;
        Some(MessageDeflater {
            z,
            no_context_takeover,
        })
    }

    /// Compresses one frame's part of a message and appends it to `out`.
    /// Every part is flushed, so a frame can go out before the next is
    /// known; `fin` marks the message's last part. False if zlib failed.
    pub fn compress(&mut self, input: &[u8], fin: bool, out: &mut Vec<u8>) -> bool {
        let start_out = out.len();
        if !self.z.compress_sync(input, out) {
            return false;
        }
        if fin {
            if out.len() == start_out {
                // zlib emits nothing for a second flush in a row: the
                // message ends with an empty stored block, tail stripped.
                out.push(0x00);
            } else if out[start_out..].ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            } else {
                return false;
            }
            if self.no_context_takeover {
                self.z.reset();
            }
        }
        true
    }
}

/// The inflating side of one direction.
pub struct MessageInflater {
    z: Decompress,
    no_context_takeover: bool,
    /// The peer ended its deflate stream (BFINAL): start afresh next message.
    ended: bool,
}

impl MessageInflater {
    /// `window_bits` 8–15; 8 inflates with 9, which reads the same data.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        let bits = window_bits.clamp(MIN_DEFLATE_WINDOW_BITS, 15);
        MessageInflater {
            z: Decompress::new_with_window_bits(false, bits),
            no_context_takeover,
            ended: false,
        }
    }

    /// Inflates one received part of a message onto `out`, which must not
    /// grow past `limit` bytes (then `MessageTooBig`, with no more than
    /// 16 KiB inflated beyond it). `fin` marks the last part.
    pub fn inflate(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        self.feed(input, out, limit)?;
        if fin {
            if !self.ended {
                self.feed(&TAIL, out, limit)?;
            }
            if self.no_context_takeover || self.ended {
                self.z.reset(false);
                self.ended = false;
            }
        }
        Ok(())
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), ProtocolError> {
        let start_in = self.z.total_in();
        loop {
            // What follows a final block is padding (RFC 7692 §7.2.3.4).
            if self.ended {
                return Ok(());
            }
            // Grow by what is there (at least 1 KiB), at most a step and
            // one byte past the limit: small messages keep small buffers.
            let room = limit.saturating_sub(out.len()).saturating_add(1);
            let grow = out.len().clamp(1024, INFLATE_STEP);
            if out.capacity() == out.len() {
                out.reserve_exact(room.min(grow));
            }
            let (before_in, before_out) = (self.z.total_in(), out.len());
            let consumed = (before_in - start_in) as usize;
            let status = self
                .z
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig {
                    len: out.len() as u64,
                    max: limit as u64,
                });
            }
            let consumed = (self.z.total_in() - start_in) as usize;
            if status == Status::StreamEnd {
                self.ended = true;
            }
            let progressed = self.z.total_in() > before_in || out.len() > before_out;
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            if !progressed && !self.ended {
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compress_message(d: &mut MessageDeflater, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let mut out = Vec::new();
                assert!(d.compress(part, i + 1 == parts.len(), &mut out));
                out
            })
            .collect()
    }

    fn inflate_message(
        i: &mut MessageInflater,
        parts: &[Vec<u8>],
        limit: usize,
    ) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        for (n, part) in parts.iter().enumerate() {
            i.inflate(part, n + 1 == parts.len(), &mut out, limit)?;
        }
        Ok(out)
    }

    #[test]
    fn rfc7692_examples() {
        // §7.2.3.1: "Hello" compressed, and §7.2.3.2's second message
        // referring back to the first.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut i = MessageInflater::new(15, false);
        assert_eq!(
            inflate_message(&mut i, &[hello.to_vec()], 100).unwrap(),
            b"Hello"
        );
        let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(
            inflate_message(&mut i, &[again.to_vec()], 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.3: a stored (uncompressed) block, and §7.2.3.4's two
        // blocks with BFINAL set on the second.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut i = MessageInflater::new(15, false);
        assert_eq!(
            inflate_message(&mut i, &[stored.to_vec()], 100).unwrap(),
            b"Hello"
        );
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(
            inflate_message(&mut i, &[bfinal.to_vec()], 100).unwrap(),
            b"Hello"
        );
        // After a final block the next message starts a fresh stream.
        assert_eq!(
            inflate_message(&mut i, &[hello.to_vec()], 100).unwrap(),
            b"Hello"
        );
        // Our own "Hello" is the RFC's bytes.
        let mut d = MessageDeflater::new(6, 15, 8, false).unwrap();
        assert_eq!(compress_message(&mut d, &[b"Hello"]), vec![hello.to_vec()]);
    }

    #[test]
    fn empty_message_is_one_byte() {
        let mut d = MessageDeflater::new(1, 15, 5, true).unwrap();
        let parts = compress_message(&mut d, &[b""]);
        assert_eq!(parts, vec![vec![0x00]]);
        let mut i = MessageInflater::new(15, true);
        assert_eq!(inflate_message(&mut i, &parts, 10).unwrap(), b"");
    }

    #[test]
    fn context_takeover_shrinks_repeats() {
        let msg = b"{\"user\":\"alice\",\"action\":\"update\",\"payload\":[1,2,3,4,5]}";
        let mut keep = MessageDeflater::new(1, 15, 5, false).unwrap();
        let mut reset = MessageDeflater::new(1, 15, 5, true).unwrap();
        let first = compress_message(&mut keep, &[msg]);
        let second = compress_message(&mut keep, &[msg]);
        assert!(second[0].len() < first[0].len() / 2, "{second:?}");
        let a = compress_message(&mut reset, &[msg]);
        let b = compress_message(&mut reset, &[msg]);
        assert_eq!(a, b);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut d = MessageDeflater::new(9, 15, 5, true).unwrap();
        let parts = compress_message(&mut d, &[&zeros]);
        assert!(parts[0].len() < 20_000, "{}", parts[0].len());
        let mut i = MessageInflater::new(15, true);
        let mut out = Vec::new();
        let err = i.inflate(&parts[0], true, &mut out, 65_536).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooBig { max: 65_536, .. }
        ));
        assert!(
            out.capacity() <= 65_536 + INFLATE_STEP,
            "{}",
            out.capacity()
        );
        // Exactly at the limit is fine.
        let mut i = MessageInflater::new(15, true);
        let parts = compress_message(
            &mut MessageDeflater::new(9, 15, 5, true).unwrap(),
            &[&zeros[..65_536]],
        );
        assert_eq!(
            inflate_message(&mut i, &parts, 65_536).unwrap().len(),
            65_536
        );
    }

    #[test]
    fn garbage_is_refused() {
        let mut i = MessageInflater::new(15, false);
        let mut out = Vec::new();
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff, 0xff], true, &mut out, 1000),
            Err(ProtocolError::InvalidCompressedData)
        );
        // A block type that does not exist (BTYPE 11).
        let mut i = MessageInflater::new(15, false);
        assert_eq!(
            i.inflate(&[0x07, 0x00], true, &mut out, 1000),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    proptest! {
        #[test]
        fn round_trip_in_any_fragments(
            messages in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..3000), 0usize..4, 0u8..3),
                1..6,
            ),
            window in 8u8..=15,
            takeover in any::<bool>(),
        ) {
            let mut d = MessageDeflater::new(6, window, 1 + window % 9, !takeover).unwrap();
            let mut i = MessageInflater::new(window, !takeover);
            for (data, splits, repeat) in &messages {
                // Repetitive input exercises back-references.
                let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * (*repeat as usize + 1)).collect();
                let step = data.len() / (splits + 1) + 1;
                let mut parts: Vec<&[u8]> = if data.is_empty() { vec![&data[..]] } else { data.chunks(step).collect() };
                if *splits == 3 {
                    parts.push(&[]); // an empty last fragment
                }
                let compressed = compress_message(&mut d, &parts);
                prop_assert_eq!(inflate_message(&mut i, &compressed, data.len()).unwrap(), data);
            }
        }
    }
}
