//! permessage-deflate: negotiation and the bounded inflater.
//!
//! Input: `[flags, limit_lo, limit_hi, split, bytes...]`.
//!
//! - The bytes, as a `Sec-WebSocket-Extensions` value, go to both sides of
//!   the negotiation: no panic; an accepted offer's answer is itself a valid
//!   response that the client side reads back to the same parameters.
//! - The bytes, as a compressed message split in two frames, go to an
//!   inflater with a limit: no panic, never more than the limit plus one
//!   inflate step of output, and an error exactly when it went over.
//! - The bytes, compressed and inflated again in the same split, come back
//!   unchanged (with and without context takeover, two messages in a row).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_fuzz::protocol::deflate::{
    accept_offer, check_response, DeflateConfig, MessageDeflater, MessageInflater,
};
use ws_fuzz::protocol::ProtocolError;

/// Output the inflater may make beyond the limit before it notices.
const STEP: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let [flags, lo, hi, split, bytes @ ..] = data else {
        return;
    };
    let cfg = DeflateConfig {
        window_bits: 8 + (flags & 7),
        context_takeover: flags & 8 == 0,
    };
    negotiate(bytes, &cfg);

    let limit = usize::from(u16::from_le_bytes([*lo, *hi]));
    let cut = usize::from(*split).min(bytes.len());
    let mut inflater = MessageInflater::new(cfg.window_bits, !cfg.context_takeover);
    let mut out = Vec::new();
    let result = inflater
        .inflate(&bytes[..cut], false, &mut out, limit)
        .and_then(|()| inflater.inflate(&bytes[cut..], true, &mut out, limit));
    assert!(
        out.len() <= limit + STEP,
        "{} bytes past a limit of {limit}",
        out.len()
    );
    if let Err(ProtocolError::MessageTooBig { .. }) = result {
        assert!(out.len() > limit);
    } else if result.is_ok() {
        assert!(out.len() <= limit);
    }

    let mut deflater = MessageDeflater::new(
        1 + u32::from(flags >> 4) % 9,
        cfg.window_bits,
        1 + (lo ^ hi) % 9,
        !cfg.context_takeover,
    )
    .expect("zlib initialises");
    let mut inflater = MessageInflater::new(cfg.window_bits, !cfg.context_takeover);
    for _ in 0..2 {
        let mut first = Vec::new();
        let mut second = Vec::new();
        assert!(deflater.compress(&bytes[..cut], false, &mut first));
        assert!(deflater.compress(&bytes[cut..], true, &mut second));
        let mut back = Vec::new();
        inflater
            .inflate(&first, false, &mut back, bytes.len())
            .expect("our own output inflates");
        inflater
            .inflate(&second, true, &mut back, bytes.len())
            .expect("our own output inflates");
        assert_eq!(back, bytes);
    }
});

fn negotiate(bytes: &[u8], cfg: &DeflateConfig) {
    let _ = check_response(&[bytes], cfg);
    if let Ok(Some((agreed, answer))) = accept_offer(&[bytes], cfg) {
        // The client side of the same agreement reads our answer back.
        let client = DeflateConfig {
            window_bits: 15,
            context_takeover: true,
        };
        let read = check_response(&[answer.as_bytes()], &client);
        if agreed.client_max_window_bits >= 9 {
            let read = read
                .expect("our answer is a valid response")
                .expect("accepted");
            assert_eq!(
                read.server_no_context_takeover,
                agreed.server_no_context_takeover
            );
            assert_eq!(read.server_max_window_bits, agreed.server_max_window_bits);
        }
    }
}
