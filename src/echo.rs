//! `websocket_echo`: upgrades the request and echoes every message back.

use ngx::ffi::{ngx_event_t, ngx_http_request_t, ngx_int_t, NGX_DONE, NGX_ERROR, NGX_LOG_INFO};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use crate::metrics::{self, Kind};
use crate::module::Module;
use crate::ngx_detach::{
    detach_session, detached_session, end_detached, serve_close_request, Detach, DetachedSession,
};
use crate::ngx_io::{
    request_of_client_event, run_posted_requests, CloseRequest, ConnectionRef, Direction,
    RequestRef,
};
use crate::protocol::close::{GOING_AWAY, INTERNAL, NORMAL, POLICY, TOO_BIG};
use crate::protocol::handshake::select_subprotocol;
use crate::session::{Quiet, Received, Role, WebSocket, WsError};
use crate::upgrade;
use crate::variables::SessionLog;
use foreign_types::ForeignTypeRef;

/// Per-session state. The request owns it (as its module context) while
/// the access log still needs it; with `access_log off` the request is
/// freed once the 101 is out, and the connection owns it (`c->data`).
#[repr(C)]
struct EchoSession {
    /// First, as `variables::SessionLog` requires.
    log: SessionLog,
    ws: WebSocket,
    /// The session is due to close (the worker is exiting, or it reached
    /// `websocket_max_session_time`): finish the message under way, then
    /// close 1001.
    shutting_down: bool,
    /// Whether the request is dropped after its 101 (`access_log off`).
    detach: Detach,
}

/// How a step of the session ended.
enum Next {
    /// Wait for the next event.
    Wait,
    /// The session is over; `linger` drains the peer before closing.
    Finish { linger: bool, error: bool },
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
    let handshake = match upgrade::validate(r, conf) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let offered: Vec<&str> = handshake.protocols.iter().map(String::as_str).collect();
    let chosen = conf
        .protocols
        .as_deref()
        .and_then(|ours| select_subprotocol(&offered, ours));
    let extensions = handshake
        .deflate
        .as_ref()
        .map(|(_, header)| header.as_str());
    let pipelined = match upgrade::respond(r, &handshake.accept, chosen, extensions) {
        Ok(p) => p,
        Err(rc) => return rc,
    };
    let mut ws = WebSocket::new(r.connection(), Role::Server, conf.limits(), &pipelined);
    if let (Some((agreed, _)), Some((_, settings))) = (&handshake.deflate, conf.deflate()) {
        ws.enable_compression(agreed, settings);
    }
    // [limit] websocket_limit on the client's messages.
    ws.limit_messages(crate::limit::Limiter::for_request(r, conf));
    let log = SessionLog::new(Some(Kind::Echo), chosen.map(str::to_owned));
    metrics::session_started(Kind::Echo);
    let session = Box::new(EchoSession {
        log,
        ws,
        shutting_down: false,
        detach: Detach::for_request(r),
    });
    if r.set_owned_ctx(Module::module(), session).is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    r.set_event_handlers(on_event, on_event);
    r.hold();
    let c = r.connection();
    // Events come straight to the session (not through the request's
    // handlers), so that a worker that exits asks it to close gracefully.
    c.set_event_handler(on_connection_event);
    c.set_idle(true);
    c.set_log_action(c"serving WebSocket echo");
    if c.tcp_nodelay().is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    // Run the first step from the event loop, not from inside the content
    // phase, so every end of the session goes through one path (and the
    // request may be detached there, once nginx is done with it).
    c.post(Direction::Read);
    NGX_DONE as ngx_int_t
}

/// Event handler of an upgraded echo connection that still has its request.
unsafe extern "C" fn on_connection_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is its request while it is upgraded.
    let (c, r) = unsafe { request_of_client_event(ev) };
    // SAFETY: as above.
    let r = unsafe { RequestRef::from_raw(r) };
    match r.connection().take_close_request() {
        CloseRequest::None => {}
        CloseRequest::Graceful => {
            if let Some(mut session) = r.ctx::<EchoSession>(Module::module()) {
                // SAFETY: see `on_event`.
                unsafe { session.as_mut() }.ws.drain();
            }
        }
        CloseRequest::Now => {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: worker_shutdown_timeout expired, closing"
            );
            r.finalize(false, true);
            // SAFETY: `c` is the client connection; see run_posted_requests.
            unsafe { run_posted_requests(c) };
            return;
        }
    }
    // SAFETY: the pipelined bytes were taken, and this runs from the event
    // loop: nothing else uses the request or the session.
    let detached = unsafe { detach_session::<EchoSession>(r, Module::module(), on_detached_event) };
    if let Some(session) = detached {
        // SAFETY: `c` lives on, now owning the session.
        run_detached(unsafe { ConnectionRef::from_ptr(c) }, session);
        return;
    }
    // SAFETY: as above.
    unsafe { on_event(r.as_ptr()) };
    // SAFETY: `c` is the client connection; see run_posted_requests.
    unsafe { run_posted_requests(c) };
}

/// Read and write event handler of an upgraded echo request.
unsafe extern "C" fn on_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    let Some(mut session) = r.ctx::<EchoSession>(Module::module()) else {
        r.finalize(false, true);
        return;
    };
    // SAFETY: the request owns the session until it is freed; nothing else
    // holds a reference to it during this event.
    let session = unsafe { session.as_mut() };
    // SAFETY: the request's connection outlives this event.
    let c = unsafe { ConnectionRef::from_ptr(r.connection_ptr()) };
    let next = session.step(c, Some(r));
    session.log.update(session.ws.stats());
    if let Next::Finish { linger, error } = next {
        r.finalize(linger, error);
    }
}

/// Event handler of an echo connection whose request was detached.
unsafe extern "C" fn on_detached_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is the session `on_connection_event`
    // leaked into it.
    let (c, session) = unsafe { detached_session::<EchoSession>(ev) };
    // SAFETY: as above.
    if unsafe { serve_close_request(c, session) } {
        run_detached(c, session);
    }
}

fn run_detached(c: &ConnectionRef, session: &mut EchoSession) {
    let next = session.step(c, None);
    session.log.update(session.ws.stats());
    if let Next::Finish { linger, .. } = next {
        // SAFETY: the connection owns the session, which is not used again.
        unsafe { end_detached(c, session, linger) };
    }
}

impl DetachedSession for EchoSession {
    fn detach(&mut self) -> &mut Detach {
        &mut self.detach
    }

    fn shut_down(&mut self) {
        self.ws.drain();
    }
}

impl EchoSession {
    /// One round of work; `request` while the request is attached (its
    /// 101 may still be on its way out).
    fn step(&mut self, c: &ConnectionRef, mut request: Option<&mut RequestRef>) -> Next {
        let log = c.log();
        if c.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending"
            );
            return Next::Finish {
                linger: false,
                error: true,
            };
        }
        if c.take_timedout(Direction::Read) && !self.ws.close_sent() {
            let code = match self.ws.on_read_timeout() {
                Quiet::Pinged | Quiet::Due => None,
                Quiet::Idle => {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client idle for too long, closing with {GOING_AWAY}"
                    );
                    Some(GOING_AWAY)
                }
                Quiet::Dead => {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client did not answer a ping in time, closing with {INTERNAL}"
                    );
                    Some(INTERNAL)
                }
            };
            if let Some(code) = code {
                let _ = self.ws.send_close(Some(code), b"");
            }
        }
        // After the read timeout: a deadline that passed is its to tell
        // from a quiet peer's.
        if self.ws.due_to_close(log) {
            self.shutting_down = true;
        }
        loop {
            if !self.ws.close_sent() {
                if let Err(next) = self.echo_received(log) {
                    return next;
                }
                // Everything received is answered; a message still arriving
                // is waited for (worker_shutdown_timeout bounds it).
                if self.shutting_down && !self.ws.close_sent() && !self.ws.in_message() {
                    let _ = self.ws.send_close(Some(GOING_AWAY), b"");
                }
            }
            if let Some(r) = request.as_deref_mut().filter(|r| r.output_pending()) {
                if r.flush_output().is_err() {
                    return Next::Finish {
                        linger: false,
                        error: true,
                    };
                }
                if r.output_pending() {
                    return self.arm();
                }
            }
            match self.ws.flush() {
                // When we started the close the client may still be sending:
                // linger so that its data does not turn our close into a reset.
                Ok(true) if self.ws.close_sent() => {
                    return Next::Finish {
                        linger: !self.ws.close_received(),
                        error: false,
                    }
                }
                // Reading paused for the output that just drained: resume now,
                // the socket will not signal again for data already there.
                Ok(true) if self.ws.take_throttled() => continue,
                Ok(_) => return self.arm(),
                Err(_) => {
                    return Next::Finish {
                        linger: false,
                        error: true,
                    }
                }
            }
        }
    }

    /// Echoes everything that can be read now; stops at a close.
    fn echo_received(&mut self, log: *mut ngx::ffi::ngx_log_t) -> Result<(), Next> {
        loop {
            let received = match self.ws.recv() {
                Ok(Some(received)) => received,
                Ok(None) => return Ok(()),
                Err(WsError::Protocol(e)) => {
                    let code = e.close_code();
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client sent {e}, closing with {code}"
                    );
                    let _ = self.ws.send_close(Some(code), b"");
                    return Ok(());
                }
                // [limit] past a `websocket_limit ... close` (logged there).
                Err(WsError::RateExceeded) => {
                    let _ = self.ws.send_close(Some(POLICY), crate::limit::CLOSE_REASON);
                    return Ok(());
                }
                Err(WsError::Eof) => {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client closed the connection without a close frame"
                    );
                    return Err(Next::Finish {
                        linger: false,
                        error: false,
                    });
                }
                Err(_) => {
                    return Err(Next::Finish {
                        linger: false,
                        error: true,
                    })
                }
            };
            let sent = match received {
                Received::Message { opcode, data } => {
                    let sent = self.ws.send_frame(true, opcode, &data);
                    self.ws.recycle(data);
                    sent
                }
                Received::Ping(ping) => self.ws.send_pong(ping.payload()),
                Received::Pong(_) => Ok(()),
                Received::Close(close) => {
                    let code = close.map_or(NORMAL, |(code, _)| code);
                    return self
                        .ws
                        .send_close(Some(code), b"")
                        .map_err(|_| Next::Finish {
                            linger: false,
                            error: true,
                        });
                }
            };
            if let Err(e) = sent {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: cannot echo: {e}, closing with {TOO_BIG}"
                );
                let _ = self.ws.send_close(Some(TOO_BIG), b"");
                return Ok(());
            }
        }
    }

    fn arm(&self) -> Next {
        match self.ws.arm(!self.ws.close_sent()) {
            Ok(()) => Next::Wait,
            Err(_) => Next::Finish {
                linger: false,
                error: true,
            },
        }
    }
}
