//! The token bucket of one key, as `ngx_http_limit_req_module` keeps it:
//! `excess` counts messages above the rate in thousandths (milli-messages);
//! each message adds 1000, time drains `rate` (milli-messages per second).
//! A message that would leave more than `burst` waits or is refused.
//! Pure arithmetic on the worker's millisecond clock: no nginx.

/// The stored state of a bucket that has admitted a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Milli-messages above the rate, after the last admitted message.
    pub excess: u64,
    /// When the last admitted message came (`ngx_current_msec`).
    pub last: u64,
}

/// What a bucket says about one more message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within rate and burst: store `state` if the message is taken.
    Admit(State),
    /// Past rate and burst: the bucket drains enough in `wait_ms`.
    Over { excess: u64, wait_ms: u64 },
}

/// Milliseconds from `last` to `now` on a wrapping clock, with nginx's
/// guards: a clock seen going back by a minute or more counts as 1 ms, a
/// small step back as none.
fn elapsed(last: u64, now: u64) -> u64 {
    let ms = now.wrapping_sub(last) as i64;
    if ms < -60_000 {
        1
    } else {
        ms.max(0) as u64
    }
}

/// The verdict on a message arriving at `now` for a bucket in `state`
/// (`None`: a new key, whose first message is always admitted), with
/// `rate` in milli-messages per second (> 0) and `burst` in milli-messages.
pub fn check(state: Option<State>, now: u64, rate: u64, burst: u64) -> Verdict {
    let Some(state) = state else {
        return Verdict::Admit(State {
            excess: 0,
            last: now,
        });
    };
    let ms = elapsed(state.last, now);
    let drained = rate.saturating_mul(ms) / 1000;
    let excess = state.excess.saturating_add(1000).saturating_sub(drained);
    if excess > burst {
        // Rounded up, so that the bucket has drained enough when the wait
        // is over (the next check counts from the same `last`).
        let over = excess - burst;
        let wait_ms = over.saturating_mul(1000).div_ceil(rate).max(1);
        return Verdict::Over { excess, wait_ms };
    }
    // As nginx: `last` moves only when time passed, so that messages within
    // the same millisecond do not lose the drain of the next one.
    let last = if ms > 0 { now } else { state.last };
    Verdict::Admit(State { excess, last })
}

/// `rate=N r/s` or `N r/m` in milli-messages per second.
pub fn parse_rate(s: &[u8]) -> Option<u64> {
    let (number, scale) = if let Some(n) = s.strip_suffix(b"r/s") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix(b"r/m") {
        (n, 60)
    } else {
        (s, 1)
    };
    if number.is_empty() || !number.iter().all(u8::is_ascii_digit) || number.len() > 9 {
        return None;
    }
    let n: u64 = core::str::from_utf8(number).ok()?.parse().ok()?;
    let rate = n * 1000 / scale;
    (rate > 0).then_some(rate)
}

/// `burst=N` in milli-messages.
pub fn parse_burst(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) || s.len() > 9 {
        return None;
    }
    let n: u64 = core::str::from_utf8(s).ok()?.parse().ok()?;
    (n > 0).then_some(n * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R10: u64 = 10_000; // 10 r/s

    fn st(excess: u64, last: u64) -> Option<State> {
        Some(State { excess, last })
    }

    /// (name, state, now, rate, burst, verdict)
    type Case = (&'static str, Option<State>, u64, u64, u64, Verdict);

    #[test]
    fn verdicts() {
        let cases: &[Case] = &[
            (
                "a new key is admitted with no excess",
                None,
                500,
                R10,
                0,
                Verdict::Admit(State {
                    excess: 0,
                    last: 500,
                }),
            ),
            (
                "a second message at once, no burst: over by one message, 100 ms at 10 r/s",
                st(0, 500),
                500,
                R10,
                0,
                Verdict::Over {
                    excess: 1000,
                    wait_ms: 100,
                },
            ),
            (
                "after exactly the interval: admitted",
                st(0, 500),
                600,
                R10,
                0,
                Verdict::Admit(State {
                    excess: 0,
                    last: 600,
                }),
            ),
            (
                "40 ms later: over, 60 ms to go",
                st(0, 500),
                540,
                R10,
                0,
                Verdict::Over {
                    excess: 600,
                    wait_ms: 60,
                },
            ),
            (
                "burst 3 takes a fourth message at once",
                st(2000, 500),
                500,
                R10,
                3000,
                Verdict::Admit(State {
                    excess: 3000,
                    last: 500,
                }),
            ),
            (
                "a fifth is over",
                st(3000, 500),
                500,
                R10,
                3000,
                Verdict::Over {
                    excess: 4000,
                    wait_ms: 100,
                },
            ),
            (
                "a long quiet drains the bucket to empty",
                st(5000, 0),
                60_000,
                R10,
                0,
                Verdict::Admit(State {
                    excess: 0,
                    last: 60_000,
                }),
            ),
            (
                "in the same millisecond `last` stays",
                st(0, 100),
                100,
                R10,
                2000,
                Verdict::Admit(State {
                    excess: 1000,
                    last: 100,
                }),
            ),
            (
                "1 r/m: 16 milli-messages a second, the wait rounds up",
                st(0, 0),
                1000,
                16,
                0,
                Verdict::Over {
                    excess: 984,
                    wait_ms: 61_500,
                },
            ),
            (
                "the clock wraps: elapsed counts across",
                st(0, u64::MAX - 49),
                50,
                R10,
                0,
                Verdict::Admit(State {
                    excess: 0,
                    last: 50,
                }),
            ),
            (
                "a small step back counts as no time",
                st(0, 1000),
                990,
                R10,
                0,
                Verdict::Over {
                    excess: 1000,
                    wait_ms: 100,
                },
            ),
            (
                "a step back of over a minute counts as 1 ms",
                st(1000, 100_000),
                1000,
                1_000_000,
                1000,
                Verdict::Admit(State {
                    excess: 1000,
                    last: 1000,
                }),
            ),
        ];
        for (name, state, now, rate, burst, want) in cases {
            assert_eq!(check(*state, *now, *rate, *burst), *want, "{name}");
        }
    }

    #[test]
    fn a_steady_sender_gets_the_rate() {
        // A client that sends as soon as it may, for 10 s at 20 r/s with
        // burst 5: 5 + 1 at once, then one each 50 ms.
        let (rate, burst) = (20_000, 5000);
        let mut state = None;
        let mut now = 1_000_000u64;
        let end = now + 10_000;
        let mut admitted = 0;
        while now <= end {
            match check(state, now, rate, burst) {
                Verdict::Admit(s) => {
                    state = Some(s);
                    admitted += 1;
                }
                Verdict::Over { wait_ms, .. } => now += wait_ms,
            }
        }
        assert_eq!(admitted, 6 + 200);
    }

    #[test]
    fn rates_and_bursts_parse() {
        let rates: &[(&[u8], Option<u64>)] = &[
            (b"10r/s", Some(10_000)),
            (b"1r/s", Some(1000)),
            (b"30r/m", Some(500)),
            (b"1r/m", Some(16)),
            (b"5", Some(5000)),
            (b"0r/s", None),
            (b"r/s", None),
            (b"-1r/s", None),
            (b"10r/h", None),
            (b"ten", None),
            (b"", None),
            (b"9999999999r/s", None),
        ];
        for (s, want) in rates {
            assert_eq!(parse_rate(s), *want, "{}", s.escape_ascii());
        }
        let bursts: &[(&[u8], Option<u64>)] = &[
            (b"1", Some(1000)),
            (b"20", Some(20_000)),
            (b"0", None),
            (b"-2", None),
            (b"x", None),
            (b"", None),
        ];
        for (s, want) in bursts {
            assert_eq!(parse_burst(s), *want, "{}", s.escape_ascii());
        }
    }
}
