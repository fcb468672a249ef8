//! `websocket_pass`: a [`ClientHandler`] on the crate's public client. The
//! client's handshake is checked first; [`connect`] finds a connection to
//! the upstream (a pooled one, or a new one: resolve, connect, TLS,
//! handshake) before the client is answered; then
//! [`ClientContext::upgrade`] upgrades the client and
//! [`Relaying::serve`](crate::Relaying::serve) hands both legs to the
//! library's [`Relay`], a [`RelayHandler`](crate::RelayHandler), counted in
//! the metrics from its [`RelayHandler::finish`](crate::RelayHandler::finish)
//! (see `counted`). Only the public API, besides the directives' settings,
//! `websocket_limit` and the metrics.

use ngx::ffi::{
    ngx_http_request_t, ngx_int_t, ngx_msec_t, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_LOG_ERR,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use crate::config::{configured, LocConf, PassTarget};
use crate::counted::Counted;
use crate::metrics::{self, Kind};
use crate::module::Module;
use crate::url::{UrlError, WsUrl};
use crate::{
    connect, validate, ClientContext, ClientError, ClientHandler, ClientHandshake, ClientNext,
    ClientOptions, ConnectOptions, Connected, Deflate, NgxError, Relay, RequestRef, ServerOptions,
    TlsContext,
};

const HTTP_INTERNAL_SERVER_ERROR: ngx_int_t = NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;

/// What the pass handler needs once the upstream is connected.
struct Pass {
    /// How the client is upgraded once the upstream agreed (its
    /// handshake passed these checks before the connect).
    options: ServerOptions,
    /// `websocket_keepalive`'s pool size, when the upstream is pooled.
    pool_size: Option<usize>,
    /// `websocket_keepalive_timeout`.
    keepalive_timeout: ngx_msec_t,
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
    let server = conf.server_options();
    let handshake = match validate(r, &server) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let url = match url(r, target) {
        Ok(url) => url,
        Err(rc) => return rc,
    };
    let (client, opts) = match options(r, conf, &url, &handshake) {
        Ok(options) => options,
        Err(e) => {
            ngx_log_error!(NGX_LOG_ERR, r.log(), "websocket: {e}");
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    };
    let path = match &url.path {
        Some(path) => path.clone(),
        None => String::from_utf8_lossy(r.unparsed_uri()).into_owned(),
    };
    let scheme = if url.tls { "wss" } else { "ws" };
    let uri = format!("{scheme}://{}{path}", url.authority());
    let pass = Pass {
        options: server,
        pool_size: conf.pool_settings().map(|s| s.size),
        keepalive_timeout: conf.keepalive_timeout,
    };
    // SAFETY: this module's own request context slot.
    unsafe { connect(r, Module::module(), &uri, &client, opts, pass) }
}

/// The URL of this request's upstream.
fn url(r: &RequestRef, target: &PassTarget) -> Result<WsUrl, ngx_int_t> {
    let cv = match target {
        PassTarget::Static { url, .. } => return Ok(url.clone()),
        PassTarget::Variable(cv) => cv,
    };
    let text = cv.evaluate(r).map_err(|_| HTTP_INTERNAL_SERVER_ERROR)?;
    core::str::from_utf8(&text)
        .map_err(|_| UrlError::Scheme)
        .and_then(WsUrl::parse)
        .map_err(|e| {
            ngx_log_error!(
                NGX_LOG_ERR,
                r.log(),
                "websocket: invalid URL \"{}\": {e}",
                text.escape_ascii()
            );
            HTTP_INTERNAL_SERVER_ERROR
        })
}

/// The location's `websocket_*` settings and the client's own handshake as
/// the public client's options.
fn options(
    r: &RequestRef,
    conf: &LocConf,
    url: &WsUrl,
    handshake: &ClientHandshake,
) -> Result<(ClientOptions, ConnectOptions), NgxError> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let host = match &conf.pass_host {
        Some(cv) => Some(text(cv.evaluate(r)?)),
        None => None,
    };
    let origin = match &conf.pass_origin {
        Some(cv) => Some(text(cv.evaluate(r)?)),
        None => handshake.origin().map(|o| text(o.to_vec())),
    };
    let mut headers = Vec::new();
    for (name, value) in conf.pass_headers.iter().flatten() {
        let value = value.evaluate(r)?;
        // As proxy_set_header: an empty value leaves the header out.
        if !value.is_empty() {
            headers.push((name.clone(), text(value)));
        }
    }
    let settings = conf.pool_settings();
    let pool = match (&conf.keepalive_pool, settings) {
        (Some(cv), Some(_)) => Some(text(cv.evaluate(r)?)),
        _ => None,
    };
    let limits = conf.limits();
    let client = ClientOptions {
        max_payload_len: limits.max_recv_len,
        max_recv_len: Some(limits.max_recv_len),
        max_send_len: Some(limits.max_send_len),
        send_unmasked: conf.pass_send_unmasked == 1,
        timeout: limits.timeout_ms as u64,
        connect_timeout: Some(conf.connect_timeout as u64),
        ping_interval: limits.ping_interval_ms.map(|t| t as u64),
        ping_timeout: limits.ping_timeout_ms as u64,
        // A pooled connection serves sessions one after another: no
        // compression state may outlive a message.
        deflate: conf.deflate().map(|(cfg, s)| Deflate {
            level: s.level,
            mem_level: s.mem_level,
            window_bits: cfg.window_bits,
            context_takeover: cfg.context_takeover && settings.is_none(),
            min_length: s.min_length,
        }),
    };
    let opts = ConnectOptions {
        protocols: handshake.protocols().to_vec(),
        origin,
        pool,
        pool_size: settings.map(|s| s.size),
        backlog: settings.and_then(|s| s.backlog),
        ssl_verify: conf.ssl_verify == 1,
        headers,
        host,
        server_name: configured(&conf.ssl_server_name)
            .map(|name| String::from_utf8_lossy(name).into_owned()),
        key: None,
        // websocket_ssl_certificate is the location's TLS context's.
        client_cert: None,
        client_priv_key: None,
        // Without a context (plain ws:// only), a wss:// URL fails to connect.
        tls: conf.ssl.filter(|_| url.tls).map(TlsContext::from_location),
    };
    Ok((client, opts))
}

impl ClientHandler for Pass {
    fn connected(
        &mut self,
        cx: &mut ClientContext<'_>,
        result: Result<Connected, ClientError>,
    ) -> ClientNext {
        let reused = match result {
            Ok(how) => how == Connected::Reused,
            Err(e) => return self.reject(e.status()),
        };
        match self.upgrade(cx, reused) {
            Ok(()) => ClientNext::Wait,
            Err(rc) => self.reject(rc),
        }
    }

    /// Never called: the relay serves the request once connected.
    fn step(&mut self, _: &mut ClientContext<'_>) -> ClientNext {
        ClientNext::Finish(NGX_ERROR as ngx_int_t)
    }
}

impl Pass {
    fn reject(&self, rc: ngx_int_t) -> ClientNext {
        metrics::handshake_rejected(rc);
        ClientNext::Finish(rc)
    }

    /// The upstream connection is ready (new or pooled): answer the client
    /// with 101 (the upstream's subprotocol) and hand both legs to the relay.
    fn upgrade(&mut self, cx: &mut ClientContext<'_>, reused: bool) -> Result<(), ngx_int_t> {
        let subprotocol = cx.client().and_then(|u| u.subprotocol().map(str::to_owned));
        let opts = ServerOptions {
            protocols: subprotocol.into_iter().collect(),
            ..self.options.clone()
        };
        let mut relaying = cx.upgrade(&opts)?;
        // [limit] websocket_limit on the client leg only.
        if let Some(conf) = Module::location_conf(relaying.request()) {
            let limiter = crate::limit::Limiter::for_request(relaying.request(), conf);
            relaying.ws().limit_messages(limiter);
        }
        metrics::upstream_connected(reused);
        let relay = Relay::new(self.pool_size, self.keepalive_timeout);
        relaying.serve(Counted::new(Kind::Pass, relay));
        Ok(())
    }
}
