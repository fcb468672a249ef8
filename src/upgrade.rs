//! The server side of the opening handshake on an nginx request: validate,
//! answer 101 (or the status the defect calls for), hand over the socket.

use ngx::ffi::{ngx_int_t, NGX_ERROR, NGX_HTTP_SWITCHING_PROTOCOLS, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::config::LocConf;
use crate::metrics;
use crate::ngx_io::RequestRef;
use crate::protocol::deflate::{accept_offer, NegotiatedDeflate};
use crate::protocol::handshake::{validate_request, HandshakeRequest};

/// A client handshake that passed every check, with what the response and
/// a proxied handshake need from it.
pub struct ClientHandshake {
    pub accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub protocols: Vec<String>,
    pub origin: Option<Vec<u8>>,
    /// permessage-deflate as agreed (`websocket_deflate on` and an
    /// acceptable offer), with the response header's value.
    pub deflate: Option<(NegotiatedDeflate, String)>,
}

const HTTP_FORBIDDEN: ngx_int_t = 403;
const HTTP_BAD_REQUEST: ngx_int_t = 400;
const HTTP_UPGRADE_REQUIRED: u32 = 426;
pub const HTTP_INTERNAL_SERVER_ERROR: ngx_int_t = 500;

/// Checks the client's handshake (and `websocket_origins`). On failure the
/// returned code is what the content handler returns to nginx.
pub fn validate(r: &mut RequestRef, conf: &LocConf) -> Result<ClientHandshake, ngx_int_t> {
    let checked = check(r, conf);
    if let Err(rc) = checked {
        metrics::handshake_rejected(rc);
    }
    checked
}

fn check(r: &mut RequestRef, conf: &LocConf) -> Result<ClientHandshake, ngx_int_t> {
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
                let deflate = match conf.deflate() {
                    Some((cfg, _)) => match accept_offer(&valid.extensions, &cfg) {
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
    if let Some(allowed) = &conf.origins {
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
