//! The frame relay of an upgraded `websocket_pass` session: frames move
//! both ways, unmasked from the upstream and re-masked towards it, every
//! rule checked on both legs, with backpressure. A client that closes
//! normally can leave its upstream connection to a keepalive pool, once the
//! upstream is fenced (see `pool`): the client's close is answered when the
//! upstream has answered a ping with no data or close before it; what the
//! upstream still sent for the session reaches this client, which then
//! closes the upstream connection as usual instead of pooling it.

use ngx::ffi::{ngx_log_t, NGX_LOG_ERR, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::ngx_io::Direction;
use crate::pool::Fence;
use crate::protocol::close::{BAD_GATEWAY, GOING_AWAY, INTERNAL, POLICY, TOO_BIG};
use crate::protocol::frame::OpCode;
use crate::session::{FrameType, Quiet, WebSocket, WsError};
use crate::ws_client::WsClient;

/// Queued bytes towards one side above which the other side is not read.
const RELAY_HIGH_WATER: usize = 64 * 1024;
/// Room above what the relay queues towards a leg (see `Relay::new`) for
/// frames a leg queues of its own accord: a close, a heartbeat ping.
const OWN_FRAMES_ROOM: usize = 64 * 1024;

/// A leg failed (a socket error): close both.
const FAILED: Outcome = Outcome::Finish {
    linger: false,
    error: true,
};

/// How a relay step left the session.
pub enum Outcome {
    Wait,
    /// The session is over; `linger` drains the client before closing.
    Finish {
        linger: bool,
        error: bool,
    },
}

/// Which way frames move.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToUpstream,
    ToClient,
}

/// An upgraded client and its upstream, relaying frames.
pub struct Relay {
    client: WebSocket,
    upstream: WsClient,
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
}

impl Relay {
    pub fn new(mut client: WebSocket, mut upstream: WsClient) -> Relay {
        // A leg's reading waits only for the other leg's queue (`pump`),
        // which backs up to the peer that is slow: waiting for its own queue
        // too would make a cycle, the relay not reading the upstream because
        // the upstream does not read because it cannot write its answers
        // (issue 15). A leg's own queue holds at most what `pump` puts there,
        // one frame over the high water mark, and frames of its own.
        for leg in [&mut client, &mut *upstream] {
            let frame = usize::try_from(leg.max_send_len()).unwrap_or(usize::MAX);
            leg.pause_reading_above(
                RELAY_HIGH_WATER
                    .saturating_add(frame)
                    .saturating_add(OWN_FRAMES_ROOM),
            );
        }
        Relay {
            client,
            upstream,
            fencing: None,
            pooling: false,
            shutting_down: false,
            closing: false,
            close_client_with: None,
            close_client_reason: b"",
            client_given_up: false,
        }
    }

    /// What crossed the client leg so far.
    pub fn client_stats(&self) -> crate::session::Stats {
        self.client.stats()
    }

    /// The upstream leg, to redirect its events.
    pub fn upstream(&self) -> &WsClient {
        &self.upstream
    }

    /// The worker is exiting (see `step`).
    /// Waits until the client's connection can take more of the bytes
    /// nginx still holds for it (the 101 response).
    pub fn await_client_writable(&self) -> Result<(), WsError> {
        self.client.await_writable()
    }

    pub fn shut_down(&mut self) {
        self.client.drain();
    }

    pub fn step(&mut self, log: *mut ngx_log_t) -> Outcome {
        // A leg that took nothing for websocket_timeout is given up (what is
        // queued for it cannot be cut short by a close frame); the other leg
        // gets a close frame and the session ends once it is out.
        if self.client.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending, closing the upstream with {GOING_AWAY}"
            );
            self.closing = true;
            self.client_given_up = true;
            self.client.discard_output();
            let _ = self.upstream.send_close(Some(GOING_AWAY), b"");
        }
        if self.upstream.take_timedout(Direction::Write) {
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
            self.upstream.discard_output();
            let _ = self.client.send_close(Some(code), b"");
        }
        for way in [Way::ToUpstream, Way::ToClient] {
            let (leg, side) = match way {
                Way::ToUpstream => (&mut self.client, "client"),
                Way::ToClient => (&mut *self.upstream, "upstream"),
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
            self.close_both(code);
        }
        // After the read timeouts: a deadline that passed is theirs to
        // tell from a quiet peer's.
        if self.client.due_to_close(log) {
            self.shutting_down = true;
        }
        loop {
            // Which ways stopped for queued output.
            let (mut up_waited, mut down_waited) = (false, false);
            if !self.closing && !self.pooling {
                if self.close_client_with.is_none() {
                    up_waited = self.pump(Way::ToUpstream, log);
                }
                down_waited = self.pump(Way::ToClient, log);
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
                && !self.client.in_message()
                && !self.upstream.in_message()
            {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: session is due to close, closing with {GOING_AWAY}"
                );
                self.close_client_with = Some(GOING_AWAY);
                let _ = self.upstream.send_close(Some(GOING_AWAY), b"");
            }
            if let Some(code) = self.close_client_with {
                if self.upstream.close_received() && !self.client.close_sent() {
                    let _ = self.client.send_close(Some(code), self.close_client_reason);
                }
            }
            let flushed = match (self.client.flush(), self.upstream.flush()) {
                (Ok(c), Ok(u)) => c && u,
                _ => return FAILED,
            };
            if self.pooling && flushed {
                return Outcome::Finish {
                    linger: false,
                    error: false,
                };
            }
            let upstream_done = self.upstream.close_sent() && self.upstream.close_received();
            let client_done = self.client.close_sent()
                && (self.client.close_received() || self.close_client_with.is_some());
            if flushed && (self.closing || (upstream_done && client_done)) {
                return Outcome::Finish {
                    linger: !self.client_given_up && !self.client.close_received(),
                    error: self.client_given_up,
                };
            }
            // Reading paused for output that has drained enough since: go on
            // at once, the source will not signal again for data already
            // there, and the leg still writing may wait for it.
            let resume = (up_waited && !self.blocked(Way::ToUpstream))
                || (down_waited && !self.blocked(Way::ToClient));
            if !resume {
                break;
            }
        }
        let read_client =
            !self.closing && self.close_client_with.is_none() && !self.client.close_received();
        let read_upstream = !self.closing && !self.upstream.close_received();
        // A leg whose reading waits for the other leg to drain is not idle,
        // nor is one with output waiting: its write deadline times it, so
        // that a peer that stopped reading is told apart from an idle one.
        let read_client =
            read_client && !self.blocked(Way::ToUpstream) && self.client.queued() == 0;
        let read_upstream =
            read_upstream && !self.blocked(Way::ToClient) && self.upstream.queued() == 0;
        match (
            self.client.arm(read_client),
            self.upstream.arm(read_upstream),
        ) {
            (Ok(()), Ok(())) => Outcome::Wait,
            _ => FAILED,
        }
    }

    /// Whether moving frames `way` waits for queued output: the
    /// destination's, or (see `new`) the source's own.
    fn blocked(&self, way: Way) -> bool {
        let (src, dst): (&WebSocket, &WebSocket) = match way {
            Way::ToUpstream => (&self.client, &self.upstream),
            Way::ToClient => (&self.upstream, &self.client),
        };
        dst.queued() > RELAY_HIGH_WATER || src.reading_paused()
    }

    /// Moves frames from one side to the other until the source has nothing
    /// more or the destination has enough queued; true when it stopped for
    /// queued output rather than for want of input. Failures change the
    /// relay's state (see `source_failed`).
    fn pump(&mut self, way: Way, log: *mut ngx_log_t) -> bool {
        let close_client_with = self.close_client_with;
        let may_pool = way == Way::ToUpstream && self.upstream.pool_settings().is_some();
        let (src, dst) = match way {
            Way::ToUpstream => (&mut self.client, &mut *self.upstream),
            Way::ToClient => (&mut *self.upstream, &mut self.client),
        };
        while !src.close_received() {
            if dst.queued() > RELAY_HIGH_WATER {
                return true;
            }
            let frame = match src.recv_frame_in_place() {
                Ok(Some(frame)) => frame,
                Ok(None) => return src.take_throttled(),
                Err(e) => {
                    self.source_failed(way, e, log);
                    return false;
                }
            };
            // The upstream's answer to the fence ends the session; data or
            // a close show it still talks to this session, which then closes
            // as usual (pings and other pongs are relayed and change nothing).
            let fence = self.fencing.filter(|_| way == Way::ToClient);
            if let Some((fence, code)) = fence {
                if frame.typ == FrameType::Pong && fence.answered_by(frame.data()) {
                    self.fencing = None;
                    self.pooling = dst.send_close(code, b"").is_ok();
                    return false;
                }
            }
            let fence_broken =
                fence.filter(|_| !matches!(frame.typ, FrameType::Ping | FrameType::Pong));
            let forwarded = match frame.typ {
                FrameType::Ping => dst.send_ping(frame.data()),
                FrameType::Pong => dst.send_pong(frame.data()),
                // After a client violation the client hears its own code
                // (sent by `step`), not the upstream's answer.
                FrameType::Close if close_client_with.is_some() => Ok(()),
                // A normal close from the client while the upstream leg is
                // clean: fence the upstream to keep it for later.
                FrameType::Close if may_pool && dst.reusable() => {
                    let code = frame.close_code;
                    Fence::send(dst).map(|fence| self.fencing = Some((fence, code)))
                }
                FrameType::Close => dst.send_close(frame.close_code, frame.data()),
                FrameType::Text | FrameType::Binary | FrameType::Continuation => {
                    let opcode = match frame.typ {
                        FrameType::Text => OpCode::Text,
                        FrameType::Binary => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    dst.send_frame(!frame.again, opcode, frame.data())
                }
            };
            if let Some((_, code)) = fence_broken {
                self.fencing = None;
                let _ = src.send_close(code, b"");
            }
            match forwarded {
                // The destination already closed: what still comes is dropped.
                Ok(()) | Err(WsError::Closed) => {}
                Err(e) => {
                    self.source_failed(way, e, log);
                    return false;
                }
            }
        }
        false
    }

    /// The source broke the protocol, went away, or sent what the
    /// destination cannot take.
    fn source_failed(&mut self, way: Way, e: WsError, log: *mut ngx_log_t) {
        let from_client = way == Way::ToUpstream;
        // [limit] a client past a `websocket_limit ... close` (logged there):
        // the upstream is closed with 1001 first, so that its answers to the
        // messages admitted before still reach the client, then the client
        // gets 1008.
        if let WsError::RateExceeded = e {
            self.close_client_with = Some(POLICY);
            self.close_client_reason = crate::limit::CLOSE_REASON;
            let _ = self.upstream.send_close(Some(GOING_AWAY), b"");
            return;
        }
        let code = match &e {
            WsError::Protocol(p) => p.close_code(),
            WsError::TooBig { .. } => TOO_BIG,
            // A peer that went away: the client was leaving, or the
            // upstream failed us (unless a client violation is being closed).
            _ => self
                .close_client_with
                .unwrap_or(if from_client { GOING_AWAY } else { INTERNAL }),
        };
        // An upstream that broke the protocol (or sent what the client leg
        // cannot carry) is a bad gateway to the client: 1014 in IANA's
        // registry of close codes. A client closing its own violation hears
        // its own code.
        let upstream_fault =
            !from_client && matches!(e, WsError::Protocol(_) | WsError::TooBig { .. });
        if upstream_fault {
            let client_code = self.close_client_with.unwrap_or(BAD_GATEWAY);
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "websocket: upstream: {e}, closing with {code}, the client with {client_code}"
            );
            self.closing = true;
            let _ = self.upstream.send_close(Some(code), b"");
            let _ = self.client.send_close(Some(client_code), b"");
            return;
        }
        let (side, level) = if from_client {
            ("client", NGX_LOG_INFO)
        } else {
            ("upstream", NGX_LOG_ERR)
        };
        ngx_log_error!(level, log, "websocket: {side}: {e}, closing with {code}");
        match e {
            WsError::Eof | WsError::Io => {
                // The source is gone: only the other leg can hear the close.
                self.closing = true;
                let (gone, other) = if from_client {
                    (&mut self.client, &mut *self.upstream)
                } else {
                    (&mut *self.upstream, &mut self.client)
                };
                gone.discard_output();
                let _ = other.send_close(Some(code), b"");
            }
            WsError::Protocol(_) if from_client => {
                // Let the upstream finish what it is sending first.
                self.close_client_with = Some(code);
                let _ = self.upstream.send_close(Some(code), b"");
            }
            _ => self.close_both(code),
        }
    }

    fn close_both(&mut self, code: u16) {
        self.closing = true;
        let _ = self.client.send_close(Some(code), b"");
        let _ = self.upstream.send_close(Some(code), b"");
    }

    /// Ends a finished relay: the upstream connection goes to its pool when
    /// the client closed normally on a clean upstream leg; the rest closes.
    pub fn end(self: Box<Self>, log: *mut ngx_log_t) {
        let Relay {
            upstream, pooling, ..
        } = *self;
        let Some(settings) = upstream.pool_settings().filter(|_| pooling) else {
            return;
        };
        if let Err(e) = upstream.set_keepalive(settings.idle_timeout, settings.size) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: upstream connection closed: {e}"
            );
        }
    }
}
