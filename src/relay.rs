//! [`Relay`]: the library's ready-made frame relay, the
//! [`RelayHandler`] of `websocket_pass`, written against the public API
//! only (its methods of [`WebSocket`] and [`WsClient`](crate::WsClient)).

use ngx::ffi::{ngx_log_t, NGX_LOG_ERR, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::protocol::close::{BAD_GATEWAY, GOING_AWAY, INTERNAL, POLICY, TOO_BIG};
use crate::protocol::frame::OpCode;
use crate::{Direction, Fence, Quiet, RelayContext, RelayHandler, RelayNext, WebSocket, WsError};

/// Queued bytes towards one side above which the other side is not read.
const RELAY_HIGH_WATER: usize = 64 * 1024;
/// Room above what the relay queues towards a leg (see `Relay::start`) for
/// frames a leg queues of its own accord: a close, a heartbeat ping.
const OWN_FRAMES_ROOM: usize = 64 * 1024;

/// Which way frames move.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToUpstream,
    ToClient,
}

/// The library's frame relay, a [`RelayHandler`] to use as is (it is
/// `websocket_pass`'s): hand it to
/// [`Relaying::serve`](crate::Relaying::serve) once the upstream is
/// connected and the client upgraded.
///
/// Frames move both ways as they come (a fragmented message stays
/// fragmented), unmasked from the upstream and re-masked towards it, every
/// rule of both legs' options checked on the leg that receives; close codes
/// pass through, a leg that breaks the protocol gets its RFC code and the
/// other leg 1014 (an upstream's fault) or the client's code after the
/// upstream finished. With backpressure: a leg is not read while more than
/// 64 KiB wait towards the other one, and a peer that takes nothing for the
/// `timeout` is given up. Quiet legs get the heartbeats and idle closes of
/// their options. A session due to close (worker exit, `max_session_time`)
/// closes both legs with 1001 after the messages under way.
///
/// With a keepalive pool for the upstream (`pool_size`), a client's normal
/// close on a clean upstream leg is not forwarded: the upstream is fenced
/// (see [`Fence`]) and, once the fence's pong came back, goes to its pool
/// for `keepalive_timeout` milliseconds
/// ([`WsClient::set_keepalive`](crate::WsClient::set_keepalive)).
///
/// It uses only the public API: a custom [`RelayHandler`] (to inspect,
/// rewrite or route frames) does what it does with
/// [`WebSocket::take_timedout`], [`WebSocket::on_read_timeout`] and
/// [`WebSocket::discard_output`] for the timeouts,
/// [`WebSocket::pause_reading_above`], [`WebSocket::queued`],
/// [`WebSocket::reading_paused`] and [`WebSocket::take_throttled`] for
/// backpressure, and [`WebSocket::reusable`], [`Fence`] and
/// [`WsClient::set_keepalive`](crate::WsClient::set_keepalive) for pooling.
pub struct Relay {
    /// The legs' reading limits were set (on the first step).
    started: bool,
    /// The size of the upstream's keepalive pool, when it has one.
    pool_size: Option<usize>,
    /// The client closed normally (with this code) on a clean upstream leg,
    /// which was fenced: the close is answered at the fence's pong.
    fencing: Option<(Fence, Option<u16>)>,
    /// The fence passed and the upstream connection goes to the pool once
    /// the client has our close.
    pooling: bool,
    /// The worker is exiting or the session reached
    /// `websocket_max_session_time`: relay what arrived, then close both
    /// with 1001.
    shutting_down: bool,
    /// Both legs are being closed at once (a dead peer, a timeout, an
    /// upstream violation): only flushing is left.
    closing: bool,
    /// The client gets this close code once the upstream has closed (the
    /// client broke the protocol, or the worker is exiting): the upstream
    /// was asked to close, and what it still sends reaches the client first.
    close_client_with: Option<u16>,
    /// [limit] The reason sent with `close_client_with`.
    close_client_reason: &'static [u8],
    /// The client stopped reading for `websocket_timeout`: it is closed
    /// without a close frame (none could reach it) and without lingering.
    client_given_up: bool,
    /// `websocket_keepalive_timeout`: how long a pooled upstream stays idle.
    keepalive_timeout: ngx::ffi::ngx_msec_t,
}

impl Relay {
    /// A relay whose upstream leg, connected with a keepalive pool
    /// ([`ConnectOptions::pool_size`](crate::ConnectOptions::pool_size)) of
    /// `pool_size` idle connections, goes back to it for
    /// `keepalive_timeout` milliseconds after a clean close; `None`: the
    /// upstream is closed at the end.
    pub fn new(pool_size: Option<usize>, keepalive_timeout: ngx::ffi::ngx_msec_t) -> Relay {
        Relay {
            started: false,
            pool_size,
            fencing: None,
            pooling: false,
            shutting_down: false,
            closing: false,
            close_client_with: None,
            close_client_reason: b"",
            client_given_up: false,
            keepalive_timeout,
        }
    }

    /// Sets the legs' reading limits.
    fn start(l: &mut RelayContext<'_>) {
        // A leg's reading waits only for the other leg's queue (`pump`),
        // which backs up to the peer that is slow: waiting for its own queue
        // too would make a cycle, the relay not reading the upstream because
        // the upstream does not read because it cannot write its answers
        // (issue 15). A leg's own queue holds at most what `pump` puts there,
        // one frame over the high water mark, and frames of its own.
        let (client, upstream) = l.legs();
        for leg in [client, &mut **upstream] {
            let frame = usize::try_from(leg.max_send_len()).unwrap_or(usize::MAX);
            leg.pause_reading_above(
                RELAY_HIGH_WATER
                    .saturating_add(frame)
                    .saturating_add(OWN_FRAMES_ROOM),
            );
        }
    }
}

impl RelayHandler for Relay {
    fn step(&mut self, l: &mut RelayContext<'_>) -> RelayNext {
        let log = l.log();
        if !self.started {
            self.started = true;
            Self::start(l);
        }
        // A leg that took nothing for websocket_timeout is given up (what is
        // queued for it cannot be cut short by a close frame); the other leg
        // gets a close frame and the session ends once it is out.
        if l.client().take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending, closing the upstream with {GOING_AWAY}"
            );
            self.closing = true;
            self.client_given_up = true;
            l.client().discard_output();
            let _ = l.upstream().send_close(Some(GOING_AWAY), b"");
        }
        if l.upstream().take_timedout(Direction::Write) {
            // RFC 6455 §7.4.1: 1011, the proxy met a condition that keeps it
            // from serving the session; 1001 would say it is going away. A
            // client already being closed hears the code it was due.
            let code = self.close_client_with.unwrap_or(INTERNAL);
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "websocket: upstream timed out while we were sending, closing with {code}"
            );
            self.closing = true;
            l.upstream().discard_output();
            let _ = l.client().send_close(Some(code), b"");
        }
        for way in [Way::ToUpstream, Way::ToClient] {
            let (client, upstream) = l.legs();
            let (leg, side) = match way {
                Way::ToUpstream => (client, "client"),
                Way::ToClient => (&mut **upstream, "upstream"),
            };
            if !leg.take_timedout(Direction::Read) || self.closing {
                continue;
            }
            let quiet = leg.on_read_timeout();
            let (code, why) = match quiet {
                Quiet::Pinged | Quiet::Due => continue,
                Quiet::Idle => (
                    self.close_client_with.unwrap_or(GOING_AWAY),
                    "idle for too long",
                ),
                Quiet::Dead => (INTERNAL, "did not answer a ping in time"),
            };
            // A dead upstream is a failure of ours to report; the rest is traffic.
            let level = if quiet == Quiet::Dead && way == Way::ToClient {
                NGX_LOG_ERR
            } else {
                NGX_LOG_INFO
            };
            ngx_log_error!(level, log, "websocket: {side} {why}, closing with {code}");
            self.close_both(l, code);
        }
        // After the read timeouts: a deadline that passed is theirs to
        // tell from a quiet peer's.
        if l.due_to_close() {
            self.shutting_down = true;
        }
        loop {
            // Which ways stopped for queued output.
            let (mut up_waited, mut down_waited) = (false, false);
            if !self.closing && !self.pooling {
                if self.close_client_with.is_none() {
                    up_waited = self.pump(l, Way::ToUpstream, log);
                }
                down_waited = self.pump(l, Way::ToClient, log);
            }
            // What arrived is relayed and a message under way either way is
            // waited for (worker_shutdown_timeout bounds it); then the
            // upstream is closed first, so that its answers to what it got
            // still reach the client before the client's 1001.
            if self.shutting_down
                && !self.closing
                && !self.pooling
                && self.fencing.is_none()
                && self.close_client_with.is_none()
                && !l.client().in_message()
                && !l.upstream().in_message()
            {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: session is due to close, closing with {GOING_AWAY}"
                );
                self.close_client_with = Some(GOING_AWAY);
                let _ = l.upstream().send_close(Some(GOING_AWAY), b"");
            }
            if let Some(code) = self.close_client_with {
                let (client, upstream) = l.legs();
                if upstream.close_received() && !client.close_sent() {
                    let _ = client.send_close(Some(code), self.close_client_reason);
                }
            }
            // The fence passed: the upstream goes to its pool at the end.
            if let Some(size) = self.pool_size.filter(|_| self.pooling) {
                let _ = l.upstream().set_keepalive(self.keepalive_timeout, size);
            }
            let Ok(flushed) = l.flush() else {
                return RelayNext::Abort;
            };
            if self.pooling && flushed {
                return RelayNext::Finish;
            }
            let (client, upstream) = l.legs();
            let upstream_done = upstream.close_sent() && upstream.close_received();
            let client_done = client.close_sent()
                && (client.close_received() || self.close_client_with.is_some());
            if flushed && (self.closing || (upstream_done && client_done)) {
                // A client given up gets no lingering close.
                return if self.client_given_up {
                    RelayNext::Abort
                } else {
                    RelayNext::Finish
                };
            }
            // Reading paused for output that has drained enough since: go on
            // at once, the source will not signal again for data already
            // there, and the leg still writing may wait for it.
            let resume = (up_waited && !Self::blocked(l, Way::ToUpstream))
                || (down_waited && !Self::blocked(l, Way::ToClient));
            if !resume {
                break;
            }
        }
        let read_client =
            !self.closing && self.close_client_with.is_none() && !l.client().close_received();
        let read_upstream = !self.closing && !l.upstream().close_received();
        // A leg whose reading waits for the other leg to drain is not idle,
        // nor is one with output waiting: its write deadline times it, so
        // that a peer that stopped reading is told apart from an idle one.
        let read_client =
            read_client && !Self::blocked(l, Way::ToUpstream) && l.client().queued() == 0;
        let read_upstream =
            read_upstream && !Self::blocked(l, Way::ToClient) && l.upstream().queued() == 0;
        RelayNext::Wait {
            read_client,
            read_upstream,
        }
    }
}

impl Relay {
    /// Whether moving frames `way` waits for queued output: the
    /// destination's, or (see `start`) the source's own.
    fn blocked(l: &mut RelayContext<'_>, way: Way) -> bool {
        let (client, upstream) = l.legs();
        let (src, dst): (&WebSocket, &WebSocket) = match way {
            Way::ToUpstream => (client, upstream),
            Way::ToClient => (upstream, client),
        };
        dst.queued() > RELAY_HIGH_WATER || src.reading_paused()
    }

    /// Moves frames from one side to the other until the source has nothing
    /// more or the destination has enough queued; true when it stopped for
    /// queued output rather than for want of input. Failures change the
    /// relay's state (see `source_failed`).
    fn pump(&mut self, l: &mut RelayContext<'_>, way: Way, log: *mut ngx_log_t) -> bool {
        let close_client_with = self.close_client_with;
        let may_pool = way == Way::ToUpstream && self.pool_size.is_some();
        let (client, upstream) = l.legs();
        let (src, dst): (&mut WebSocket, &mut WebSocket) = match way {
            Way::ToUpstream => (client, upstream),
            Way::ToClient => (upstream, client),
        };
        while !src.close_received() {
            if dst.queued() > RELAY_HIGH_WATER {
                return true;
            }
            let frame = match src.recv_frame_in_place() {
                Ok(Some(frame)) => frame,
                Ok(None) => return src.take_throttled(),
                Err(e) => {
                    self.source_failed(l, way, e, log);
                    return false;
                }
            };
            let fence = self.fencing.filter(|_| way == Way::ToClient);
            let (action, fence_broken) = decide(Facts {
                typ: frame.typ,
                fenced: fence.is_some(),
                answers_fence: frame.typ == OpCode::Pong
                    && fence.is_some_and(|(f, _)| f.answered_by(frame.data())),
                client_closing: close_client_with.is_some(),
                poolable: frame.typ == OpCode::Close && may_pool && dst.reusable(),
            });
            let forwarded = match action {
                Forward::FenceAnswered => {
                    self.fencing = None;
                    let code = fence.and_then(|(_, code)| code);
                    self.pooling = dst.send_close(code, b"").is_ok();
                    return false;
                }
                Forward::Ping => dst.send_ping(frame.data()),
                Forward::Pong => dst.send_pong(frame.data()),
                Forward::DropClose => Ok(()),
                Forward::Fence => {
                    let code = frame.close_code;
                    Fence::send(dst).map(|fence| self.fencing = Some((fence, code)))
                }
                Forward::Close => dst.send_close(frame.close_code, frame.data()),
                Forward::Data => dst.send_frame(!frame.again, frame.typ, frame.data()),
            };
            if let Some((_, code)) = fence.filter(|_| fence_broken) {
                self.fencing = None;
                let _ = src.send_close(code, b"");
            }
            match forwarded {
                // The destination already closed: what still comes is dropped.
                Ok(()) | Err(WsError::Closed) => {}
                Err(e) => {
                    self.source_failed(l, way, e, log);
                    return false;
                }
            }
        }
        false
    }

    /// The source broke the protocol, went away, or sent what the
    /// destination cannot take.
    fn source_failed(&mut self, l: &mut RelayContext<'_>, way: Way, e: WsError, log: *mut ngx_log_t) {
        let from_client = way == Way::ToUpstream;
        // [limit] a client past a `websocket_limit ... close` (logged there):
        // the upstream is closed with 1001 first, so that its answers to the
        // messages admitted before still reach the client, then the client
        // gets 1008.
        if let WsError::RateExceeded = e {
            self.close_client_with = Some(POLICY);
            self.close_client_reason = crate::limit::CLOSE_REASON;
            let _ = l.upstream().send_close(Some(GOING_AWAY), b"");
            return;
        }
        match on_failure(from_client, &e, self.close_client_with) {
            Failure::UpstreamFault { code, client_code } => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "websocket: upstream: {e}, closing with {code}, the client with {client_code}"
                );
                self.closing = true;
                let _ = l.upstream().send_close(Some(code), b"");
                let _ = l.client().send_close(Some(client_code), b"");
            }
            failure => {
                let (side, level) = if from_client {
                    ("client", NGX_LOG_INFO)
                } else {
                    ("upstream", NGX_LOG_ERR)
                };
                let code = failure.code();
                ngx_log_error!(level, log, "websocket: {side}: {e}, closing with {code}");
                match failure {
                    Failure::Gone { code } => {
                        // The source is gone: only the other leg can hear the close.
                        self.closing = true;
                        let (client, upstream) = l.legs();
                        let (gone, other): (&mut WebSocket, &mut WebSocket) = if from_client {
                            (client, upstream)
                        } else {
                            (upstream, client)
                        };
                        gone.discard_output();
                        let _ = other.send_close(Some(code), b"");
                    }
                    Failure::ClientAfterUpstream { code } => {
                        // Let the upstream finish what it is sending first.
                        self.close_client_with = Some(code);
                        let _ = l.upstream().send_close(Some(code), b"");
                    }
                    Failure::Both { code } | Failure::UpstreamFault { code, .. } => {
                        self.close_both(l, code)
                    }
                }
            }
        }
    }

    fn close_both(&mut self, l: &mut RelayContext<'_>, code: u16) {
        self.closing = true;
        let _ = l.client().send_close(Some(code), b"");
        let _ = l.upstream().send_close(Some(code), b"");
    }
}

/// What the relay knows of a frame read from one leg.
#[derive(Debug, Clone, Copy)]
struct Facts {
    typ: OpCode,
    /// Towards the client while the upstream is fenced for the pool.
    fenced: bool,
    /// The frame is the pong that answers the fence.
    answers_fence: bool,
    /// The client broke the protocol and gets its own code once the
    /// upstream closed.
    client_closing: bool,
    /// A close from the client that may leave the upstream to the pool.
    poolable: bool,
}

/// What the relay does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// The fence's pong: answer the client's close, pool the upstream.
    FenceAnswered,
    Ping,
    Pong,
    /// The upstream's answer to a close the client does not hear.
    DropClose,
    /// Fence the upstream instead of forwarding the client's close.
    Fence,
    Close,
    /// A data frame (text, binary, continuation), forwarded as it came.
    Data,
}

/// The relay's decision for one frame, and whether it breaks the fence:
/// data or a close from the upstream show it still talks to this session,
/// which then closes as usual (pings and other pongs change nothing).
fn decide(f: Facts) -> (Forward, bool) {
    if f.fenced && f.typ == OpCode::Pong && f.answers_fence {
        return (Forward::FenceAnswered, false);
    }
    let breaks_fence = f.fenced && !matches!(f.typ, OpCode::Ping | OpCode::Pong);
    let action = match f.typ {
        OpCode::Ping => Forward::Ping,
        OpCode::Pong => Forward::Pong,
        // After a client violation the client hears its own code (sent by
        // `step`), not the upstream's answer.
        OpCode::Close if f.client_closing => Forward::DropClose,
        // A normal close from the client while the upstream leg is clean:
        // fence the upstream to keep it for later.
        OpCode::Close if f.poolable => Forward::Fence,
        OpCode::Close => Forward::Close,
        OpCode::Text | OpCode::Binary | OpCode::Continuation => Forward::Data,
    };
    (action, breaks_fence)
}

/// How the relay answers a leg that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The upstream broke the protocol (or sent what the client leg cannot
    /// carry): it gets `code`, the client `client_code` (1014 Bad Gateway,
    /// or its own code when it is being closed for its own violation).
    UpstreamFault { code: u16, client_code: u16 },
    /// The source went away: only the other leg hears `code`.
    Gone { code: u16 },
    /// The client broke the protocol: the upstream is closed with `code`
    /// first, the client hears it once the upstream finished.
    ClientAfterUpstream { code: u16 },
    /// Close both legs with `code`.
    Both { code: u16 },
}

impl Failure {
    fn code(self) -> u16 {
        match self {
            Failure::UpstreamFault { code, .. }
            | Failure::Gone { code }
            | Failure::ClientAfterUpstream { code }
            | Failure::Both { code } => code,
        }
    }
}

fn on_failure(from_client: bool, e: &WsError, close_client_with: Option<u16>) -> Failure {
    let code = match e {
        WsError::Protocol(p) => p.close_code(),
        WsError::TooBig { .. } => TOO_BIG,
        // A peer that went away: the client was leaving, or the upstream
        // failed us (unless a client violation is being closed).
        _ => close_client_with.unwrap_or(if from_client { GOING_AWAY } else { INTERNAL }),
    };
    if !from_client && matches!(e, WsError::Protocol(_) | WsError::TooBig { .. }) {
        let client_code = close_client_with.unwrap_or(BAD_GATEWAY);
        return Failure::UpstreamFault { code, client_code };
    }
    match e {
        WsError::Eof | WsError::Io => Failure::Gone { code },
        WsError::Protocol(_) if from_client => Failure::ClientAfterUpstream { code },
        _ => Failure::Both { code },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolError;

    fn facts(typ: OpCode) -> Facts {
        Facts {
            typ,
            fenced: false,
            answers_fence: false,
            client_closing: false,
            poolable: false,
        }
    }

    #[test]
    fn frame_decisions() {
        use OpCode::*;
        let fenced = |typ, answers| Facts {
            fenced: true,
            answers_fence: answers,
            ..facts(typ)
        };
        let table: &[(&str, Facts, (Forward, bool))] = &[
            ("text", facts(Text), (Forward::Data, false)),
            ("binary", facts(Binary), (Forward::Data, false)),
            ("continuation", facts(Continuation), (Forward::Data, false)),
            ("ping", facts(Ping), (Forward::Ping, false)),
            ("pong", facts(Pong), (Forward::Pong, false)),
            ("close", facts(Close), (Forward::Close, false)),
            (
                "close while the client is closed for its violation",
                Facts {
                    client_closing: true,
                    ..facts(Close)
                },
                (Forward::DropClose, false),
            ),
            (
                "client close on a clean poolable leg",
                Facts {
                    poolable: true,
                    ..facts(Close)
                },
                (Forward::Fence, false),
            ),
            (
                "fence answered",
                fenced(Pong, true),
                (Forward::FenceAnswered, false),
            ),
            (
                "another pong while fenced",
                fenced(Pong, false),
                (Forward::Pong, false),
            ),
            (
                "ping while fenced",
                fenced(Ping, false),
                (Forward::Ping, false),
            ),
            (
                "data while fenced breaks it",
                fenced(Text, false),
                (Forward::Data, true),
            ),
            (
                "close while fenced breaks it",
                fenced(Close, false),
                (Forward::Close, true),
            ),
        ];
        for (name, f, want) in table {
            assert_eq!(decide(*f), *want, "{name}");
        }
    }

    #[test]
    fn failures() {
        let protocol = || WsError::Protocol(ProtocolError::InvalidUtf8);
        let too_big = || WsError::TooBig { len: 10, limit: 5 };
        let table: Vec<(&str, bool, WsError, Option<u16>, Failure)> = vec![
            (
                "client violation",
                true,
                protocol(),
                None,
                Failure::ClientAfterUpstream { code: 1007 },
            ),
            (
                "client too big for the upstream",
                true,
                too_big(),
                None,
                Failure::Both { code: TOO_BIG },
            ),
            (
                "client gone",
                true,
                WsError::Eof,
                None,
                Failure::Gone { code: GOING_AWAY },
            ),
            (
                "client socket error",
                true,
                WsError::Io,
                None,
                Failure::Gone { code: GOING_AWAY },
            ),
            (
                "upstream gone",
                false,
                WsError::Eof,
                None,
                Failure::Gone { code: INTERNAL },
            ),
            (
                "upstream gone while the client is closed for its violation",
                false,
                WsError::Eof,
                Some(1002),
                Failure::Gone { code: 1002 },
            ),
            (
                "upstream violation",
                false,
                protocol(),
                None,
                Failure::UpstreamFault {
                    code: 1007,
                    client_code: BAD_GATEWAY,
                },
            ),
            (
                "upstream too big for the client",
                false,
                too_big(),
                None,
                Failure::UpstreamFault {
                    code: TOO_BIG,
                    client_code: BAD_GATEWAY,
                },
            ),
            (
                "upstream violation while the client is closed for its own",
                false,
                protocol(),
                Some(1002),
                Failure::UpstreamFault {
                    code: 1007,
                    client_code: 1002,
                },
            ),
            (
                "upstream send after close",
                false,
                WsError::Closed,
                None,
                Failure::Both { code: INTERNAL },
            ),
        ];
        for (name, from_client, e, closing, want) in table {
            assert_eq!(on_failure(from_client, &e, closing), want, "{name}");
        }
    }
}
