//! [`connect`]: the seed's WebSocket client (`client:new` + `wb:connect`)
//! on nginx's event loop, for a request's content handler: resolve, pick a
//! peer with nginx's balancer, reuse a keepalive-pooled connection or
//! connect (TLS, handshake), then hand the connected [`WsClient`] to a
//! [`ClientHandler`]. `websocket_pass` is such a handler.
//!
//! # Why a handler, as for servers
//!
//! The seed's `wb:connect()` blocks its coroutine; here nothing may block,
//! and the connection's events must reach code that is still alive when
//! they fire. As [`serve`](crate::serve) does for servers, the library
//! keeps the connection and the handler in the request (its module
//! context), installs one generic set of `extern "C"` trampolines, and
//! calls the handler's plain `&mut self` methods: [`ClientHandler::connected`]
//! once the connect finished (or failed), [`ClientHandler::step`] on each
//! event of the upstream connection after that. The handler never holds the
//! connection itself, so it cannot outlive the request that its events are
//! delivered to; it ends the request by returning [`ClientNext::Finish`]
//! (after the seed's [`WsClient::close`] or [`WsClient::set_keepalive`]),
//! and the library frees the connection on exactly one path.

use core::ffi::CStr;
use core::ptr::NonNull;
use std::ffi::CString;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_t, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_module_t,
    ngx_msec_t, ngx_resolver_ctx_t, NGX_DONE, NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use ngx::ngx_log_error;

use crate::client::{Agreed, ClientError, Connector, HandshakeOptions, Progress, TlsTarget};
use crate::compression::DeflateSettings;
use crate::ngx_detach::{Detach, DetachedSession};
use crate::ngx_io::{run_posted_requests, ConnectionRef, Direction, NgxError, RequestRef};
use crate::ngx_peer::{
    request_of, set_handlers, write_event, PeerSource, Pick, UpstreamConn, UpstreamPeer,
};
use crate::ngx_resolve::{self, Addresses, NameQuery, ResolveError};
use crate::ngx_ssl::{ClientTls, ConnCert, TlsSettings};
use crate::pool::{self, Acquired, Keepalive, PoolSettings};
use crate::protocol::deflate::DeflateConfig;
use crate::serve::{self, Drive, RelayHandler, RelaySession, Served};
use crate::session::{Role, WebSocket};
use crate::stats::Limits;
use crate::upgrade::{upgrade, Deflate, ServerOptions, Upgraded, HTTP_INTERNAL_SERVER_ERROR};
use crate::url::WsUrl;
use crate::variables::{LoggedSession, SessionCtx, SessionLog};
use crate::ws_client::{Ending, WsClient};

/// The seed's `client:new(opts)`: how the connected WebSocket behaves.
/// Times are in milliseconds, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Largest payload of one frame, both directions (65535 by default).
    pub max_payload_len: u64,
    /// Largest frame (or inflated message) received. `None`: `max_payload_len`.
    pub max_recv_len: Option<u64>,
    /// Largest frame sent: a larger send fails with
    /// [`WsError::TooBig`](crate::WsError::TooBig) and writes nothing.
    /// `None`: `max_payload_len`.
    pub max_send_len: Option<u64>,
    /// Send unmasked frames although we are the client (the seed's
    /// `send_unmasked`; RFC 6455 forbids it, some servers accept it).
    pub send_unmasked: bool,
    /// Network timeout of reads and writes once connected (the seed's
    /// `timeout`), and of the connect unless `connect_timeout` is set.
    pub timeout: u64,
    /// Bound on resolving, connecting, TLS and the handshake together (and
    /// on waiting in a pool's line). `None`: `timeout`.
    pub connect_timeout: Option<u64>,
    /// Send a ping after this long without a frame from the upstream.
    pub ping_interval: Option<u64>,
    /// With `ping_interval`: the upstream is dead when nothing arrives this
    /// long after a ping.
    pub ping_timeout: u64,
    /// permessage-deflate (RFC 7692) to offer the upstream.
    pub deflate: Option<Deflate>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_payload_len: 65535,
            max_recv_len: None,
            max_send_len: None,
            send_unmasked: false,
            timeout: 60_000,
            connect_timeout: None,
            ping_interval: None,
            ping_timeout: 30_000,
            deflate: None,
        }
    }
}

impl ClientOptions {
    fn limits(&self) -> Limits {
        Limits {
            max_recv_len: self.max_recv_len.unwrap_or(self.max_payload_len),
            max_send_len: self.max_send_len.unwrap_or(self.max_payload_len),
            send_masked: !self.send_unmasked,
            timeout_ms: self.timeout as _,
            ping_interval_ms: self.ping_interval.map(|t| t as _),
            ping_timeout_ms: self.ping_timeout as _,
            max_session_ms: None,
            shutdown_spread_ms: 0,
        }
    }
}

/// The seed's `wb:connect(uri, opts)` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Subprotocols to offer (`Sec-WebSocket-Protocol`), in order of
    /// preference.
    pub protocols: Vec<String>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// The keepalive pool's name; `None`: `host:port` of the URI. Connections
    /// over TLS are kept apart per TLS context and server name whatever the
    /// name, and a pooled connection serves only a connect whose handshake
    /// is the same, byte for byte, but for its key.
    pub pool: Option<String>,
    /// Idle connections the pool keeps (30 by default, as the seed's
    /// `lua_socket_pool_size`). `None`: no pool, the connect never reuses a
    /// connection and [`WsClient::set_keepalive`] fails.
    pub pool_size: Option<usize>,
    /// With a pool: at most `pool_size` connections are open at once, and
    /// up to `backlog` connects wait in line for one (past it they fail
    /// with [`ClientError::PoolFull`]).
    pub backlog: Option<usize>,
    /// Verify the upstream's certificate against the [`TlsContext`]'s
    /// trusted CAs and the server name.
    pub ssl_verify: bool,
    /// More request headers.
    pub headers: Vec<(String, String)>,
    /// The `Host` header; `None`: the URI's host (and port, unless the
    /// default).
    pub host: Option<String>,
    /// The TLS server name sent (SNI) and verified; `None`: the URI's host
    /// (no SNI for an IP address).
    pub server_name: Option<String>,
    /// The `Sec-WebSocket-Key` to send; `None`: a fresh random one.
    pub key: Option<String>,
    /// A client certificate (chain) to present to a `wss://` upstream that
    /// asks for one: a PEM file's name (relative to nginx's configuration
    /// prefix; the worker reads it, as its user, at each connect), or
    /// `data:` followed by the PEM text. With `client_priv_key`.
    pub client_cert: Option<Vec<u8>>,
    /// The private key of `client_cert`, given the same way.
    pub client_priv_key: Option<Vec<u8>>,
    /// The TLS context of `wss://` connects, made when the configuration
    /// loads (see [`TlsContext::new`]); required for `wss://`.
    pub tls: Option<TlsContext>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            protocols: Vec::new(),
            origin: None,
            pool: None,
            pool_size: Some(30),
            backlog: None,
            ssl_verify: false,
            headers: Vec::new(),
            host: None,
            server_name: None,
            key: None,
            client_cert: None,
            client_priv_key: None,
            tls: None,
        }
    }
}

/// An `SSL_CTX` for `wss://` connects, made with nginx's SSL layer when the
/// configuration loads (nginx reads certificate files then, not in a
/// worker), and freed with the configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TlsContext(ClientTls);

impl core::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TlsContext({:#x})", self.0.id())
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for ClientTls {}

impl TlsContext {
    /// TLS 1.2 and 1.3 with default ciphers; `trusted_certificate` (a PEM
    /// file of CAs) is what [`ConnectOptions::ssl_verify`] verifies against.
    ///
    /// # Safety
    /// `cf` must be the configuration nginx is loading (a directive's
    /// handler, or a module's configuration callback).
    pub unsafe fn new(
        cf: *mut ngx_conf_t,
        trusted_certificate: Option<&[u8]>,
    ) -> Result<TlsContext, NgxError> {
        let settings = TlsSettings {
            verify: trusted_certificate.is_some(),
            trusted_certificate,
            certificate: None,
            certificate_key: None,
        };
        // SAFETY: guaranteed by the caller.
        unsafe { ClientTls::create(cf, &settings) }.map(TlsContext)
    }

    /// A context the module made for a location.
    pub(crate) fn from_location(tls: ClientTls) -> TlsContext {
        TlsContext(tls)
    }
}

/// How [`connect`] got its connection (the seed's third return value of
/// `wb:connect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// A new connection; the upstream's handshake response head.
    Handshake(Vec<u8>),
    /// A keepalive-pooled connection, handshaken before: the seed's
    /// "connection reused".
    Reused,
}

/// What a [`ClientHandler`] asks for next.
#[derive(Debug)]
pub enum ClientNext {
    /// Wait for the upstream's next event (everything received was
    /// handled); the library flushes what was sent first.
    Wait,
    /// The request is done: the connection ends as the handler asked, with
    /// [`WsClient::close`] (the close frame is flushed, then the connection
    /// closed) or [`WsClient::set_keepalive`] (flushed, then pooled), or else
    /// at once, without a close frame; then the request is finalized with
    /// this code (the handler answered it before, or it is an HTTP status
    /// that nginx answers with its error page).
    Finish(ngx_int_t),
}

/// An application of the client: what a request does with its upstream
/// WebSocket. Runs on the request's events, on nginx's event loop.
pub trait ClientHandler: 'static {
    /// The connect finished: `Ok` with how (and the connection is
    /// [`ClientContext::client`]), or why it failed (already logged; there
    /// is no connection, return [`ClientNext::Finish`] with an answer).
    /// Frames may have arrived with the handshake: receive as in
    /// [`ClientHandler::step`].
    fn connected(
        &mut self,
        cx: &mut ClientContext<'_>,
        result: Result<Connected, ClientError>,
    ) -> ClientNext;

    /// Something may have arrived on the connection (or
    /// [`ClientContext::timed_out`]): call [`WebSocket::recv`] or
    /// [`WebSocket::recv_frame`] on [`ClientContext::client`] until it
    /// returns `Ok(None)`, send with the `send_*` methods.
    fn step(&mut self, cx: &mut ClientContext<'_>) -> ClientNext;
}

/// What a [`ClientHandler`] works with during one call.
pub struct ClientContext<'a> {
    request: &'a mut RequestRef,
    client: &'a mut Option<Box<WsClient>>,
    timed_out: bool,
    handover: Option<Handover>,
}

/// A session that takes the request over from the client (the relay of
/// `websocket_pass`).
struct Handover {
    drive: Box<dyn Drive>,
    action: &'static CStr,
    /// The subprotocol chosen with the client, for the access log.
    subprotocol: Option<String>,
}

impl<'a> ClientContext<'a> {
    /// The request whose content handler connected; answer it before
    /// returning [`ClientNext::Finish`] with what answering returned.
    pub fn request(&mut self) -> &mut RequestRef {
        self.request
    }

    /// The upstream WebSocket, once connected.
    pub fn client(&mut self) -> Option<&mut WsClient> {
        self.client.as_deref_mut()
    }

    /// Whether the upstream was silent (or did not take our data) for the
    /// client's `timeout`.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Upgrades the request (as [`upgrade`](crate::upgrade()) with `opts`)
    /// to relay it to the connected upstream: answers the client 101 and
    /// returns the upgraded request with the upstream, which
    /// [`Relaying::serve`] hands to a [`RelayHandler`]. To pass the
    /// upstream's subprotocol on, put [`WsClient::subprotocol`] in
    /// `opts.protocols`. Fails without answering when nothing is
    /// connected; on failure, finish with the returned code. A [`Relaying`]
    /// dropped unserved leaves a request told 101: finish with `NGX_ERROR`.
    pub fn upgrade(&mut self, opts: &ServerOptions) -> Result<Relaying<'_>, ngx_int_t> {
        let ClientContext {
            request,
            client,
            handover,
            ..
        } = self;
        if client.is_none() {
            return Err(HTTP_INTERNAL_SERVER_ERROR);
        }
        let upgraded = upgrade(request, opts)?;
        Ok(Relaying {
            upgraded,
            client,
            handover,
        })
    }
}

/// A request upgraded from a [`ClientHandler`] with its upstream connected
/// (see [`ClientContext::upgrade`]): both legs of a relay, before
/// [`Relaying::serve`].
pub struct Relaying<'c> {
    upgraded: Upgraded<'c>,
    client: &'c mut Option<Box<WsClient>>,
    handover: &'c mut Option<Handover>,
}

impl Relaying<'_> {
    /// The client leg, to send a greeting or set it up before serving.
    pub fn ws(&mut self) -> &mut WebSocket {
        self.upgraded.ws()
    }

    /// The upgraded request.
    pub fn request(&mut self) -> &mut RequestRef {
        self.upgraded.request()
    }

    /// The subprotocol chosen with the client, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.upgraded.subprotocol()
    }

    /// The upstream leg.
    pub fn upstream(&mut self) -> Option<&mut WsClient> {
        self.client.as_deref_mut()
    }

    /// Serves both legs with `handler` from the next event on (on
    /// [`serve`](crate::serve())'s trampolines); the [`ClientHandler`] is
    /// not called again, whatever it returns now (return
    /// [`ClientNext::Wait`]).
    pub fn serve<H: RelayHandler>(self, mut handler: H) {
        let Relaying {
            mut upgraded,
            client,
            handover,
        } = self;
        // `upgrade` made it with the upstream, which it only lends.
        let Some(upstream) = client.take() else {
            handler.finish(&upgraded.ws().stats());
            return;
        };
        let (r, ws, subprotocol) = upgraded.into_parts();
        // The upstream's events go to the served session's trampolines.
        upstream.redirect_events(ForeignTypeRef::as_ptr(&*r).cast(), serve::on_upstream_event);
        *handover = Some(Handover {
            drive: Box::new(RelaySession::new(ws, upstream, handler)),
            action: c"proxying WebSocket",
            subprotocol,
        });
    }
}

/// The seed's `wb:connect(uri, opts)` from a content handler: starts
/// connecting the request to the WebSocket at `uri` (`ws://` or
/// `wss://`; its host names an `upstream {}` block, an address, or a name
/// the location's `resolver` resolves). Returns what the content handler
/// returns to nginx: `NGX_DONE`, or 500 for a subrequest or a request over
/// HTTP/2 (the client's events come through the request's own connection),
/// or `NGX_ERROR` when it could not start. `handler` gets the outcome from
/// the event loop, always (an unusable URI too), never from within
/// `connect`.
///
/// # Safety
/// `module` must be the calling module, an HTTP module loaded in this
/// cycle, whose request context slot (`ctx[module.ctx_index]`) nothing else
/// uses for this request: the session lives there.
pub unsafe fn connect<H: ClientHandler>(
    r: &mut RequestRef,
    module: &'static ngx_module_t,
    uri: &str,
    client: &ClientOptions,
    opts: ConnectOptions,
    handler: H,
) -> ngx_int_t {
    // Its events come through the request's own connection.
    if !r.is_main() || r.is_http2_stream() {
        ngx_log_error!(
            NGX_LOG_ERR,
            r.log(),
            "websocket: connect needs a main request over HTTP/1.x"
        );
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    let start = match plan(r, uri, client, opts) {
        Ok(plan) => State::Waiting(plan),
        Err(e) => State::Failed(e),
    };
    let session: SessionCtx = Box::new(ClientSession {
        log: SessionLog::new(None),
        detach: Detach::for_request(r),
        handler: Box::new(handler),
        state: start,
        client: None,
        closing: None,
    });
    if r.set_owned_ctx(module, Box::new(session)).is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    r.hold();
    r.set_event_handlers(client_event, client_event);
    r.connection().set_log_action(c"connecting to upstream");
    // The first step runs from the event loop, so that every outcome
    // reaches the handler (and ends the request) on one path.
    r.connection().post(Direction::Write);
    NGX_DONE as ngx_int_t
}

/// A request's client session, in its module context.
struct ClientSession {
    log: SessionLog,
    detach: Detach,
    handler: Box<dyn ClientHandler>,
    state: State,
    client: Option<Box<WsClient>>,
    /// Closing (or pooling) the connection: then finalize with this code.
    closing: Option<(ngx_int_t, Ending)>,
}

enum State {
    /// Waiting for the event loop to start, or in a keepalive pool's line.
    Waiting(Box<Plan>),
    /// The URI could not be used: the handler hears it on the first event.
    Failed(ClientError),
    /// The upstream's host name is being resolved.
    Resolving(Box<Resolving>),
    /// Connect, TLS and the upstream handshake are under way.
    Connecting(Box<Handshaking>),
    /// Connected (or failed and told): the handler runs.
    Done,
}

/// Everything needed to get the request a connection.
struct Plan {
    opts: Option<HandshakeOptions>,
    route: Option<Route>,
    /// The balancer, once the route's peers are known; it picks the peer
    /// before the pool is searched, as with nginx's `keepalive`.
    peer: Option<UpstreamPeer>,
    limits: Limits,
    connect_timeout: ngx_msec_t,
    keepalive: Option<Keepalive>,
    deflate: Option<DeflateSettings>,
}

/// How this request reaches its upstream's peers.
enum Route {
    Peers(PeerSource),
    /// The URI's host is a name to resolve first.
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

/// Which connection an event came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Upstream,
}

/// How an event left the session.
enum Step {
    Wait,
    /// End the request with this code.
    Finish(ngx_int_t),
    /// Another session serves the request from now on.
    Handover(Handover),
}

/// The handshake, the route and the pool of a connect to `uri`.
fn plan(
    r: &RequestRef,
    uri: &str,
    client: &ClientOptions,
    mut opts: ConnectOptions,
) -> Result<Box<Plan>, ClientError> {
    let url = WsUrl::parse(uri).map_err(|e| ClientError::Uri(format!("\"{uri}\": {e}")))?;
    let port = url.port_or_default();
    let route = match PeerSource::named(r, &url.host, url.port)
        .or_else(|| PeerSource::implicit(r, &url.host, port))
        .or_else(|| PeerSource::literal(r, &format!("{}:{port}", url.host)))
    {
        Some(source) => Route::Peers(source),
        None => Route::Dns {
            host: url.host.clone(),
            port,
        },
    };
    let cert = match (opts.client_cert.take(), opts.client_priv_key.take()) {
        (Some(cert), Some(key)) => Some(ConnCert { cert, key }),
        (None, None) => None,
        _ => {
            return Err(ClientError::Internal(NgxError(
                "client_cert and client_priv_key go together",
            )))
        }
    };
    let tls = match (url.tls, opts.tls) {
        (false, _) => None,
        (true, None) => return Err(ClientError::NoTls),
        (true, Some(ctx)) => Some(tls_target(&url, &opts, ctx.0, cert)),
    };
    let connect_timeout = client.connect_timeout.unwrap_or(client.timeout) as ngx_msec_t;
    let handshake = HandshakeOptions {
        path: url.path.clone().unwrap_or_else(|| String::from("/")),
        host: opts.host.clone().unwrap_or_else(|| url.host_header()),
        protocols: opts.protocols,
        origin: opts.origin,
        headers: opts.headers,
        connect_timeout,
        tls,
        deflate: client.deflate.map(|d| DeflateConfig {
            window_bits: d.window_bits,
            context_takeover: d.context_takeover,
        }),
        key: opts.key,
    };
    let keepalive = match opts.pool_size {
        None => None,
        Some(size) => {
            let name = opts.pool.unwrap_or_else(|| format!("{}:{port}", url.host));
            // TLS connections are kept apart per TLS context, name and
            // client certificate.
            let key = match &handshake.tls {
                Some(tls) => {
                    let mut key = format!("{name}|tls:{:x}:{:?}", tls.ctx.id(), tls.sni);
                    if let Some(cert) = &tls.cert {
                        key.push_str(&format!(":{}", cert.cert.escape_ascii()));
                    }
                    key
                }
                None => name,
            };
            let me = NonNull::new(r.connection_ptr())
                .ok_or(ClientError::Internal(NgxError("the client connection")))?;
            Some(Keepalive {
                pool: pool::pool(&key),
                handshake: handshake.handshake(),
                settings: PoolSettings {
                    size,
                    idle_timeout: client.timeout as ngx_msec_t,
                    backlog: opts.backlog,
                },
                slot: None,
                me,
            })
        }
    };
    Ok(Box::new(Plan {
        opts: Some(handshake),
        route: Some(route),
        peer: None,
        limits: client.limits(),
        connect_timeout,
        keepalive,
        deflate: client.deflate.map(|d| DeflateSettings {
            level: d.level,
            mem_level: d.mem_level,
            min_length: d.min_length,
        }),
    }))
}

/// SNI and verification for a `wss://` upstream: `server_name` or the
/// URI's host; no SNI for an IP address.
fn tls_target(
    url: &WsUrl,
    opts: &ConnectOptions,
    ctx: ClientTls,
    cert: Option<ConnCert>,
) -> TlsTarget {
    let name = match &opts.server_name {
        Some(name) => name.as_bytes().to_vec(),
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
        verify_name: opts.ssl_verify.then_some(name),
        cert,
        on_done: Some(upstream_tls_done),
    }
}

/// Logs why the upstream could not be used; nginx appends the peer.
fn log_failure(r: &RequestRef, e: &ClientError) {
    match e {
        // Every failed connect() was logged when it failed.
        ClientError::Unreachable { .. } => {}
        ClientError::ClientClosed => {
            ngx_log_error!(NGX_LOG_INFO, r.log(), "websocket: {e}");
        }
        _ => {
            ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
        }
    }
}

/// The session of a request that [`connect`] connects.
///
/// # Safety
/// Nothing else may reference the session while the result is used, and it
/// must not be used after the request is finalized.
unsafe fn session_of<'a>(r: &RequestRef) -> Option<&'a mut ClientSession> {
    let mut ctx = r.owned_ctx::<SessionCtx>()?;
    // SAFETY: the request owns the session until it is freed; handlers run
    // from the event loop, one at a time, and nothing else holds a
    // reference to the session meanwhile.
    let ctx = unsafe { ctx.as_mut() };
    ctx.as_any_mut().downcast_mut::<ClientSession>()
}

/// The resolver's handler: keeps the answer and lets the session go on from
/// the event loop (it may run inside `ngx_resolve_name`, from the cache).
unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: the query was started with the request as its data; the
    // request holds the session until it is finalized, which cancels the
    // query first.
    unsafe {
        let r = RequestRef::from_raw((*ctx).data.cast());
        let pool = (*ForeignTypeRef::as_ptr(&*r)).pool;
        let (_, answer) = ngx_resolve::finish(pool, ctx);
        if let Some(session) = session_of(r) {
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

/// Read/write handler of the request's client connection.
unsafe extern "C" fn client_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    run(r, Origin::Client);
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
    let Some(session) = (unsafe { session_of(r) }) else {
        r.finalize(false, true);
        return;
    };
    match session.step(r, origin) {
        Step::Wait => {}
        Step::Finish(rc) => {
            session.state = State::Done;
            session.client = None;
            r.finalize_status(rc);
        }
        Step::Handover(handover) => {
            if hand_over(r, handover).is_err() {
                r.finalize(false, true);
            }
        }
    }
}

/// Replaces the request's client session with the served session of a
/// [`Handover`] (see [`Relaying::serve`]).
fn hand_over(r: &mut RequestRef, handover: Handover) -> Result<(), NgxError> {
    let mut ctx = r
        .owned_ctx::<SessionCtx>()
        .ok_or(NgxError("the session's context"))?;
    // SAFETY: the request owns the context; this runs from its event
    // handler, after the client session's last use.
    let ctx = unsafe { ctx.as_mut() };
    let session = ctx
        .as_any_mut()
        .downcast_mut::<ClientSession>()
        .ok_or(NgxError("the client session"))?;
    let mut log = core::mem::take(&mut session.log);
    let detach = core::mem::replace(&mut session.detach, Detach::for_request(r));
    let Handover {
        drive,
        action,
        subprotocol,
    } = handover;
    log.subprotocol = subprotocol;
    // Drops the client session, which holds nothing more.
    *ctx = Box::new(Served::new(log, drive, detach));
    serve::start(r, action)
}

impl ClientSession {
    fn step(&mut self, r: &mut RequestRef, origin: Origin) -> Step {
        if origin == Origin::Client && r.connection().peer_closed() {
            // Gone while waiting: free its place at once.
            let e = ClientError::ClientClosed;
            log_failure(r, &e);
            return match self.state {
                State::Done => Step::Finish(e.status()),
                _ => {
                    self.state = State::Done;
                    self.connected(r, Err(e), None)
                }
            };
        }
        if let Some((rc, ending)) = self.closing {
            if origin == Origin::Upstream {
                return self.close(r, rc, ending);
            }
            return Step::Wait;
        }
        let state = core::mem::replace(&mut self.state, State::Done);
        match state {
            State::Failed(e) => {
                log_failure(r, &e);
                self.connected(r, Err(e), None)
            }
            State::Waiting(plan) => {
                if r.connection().take_timedout(Direction::Write) {
                    let e = ClientError::PoolTimeout;
                    log_failure(r, &e);
                    return self.connected(r, Err(e), None);
                }
                self.proceed(r, plan)
            }
            State::Resolving(mut resolving) => {
                let Some(answer) = resolving.answer.take() else {
                    self.state = State::Resolving(resolving);
                    return Step::Wait;
                };
                let addrs = match answer {
                    Ok(addrs) => addrs,
                    Err(e) => return self.fail(r, ClientError::Resolve(e.to_string())),
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
                Step::Wait
            }
            State::Connecting(mut handshaking) => match handshaking.connector.advance() {
                Progress::Pending => {
                    self.state = State::Connecting(handshaking);
                    Step::Wait
                }
                Progress::Failed(e) => self.fail(r, e),
                Progress::Ready(established) => match established.peer.into_conn() {
                    Some(conn) => self.established(
                        r,
                        handshaking.plan,
                        conn,
                        established.agreed,
                        &established.leftover,
                        Connected::Handshake(established.response),
                    ),
                    None => self.fail(r, ClientError::Internal(NgxError("upstream connection"))),
                },
            },
            State::Done if origin == Origin::Upstream && self.client.is_some() => {
                let timed_out = self.client.as_ref().is_some_and(|c| {
                    c.take_timedout(Direction::Read) | c.take_timedout(Direction::Write)
                });
                self.call(r, timed_out, None)
            }
            State::Done => Step::Wait,
        }
    }

    /// Logs `e` and tells the handler.
    fn fail(&mut self, r: &mut RequestRef, e: ClientError) -> Step {
        log_failure(r, &e);
        self.connected(r, Err(e), None)
    }

    /// Calls [`ClientHandler::connected`] and does what it asks.
    fn connected(
        &mut self,
        r: &mut RequestRef,
        result: Result<Connected, ClientError>,
        client: Option<Box<WsClient>>,
    ) -> Step {
        self.client = client;
        self.call(r, false, Some(result))
    }

    /// Calls the handler: `connected` with `result`, else `step`.
    fn call(
        &mut self,
        r: &mut RequestRef,
        timed_out: bool,
        result: Option<Result<Connected, ClientError>>,
    ) -> Step {
        let mut cx = ClientContext {
            request: r,
            client: &mut self.client,
            timed_out,
            handover: None,
        };
        let next = match result {
            Some(result) => self.handler.connected(&mut cx, result),
            None => self.handler.step(&mut cx),
        };
        if let Some(handover) = cx.handover.take() {
            return Step::Handover(handover);
        }
        self.apply(r, next)
    }

    /// Does what the handler asked.
    fn apply(&mut self, r: &mut RequestRef, next: ClientNext) -> Step {
        let Some(client) = self.client.as_mut() else {
            return match next {
                ClientNext::Wait => Step::Finish(NGX_ERROR as ngx_int_t),
                ClientNext::Finish(rc) => Step::Finish(rc),
            };
        };
        match next {
            ClientNext::Wait => match client.flush() {
                Ok(_) if client.arm(!client.close_received()).is_ok() => Step::Wait,
                _ => {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        r.log(),
                        "websocket: upstream connection failed"
                    );
                    Step::Finish(NGX_ERROR as ngx_int_t)
                }
            },
            ClientNext::Finish(rc) => match client.ending() {
                Some(ending) => {
                    self.closing = Some((rc, ending));
                    self.close(r, rc, ending)
                }
                None => Step::Finish(rc),
            },
        }
    }

    /// Flushes what is queued, then closes the connection or pools it, and
    /// finalizes the request with `rc`.
    fn close(&mut self, r: &mut RequestRef, rc: ngx_int_t, ending: Ending) -> Step {
        let Some(client) = self.client.as_mut() else {
            return Step::Finish(rc);
        };
        if client.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: upstream timed out while we were closing"
            );
            return Step::Finish(rc);
        }
        match client.flush() {
            Ok(true) => {}
            Ok(false) if client.arm(false).is_ok() => return Step::Wait,
            _ => return Step::Finish(rc),
        }
        if let (
            Ending::Keepalive {
                max_idle_timeout,
                pool_size,
            },
            Some(client),
        ) = (ending, self.client.take())
        {
            if let Err(e) = client.into_pool(max_idle_timeout, pool_size) {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    r.log(),
                    "websocket: upstream connection closed: {e}"
                );
            }
        }
        Step::Finish(rc)
    }

    /// Gets the request a connection: the balancer picks the peer (once the
    /// host name is resolved), then a pooled connection to it is reused, or
    /// the request waits in the pool's line, or connects.
    fn proceed(&mut self, r: &mut RequestRef, mut plan: Box<Plan>) -> Step {
        r.connection().del_timer(Direction::Write);
        if plan.peer.is_none() {
            match plan.route.take() {
                Some(Route::Peers(source)) => match UpstreamPeer::new(r, &source) {
                    Ok(peer) => plan.peer = Some(peer),
                    Err(e) => return self.fail(r, ClientError::Internal(e)),
                },
                Some(Route::Dns { host, port }) => return self.resolve(r, plan, host, port),
                None => return self.fail(r, ClientError::Internal(NgxError("no route"))),
            }
        }
        let Some(peer) = plan.peer.as_mut() else {
            return self.fail(r, ClientError::Internal(NgxError("no peer")));
        };
        match peer.pick() {
            Pick::Picked => {}
            Pick::NoLivePeers => return self.fail(r, ClientError::NoLivePeers),
            Pick::Error => return self.fail(r, ClientError::Internal(NgxError("peer.get"))),
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
                        return self.fail(r, ClientError::Internal(NgxError("no peer")));
                    };
                    let Some(conn) = peer.reuse(conn) else {
                        return self.fail(r, ClientError::Internal(NgxError("peer reuse")));
                    };
                    return self.established(r, plan, conn, agreed, &[], Connected::Reused);
                }
                Acquired::Connect(slot) => keepalive.slot = Some(slot),
                Acquired::Wait => {
                    r.connection()
                        .add_timer(Direction::Write, plan.connect_timeout);
                    self.state = State::Waiting(plan);
                    return Step::Wait;
                }
                Acquired::Overflow => {
                    let pool = keepalive.pool.name().to_owned();
                    return self.fail(r, ClientError::PoolFull { pool });
                }
            }
        }
        let (Some(peer), Some(opts)) = (plan.peer.take(), plan.opts.take()) else {
            return self.fail(r, ClientError::Internal(NgxError("no peer")));
        };
        let data = ForeignTypeRef::as_ptr(&*r).cast();
        match Connector::start(peer, opts, data, upstream_event) {
            Ok(connector) => {
                self.state = State::Connecting(Box::new(Handshaking { connector, plan }));
                Step::Wait
            }
            Err(e) => self.fail(r, e),
        }
    }

    /// Resolves the upstream's host name; the answer comes back to
    /// [`ClientSession::step`].
    fn resolve(&mut self, r: &mut RequestRef, plan: Box<Plan>, host: String, port: u16) -> Step {
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
                Step::Wait
            }
            Err(e) => {
                self.state = State::Done;
                self.fail(
                    r,
                    ClientError::Resolve(format!("cannot resolve \"{host}\": {e}")),
                )
            }
        }
    }

    /// A connection is ready (new or pooled): the handler gets it.
    fn established(
        &mut self,
        r: &mut RequestRef,
        plan: Box<Plan>,
        conn: UpstreamConn,
        agreed: Agreed,
        leftover: &[u8],
        how: Connected,
    ) -> Step {
        conn.attach(ForeignTypeRef::as_ptr(&*r).cast(), upstream_event, r.log());
        if conn.connection().tcp_nodelay().is_err() {
            return self.fail(r, ClientError::Internal(NgxError("TCP_NODELAY")));
        }
        // SAFETY: the object is dropped before its connection closes: the
        // `WsClient` owns both and drops the object first (field order).
        let mut ws =
            unsafe { WebSocket::new(conn.connection(), Role::Client, plan.limits, leftover) };
        if let (Some(settings), Some(with_upstream)) = (plan.deflate, &agreed.deflate) {
            ws.enable_compression(with_upstream, settings);
        }
        self.log.upstream_addr = Some(conn.name().to_owned());
        self.log.upstream_reused = how == Connected::Reused;
        let Plan { keepalive, .. } = *plan;
        let client = WsClient::new(ws, conn, agreed, keepalive);
        self.connected(r, Ok(how), Some(Box::new(client)))
    }
}

impl LoggedSession for ClientSession {
    fn session_log(&self) -> &SessionLog {
        &self.log
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

impl DetachedSession for ClientSession {
    fn detach(&mut self) -> &mut Detach {
        &mut self.detach
    }

    fn shut_down(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_options_are_the_client_legs_limits() {
        let defaults = ClientOptions::default().limits();
        assert_eq!(defaults.max_recv_len, 65535);
        assert_eq!(defaults.max_send_len, 65535);
        assert!(defaults.send_masked, "a client masks unless told not to");
        assert_eq!(defaults.timeout_ms, 60_000);
        assert_eq!(defaults.ping_interval_ms, None);
        assert_eq!(defaults.max_session_ms, None);
        let opts = ClientOptions {
            max_payload_len: 10,
            max_recv_len: Some(20),
            send_unmasked: true,
            timeout: 5,
            ping_interval: Some(7),
            ping_timeout: 3,
            ..ClientOptions::default()
        };
        let limits = opts.limits();
        assert_eq!((limits.max_recv_len, limits.max_send_len), (20, 10));
        assert!(!limits.send_masked);
        assert_eq!(limits.timeout_ms, 5);
        assert_eq!(
            (limits.ping_interval_ms, limits.ping_timeout_ms),
            (Some(7), 3)
        );
    }

    #[test]
    fn connect_defaults_follow_the_seed() {
        let opts = ConnectOptions::default();
        assert_eq!(opts.pool_size, Some(30), "lua_socket_pool_size");
        assert_eq!(opts.pool, None);
        assert!(!opts.ssl_verify);
        assert_eq!(opts.tls, None);
    }

    #[test]
    fn failures_map_to_the_statuses_of_a_proxy() {
        let peer = || String::from("127.0.0.1:1");
        let cases = [
            (ClientError::Timeout { peer: peer() }, 504),
            (ClientError::PoolTimeout, 504),
            (ClientError::PoolFull { pool: peer() }, 503),
            (ClientError::ClientClosed, 499),
            (ClientError::Uri(String::new()), 500),
            (ClientError::NoTls, 500),
            (ClientError::Internal(NgxError("x")), 500),
            (ClientError::Resolve(String::new()), 502),
            (ClientError::NoLivePeers, 502),
            (
                ClientError::Unreachable {
                    peer: peer(),
                    errno: 111,
                },
                502,
            ),
            (ClientError::Closed { peer: peer() }, 502),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e}");
        }
    }
}
