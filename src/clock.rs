//! The timers of one WebSocket object, without I/O: when a quiet peer is
//! pinged (`websocket_ping_interval`), given up (`websocket_ping_timeout`,
//! `websocket_timeout`), and when the session is due to close (its age,
//! `websocket_max_session_time`, or its turn while the worker exits). The
//! time is passed in (nginx's cached milliseconds, which wrap around).

use ngx::ffi::ngx_msec_t;

use crate::stats::Limits;

/// What a quiet peer gets when its read deadline passes (see
/// [`WebSocket::on_read_timeout`](crate::WebSocket::on_read_timeout)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No heartbeats configured: it was idle for the `timeout`
    /// (`websocket_timeout`).
    Idle,
    /// A heartbeat ping is due (and was sent, once the session says so).
    Pinged,
    /// It did not answer a ping within the `ping_timeout`
    /// (`websocket_ping_timeout`).
    Dead,
    /// Not quiet: the session is due to close (its age, or its turn while
    /// the worker exits), or reading waited for a `websocket_limit` and
    /// may go on.
    Due,
}

/// Why a session is due to close with 1001 after the message under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// It lasted `websocket_max_session_time`.
    MaxSessionTime,
    /// The worker is exiting and the session's turn came.
    Drain,
}

/// Whether the clock reached `at`.
fn reached(at: ngx_msec_t, now: ngx_msec_t) -> bool {
    (now.wrapping_sub(at) as isize) >= 0
}

/// Milliseconds from `now` to `at`, at least 1.
fn until(at: ngx_msec_t, now: ngx_msec_t) -> ngx_msec_t {
    if reached(at, now) {
        1
    } else {
        at.wrapping_sub(now)
    }
}

/// The heartbeat and session-age timers of one object.
#[derive(Debug, Clone)]
pub struct Clock {
    timeout_ms: ngx_msec_t,
    ping_interval_ms: Option<ngx_msec_t>,
    ping_timeout_ms: ngx_msec_t,
    /// When bytes last arrived, and when an unanswered heartbeat ping went out.
    last_received: ngx_msec_t,
    ping_sent_at: Option<ngx_msec_t>,
    /// When the session reaches `websocket_max_session_time`.
    ends_at: Option<ngx_msec_t>,
    /// When the exiting worker's turn for this session comes.
    drains_at: Option<ngx_msec_t>,
}

impl Clock {
    /// A clock started at `now`; only a server (client-facing) side ages.
    pub fn new(now: ngx_msec_t, limits: Limits, server: bool) -> Clock {
        Clock {
            timeout_ms: limits.timeout_ms,
            ping_interval_ms: limits.ping_interval_ms,
            ping_timeout_ms: limits.ping_timeout_ms,
            last_received: now,
            ping_sent_at: None,
            ends_at: limits
                .max_session_ms
                .filter(|_| server)
                .map(|ms| now.wrapping_add(ms)),
            drains_at: None,
        }
    }

    /// `set_timeout`.
    pub fn set_timeout(&mut self, ms: ngx_msec_t) {
        self.timeout_ms = ms;
    }

    /// Bytes arrived: the peer is alive.
    pub fn received(&mut self, now: ngx_msec_t) {
        self.last_received = now;
        self.ping_sent_at = None;
    }

    /// The worker is exiting: the session's turn comes after `delay`.
    pub fn drain(&mut self, now: ngx_msec_t, delay: ngx_msec_t) {
        self.drains_at = Some(now.wrapping_add(delay));
    }

    /// Why the session became due to close since the last call (each
    /// reason is told once).
    pub fn take_due(&mut self, now: ngx_msec_t) -> Option<Due> {
        if self.ends_at.is_some_and(|at| reached(at, now)) {
            self.ends_at = None;
            return Some(Due::MaxSessionTime);
        }
        if self.drains_at.is_some_and(|at| reached(at, now)) {
            self.drains_at = None;
            return Some(Due::Drain);
        }
        None
    }

    /// The read deadline passed: what to do about a quiet peer. `Pinged`
    /// means a heartbeat ping is to be sent now (its pong is waited for).
    pub fn on_read_timeout(&mut self, now: ngx_msec_t) -> Quiet {
        if [self.ends_at, self.drains_at]
            .into_iter()
            .flatten()
            .any(|at| reached(at, now))
        {
            return Quiet::Due;
        }
        if self.ping_interval_ms.is_none() {
            return Quiet::Idle;
        }
        if self.ping_sent_at.is_some() {
            return Quiet::Dead;
        }
        self.ping_sent_at = Some(now);
        Quiet::Pinged
    }

    /// Milliseconds until the read deadline: the quiet peer's (see
    /// [`Self::quiet_deadline`]), or sooner when the session is due to close.
    pub fn read_deadline(&self, now: ngx_msec_t) -> ngx_msec_t {
        [self.ends_at, self.drains_at]
            .into_iter()
            .flatten()
            .map(|at| until(at, now))
            .fold(self.quiet_deadline(now), ngx_msec_t::min)
    }

    /// [`Self::read_deadline`] while reading waits until `at` (for a
    /// `websocket_limit`): the peer is not quiet, the wait ends first.
    pub fn read_deadline_waiting(&self, now: ngx_msec_t, at: ngx_msec_t) -> ngx_msec_t {
        [self.ends_at, self.drains_at]
            .into_iter()
            .flatten()
            .map(|due| until(due, now))
            .fold(until(at, now), ngx_msec_t::min)
    }

    /// Milliseconds until a quiet peer is dealt with: the heartbeat's when
    /// `websocket_ping_interval` is set, else `websocket_timeout`.
    fn quiet_deadline(&self, now: ngx_msec_t) -> ngx_msec_t {
        let Some(interval) = self.ping_interval_ms else {
            return self.timeout_ms;
        };
        let (since, wait) = match self.ping_sent_at {
            Some(sent) => (sent, self.ping_timeout_ms),
            None => (self.last_received, interval),
        };
        let elapsed = now.wrapping_sub(since);
        wait.saturating_sub(elapsed).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ping: Option<ngx_msec_t>, max_session: Option<ngx_msec_t>) -> Limits {
        Limits {
            max_recv_len: 65535,
            max_send_len: 65535,
            send_masked: false,
            timeout_ms: 60_000,
            ping_interval_ms: ping,
            ping_timeout_ms: 30_000,
            max_session_ms: max_session,
            shutdown_spread_ms: 0,
        }
    }

    /// What happens to a clock, step by step: (time, event, expected).
    enum Step {
        Received,
        Timeout(Quiet),
        Deadline(ngx_msec_t),
        Due(Option<Due>),
        Drain(ngx_msec_t),
    }

    fn run(
        name: &str,
        start: ngx_msec_t,
        clock_limits: Limits,
        server: bool,
        steps: &[(ngx_msec_t, Step)],
    ) {
        let mut c = Clock::new(start, clock_limits, server);
        for (i, (at, step)) in steps.iter().enumerate() {
            let now = start.wrapping_add(*at);
            match step {
                Step::Received => c.received(now),
                Step::Timeout(want) => {
                    assert_eq!(c.on_read_timeout(now), *want, "{name}: step {i}")
                }
                Step::Deadline(want) => assert_eq!(c.read_deadline(now), *want, "{name}: step {i}"),
                Step::Due(want) => assert_eq!(c.take_due(now), *want, "{name}: step {i}"),
                Step::Drain(delay) => c.drain(now, *delay),
            }
        }
    }

    #[test]
    fn quiet_peers_and_heartbeats() {
        use Step::*;
        for start in [0, 1_000, ngx_msec_t::MAX - 5_000] {
            run(
                "no heartbeat: idle after the timeout",
                start,
                limits(None, None),
                true,
                &[(0, Deadline(60_000)), (60_000, Timeout(Quiet::Idle))],
            );
            run(
                "heartbeat: ping, then dead without an answer",
                start,
                limits(Some(10_000), None),
                true,
                &[
                    (0, Deadline(10_000)),
                    (4_000, Deadline(6_000)),
                    (10_000, Timeout(Quiet::Pinged)),
                    (10_000, Deadline(30_000)),
                    (40_000, Deadline(1)),
                    (40_000, Timeout(Quiet::Dead)),
                ],
            );
            run(
                "heartbeat: an answer restarts the interval",
                start,
                limits(Some(10_000), None),
                true,
                &[
                    (10_000, Timeout(Quiet::Pinged)),
                    (12_000, Received),
                    (12_000, Deadline(10_000)),
                    (22_000, Timeout(Quiet::Pinged)),
                ],
            );
            run(
                "data counts as liveness",
                start,
                limits(Some(10_000), None),
                true,
                &[
                    (9_000, Received),
                    (9_000, Deadline(10_000)),
                    (15_000, Deadline(4_000)),
                ],
            );
        }
    }

    #[test]
    fn session_age_and_drain() {
        use Step::*;
        for start in [0, ngx_msec_t::MAX - 1_000] {
            run(
                "max session time",
                start,
                limits(None, Some(5_000)),
                true,
                &[
                    (0, Deadline(5_000)),
                    (4_999, Due(None)),
                    (5_000, Timeout(Quiet::Due)),
                    (5_000, Due(Some(super::Due::MaxSessionTime))),
                    (5_001, Due(None)),
                ],
            );
            run(
                "an upstream leg does not age",
                start,
                limits(None, Some(5_000)),
                false,
                &[(0, Deadline(60_000)), (6_000, Due(None))],
            );
            run(
                "drain: the turn comes after the delay",
                start,
                limits(None, None),
                true,
                &[
                    (1_000, Drain(2_000)),
                    (1_000, Deadline(2_000)),
                    (2_999, Due(None)),
                    (3_000, Due(Some(super::Due::Drain))),
                    (3_000, Due(None)),
                ],
            );
            run(
                "a passed deadline is at least 1 ms away",
                start,
                limits(None, Some(5_000)),
                true,
                &[(9_000, Deadline(1))],
            );
        }
    }

    #[test]
    fn a_limit_wait_comes_first() {
        let c = Clock::new(0, limits(Some(10_000), Some(5_000)), true);
        assert_eq!(c.read_deadline_waiting(1_000, 1_300), 300);
        assert_eq!(c.read_deadline_waiting(1_000, 9_000), 4_000, "the session age is sooner");
    }

    #[test]
    fn set_timeout_changes_the_idle_deadline() {
        let mut c = Clock::new(0, limits(None, None), true);
        c.set_timeout(1_500);
        assert_eq!(c.read_deadline(0), 1_500);
    }
}
