//! `websocket_shutdown_spread`: when a worker exits, its sessions take
//! turns to close, so that their clients do not all reconnect at once.
//!
//! A worker is one process with one thread: these counters are its own.

use core::sync::atomic::{AtomicUsize, Ordering};

use ngx::ffi::ngx_msec_t;

/// Client-facing sessions alive in this worker.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Sessions told to shut down so far.
static TOLD: AtomicUsize = AtomicUsize::new(0);
/// Sessions alive when the first was told: the number of slots.
static SLOTS: AtomicUsize = AtomicUsize::new(0);

pub fn session_began() {
    LIVE.fetch_add(1, Ordering::Relaxed);
}

pub fn session_ended() {
    LIVE.fetch_sub(1, Ordering::Relaxed);
}

/// How long the session told now waits before its close: the k-th of N
/// sessions waits k × `spread` / N, so the closes go out evenly.
pub fn delay(spread: ngx_msec_t) -> ngx_msec_t {
    let k = TOLD.fetch_add(1, Ordering::Relaxed);
    if k == 0 {
        SLOTS.store(LIVE.load(Ordering::Relaxed).max(1), Ordering::Relaxed);
    }
    let slots = SLOTS.load(Ordering::Relaxed);
    slot_delay(spread, k, slots)
}

fn slot_delay(spread: ngx_msec_t, k: usize, slots: usize) -> ngx_msec_t {
    let k = k.min(slots.saturating_sub(1)) as u128;
    (u128::from(spread as u64) * k / slots.max(1) as u128) as ngx_msec_t
}

#[cfg(test)]
mod tests {
    use super::slot_delay;

    #[test]
    fn slots_are_even_and_within_the_spread() {
        assert_eq!(slot_delay(4000, 0, 100), 0);
        assert_eq!(slot_delay(4000, 50, 100), 2000);
        assert_eq!(slot_delay(4000, 99, 100), 3960);
        // Sessions beyond the count taken at the first (none should be) go last.
        assert_eq!(slot_delay(4000, 150, 100), 3960);
        assert_eq!(slot_delay(0, 7, 10), 0);
        assert_eq!(slot_delay(4000, 0, 0), 0);
    }
}
