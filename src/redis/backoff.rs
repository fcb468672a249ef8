//! Reconnect delays: exponential, from `first` doubling up to `max`, back
//! to `first` once a connection works again.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: u64,
    max: u64,
    next: u64,
}

impl Backoff {
    pub const DEFAULT_FIRST_MS: u64 = 100;
    pub const DEFAULT_MAX_MS: u64 = 5000;

    pub fn new(first_ms: u64, max_ms: u64) -> Self {
        let first = first_ms.max(1);
        let max = max_ms.max(first);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> u64 {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// `next_delay` less up to a fifth, by `random` (any value): the
    /// workers of every server that lost the same Redis do not all come
    /// back in the same millisecond.
    pub fn next_delay_jittered(&mut self, random: u32) -> u64 {
        let delay = self.next_delay();
        let span = delay / 5;
        delay
            - if span == 0 {
                0
            } else {
                u64::from(random) % (span + 1)
            }
    }

    /// A connection worked: the next outage starts from `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Self::DEFAULT_FIRST_MS, Self::DEFAULT_MAX_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), 100);
        assert_eq!(b.next_delay(), 200);
    }

    #[test]
    fn jitter_takes_up_to_a_fifth() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_jittered(0), 100);
        assert_eq!(
            b.next_delay_jittered(u32::MAX),
            200 - (u32::MAX as u64 % 41)
        );
        let mut b = Backoff::default();
        for r in [1u32, 7, 19, 20, 21, 1000, u32::MAX] {
            let d = b.next_delay_jittered(r);
            b.reset();
            assert!((80..=100).contains(&d), "{r}: {d}");
        }
        let mut b = Backoff::new(1, 1);
        assert_eq!(b.next_delay_jittered(u32::MAX), 1);
    }

    #[test]
    fn odd_settings_stay_sane() {
        let mut b = Backoff::new(0, 0);
        assert_eq!(b.next_delay(), 1);
        assert_eq!(b.next_delay(), 1);
        let mut b = Backoff::new(300, 100);
        assert_eq!(b.next_delay(), 300);
        assert_eq!(b.next_delay(), 300);
        let mut b = Backoff::new(u64::MAX / 2 + 1, u64::MAX);
        b.next_delay();
        assert_eq!(b.next_delay(), u64::MAX);
        assert_eq!(b.next_delay(), u64::MAX);
    }
}
