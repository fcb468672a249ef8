//! `websocket_limit_zone` / `websocket_limit`: nginx's `limit_req`
//! semantics for the data messages a client sends. Each message is checked
//! once, at its first frame, against every zone of the location; past rate
//! and burst, reading from the client pauses until the buckets have room
//! (TCP backpressure slows the client; nothing is lost), or, with `close`,
//! the session closes with 1008.
//!
//! - [`bucket`]: the token bucket's arithmetic, pure;
//! - [`zone`]: the buckets in shared memory, shared by the workers;
//! - [`conf`]: the directives.

pub mod bucket;
pub mod conf;
pub mod zone;

use core::fmt::Write;

use ngx::ffi::{ngx_log_t, ngx_msec_t, ngx_shm_zone_t, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::config::LocConf;
use crate::ngx_io::RequestRef;
use bucket::Verdict;
use zone::{Action, Zone};

/// The reason of the 1008 close in `close` mode.
pub const CLOSE_REASON: &[u8] = b"message rate exceeded";

/// Longest key kept (as `limit_req`, whose node stores its length in 16 bits).
const MAX_KEY_LEN: usize = 65535;

/// One rule as it applies to a session: its zone and the session's key.
struct Active {
    zone: Zone,
    key: Vec<u8>,
    hash: usize,
    burst: u64,
    close: bool,
}

/// What to do with the data message at the head of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Take it.
    Admit,
    /// Stop reading until [`Limiter::waiting`].
    Wait,
    /// Close the session with 1008 ([`CLOSE_REASON`]).
    Close,
}

/// The limits of one client: the location's rules with the session's keys.
pub struct Limiter {
    rules: Vec<Active>,
    /// Reading waits for the buckets until then.
    until: Option<ngx_msec_t>,
    /// The message at the head of the input was admitted (its first frame
    /// may still be incomplete).
    admitted: bool,
    /// The message at the head of the input was counted as delayed.
    counted: bool,
}

/// Whether the worker's clock reached `at`.
fn reached(at: ngx_msec_t, now: ngx_msec_t) -> bool {
    (now.wrapping_sub(at) as isize) >= 0
}

impl Limiter {
    /// The location's `websocket_limit` rules with the keys of this
    /// request; `None` when none applies. A rule whose key is empty does
    /// not limit the session (as `limit_req`).
    pub fn for_request(r: &RequestRef, conf: &LocConf) -> Option<Box<Limiter>> {
        let rules = conf.rate_limits.as_deref()?;
        let mut active = Vec::with_capacity(rules.len());
        for rule in rules {
            let Some(zone_conf) = rule.zone.conf() else {
                continue;
            };
            let Ok(key) = zone_conf.key.evaluate(r) else {
                continue;
            };
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                continue;
            }
            active.push(Active {
                zone: rule.zone,
                hash: zone::hash(&key),
                key,
                burst: rule.burst,
                close: rule.close,
            });
        }
        (!active.is_empty()).then(|| {
            Box::new(Limiter {
                rules: active,
                until: None,
                admitted: false,
                counted: false,
            })
        })
    }

    /// When reading may go on, while it waits for the buckets.
    pub fn waiting(&self) -> Option<ngx_msec_t> {
        self.until
    }

    /// Bytes of the head message were decoded: the next data message is
    /// checked anew.
    pub fn consumed(&mut self) {
        self.admitted = false;
    }

    /// The verdict on the data message at the head of the input, at `now`.
    /// Every zone must admit it; it is then accounted in each. Past a
    /// limit nothing is accounted, and the message waits for the zone that
    /// needs longest, or closes the session if a `close` rule refused it.
    pub fn admit(&mut self, now: ngx_msec_t, log: *mut ngx_log_t) -> Admission {
        if self.admitted {
            return Admission::Admit;
        }
        if let Some(at) = self.until {
            if !reached(at, now) {
                return Admission::Wait;
            }
            self.until = None;
        }
        let now64 = now as u64;
        // One zone: checked and accounted at once. Several: all checked
        // first, so that a message one refuses costs nothing in the others.
        let take = self.rules.len() == 1;
        let mut wait: u64 = 0;
        let mut over: Vec<(usize, u64)> = Vec::new();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            if rule.key.is_empty() {
                continue;
            }
            let verdict = rule
                .zone
                .check(&rule.key, rule.hash, rule.burst, now64, take, log);
            match verdict {
                Some(Verdict::Over { excess, wait_ms }) => {
                    wait = wait.max(wait_ms);
                    over.push((i, excess));
                }
                Some(Verdict::Admit(_)) => {}
                // The zone cannot hold the key (logged): the session is
                // not limited by it from now on (an empty key is skipped).
                None => rule.key.clear(),
            }
        }
        if over.is_empty() {
            if !take {
                for rule in self.rules.iter().filter(|r| !r.key.is_empty()) {
                    rule.zone
                        .check(&rule.key, rule.hash, rule.burst, now64, true, log);
                }
            }
            self.admitted = true;
            self.counted = false;
            return Admission::Admit;
        }
        let close = over.iter().any(|(i, _)| self.rules[*i].close);
        let action = if close { Action::Close } else { Action::Delay };
        let mut zones = String::new();
        for (i, excess) in &over {
            let rule = &self.rules[*i];
            if rule.close == close && (close || !self.counted) {
                rule.zone.count(action);
            }
            let _ = write!(
                zones,
                "{}excess: {}.{:03} by zone \"{}\"",
                if zones.is_empty() { "" } else { ", " },
                excess / 1000,
                excess % 1000,
                String::from_utf8_lossy(rule.zone.name())
            );
        }
        if close {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: limiting messages, {zones}, closing with 1008"
            );
            return Admission::Close;
        }
        if !self.counted {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: limiting messages, {zones}, reading paused for {wait} ms"
            );
        }
        self.counted = true;
        self.until = Some(now.wrapping_add(wait as ngx_msec_t));
        Admission::Wait
    }
}

/// Whether `bytes` start with the first frame of a data message (text or
/// binary; a continuation outside a message is the decoder's to refuse).
pub fn starts_data_message(bytes: &[u8]) -> bool {
    matches!(bytes.first().map(|b| b & 0x0f), Some(1 | 2))
}

/// `nginx_websocket_limited_total{zone,action}` for every zone of the
/// running configuration (`websocket_status`).
pub fn render_metrics(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP nginx_websocket_limited_total Data messages from clients past a websocket_limit: delayed, or closing the session.\n# TYPE nginx_websocket_limited_total counter"
    );
    // SAFETY: the running cycle's list of zones, read in its own worker.
    let cycle = unsafe { ngx::ffi::ngx_cycle };
    if cycle.is_null() {
        return;
    }
    // SAFETY: as above; the list's parts and elements are nginx's.
    let mut part = unsafe { core::ptr::addr_of_mut!((*cycle).shared_memory.part) };
    while !part.is_null() {
        // SAFETY: a part of a list of `ngx_shm_zone_t`.
        let zones: &[ngx_shm_zone_t] =
            unsafe { core::slice::from_raw_parts((*part).elts.cast(), (*part).nelts) };
        for shm in zones.iter().filter(|z| z.tag == zone::tag()) {
            // SAFETY: a zone with our tag.
            let zone = unsafe { Zone::from_ptr(core::ptr::NonNull::from(shm)) };
            if zone.conf().is_none() {
                continue;
            }
            let counts = zone.counts();
            let name = String::from_utf8_lossy(zone.name());
            for (action, n) in [("delay", counts[0]), ("close", counts[1])] {
                let _ = writeln!(
                    out,
                    "nginx_websocket_limited_total{{zone=\"{name}\",action=\"{action}\"}} {n}"
                );
            }
        }
        // SAFETY: as above.
        part = unsafe { (*part).next };
    }
}

#[cfg(test)]
mod tests {
    use super::starts_data_message;

    #[test]
    fn only_text_and_binary_frames_start_messages() {
        let cases: &[(&[u8], bool)] = &[
            (&[0x81, 0x80], true),
            (&[0x02], true),
            (&[0x80], false),
            (&[0x89, 0x80], false),
            (&[0x8a], false),
            (&[0x88], false),
            (&[0x83], false),
            (&[], false),
        ];
        for (bytes, want) in cases {
            assert_eq!(starts_data_message(bytes), *want, "{bytes:?}");
        }
    }
}
