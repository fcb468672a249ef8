//! `websocket_pass`: connect to the upstream and finish its handshake first,
//! then upgrade the client and relay frames both ways — unmasked from the
//! upstream, re-masked towards it, every rule checked on both legs.

use ngx::ffi::{
    ngx_connection_t, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_log_t, ngx_resolver_ctx_t,
    NGX_DONE, NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use crate::client::{ClientError, ClientOptions, Connector, Established, Progress, TlsTarget};
use std::ffi::CString;

use crate::config::{configured, Limits, LocConf, PassTarget};
use crate::module::Module;
use crate::ngx_io::{run_posted_requests, ConnectionRef, Direction, RequestRef};
use crate::ngx_peer::{request_of, set_handlers, write_event, PeerSource, UpstreamPeer};
use crate::ngx_resolve::{self, Addresses, NameQuery, ResolveError};
use crate::ngx_ssl::ClientTls;
use crate::protocol::close::{GOING_AWAY, INTERNAL, TOO_BIG};
use crate::protocol::frame::OpCode;
use crate::session::{FrameType, Role, WebSocket, WsError};
use crate::upgrade::{self, ClientHandshake, HTTP_INTERNAL_SERVER_ERROR};
use crate::url::{UrlError, WsUrl};

const HTTP_BAD_GATEWAY: ngx_int_t = 502;
use foreign_types::ForeignTypeRef;

/// Queued bytes towards one side above which the other side is not read.
const RELAY_HIGH_WATER: usize = 64 * 1024;

/// Per-request state, allocated in the request pool.
struct PassSession {
    state: State,
}

enum State {
    /// The upstream's host name is being resolved.
    Resolving(Box<Resolving>),
    Connecting(Box<Handshaking>),
    Relaying(Box<Relay>),
    Done,
}

/// Waiting for the resolver; the client waits for its answer.
struct Resolving {
    opts: Option<ClientOptions>,
    port: u16,
    /// The query in flight; dropping it cancels it.
    query: Option<NameQuery>,
    answer: Option<Result<Addresses, ResolveError>>,
    accept: String,
    limits: Limits,
    upstream_limits: Limits,
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
    let (url, route) = match route(r, target) {
        Ok(routed) => routed,
        Err(rc) => return rc,
    };
    let opts = match client_options(r, conf, &url, &handshake) {
        Ok(opts) => opts,
        Err(e) => {
            ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    };
    r.connection().set_log_action(c"connecting to upstream");
    let limits = conf.limits();
    let upstream_limits = Limits {
        send_masked: conf.pass_send_unmasked != 1,
        ..limits
    };
    let accept = handshake.accept;
    let state = match route {
        Route::Peers(source) => match connect(r, &source, opts) {
            Ok(connector) => State::Connecting(Box::new(Handshaking {
                connector,
                accept,
                limits,
                upstream_limits,
            })),
            Err(rc) => return rc,
        },
        Route::Dns => State::Resolving(Box::new(Resolving {
            opts: Some(opts),
            port: url.port_or_default(),
            query: None,
            answer: None,
            accept,
            limits,
            upstream_limits,
        })),
    };
    let Some(mut session) = r.pool_alloc(PassSession { state }) else {
        return NGX_ERROR as ngx_int_t;
    };
    r.set_ctx(Module::module(), session.as_ptr().cast());
    r.set_event_handlers(client_event, client_event);
    // SAFETY: just allocated; only this handler and the resolver's (which
    // runs inside `ngx_resolve::start` or later) touch it.
    if let State::Resolving(_) = unsafe { &session.as_ref().state } {
        let data = foreign_types::ForeignTypeRef::as_ptr(&*r).cast();
        match ngx_resolve::start(r, &url.host, on_resolved, data) {
            Ok(query) => {
                // SAFETY: as above.
                match unsafe { &mut session.as_mut().state } {
                    State::Resolving(resolving) if resolving.answer.is_none() => {
                        resolving.query = Some(query)
                    }
                    // Answered from the cache: the handler freed the query.
                    _ => query.forget(),
                }
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    r.log(),
                    "websocket: cannot resolve \"{}\": {e}",
                    url.host
                );
                return HTTP_BAD_GATEWAY;
            }
        }
    }
    r.hold();
    NGX_DONE as ngx_int_t
}

/// Starts the upstream connection.
fn connect(
    r: &mut RequestRef,
    source: &PeerSource,
    opts: ClientOptions,
) -> Result<Connector, ngx_int_t> {
    let data = foreign_types::ForeignTypeRef::as_ptr(&*r).cast();
    Connector::start(r, source, opts, data, upstream_event).map_err(|e| {
        log_connect_failure(r, &e);
        e.status()
    })
}

/// How this request reaches its upstream's peers.
enum Route {
    Peers(PeerSource),
    /// The URL's host is a name to resolve first.
    Dns,
}

/// The URL of this request's upstream and how to reach its peers.
fn route(r: &RequestRef, target: &PassTarget) -> Result<(WsUrl, Route), ngx_int_t> {
    let cv = match target {
        PassTarget::Static { url, upstream } => {
            return Ok((url.clone(), Route::Peers(PeerSource::Upstream(*upstream))))
        }
        PassTarget::Variable(cv) => cv,
    };
    let text = cv.evaluate(r).map_err(|_| HTTP_INTERNAL_SERVER_ERROR)?;
    let url = match core::str::from_utf8(&text)
        .map_err(|_| UrlError::Scheme)
        .and_then(WsUrl::parse)
    {
        Ok(url) => url,
        Err(e) => {
            ngx_log_error!(
                NGX_LOG_ERR,
                r.log(),
                "websocket: invalid URL \"{}\": {e}",
                text.escape_ascii()
            );
            return Err(HTTP_INTERNAL_SERVER_ERROR);
        }
    };
    let address = format!("{}:{}", url.host, url.port_or_default());
    let route = match PeerSource::named(r, &url.host, url.port)
        .or_else(|| PeerSource::literal(r, &address))
    {
        Some(source) => Route::Peers(source),
        None => Route::Dns,
    };
    Ok((url, route))
}

/// What the upstream handshake carries, from the configuration and the
/// client's own handshake.
fn client_options(
    r: &RequestRef,
    conf: &LocConf,
    url: &WsUrl,
    handshake: &ClientHandshake,
) -> Result<ClientOptions, crate::ngx_io::NgxError> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let path = match &url.path {
        Some(path) => path.clone(),
        None => String::from_utf8_lossy(r.unparsed_uri()).into_owned(),
    };
    let host = match &conf.pass_host {
        Some(cv) => text(cv.evaluate(r)?),
        None => url.host_header(),
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
        tls: conf
            .ssl
            .filter(|_| url.tls)
            .map(|ctx| tls_target(conf, url, ctx)),
    })
}

/// SNI and verification for a `wss://` upstream: `websocket_ssl_server_name`
/// or the URL's host; no SNI for an IP address.
fn tls_target(conf: &LocConf, url: &WsUrl, ctx: ClientTls) -> TlsTarget {
    let name = match configured(&conf.ssl_server_name) {
        Some(name) => name.to_vec(),
        None => url
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .as_bytes()
            .to_vec(),
    };
    let is_ip = core::str::from_utf8(&name).is_ok_and(|n| n.parse::<std::net::IpAddr>().is_ok());
    TlsTarget {
        ctx,
        sni: if is_ip {
            None
        } else {
            CString::new(name.clone()).ok()
        },
        verify_name: (conf.ssl_verify == 1).then_some(name),
        on_done: Some(upstream_tls_done),
    }
}

/// Logs why the upstream could not be used; nginx appends the peer.
fn log_connect_failure(r: &RequestRef, e: &ClientError) {
    if let ClientError::Unreachable { .. } = e {
        return; // every failed connect() was logged when it failed
    }
    ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
}

/// The resolver's handler: keeps the answer and lets the session go on from
/// the event loop (it may run inside the content handler, from the cache).
unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: the query was started with the request as its data; the
    // request holds the session until it is finalized, which cancels the
    // query first.
    unsafe {
        let r = RequestRef::from_raw((*ctx).data.cast());
        let pool = (*foreign_types::ForeignTypeRef::as_ptr(&*r)).pool;
        let (_, answer) = ngx_resolve::finish(pool, ctx);
        if let Some(mut session) = r.ctx::<PassSession>(Module::module()) {
            if let State::Resolving(resolving) = &mut session.as_mut().state {
                if let Some(query) = resolving.query.take() {
                    query.forget();
                }
                resolving.answer = Some(answer);
            }
        }
        r.connection().post(Direction::Write);
    }
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

/// nginx finished (or timed out) a TLS handshake with the upstream.
unsafe extern "C" fn upstream_tls_done(c: *mut ngx_connection_t) {
    // SAFETY: nginx calls this with the live upstream connection.
    let conn = unsafe { ConnectionRef::from_ptr(c) };
    set_handlers(conn, upstream_event);
    // SAFETY: the connection's write event, with its handler restored.
    unsafe { upstream_event(write_event(conn)) };
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
            State::Resolving(resolving) => {
                let Some(answer) = resolving.answer.take() else {
                    return Next::Wait;
                };
                let addrs = match answer {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
                        return Next::Fail(HTTP_BAD_GATEWAY);
                    }
                };
                let source = PeerSource::Resolved {
                    addrs,
                    port: resolving.port,
                };
                let Some(opts) = resolving.opts.take() else {
                    return Next::Fail(NGX_ERROR as ngx_int_t);
                };
                match connect(r, &source, opts) {
                    Ok(connector) => {
                        self.state = State::Connecting(Box::new(Handshaking {
                            connector,
                            accept: core::mem::take(&mut resolving.accept),
                            limits: resolving.limits,
                            upstream_limits: resolving.upstream_limits,
                        }));
                        Next::Wait
                    }
                    Err(rc) => Next::Fail(rc),
                }
            }
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
            client_failed: None,
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
    /// Both legs are being closed at once (a dead peer, a timeout, an
    /// upstream violation): only flushing is left.
    closing: bool,
    /// The client broke the protocol with this close code. The upstream was
    /// asked to close; what it still sends reaches the client, then the code.
    client_failed: Option<u16>,
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
            let code = self.client_failed.unwrap_or(GOING_AWAY);
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: session idle for too long, closing with {code}"
            );
            self.close_both(code);
        }
        loop {
            let mut throttled = false;
            if !self.closing {
                if self.client_failed.is_none() {
                    throttled |= self.pump(Way::ToUpstream, log);
                }
                throttled |= self.pump(Way::ToClient, log);
            }
            if let Some(code) = self.client_failed {
                if self.upstream.close_received() && !self.client.close_sent() {
                    let _ = self.client.send_close(Some(code), b"");
                }
            }
            let flushed = match (self.client.flush(), self.upstream.flush()) {
                (Ok(c), Ok(u)) => c && u,
                _ => return self.finish(false, true),
            };
            let upstream_done = self.upstream.close_sent() && self.upstream.close_received();
            let client_done = self.client.close_sent()
                && (self.client.close_received() || self.client_failed.is_some());
            if flushed && (self.closing || (upstream_done && client_done)) {
                return self.finish(!self.client.close_received(), false);
            }
            // Reading paused for output that has now drained: go on at once,
            // the sockets will not signal again for data already there.
            if !(flushed && throttled) {
                break;
            }
        }
        let read_client =
            !self.closing && self.client_failed.is_none() && !self.client.close_received();
        let read_upstream = !self.closing && !self.upstream.close_received();
        // A leg whose reading waits for the other leg to drain is not idle.
        let read_client = read_client && self.upstream.queued() <= RELAY_HIGH_WATER;
        let read_upstream = read_upstream && self.client.queued() <= RELAY_HIGH_WATER;
        match (
            self.client.arm(read_client),
            self.upstream.arm(read_upstream),
        ) {
            (Ok(()), Ok(())) => Next::Wait,
            _ => self.finish(false, true),
        }
    }

    /// Moves frames from one side to the other until the source has nothing
    /// more or the destination has enough queued; true when it stopped for
    /// queued output rather than for want of input. Failures change the
    /// relay's state (see `source_failed`).
    fn pump(&mut self, way: Way, log: *mut ngx_log_t) -> bool {
        let client_failed = self.client_failed;
        let (src, dst) = match way {
            Way::ToUpstream => (&mut self.client, &mut self.upstream),
            Way::ToClient => (&mut self.upstream, &mut self.client),
        };
        while !src.close_received() {
            if dst.queued() > RELAY_HIGH_WATER {
                return true;
            }
            let frame = match src.recv_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return src.take_throttled(),
                Err(e) => {
                    self.source_failed(way, e, log);
                    return false;
                }
            };
            let forwarded = match frame.typ {
                FrameType::Ping => dst.send_ping(&frame.data),
                FrameType::Pong => dst.send_pong(&frame.data),
                // After a client violation the client hears its own code
                // (sent by `step`), not the upstream's answer.
                FrameType::Close if client_failed.is_some() => Ok(()),
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
        let code = match &e {
            WsError::Protocol(p) => p.close_code(),
            WsError::TooBig { .. } => TOO_BIG,
            // A peer that went away: the client was leaving, or the
            // upstream failed us (unless a client violation is being closed).
            _ => self
                .client_failed
                .unwrap_or(if from_client { GOING_AWAY } else { INTERNAL }),
        };
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
                    (&mut self.client, &mut self.upstream)
                } else {
                    (&mut self.upstream, &mut self.client)
                };
                gone.discard_output();
                let _ = other.send_close(Some(code), b"");
            }
            WsError::Protocol(_) if from_client => {
                // Let the upstream finish what it is sending first.
                self.client_failed = Some(code);
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

    fn finish(&mut self, linger: bool, error: bool) -> Next {
        self.peer.finish();
        Next::Finish { linger, error }
    }
}
