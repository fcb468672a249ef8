//! Unpredictable bytes for the masking keys and `Sec-WebSocket-Key` values we
//! send (RFC 6455 §5.3, §10.3: masks protect intermediaries from a hostile
//! client, so they must come from a strong source of entropy). They come from
//! the OS's CSPRNG, getrandom(2), drawn in batches per worker so that masking
//! a frame costs no system call.

use core::cell::RefCell;
use core::fmt;

/// Bytes drawn per system call: 128 masks.
const BATCH: usize = 512;

/// The OS's random source failed; nothing was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyError(getrandom::Error);

impl fmt::Display for EntropyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the OS's random source failed: {}", self.0)
    }
}

impl std::error::Error for EntropyError {}

/// Drawn bytes not yet handed out. Each byte is handed out once.
struct Reserve {
    bytes: [u8; BATCH],
    next: usize,
}

thread_local! {
    /// nginx runs each worker on one thread.
    static RESERVE: RefCell<Reserve> = const {
        RefCell::new(Reserve { bytes: [0; BATCH], next: BATCH })
    };
}

/// Fills `out` with bytes from the OS's CSPRNG.
pub fn fill(out: &mut [u8]) -> Result<(), EntropyError> {
    if out.len() > BATCH {
        return getrandom::getrandom(out).map_err(EntropyError);
    }
    RESERVE.with(|reserve| {
        let mut reserve = reserve.borrow_mut();
        if BATCH - reserve.next < out.len() {
            getrandom::getrandom(&mut reserve.bytes).map_err(EntropyError)?;
            reserve.next = 0;
        }
        let start = reserve.next;
        out.copy_from_slice(&reserve.bytes[start..start + out.len()]);
        // Handed-out bytes are not kept where a later fault could show them.
        reserve.bytes[start..start + out.len()].fill(0);
        reserve.next += out.len();
        Ok(())
    })
}

/// A masking key.
pub fn mask() -> Result<[u8; 4], EntropyError> {
    let mut key = [0; 4];
    fill(&mut key)?;
    Ok(key)
}

/// Drops the bytes drawn before a fork: a worker must never hand out the same
/// bytes as its parent or a sibling.
pub fn forget_drawn() {
    RESERVE.with(|reserve| {
        let mut reserve = reserve.borrow_mut();
        reserve.bytes.fill(0);
        reserve.next = BATCH;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_do_not_repeat_across_batches() {
        let masks: Vec<[u8; 4]> = (0..4 * BATCH).map(|_| mask().unwrap()).collect();
        let mut sorted = masks.clone();
        sorted.sort_unstable();
        sorted.dedup();
        // 2,048 draws of 32 bits: a repeat has a chance of about 1 in 2,000.
        assert!(sorted.len() >= masks.len() - 1);
    }

    #[test]
    fn every_bit_varies() {
        let (mut ones, mut zeros) = (0u32, 0u32);
        for _ in 0..256 {
            let m = u32::from_ne_bytes(mask().unwrap());
            ones |= m;
            zeros |= !m;
        }
        assert_eq!(ones, u32::MAX);
        assert_eq!(zeros, u32::MAX);
    }

    #[test]
    fn large_requests_bypass_the_reserve() {
        let mut big = [0u8; BATCH + 1];
        fill(&mut big).unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }

    #[test]
    fn forgotten_bytes_are_not_handed_out() {
        let mut first = [0u8; 16];
        fill(&mut first).unwrap();
        let leftover = RESERVE.with(|r| {
            let r = r.borrow();
            r.bytes[r.next..].to_vec()
        });
        forget_drawn();
        let mut next = [0u8; 16];
        fill(&mut next).unwrap();
        assert_ne!(next.as_slice(), &leftover[..16]);
    }
}
