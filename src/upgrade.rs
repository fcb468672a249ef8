//! The server side of the opening handshake on an nginx request: validate,
//! answer 101 (or the status the defect calls for), hand over the socket.

use ngx::ffi::{ngx_int_t, NGX_HTTP_SWITCHING_PROTOCOLS, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::config::LocConf;
use crate::ngx_io::RequestRef;
use crate::protocol::handshake::{select_subprotocol, validate_request, HandshakeRequest};

/// What the session needs from a successful handshake.
pub struct Upgraded {
    /// Bytes the client sent right behind its handshake (already frames).
    pub pipelined: Vec<u8>,
    pub subprotocol: Option<String>,
}

const HTTP_FORBIDDEN: ngx_int_t = 403;
const HTTP_BAD_REQUEST: ngx_int_t = 400;
const HTTP_UPGRADE_REQUIRED: u32 = 426;
const HTTP_INTERNAL_SERVER_ERROR: ngx_int_t = 500;

/// Validates the request and answers it. On success the 101 response is on
/// its way and the connection speaks WebSocket; on failure the returned code
/// is what the content handler returns to nginx.
pub fn accept(r: &mut RequestRef, conf: &LocConf) -> Result<Upgraded, ngx_int_t> {
    if !r.is_main() {
        ngx_log_error!(
            NGX_LOG_INFO,
            r.log(),
            "websocket: cannot upgrade a subrequest"
        );
        return Err(HTTP_INTERNAL_SERVER_ERROR);
    }
    let subprotocol = {
        let headers = r.headers_in();
        let req = HandshakeRequest {
            method: r.method_name(),
            http_version: r.http_version(),
            headers,
        };
        let valid = match validate_request(&req) {
            Ok(valid) => valid,
            Err(e) => {
                ngx_log_error!(NGX_LOG_INFO, r.log(), "websocket: handshake rejected: {e}");
                let status = e.status();
                if u32::from(status) == HTTP_UPGRADE_REQUIRED {
                    return Err(upgrade_required(r));
                }
                return Err(status as ngx_int_t);
            }
        };
        if r.has_body() {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: handshake rejected: request has a body"
            );
            return Err(HTTP_BAD_REQUEST);
        }
        if let Some(allowed) = &conf.origins {
            let origin = valid.origin.unwrap_or_default();
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
        let chosen = conf
            .protocols
            .as_deref()
            .and_then(|accepted| select_subprotocol(&valid.protocols, accepted))
            .map(str::to_owned);
        let accept = valid.accept.clone();
        r.set_status(
            NGX_HTTP_SWITCHING_PROTOCOLS,
            Some("101 Switching Protocols"),
        );
        let added = r
            .add_header_out("Upgrade", b"websocket")
            .and_then(|()| r.add_header_out("Sec-WebSocket-Accept", accept.as_bytes()))
            .and_then(|()| match &chosen {
                Some(p) => r.add_header_out("Sec-WebSocket-Protocol", p.as_bytes()),
                None => Ok(()),
            });
        if added.is_err() {
            return Err(HTTP_INTERNAL_SERVER_ERROR);
        }
        chosen
    };
    if r.send_header_flush().is_err() {
        return Err(ngx::ffi::NGX_ERROR as ngx_int_t);
    }
    Ok(Upgraded {
        pipelined: r.take_pipelined(),
        subprotocol,
    })
}

/// 426 is not among nginx's built-in error pages, so it is sent here, with
/// the version this server speaks.
fn upgrade_required(r: &mut RequestRef) -> ngx_int_t {
    r.set_status(HTTP_UPGRADE_REQUIRED, Some("426 Upgrade Required"));
    r.set_content_type("text/plain");
    if r.add_header_out("Sec-WebSocket-Version", b"13").is_err() {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    r.send_small_response(b"426 Upgrade Required: this endpoint speaks WebSocket version 13\n")
}
