//! The server side of the opening handshake on an nginx request: validate,
//! answer 101 (or the status the defect calls for), hand over the socket.

use ngx::ffi::{ngx_int_t, NGX_ERROR, NGX_HTTP_SWITCHING_PROTOCOLS, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::metrics;
use crate::ngx_io::RequestRef;
use crate::compression::DeflateSettings;
use crate::protocol::deflate::{accept_offer, DeflateConfig, NegotiatedDeflate};
use crate::protocol::handshake::select_subprotocol;
use crate::session::{Limits, Role, WebSocket};
use crate::protocol::handshake::{validate_request, HandshakeRequest};

/// A client handshake that passed every check of [`validate`], not
/// answered yet, with what a proxied handshake needs from it.
pub struct ClientHandshake {
    pub(crate) accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub(crate) protocols: Vec<String>,
    pub(crate) origin: Option<Vec<u8>>,
    /// permessage-deflate as agreed (`websocket_deflate on` and an
    /// acceptable offer), with the response header's value.
    pub(crate) deflate: Option<(NegotiatedDeflate, String)>,
}

impl ClientHandshake {
    /// The subprotocols the client offered, in its order of preference (to
    /// offer them upstream: [`ConnectOptions::protocols`](crate::ConnectOptions::protocols)).
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The client's `Origin` header, if it sent one.
    pub fn origin(&self) -> Option<&[u8]> {
        self.origin.as_deref()
    }
}

const HTTP_FORBIDDEN: ngx_int_t = 403;
const HTTP_BAD_REQUEST: ngx_int_t = 400;
const HTTP_UPGRADE_REQUIRED: u32 = 426;
pub const HTTP_INTERNAL_SERVER_ERROR: ngx_int_t = 500;

/// Checks the current request's handshake (method, headers, version,
/// `origins`, a permessage-deflate offer) against `opts` as [`upgrade`]
/// does, without answering it: for a session that answers later. A relay
/// checks its client first, so that a bad handshake gets its own status
/// rather than an upstream's, then connects its upstream (see
/// [`connect`](crate::connect())) and upgrades with
/// [`ClientContext::upgrade`](crate::ClientContext::upgrade)
/// (`websocket_pass` does). On failure, the status to return from the
/// content handler (400, 403, 405, 426 — answered already — or 500).
pub fn validate(r: &mut RequestRef, opts: &ServerOptions) -> Result<ClientHandshake, ngx_int_t> {
    let origins: Option<Vec<Vec<u8>>> = opts
        .origins
        .as_ref()
        .map(|list| list.iter().map(|o| o.as_bytes().to_vec()).collect());
    let checks = Checks {
        origins: origins.as_deref(),
        deflate: opts.deflate.map(|d| DeflateConfig {
            window_bits: d.window_bits,
            context_takeover: d.context_takeover,
        }),
    };
    validate_with(r, &checks)
}

/// What the handshake is checked against.
struct Checks<'a> {
    /// The allowed Origin values; `None` allows any.
    origins: Option<&'a [Vec<u8>]>,
    /// permessage-deflate, when it may be accepted.
    deflate: Option<DeflateConfig>,
}

fn validate_with(r: &mut RequestRef, checks: &Checks) -> Result<ClientHandshake, ngx_int_t> {
    let checked = check(r, checks);
    if let Err(rc) = checked {
        metrics::handshake_rejected(rc);
    }
    checked
}

fn check(r: &mut RequestRef, checks: &Checks) -> Result<ClientHandshake, ngx_int_t> {
    if !r.is_main() {
        ngx_log_error!(
            NGX_LOG_INFO,
            r.log(),
            "websocket: cannot upgrade a subrequest"
        );
        return Err(HTTP_INTERNAL_SERVER_ERROR);
    }
    let handshake = {
        let req = HandshakeRequest {
            method: r.method_name(),
            http_version: r.http_version(),
            headers: r.headers_in(),
        };
        match validate_request(&req) {
            Ok(valid) => {
                let deflate = match &checks.deflate {
                    Some(cfg) => match accept_offer(&valid.extensions, cfg) {
                        Ok(agreed) => agreed,
                        Err(e) => {
                            ngx_log_error!(
                                NGX_LOG_INFO,
                                r.log(),
                                "websocket: handshake rejected: {e}"
                            );
                            return Err(HTTP_BAD_REQUEST);
                        }
                    },
                    None => None,
                };
                ClientHandshake {
                    accept: valid.accept,
                    protocols: valid.protocols.iter().map(|p| (*p).to_owned()).collect(),
                    origin: valid.origin.map(<[u8]>::to_vec),
                    deflate,
                }
            }
            Err(e) => {
                ngx_log_error!(NGX_LOG_INFO, r.log(), "websocket: handshake rejected: {e}");
                let status = e.status();
                if u32::from(status) == HTTP_UPGRADE_REQUIRED {
                    return Err(upgrade_required(r));
                }
                return Err(status as ngx_int_t);
            }
        }
    };
    // Never reached while validate_request refuses HTTP/2, but a session
    // must never drive a stream's stand-in connection, whatever the version.
    if r.is_http2_stream() {
        ngx_log_error!(
            NGX_LOG_INFO,
            r.log(),
            "websocket: handshake rejected: request is on an HTTP/2 stream"
        );
        return Err(HTTP_BAD_REQUEST);
    }
    if r.has_body() {
        ngx_log_error!(
            NGX_LOG_INFO,
            r.log(),
            "websocket: handshake rejected: request has a body"
        );
        return Err(HTTP_BAD_REQUEST);
    }
    if let Some(allowed) = checks.origins {
        let origin = handshake.origin.as_deref().unwrap_or_default();
        if !allowed.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: handshake rejected: origin \"{}\" is not allowed",
                origin.escape_ascii()
            );
            return Err(HTTP_FORBIDDEN);
        }
    }
    Ok(handshake)
}

/// Answers 101 (with the chosen subprotocol and extensions) and flushes it.
/// Returns the bytes the client sent right behind its handshake (already
/// frames); on failure, the code to finalize with.
pub fn respond(
    r: &mut RequestRef,
    accept: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> Result<Vec<u8>, ngx_int_t> {
    r.set_status(
        NGX_HTTP_SWITCHING_PROTOCOLS,
        Some("101 Switching Protocols"),
    );
    let added = r
        .add_header_out("Upgrade", b"websocket")
        .and_then(|()| r.add_header_out("Sec-WebSocket-Accept", accept.as_bytes()))
        .and_then(|()| match subprotocol {
            Some(p) => r.add_header_out("Sec-WebSocket-Protocol", p.as_bytes()),
            None => Ok(()),
        })
        .and_then(|()| match extensions {
            Some(e) => r.add_header_out("Sec-WebSocket-Extensions", e.as_bytes()),
            None => Ok(()),
        });
    if added.is_err() {
        return Err(HTTP_INTERNAL_SERVER_ERROR);
    }
    if r.send_header_flush().is_err() {
        return Err(NGX_ERROR as ngx_int_t);
    }
    Ok(r.take_pipelined())
}

/// 426 is not among nginx's built-in error pages, so it is sent here, with
/// the version this server speaks.
fn upgrade_required(r: &mut RequestRef) -> ngx_int_t {
    metrics::handshake_rejected(HTTP_UPGRADE_REQUIRED as ngx_int_t);
    r.set_status(HTTP_UPGRADE_REQUIRED, Some("426 Upgrade Required"));
    r.set_content_type("text/plain");
    if r.add_header_out("Sec-WebSocket-Version", b"13").is_err() {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    r.send_small_response(b"426 Upgrade Required: this endpoint speaks WebSocket version 13\n")
}

/// The seed's `server:new(opts)`: how [`upgrade()`] checks the handshake and
/// how the session behaves. Times are in milliseconds, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest payload of one frame, both directions (the seed's
    /// `max_payload_len`, 65535 by default).
    pub max_payload_len: u64,
    /// Largest frame (or inflated message) received; over it the session
    /// closes with 1009. `None`: `max_payload_len`.
    pub max_recv_len: Option<u64>,
    /// Largest frame sent: a larger send fails with [`WsError::TooBig`] and
    /// writes nothing. `None`: `max_payload_len`.
    ///
    /// [`WsError::TooBig`]: crate::WsError::TooBig
    pub max_send_len: Option<u64>,
    /// Send masked frames although we are the server (the seed's `send_masked`).
    pub send_masked: bool,
    /// Network timeout for reads and writes (the seed's `timeout`); a peer
    /// silent for this long is closed with 1001 unless `ping_interval` is set.
    pub timeout: u64,
    /// Subprotocols this endpoint speaks: the first of the client's list
    /// that is here is chosen. Empty: none is chosen.
    pub protocols: Vec<String>,
    /// When set, a handshake whose `Origin` is not listed gets 403.
    pub origins: Option<Vec<String>>,
    /// permessage-deflate (RFC 7692), accepted when a client offers it.
    pub deflate: Option<Deflate>,
    /// Send a ping after this long without a frame from the peer.
    pub ping_interval: Option<u64>,
    /// With `ping_interval`: close with 1011 when nothing arrives this long
    /// after a ping.
    pub ping_timeout: u64,
    /// Close the session with 1001 (after the message under way) once it
    /// lasted this long.
    pub max_session_time: Option<u64>,
    /// When the worker exits, spread the sessions' 1001 over this long.
    pub shutdown_spread: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_payload_len: 65535,
            max_recv_len: None,
            max_send_len: None,
            send_masked: false,
            timeout: 60_000,
            protocols: Vec::new(),
            origins: None,
            deflate: None,
            ping_interval: None,
            ping_timeout: 30_000,
            max_session_time: None,
            shutdown_spread: 0,
        }
    }
}

/// permessage-deflate settings (the `websocket_deflate_*` directives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// zlib level 1-9 of the messages we compress.
    pub level: u32,
    /// zlib memory level 1-9.
    pub mem_level: u8,
    /// Largest LZ77 window (8-15) we compress with.
    pub window_bits: u8,
    /// Whether compression state survives a message.
    pub context_takeover: bool,
    /// Messages shorter than this are sent uncompressed.
    pub min_length: usize,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            level: 1,
            mem_level: 5,
            window_bits: 15,
            context_takeover: true,
            min_length: 64,
        }
    }
}

impl ServerOptions {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_recv_len: self.max_recv_len.unwrap_or(self.max_payload_len),
            max_send_len: self.max_send_len.unwrap_or(self.max_payload_len),
            send_masked: self.send_masked,
            timeout_ms: self.timeout as _,
            ping_interval_ms: self.ping_interval.map(|t| t as _),
            ping_timeout_ms: self.ping_timeout as _,
            max_session_ms: self.max_session_time.map(|t| t as _),
            shutdown_spread_ms: self.shutdown_spread as _,
        }
    }
}

/// An upgraded request: the 101 is on its way, the WebSocket is ready for
/// [`serve`](crate::serve). It borrows the request: it cannot outlive the
/// content handler unless served. Dropped instead, the content handler must
/// return `NGX_ERROR` (the client was told 101; nginx closes the connection).
pub struct Upgraded<'r> {
    /// The object may not outlive the request's handler unless served.
    request: &'r mut RequestRef,
    ws: WebSocket,
    subprotocol: Option<String>,
}

impl<'r> Upgraded<'r> {
    /// The subprotocol chosen from the client's list, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The WebSocket, to send a greeting before [`serve`](crate::serve).
    pub fn ws(&mut self) -> &mut WebSocket {
        &mut self.ws
    }

    /// The upgraded request.
    pub fn request(&mut self) -> &mut RequestRef {
        self.request
    }

    pub(crate) fn into_parts(self) -> (&'r mut RequestRef, WebSocket, Option<String>) {
        (self.request, self.ws, self.subprotocol)
    }
}

/// The seed's `server:new(opts)` on the current request: checks the client's
/// handshake (method, headers, version, `origins`), chooses the subprotocol
/// and permessage-deflate, and answers 101. On failure, the status to return
/// from the content handler (400, 403, 405, 426 — answered already — or 500).
pub fn upgrade<'r>(
    r: &'r mut RequestRef,
    opts: &ServerOptions,
) -> Result<Upgraded<'r>, ngx_int_t> {
    let handshake = validate(r, opts)?;
    let offered: Vec<&str> = handshake.protocols.iter().map(String::as_str).collect();
    let ours: Vec<&str> = opts.protocols.iter().map(String::as_str).collect();
    let chosen = (!ours.is_empty())
        .then(|| select_subprotocol(&offered, &ours))
        .flatten()
        .map(str::to_owned);
    let extensions = handshake
        .deflate
        .as_ref()
        .map(|(_, header)| header.as_str());
    let pipelined = respond(r, &handshake.accept, chosen.as_deref(), extensions)?;
    // SAFETY: `serve` is the only way to use the object past this handler:
    // the session that owns it is dropped before the request's connection
    // closes (with the request's pool, or by `end_detached`).
    let mut ws =
        unsafe { WebSocket::new(r.connection(), Role::Server, opts.limits(), &pipelined) };
    if let (Some((agreed, _)), Some(d)) = (&handshake.deflate, opts.deflate) {
        let settings = DeflateSettings {
            level: d.level,
            mem_level: d.mem_level,
            min_length: d.min_length,
        };
        ws.enable_compression(agreed, settings);
    }
    Ok(Upgraded {
        ws,
        subprotocol: chosen,
        request: r,
    })
}
