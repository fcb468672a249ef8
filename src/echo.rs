//! `websocket_echo`: upgrades the request and echoes every message back, a
//! [`Handler`] written against the crate's public API, served by the public
//! [`serve`] and counted in the metrics from its [`Handler::finish`] (see
//! `counted`).

use ngx::ffi::{ngx_http_request_t, ngx_int_t, NGX_ERROR};
use ngx::http::{HttpModule, HttpModuleLocationConf};

use crate::counted::Counted;
use crate::metrics::Kind;
use crate::module::Module;
use crate::protocol::close::NORMAL;
use crate::{serve, upgrade, Context, Handler, Next, Received, RequestRef};

/// Echoes every data message back whole, answers pings, and answers a
/// close with the same code.
struct Echo {
    /// The error log says "while serving WebSocket echo".
    named: bool,
}

impl Handler for Echo {
    fn step(&mut self, cx: &mut Context<'_>) -> Next {
        if !self.named {
            self.named = true;
            cx.connection().set_log_action(c"serving WebSocket echo");
        }
        let ws = cx.ws();
        loop {
            let sent = match ws.recv() {
                Ok(Some(Received::Message { opcode, data })) => {
                    let sent = ws.send_frame(true, opcode, &data);
                    ws.recycle(data);
                    sent
                }
                Ok(Some(Received::Ping(ping))) => ws.send_pong(ping.payload()),
                Ok(Some(Received::Pong(_))) => Ok(()),
                Ok(Some(Received::Close(close))) => {
                    return Next::Close(close.map_or(NORMAL, |(code, _)| code))
                }
                Ok(None) => return Next::Wait,
                Err(e) => return Next::Fail(e),
            };
            if let Err(e) = sent {
                return Next::Fail(e);
            }
        }
    }
}

/// The content handler nginx calls for a location with `websocket_echo`.
///
/// # Safety
/// Called by nginx with a live request.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx hands a live request to its content handler.
    let r = unsafe { RequestRef::from_raw(r) };
    let Some(conf) = Module::location_conf(r) else {
        return NGX_ERROR as ngx_int_t;
    };
    let mut upgraded = match upgrade(r, &conf.server_options()) {
        Ok(upgraded) => upgraded,
        Err(rc) => return rc,
    };
    // [limit] websocket_limit on the client's messages.
    let limiter = crate::limit::Limiter::for_request(upgraded.request(), conf);
    upgraded.ws().limit_messages(limiter);
    // SAFETY: this module's own request context slot.
    unsafe { serve(upgraded, Module::module(), Counted::new(Kind::Echo, Echo { named: false })) }
}
