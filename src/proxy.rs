//! `websocket_pass`: find a connection to the upstream (a pooled one, or a
//! new one: resolve, connect, TLS, handshake) before answering the client,
//! then upgrade the client and hand both legs to the [`Relay`].

use core::ptr::NonNull;
use std::ffi::CString;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_connection_t, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_resolver_ctx_t, NGX_DONE,
    NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use crate::client::{Agreed, ClientError, ClientOptions, Connector, Progress, TlsTarget};
use crate::compression::DeflateSettings;
use crate::config::{configured, Limits, LocConf, PassTarget};
use crate::metrics::{self, Kind};
use crate::module::Module;
use crate::ngx_detach::{Detach, DetachedSession};
use crate::ngx_io::{run_posted_requests, ConnectionRef, Direction, RequestRef};
use crate::ngx_peer::{
    request_of, set_handlers, write_event, PeerSource, Pick, UpstreamConn, UpstreamPeer,
};
use crate::ngx_resolve::{self, Addresses, NameQuery, ResolveError};
use crate::ngx_ssl::ClientTls;
use crate::pool::{self, Acquired, Keepalive};
use crate::protocol::deflate::{DeflateConfig, NegotiatedDeflate};
use crate::relay::{Outcome, Relay};
use crate::serve::{self, Drive, End, Served};
use crate::session::{Role, WebSocket};
use crate::upgrade::ClientHandshake;
use crate::upgrade::{self, HTTP_INTERNAL_SERVER_ERROR};
use crate::url::{UrlError, WsUrl};
use crate::variables::{LoggedSession, SessionCtx, SessionLog};
use crate::ws_client::WsClient;

const HTTP_BAD_GATEWAY: ngx_int_t = 502;
const HTTP_SERVICE_UNAVAILABLE: ngx_int_t = 503;
const HTTP_GATEWAY_TIMEOUT: ngx_int_t = 504;
/// nginx's code for a client that went away before the response.
const HTTP_CLIENT_CLOSED_REQUEST: ngx_int_t = 499;

/// Per-session state. The request owns it (as its module context) while
/// the access log still needs it; with `access_log off` the request is
/// freed once the relay runs, and the client connection owns it.
struct PassSession {
    log: SessionLog,
    state: State,
    /// Whether the request is dropped after its 101 (`access_log off`).
    detach: Detach,
}

enum State {
    /// In a keepalive pool's line for a connection.
    Waiting(Box<Plan>),
    /// The upstream's host name is being resolved.
    Resolving(Box<Resolving>),
    /// Connect, TLS and the upstream handshake are under way.
    Connecting(Box<Handshaking>),
    Done,
}

/// Everything needed to get this session an upstream connection.
struct Plan {
    opts: Option<ClientOptions>,
    route: Option<Route>,
    /// The balancer, once the route's peers are known; it picks the peer
    /// before the pool is searched, as with nginx's `keepalive`.
    peer: Option<UpstreamPeer>,
    /// The client's Sec-WebSocket-Accept, sent once the upstream agreed.
    accept: String,
    limits: Limits,
    upstream_limits: Limits,
    connect_timeout: ngx::ffi::ngx_msec_t,
    keepalive: Option<Keepalive>,
    /// permessage-deflate with the client, and the response header value.
    deflate: Option<(NegotiatedDeflate, String)>,
    deflate_settings: Option<DeflateSettings>,
}

/// How this request reaches its upstream's peers.
enum Route {
    Peers(PeerSource),
    /// The URL's host is a name to resolve first.
    Dns {
        host: String,
        port: u16,
    },
}

struct Resolving {
    plan: Box<Plan>,
    port: u16,
    /// The query in flight; dropping it cancels it.
    query: Option<NameQuery>,
    answer: Option<Result<Addresses, ResolveError>>,
}

struct Handshaking {
    connector: Connector,
    plan: Box<Plan>,
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
    /// Upgraded: the relay runs as a served session from now on.
    Relay(Box<Relay>),
}

/// Which connection an event came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Upstream,
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
    let handshake = match upgrade::validate(r, &conf.server_options()) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let plan = match plan(r, conf, target, handshake) {
        Ok(plan) => plan,
        Err(rc) => return rc,
    };
    r.connection().set_log_action(c"connecting to upstream");
    let session: SessionCtx = Box::new(PassSession {
        log: SessionLog::new(None, None),
        state: State::Done,
        detach: Detach::for_request(r),
    });
    if r.set_owned_ctx(Module::module(), Box::new(session))
        .is_err()
    {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: an event handler of the request, run alone from the event loop.
    let Some(session) = (unsafe { pass_of(r) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    r.set_event_handlers(client_event, client_event);
    match session.proceed(r, plan) {
        Next::Fail(rc) => {
            session.state = State::Done;
            metrics::handshake_rejected(rc);
            rc
        }
        Next::Relay(relay) => {
            r.hold();
            if begin_relay(r, relay).is_err() {
                r.finalize(false, true);
            }
            NGX_DONE as ngx_int_t
        }
        _ => {
            r.hold();
            NGX_DONE as ngx_int_t
        }
    }
}

/// Works out the upstream URL, its route, the handshake to send and the
/// pool this session may use.
fn plan(
    r: &RequestRef,
    conf: &LocConf,
    target: &PassTarget,
    handshake: ClientHandshake,
) -> Result<Box<Plan>, ngx_int_t> {
    let (url, route) = route(r, target)?;
    let opts = client_options(r, conf, &url, &handshake).map_err(|e| {
        ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
        HTTP_INTERNAL_SERVER_ERROR
    })?;
    let keepalive = match conf.pool_settings() {
        None => None,
        Some(settings) => {
            let name = match &conf.keepalive_pool {
                Some(cv) => String::from_utf8_lossy(
                    &cv.evaluate(r).map_err(|_| HTTP_INTERNAL_SERVER_ERROR)?,
                )
                .into_owned(),
                None => format!("{}:{}", url.host, url.port_or_default()),
            };
            // TLS connections are kept apart per TLS context and name.
            let key = match &opts.tls {
                Some(tls) => format!("{name}|tls:{:x}:{:?}", tls.ctx.id(), tls.sni),
                None => name,
            };
            let me = NonNull::new(r.connection_ptr()).ok_or(HTTP_INTERNAL_SERVER_ERROR)?;
            Some(Keepalive {
                pool: pool::pool(&key),
                handshake: opts.handshake(),
                settings,
                slot: None,
                me,
            })
        }
    };
    let limits = conf.limits();
    Ok(Box::new(Plan {
        opts: Some(opts),
        route: Some(route),
        peer: None,
        accept: handshake.accept,
        limits,
        upstream_limits: Limits {
            send_masked: conf.pass_send_unmasked != 1,
            // The session's age and drain are the client leg's (the relay
            // closes both legs).
            max_session_ms: None,
            ..limits
        },
        connect_timeout: conf.connect_timeout,
        keepalive,
        deflate: handshake.deflate,
        deflate_settings: conf.deflate().map(|(_, settings)| settings),
    }))
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
        None => Route::Dns {
            host: url.host.clone(),
            port: url.port_or_default(),
        },
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
        // A pooled connection serves sessions one after another: no
        // compression state may outlive a message.
        deflate: conf.deflate().map(|(cfg, _)| DeflateConfig {
            context_takeover: cfg.context_takeover && conf.pool_settings().is_none(),
            ..cfg
        }),
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
        let pool = (*ForeignTypeRef::as_ptr(&*r)).pool;
        let (_, answer) = ngx_resolve::finish(pool, ctx);
        if let Some(session) = pass_of(r) {
            if let State::Resolving(resolving) = &mut session.state {
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
    run(r, Origin::Client);
}

/// Hands the upgraded session to the generic served-session machinery
/// ([`serve`](crate::serve)): the request's context becomes a [`Served`]
/// that the relay drives, with the session's log and detach state.
fn begin_relay(r: &mut RequestRef, relay: Box<Relay>) -> Result<(), crate::ngx_io::NgxError> {
    use crate::ngx_io::NgxError;
    let ctx = r
        .ctx::<SessionCtx>(Module::module())
        .ok_or(NgxError("the session's context"))?;
    // SAFETY: the request owns the context; this runs from its content
    // handler or event handler, after the pass session's last use.
    let ctx = unsafe { &mut *ctx.as_ptr() };
    let pass = ctx
        .as_any_mut()
        .downcast_mut::<PassSession>()
        .ok_or(NgxError("the pass session"))?;
    let log = core::mem::take(&mut pass.log);
    let detach = core::mem::replace(&mut pass.detach, Detach::for_request(r));
    let stats = relay.client_stats();
    let drive = RelaySession {
        relay: Some(relay),
        stats,
    };
    // Drops the pass session, which holds nothing more.
    *ctx = Box::new(Served::new(log, Box::new(drive), detach));
    serve::start(r, c"proxying WebSocket")
}

/// The relay of an upgraded pass session, as the served-session trampolines
/// drive it.
struct RelaySession {
    /// Taken when the relay ends (its upstream may go to the pool).
    relay: Option<Box<Relay>>,
    /// The client leg's counts, kept when the relay ends.
    stats: crate::stats::Stats,
}

impl Drive for RelaySession {
    fn run(
        &mut self,
        c: &ConnectionRef,
        request: Option<&mut RequestRef>,
        _: serve::Origin,
    ) -> End {
        let failed = End::Finish {
            linger: false,
            error: true,
        };
        let Some(relay) = self.relay.as_mut() else {
            return failed;
        };
        // The rest of the 101 goes before any frame: the relay writes to
        // the socket itself and would overtake what nginx's filters hold.
        if let Some(r) = request.filter(|r| r.output_pending()) {
            if c.take_timedout(Direction::Write) {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    c.log(),
                    "websocket: client timed out while the 101 response was sent"
                );
                return failed;
            }
            if r.flush_output().is_err() {
                return failed;
            }
            if r.output_pending() {
                return match relay.await_client_writable() {
                    Ok(()) => End::Wait,
                    Err(_) => failed,
                };
            }
            c.del_timer(Direction::Write);
        }
        let outcome = relay.step(c.log());
        self.stats = relay.client_stats();
        match outcome {
            Outcome::Wait => End::Wait,
            Outcome::Finish { linger, error } => {
                // At its end the upstream goes to its pool when it can.
                if let Some(relay) = self.relay.take() {
                    relay.end(c.log());
                }
                End::Finish { linger, error }
            }
        }
    }

    fn drain(&mut self) {
        if let Some(relay) = self.relay.as_mut() {
            relay.shut_down();
        }
    }

    fn stats(&self) -> crate::stats::Stats {
        self.stats
    }

    fn detached(&mut self, c: *mut ngx_connection_t, handler: crate::ngx_peer::EventHandler) {
        if let Some(relay) = &self.relay {
            relay.upstream().redirect_events(c.cast(), handler);
        }
    }
}

impl LoggedSession for PassSession {
    fn session_log(&self) -> &SessionLog {
        &self.log
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

/// The session of a request that `websocket_pass` serves.
///
/// # Safety
/// Nothing else may reference the session while the result is used, and it
/// must not be used after the request is finalized.
unsafe fn pass_of<'a>(r: &RequestRef) -> Option<&'a mut PassSession> {
    let mut ctx = r.ctx::<SessionCtx>(Module::module())?;
    // SAFETY: the request owns the session until it is freed; handlers run
    // from the event loop, one at a time, and nothing else holds a
    // reference to the session meanwhile.
    let ctx = unsafe { ctx.as_mut() };
    ctx.as_any_mut().downcast_mut::<PassSession>()
}

impl DetachedSession for PassSession {
    fn detach(&mut self) -> &mut Detach {
        &mut self.detach
    }

    fn shut_down(&mut self) {}
}

/// Read/write handler of the upstream connection.
unsafe extern "C" fn upstream_event(ev: *mut ngx_event_t) {
    // SAFETY: the upstream connection was set up with the request as data.
    let r = unsafe { RequestRef::from_raw(request_of(ev)) };
    let c = r.connection_ptr();
    run(r, Origin::Upstream);
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

fn run(r: &mut RequestRef, origin: Origin) {
    // SAFETY: an event handler of the request, run alone from the event loop.
    let Some(session) = (unsafe { pass_of(r) }) else {
        r.finalize(false, true);
        return;
    };
    match session.step(r, origin) {
        Next::Wait => {}
        Next::Relay(relay) => {
            if begin_relay(r, relay).is_err() {
                r.finalize(false, true);
            }
        }
        Next::Finish { linger, error } => {
            session.state = State::Done;
            r.finalize(linger, error);
        }
        Next::Fail(rc) => {
            session.state = State::Done;
            metrics::handshake_rejected(rc);
            r.finalize_status(rc);
        }
    }
}

impl PassSession {
    fn step(&mut self, r: &mut RequestRef, origin: Origin) -> Next {
        let upgraded = matches!(self.state, State::Done);
        if !upgraded && origin == Origin::Client && r.connection().peer_closed() {
            // Gone while waiting for its upstream: free its place at once.
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: client closed the connection before the upgrade"
            );
            return Next::Fail(HTTP_CLIENT_CLOSED_REQUEST);
        }
        let state = core::mem::replace(&mut self.state, State::Done);
        match state {
            State::Waiting(plan) => {
                if r.connection().take_timedout(Direction::Write) {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        r.log(),
                        "websocket: no upstream connection became free within websocket_connect_timeout"
                    );
                    return Next::Fail(HTTP_GATEWAY_TIMEOUT);
                }
                self.proceed(r, plan)
            }
            State::Resolving(mut resolving) => {
                let Some(answer) = resolving.answer.take() else {
                    self.state = State::Resolving(resolving);
                    return Next::Wait;
                };
                let addrs = match answer {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
                        return Next::Fail(HTTP_BAD_GATEWAY);
                    }
                };
                let mut plan = resolving.plan;
                plan.route = Some(Route::Peers(PeerSource::Resolved {
                    addrs,
                    port: resolving.port,
                }));
                self.proceed(r, plan)
            }
            // Only the upstream's events move a handshake on; the client may
            // speak (or be posted) meanwhile.
            State::Connecting(handshaking) if origin == Origin::Client => {
                self.state = State::Connecting(handshaking);
                Next::Wait
            }
            State::Connecting(mut handshaking) => match handshaking.connector.advance() {
                Progress::Pending => {
                    self.state = State::Connecting(handshaking);
                    Next::Wait
                }
                Progress::Failed(e) => {
                    log_connect_failure(r, &e);
                    Next::Fail(e.status())
                }
                Progress::Ready(established) => match established.peer.into_conn() {
                    Some(conn) => self.upgrade(
                        r,
                        handshaking.plan,
                        conn,
                        established.agreed,
                        &established.leftover,
                        false,
                    ),
                    None => Next::Fail(HTTP_BAD_GATEWAY),
                },
            },
            State::Done => Next::Wait,
        }
    }

    /// Gets the session an upstream connection: the balancer picks the peer
    /// (once the host name is resolved), then a pooled connection to it is
    /// reused, or the session waits in the pool's line, or connects.
    fn proceed(&mut self, r: &mut RequestRef, mut plan: Box<Plan>) -> Next {
        r.connection().del_timer(Direction::Write);
        if plan.peer.is_none() {
            match plan.route.take() {
                Some(Route::Peers(source)) => match UpstreamPeer::new(r, &source) {
                    Ok(peer) => plan.peer = Some(peer),
                    Err(e) => {
                        log_connect_failure(r, &ClientError::Internal(e));
                        return Next::Fail(HTTP_INTERNAL_SERVER_ERROR);
                    }
                },
                Some(Route::Dns { host, port }) => return self.resolve(r, plan, host, port),
                None => return Next::Fail(NGX_ERROR as ngx_int_t),
            }
        }
        let Some(peer) = plan.peer.as_mut() else {
            return Next::Fail(NGX_ERROR as ngx_int_t);
        };
        match peer.pick() {
            Pick::Picked => {}
            Pick::NoLivePeers => {
                log_connect_failure(r, &ClientError::NoLivePeers);
                return Next::Fail(HTTP_BAD_GATEWAY);
            }
            Pick::Error => return Next::Fail(HTTP_INTERNAL_SERVER_ERROR),
        }
        if let Some(keepalive) = plan.keepalive.as_mut().filter(|k| k.slot.is_none()) {
            match keepalive.pool.acquire(
                &keepalive.handshake,
                peer.address(),
                keepalive.settings,
                keepalive.me,
            ) {
                Acquired::Reused { conn, slot, agreed } => {
                    keepalive.slot = Some(slot);
                    let Some(peer) = plan.peer.take() else {
                        return Next::Fail(NGX_ERROR as ngx_int_t);
                    };
                    let Some(conn) = peer.reuse(conn) else {
                        return Next::Fail(HTTP_INTERNAL_SERVER_ERROR);
                    };
                    return self.upgrade(r, plan, conn, agreed, &[], true);
                }
                Acquired::Connect(slot) => keepalive.slot = Some(slot),
                Acquired::Wait => {
                    r.connection()
                        .add_timer(Direction::Write, plan.connect_timeout);
                    self.state = State::Waiting(plan);
                    return Next::Wait;
                }
                Acquired::Overflow => {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        r.log(),
                        "websocket: too many waiting connect operations (pool \"{}\")",
                        keepalive.pool.name()
                    );
                    return Next::Fail(HTTP_SERVICE_UNAVAILABLE);
                }
            }
        }
        let (Some(peer), Some(opts)) = (plan.peer.take(), plan.opts.take()) else {
            return Next::Fail(NGX_ERROR as ngx_int_t);
        };
        let data = ForeignTypeRef::as_ptr(&*r).cast();
        match Connector::start(peer, opts, data, upstream_event) {
            Ok(connector) => {
                self.state = State::Connecting(Box::new(Handshaking { connector, plan }));
                Next::Wait
            }
            Err(e) => {
                log_connect_failure(r, &e);
                Next::Fail(e.status())
            }
        }
    }

    /// Resolves the upstream's host name; the answer comes back to
    /// [`PassSession::step`].
    fn resolve(&mut self, r: &mut RequestRef, plan: Box<Plan>, host: String, port: u16) -> Next {
        self.state = State::Resolving(Box::new(Resolving {
            plan,
            port,
            query: None,
            answer: None,
        }));
        let data = ForeignTypeRef::as_ptr(&*r).cast();
        match ngx_resolve::start(r, &host, on_resolved, data) {
            Ok(query) => {
                match &mut self.state {
                    State::Resolving(resolving) if resolving.answer.is_none() => {
                        resolving.query = Some(query)
                    }
                    // Answered from the cache: the handler freed the query.
                    _ => query.forget(),
                }
                Next::Wait
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    r.log(),
                    "websocket: cannot resolve \"{host}\": {e}"
                );
                Next::Fail(HTTP_BAD_GATEWAY)
            }
        }
    }

    /// An upstream connection is ready (new or pooled): answer the client
    /// with 101 and start relaying.
    fn upgrade(
        &mut self,
        r: &mut RequestRef,
        plan: Box<Plan>,
        conn: UpstreamConn,
        agreed: Agreed,
        leftover: &[u8],
        reused: bool,
    ) -> Next {
        let extensions = plan.deflate.as_ref().map(|(_, header)| header.as_str());
        let subprotocol = agreed.subprotocol.as_deref();
        let pipelined = match upgrade::respond(r, &plan.accept, subprotocol, extensions) {
            Ok(pipelined) => pipelined,
            Err(rc) => return Next::Fail(rc),
        };
        conn.attach(
            ForeignTypeRef::as_ptr(&*r).cast(),
            serve::on_upstream_event,
            r.log(),
        );
        // SAFETY: the relay owns both objects and is dropped before either
        // connection closes: the client's with its request or by
        // `end_detached`, the upstream's by `UpstreamConn`, which the relay
        // owns too and drops after the object (`WsClient` field order).
        let (mut client, mut upstream) = unsafe {
            (
                WebSocket::new(r.connection(), Role::Server, plan.limits, &pipelined),
                WebSocket::new(
                    conn.connection(),
                    Role::Client,
                    plan.upstream_limits,
                    leftover,
                ),
            )
        };
        // [limit] websocket_limit on the client leg only.
        if let Some(conf) = Module::location_conf(r) {
            client.limit_messages(crate::limit::Limiter::for_request(r, conf));
        }
        // Each leg compresses as it agreed; the relay sees plain messages.
        if let Some(settings) = plan.deflate_settings {
            if let Some((with_client, _)) = &plan.deflate {
                client.enable_compression(with_client, settings);
            }
            if let Some(with_upstream) = &agreed.deflate {
                upstream.enable_compression(with_upstream, settings);
            }
        }
        if r.connection().tcp_nodelay().is_err() || conn.connection().tcp_nodelay().is_err() {
            return Next::Finish {
                linger: false,
                error: true,
            };
        }
        self.log.subprotocol.clone_from(&agreed.subprotocol);
        self.log.upstream_addr = Some(conn.name().to_owned());
        self.log.upstream_reused = reused;
        self.log.kind = Some(Kind::Pass);
        metrics::session_started(Kind::Pass);
        metrics::upstream_connected(reused);
        let Plan { keepalive, .. } = *plan;
        let upstream = WsClient::new(upstream, conn, agreed, keepalive);
        // From here the relay runs as a served session (`begin_relay`).
        Next::Relay(Box::new(Relay::new(client, upstream)))
    }
}
