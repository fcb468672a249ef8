//! permessage-deflate (RFC 7692): the negotiation of its parameters and the
//! per-message codec, both free of I/O.

mod codec;
mod negotiate;
mod zlib;

pub use codec::{MessageDeflater, MessageInflater};
pub use negotiate::{
    accept_offer, check_response, offer, DeflateConfig, Direction, ExtensionError,
    NegotiatedDeflate,
};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The RSV bit that marks a compressed message (on its first frame).
pub const RSV1: u8 = 0b100;

/// The smallest LZ77 window zlib can compress with (it refuses 8 for raw
/// deflate); 8 is still fine for inflating.
pub const MIN_DEFLATE_WINDOW_BITS: u8 = 9;

/// The largest LZ77 window, also the default.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The wire size one compressed frame may reach when what it inflates to
/// is within `limit`: deflate's worst case on incompressible data is a few
/// bytes per 16 KiB block, and the frame's flush adds an empty block.
/// The inflated size is what `limit` is checked against.
pub fn compressed_limit(limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    limit.saturating_add(limit / 16).saturating_add(1024)
}

/// Compressed bytes a message may take per byte it may inflate to: a
/// fragment of one byte takes 7 with its sync flush (a 3-byte block and
/// the 4-byte empty block of the flush), the worst a fragment that carries
/// data can do.
pub const COMPRESSED_PER_INFLATED: u64 = 8;

/// The compressed payload a message may take, summed over its fragments,
/// when it may inflate to `limit` (0: no limit): 8 × `limit` + 1 KiB. Any
/// message within the limit fits, however finely it is fragmented, as long
/// as its fragments carry data; fragments that inflate to nothing (empty
/// flushes) only fit until the bound. It bounds the work one message costs:
/// inflating is linear in its input, and only the inflated message is kept.
pub fn compressed_message_limit(limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    limit
        .saturating_mul(COMPRESSED_PER_INFLATED)
        .saturating_add(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bound_is_eight_times_the_limit_and_a_kib() {
        assert_eq!(compressed_message_limit(0), 0, "no limit stays no limit");
        assert_eq!(compressed_message_limit(1), 8 + 1024);
        assert_eq!(compressed_message_limit(65_536), 8 * 65_536 + 1024);
        assert_eq!(compressed_message_limit(u64::MAX), u64::MAX);
        assert!(compressed_message_limit(65_536) >= compressed_limit(65_536));
    }

    /// The rule's worst case: a message at the limit, one byte per
    /// fragment, each fragment sync-flushed, fits; so does any coarser
    /// fragmentation.
    #[test]
    fn any_fragmentation_of_a_message_within_the_limit_fits() {
        let limit = 4096usize;
        let text: Vec<u8> = (0..limit).map(|i| b"abcdefghij"[i % 10]).collect();
        let noise: Vec<u8> = (0..limit as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&text, &noise] {
            for step in [1, 2, 3, 7, 100, limit] {
                for level in [1, 9] {
                    let mut d = MessageDeflater::new(level, 15, 8, true).unwrap();
                    let mut wire = 0;
                    let mut parts = data.chunks(step).peekable();
                    while let Some(part) = parts.next() {
                        let mut out = Vec::new();
                        assert!(d.compress(part, parts.peek().is_none(), &mut out));
                        wire += out.len() as u64;
                    }
                    assert!(
                        wire <= compressed_message_limit(limit as u64),
                        "{wire} bytes in fragments of {step} at level {level}"
                    );
                    if step == 1 {
                        assert!(wire > compressed_limit(limit as u64), "{wire}");
                    }
                }
            }
        }
    }
}
