//! `websocket_pass`: connect to the upstream and finish its handshake first,
//! then upgrade the client and relay frames both ways — unmasked from the
//! upstream, re-masked towards it, every rule checked on both legs.

use ngx::ffi::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_log_t, NGX_DONE, NGX_ERROR, NGX_LOG_ERR,
    NGX_LOG_INFO,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use crate::client::{ClientError, ClientOptions, Connector, Established, Progress};
use crate::config::{Limits, LocConf, PassTarget};
use crate::module::Module;
use crate::ngx_io::{run_posted_requests, Direction, RequestRef};
use crate::ngx_peer::{request_of, UpstreamPeer};
use crate::protocol::close::{GOING_AWAY, INTERNAL};
use crate::protocol::frame::OpCode;
use crate::session::{FrameType, Role, WebSocket, WsError};
use crate::upgrade::{self, ClientHandshake, HTTP_INTERNAL_SERVER_ERROR};

/// Queued bytes towards one side above which the other side is not read.
const RELAY_HIGH_WATER: usize = 64 * 1024;

/// Per-request state, allocated in the request pool.
struct PassSession {
    state: State,
}

enum State {
    Connecting(Box<Handshaking>),
    Relaying(Box<Relay>),
    Done,
}

/// The upstream handshake is under way; the client waits for its answer.
struct Handshaking {
    connector: Connector,
    /// The client's Sec-WebSocket-Accept, sent once the upstream agreed.
    accept: String,
    limits: Limits,
    upstream_limits: Limits,
}

/// How an event left the session.
enum Next {
    Wait,
    /// End the session; `linger` drains the client before closing.
    Finish {
        linger: bool,
        error: bool,
    },
    /// End the request with this HTTP status (nothing was upgraded yet).
    Fail(ngx_int_t),
}

/// The content handler nginx calls for a location with `websocket_pass`.
///
/// # Safety
/// Called by nginx with a live request.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx hands a live request to its content handler.
    let r = unsafe { RequestRef::from_raw(r) };
    let Some(conf) = Module::location_conf(r) else {
        return NGX_ERROR as ngx_int_t;
    };
    let Some(target) = conf.pass.as_ref() else {
        return NGX_ERROR as ngx_int_t;
    };
    let handshake = match upgrade::validate(r, conf) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let opts = match client_options(r, conf, target, &handshake) {
        Ok(opts) => opts,
        Err(e) => {
            ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    };
    r.connection().set_log_action(c"connecting to upstream");
    let data = foreign_types::ForeignTypeRef::as_ptr(&*r).cast();
    let connector = match Connector::start(r, target.upstream, &opts, data, upstream_event) {
        Ok(connector) => connector,
        Err(e) => {
            log_connect_failure(r, &e);
            return e.status();
        }
    };
    let limits = conf.limits();
    let upstream_limits = Limits {
        send_masked: conf.pass_send_unmasked != 1,
        ..limits
    };
    let state = State::Connecting(Box::new(Handshaking {
        connector,
        accept: handshake.accept,
        limits,
        upstream_limits,
    }));
    let Some(session) = r.pool_alloc(PassSession { state }) else {
        return NGX_ERROR as ngx_int_t;
    };
    r.set_ctx(Module::module(), session.as_ptr().cast());
    r.set_event_handlers(client_event, client_event);
    r.hold();
    NGX_DONE as ngx_int_t
}

/// What the upstream handshake carries, from the configuration and the
/// client's own handshake.
fn client_options(
    r: &RequestRef,
    conf: &LocConf,
    target: &PassTarget,
    handshake: &ClientHandshake,
) -> Result<ClientOptions, crate::ngx_io::NgxError> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let path = match &target.url.path {
        Some(path) => path.clone(),
        None => String::from_utf8_lossy(r.unparsed_uri()).into_owned(),
    };
    let host = match &conf.pass_host {
        Some(cv) => text(cv.evaluate(r)?),
        None => target.url.host_header(),
    };
    let origin = match &conf.pass_origin {
        Some(cv) => Some(text(cv.evaluate(r)?)),
        None => handshake.origin.clone().map(text),
    };
    let mut headers = Vec::new();
    for (name, value) in conf.pass_headers.iter().flatten() {
        let value = value.evaluate(r)?;
        // As proxy_set_header: an empty value leaves the header out.
        if !value.is_empty() {
            headers.push((name.clone(), text(value)));
        }
    }
    Ok(ClientOptions {
        path,
        host,
        protocols: handshake.protocols.clone(),
        origin,
        headers,
        connect_timeout: conf.connect_timeout,
    })
}

/// Logs why the upstream could not be used; nginx appends the peer.
fn log_connect_failure(r: &RequestRef, e: &ClientError) {
    if let ClientError::Unreachable { .. } = e {
        return; // every failed connect() was logged when it failed
    }
    ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
}

/// Read/write handler of the client connection.
unsafe extern "C" fn client_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    run(r);
}

/// Read/write handler of the upstream connection.
unsafe extern "C" fn upstream_event(ev: *mut ngx_event_t) {
    // SAFETY: the upstream connection was set up with the request as data.
    let r = unsafe { RequestRef::from_raw(request_of(ev)) };
    let c = r.connection_ptr();
    run(r);
    // SAFETY: `c` is the client connection; see run_posted_requests.
    unsafe { run_posted_requests(c) };
}

fn run(r: &mut RequestRef) {
    let Some(mut session) = r.ctx::<PassSession>(Module::module()) else {
        r.finalize(false, true);
        return;
    };
    // SAFETY: the session lives in the request pool until the request is
    // finalized below; nothing else references it during this event.
    let session = unsafe { session.as_mut() };
    match session.step(r) {
        Next::Wait => {}
        Next::Finish { linger, error } => {
            session.state = State::Done;
            r.finalize(linger, error);
        }
        Next::Fail(rc) => {
            session.state = State::Done;
            r.finalize_status(rc);
        }
    }
}

impl PassSession {
    fn step(&mut self, r: &mut RequestRef) -> Next {
        match &mut self.state {
            State::Connecting(handshaking) => match handshaking.connector.advance() {
                Progress::Pending => Next::Wait,
                Progress::Failed(e) => {
                    log_connect_failure(r, &e);
                    Next::Fail(e.status())
                }
                Progress::Ready(established) => self.upgrade(r, established),
            },
            State::Relaying(relay) => relay.step(r.log()),
            State::Done => Next::Wait,
        }
    }

    /// The upstream accepted: answer the client with 101 and start relaying.
    fn upgrade(&mut self, r: &mut RequestRef, mut established: Established) -> Next {
        let State::Connecting(handshaking) = &self.state else {
            return Next::Fail(NGX_ERROR as ngx_int_t);
        };
        let (limits, upstream_limits) = (handshaking.limits, handshaking.upstream_limits);
        let responded =
            upgrade::respond(r, &handshaking.accept, established.subprotocol.as_deref());
        let pipelined = match responded {
            Ok(pipelined) => pipelined,
            Err(rc) => {
                established.peer.finish();
                return Next::Fail(rc);
            }
        };
        let client = WebSocket::new(r.connection(), Role::Server, limits, &pipelined);
        let Some(upstream_conn) = established.peer.connection() else {
            return Next::Fail(NGX_ERROR as ngx_int_t);
        };
        let upstream = WebSocket::new(
            upstream_conn,
            Role::Client,
            upstream_limits,
            &established.leftover,
        );
        if r.connection().tcp_nodelay().is_err() || upstream_conn.tcp_nodelay().is_err() {
            established.peer.finish();
            return Next::Finish {
                linger: false,
                error: true,
            };
        }
        r.connection().set_log_action(c"proxying WebSocket");
        self.state = State::Relaying(Box::new(Relay {
            client,
            upstream,
            peer: established.peer,
            closing: false,
        }));
        let State::Relaying(relay) = &mut self.state else {
            unreachable!()
        };
        relay.step(r.log())
    }
}

/// Which way frames move.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToUpstream,
    ToClient,
}

/// An upgraded client and its upstream, relaying frames.
struct Relay {
    client: WebSocket,
    upstream: WebSocket,
    peer: UpstreamPeer,
    /// We started closing both legs (a violation, a timeout, a dead peer):
    /// only flushing is left.
    closing: bool,
}

impl Relay {
    fn step(&mut self, log: *mut ngx_log_t) -> Next {
        if self.client.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending"
            );
            return self.finish(false, true);
        }
        if self.upstream.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "websocket: upstream timed out while we were sending"
            );
            return self.finish(false, true);
        }
        let client_idle = self.client.take_timedout(Direction::Read);
        let upstream_idle = self.upstream.take_timedout(Direction::Read);
        if (client_idle || upstream_idle) && !self.closing {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: session idle for too long, closing with {GOING_AWAY}"
            );
            self.close_both(GOING_AWAY);
        }
        if !self.closing {
            if let Err(next) = self
                .pump(Way::ToUpstream, log)
                .and_then(|()| self.pump(Way::ToClient, log))
            {
                return next;
            }
        }
        let flushed = match (self.client.flush(), self.upstream.flush()) {
            (Ok(c), Ok(u)) => c && u,
            _ => return self.finish(false, true),
        };
        let handshake_done = self.client.close_sent()
            && self.client.close_received()
            && self.upstream.close_sent()
            && self.upstream.close_received();
        if flushed && (self.closing || handshake_done) {
            return self.finish(!self.client.close_received(), false);
        }
        let arm_client = self
            .client
            .arm(!self.closing && !self.client.close_received());
        let arm_upstream = self
            .upstream
            .arm(!self.closing && !self.upstream.close_received());
        match (arm_client, arm_upstream) {
            (Ok(()), Ok(())) => Next::Wait,
            _ => self.finish(false, true),
        }
    }

    /// Moves frames from one side to the other until the source has nothing
    /// more or the destination has enough queued.
    fn pump(&mut self, way: Way, log: *mut ngx_log_t) -> Result<(), Next> {
        let (src, dst) = match way {
            Way::ToUpstream => (&mut self.client, &mut self.upstream),
            Way::ToClient => (&mut self.upstream, &mut self.client),
        };
        while !src.close_received() && dst.queued() <= RELAY_HIGH_WATER {
            let frame = match src.recv_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.source_failed(way, e, log)),
            };
            let forwarded = match frame.typ {
                FrameType::Ping => dst.send_ping(&frame.data),
                FrameType::Pong => dst.send_pong(&frame.data),
                FrameType::Close => dst.send_close(frame.close_code, &frame.data),
                FrameType::Text | FrameType::Binary | FrameType::Continuation => {
                    let opcode = match frame.typ {
                        FrameType::Text => OpCode::Text,
                        FrameType::Binary => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    let sent = dst.send_frame(!frame.again, opcode, &frame.data);
                    src.recycle(frame.data);
                    sent
                }
            };
            match forwarded {
                // The destination already closed: what still comes is dropped.
                Ok(()) | Err(WsError::Closed) => {}
                Err(e) => return Err(self.source_failed(way, e, log)),
            }
        }
        Ok(())
    }

    /// The source side broke the protocol, went away, or sent what the
    /// destination cannot take: close both legs with the fitting code.
    fn source_failed(&mut self, way: Way, e: WsError, log: *mut ngx_log_t) -> Next {
        let side = if way == Way::ToUpstream {
            "client"
        } else {
            "upstream"
        };
        let level = if way == Way::ToUpstream {
            NGX_LOG_INFO
        } else {
            NGX_LOG_ERR
        };
        let code = match &e {
            WsError::Protocol(p) => p.close_code(),
            WsError::TooBig { .. } => crate::protocol::close::TOO_BIG,
            WsError::Eof | WsError::Io if way == Way::ToUpstream => GOING_AWAY,
            _ => INTERNAL,
        };
        ngx_log_error!(level, log, "websocket: {side}: {e}, closing with {code}");
        if matches!(e, WsError::Eof | WsError::Io) {
            // The source is gone: only the other leg can hear the close.
            let other = if way == Way::ToUpstream {
                &mut self.upstream
            } else {
                &mut self.client
            };
            let _ = other.send_close(Some(code), b"");
            let flushed = other.flush();
            return match flushed {
                Ok(true) | Err(_) => self.finish(false, false),
                Ok(false) => {
                    self.closing = true;
                    // The dead side is not written to any more.
                    let dead = if way == Way::ToUpstream {
                        &mut self.client
                    } else {
                        &mut self.upstream
                    };
                    dead.discard_output();
                    Next::Wait
                }
            };
        }
        self.close_both(code);
        Next::Wait
    }

    fn close_both(&mut self, code: u16) {
        self.closing = true;
        let _ = self.client.send_close(Some(code), b"");
        let _ = self.upstream.send_close(Some(code), b"");
    }

    fn finish(&mut self, linger: bool, error: bool) -> Next {
        self.peer.finish();
        Next::Finish { linger, error }
    }
}
