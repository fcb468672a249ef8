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

/// The wire size a compressed message may reach when its inflated size is
/// within `limit`: deflate's worst case on incompressible data is a few
/// bytes per 16 KiB block, and every flushed fragment adds an empty block.
/// The inflated size is what `limit` is checked against.
pub fn compressed_limit(limit: u64) -> u64 {
    if limit == 0 {
        return 0;
    }
    limit.saturating_add(limit / 16).saturating_add(1024)
}
