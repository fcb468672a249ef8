//! `websocket_subscribe ZONE CHANNEL;`: upgrades the request and delivers
//! every message of the channel to the session. With
//! `websocket_channel_publish on` a data message from the client is
//! published to the channel (the sender gets it too); off, it closes the
//! session with 1008.
//!
//! The session is built like `websocket_echo`'s (same handshake checks,
//! permessage-deflate, heartbeats, `websocket_max_session_time`, graceful
//! reload, detached requests, metrics and variables); what it sends comes
//! from its inbox (see [`super::local`]).

use core::cell::RefCell;
use core::ptr::NonNull;
use std::rc::Rc;

use ngx::ffi::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_log_t, NGX_DONE, NGX_ERROR, NGX_LOG_ERR,
    NGX_LOG_INFO,
};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use super::local::{self, End, Inbox};
use super::remote;
use super::shm::ChannelKey;
use super::store::{Store, StoreError};
use super::{base64, json_string, ChannelModule};
use crate::metrics::{self, Kind};
use crate::module::Module;
use crate::ngx_detach::{
    detach_session, detached_session, end_detached, serve_close_request, Detach, DetachedSession,
};
use crate::ngx_io::{
    cycle_log, post_write_event, request_of_client_event, run_posted_requests, CloseRequest,
    ConnectionRef, Direction, RequestRef,
};
use crate::protocol::close::{GOING_AWAY, INTERNAL, NORMAL, POLICY};
use crate::protocol::frame::OpCode;
use crate::protocol::handshake::select_subprotocol;
use crate::session::{Quiet, Received, Role, WebSocket, WsError};
use crate::upgrade;
use crate::variables::{LoggedSession, SessionCtx, SessionLog};
use foreign_types::ForeignTypeRef;

/// Output queued in the session above which the inbox waits.
const FEED_HIGH_WATER: usize = 64 * 1024;
/// The least unsent data a subscriber may have before it is closed.
const MIN_BACKLOG: usize = 1024 * 1024;

/// A subscriber's place in its channel; leaving it (or dropping it)
/// unsubscribes.
struct Subscription {
    key: ChannelKey,
    inbox: Rc<RefCell<Inbox>>,
    left: bool,
}

impl Subscription {
    /// The session sent its close frame: it receives nothing more, and no
    /// longer counts as a subscriber while its connection closes.
    fn leave(&mut self) {
        if !self.left {
            self.left = true;
            local::unsubscribe(self.key, &self.inbox);
            let mut inbox = self.inbox.borrow_mut();
            inbox.queue.clear();
            inbox.bytes = 0;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Per-session state, owned as an echo session's is (see `echo.rs`).
struct SubscriberSession {
    log: SessionLog,
    ws: WebSocket,
    sub: Subscription,
    store: &'static Store,
    /// The channel's name (a publish to a zone in Redis names it).
    channel: Vec<u8>,
    /// `websocket_channel_publish on`.
    publish: bool,
    /// `websocket_channel_envelope on`.
    envelope: bool,
    shutting_down: bool,
    detach: Detach,
}

enum Next {
    Wait,
    Finish { linger: bool, error: bool },
}

const FAILED: Next = Next::Finish {
    linger: false,
    error: true,
};

/// The content handler nginx calls for a location with `websocket_subscribe`.
///
/// # Safety
/// Called by nginx with a live request.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx hands a live request to its content handler.
    let r = unsafe { RequestRef::from_raw(r) };
    let (Some(conf), Some(chan)) = (Module::location_conf(r), ChannelModule::location_conf(r))
    else {
        return NGX_ERROR as ngx_int_t;
    };
    let Some((zone, channel)) = chan.subscribe else {
        return NGX_ERROR as ngx_int_t;
    };
    let handshake = match upgrade::validate(r, &conf.server_options()) {
        Ok(h) => h,
        Err(rc) => return rc,
    };
    let Ok(name) = channel.evaluate(r) else {
        return NGX_ERROR as ngx_int_t;
    };
    if name.is_empty() {
        ngx_log_error!(
            NGX_LOG_INFO,
            r.log(),
            "websocket: the channel name is empty"
        );
        metrics::handshake_rejected(400);
        return 400;
    }
    let store = zone.get();
    let resume = match chan.resume.map(|cv| cv.evaluate(r)) {
        Some(Ok(id)) if !id.is_empty() => store.resume_after(&id),
        Some(Err(_)) => return NGX_ERROR as ngx_int_t,
        _ => None,
    };
    let limits = conf.limits();
    let backlog = usize::try_from(limits.max_send_len.saturating_mul(16))
        .unwrap_or(usize::MAX)
        .max(MIN_BACKLOG);
    let Some(conn) = NonNull::new(r.connection_ptr()) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the inbox leaves its channel (`Subscription`) when the session
    // is dropped, before its connection closes: the connection is open
    // whenever the channel wakes it.
    let inbox = Inbox::new(Box::new(move || unsafe { post_write_event(conn) }), backlog);
    let key = match local::subscribe(store, &name, resume, &inbox) {
        Ok(key) => key,
        Err(e) => {
            let why = match e {
                StoreError::Full => "is full",
                StoreError::Unavailable => "is unavailable",
            };
            ngx_log_error!(
                NGX_LOG_ERR,
                r.log(),
                "websocket: cannot subscribe to channel \"{}\": zone \"{}\" {why}",
                name.escape_ascii(),
                store.name()
            );
            metrics::handshake_rejected(503);
            return 503;
        }
    };
    let sub = Subscription {
        key,
        inbox,
        left: false,
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
    // SAFETY: the session that owns the object is dropped before the
    // request's connection closes (with the request's pool, or by
    // `end_detached`).
    let mut ws = unsafe { WebSocket::new(r.connection(), Role::Server, limits, &pipelined) };
    // [limit] websocket_limit on the messages the subscriber publishes.
    ws.limit_messages(crate::limit::Limiter::for_request(r, conf));
    if let (Some((agreed, _)), Some((_, settings))) = (&handshake.deflate, conf.deflate()) {
        ws.enable_compression(agreed, settings);
    }
    let log = SessionLog::new(Some(Kind::Subscribe), chosen.map(str::to_owned));
    metrics::session_started(Kind::Subscribe);
    let session: SessionCtx = Box::new(SubscriberSession {
        log,
        ws,
        sub,
        store,
        channel: name.to_vec(),
        publish: chan.channel_publish == 1,
        envelope: chan.envelope == 1,
        shutting_down: false,
        detach: Detach::for_request(r),
    });
    if r.set_owned_ctx(Module::module(), Box::new(session)).is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    r.set_event_handlers(on_event, on_event);
    r.hold();
    let c = r.connection();
    c.set_event_handler(on_connection_event);
    c.set_idle(true);
    c.set_log_action(c"serving WebSocket subscriber");
    if c.tcp_nodelay().is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    c.post(Direction::Read);
    NGX_DONE as ngx_int_t
}

/// Event handler of an upgraded subscriber connection that still has its request.
unsafe extern "C" fn on_connection_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is its request while it is upgraded.
    let (c, r) = unsafe { request_of_client_event(ev) };
    // SAFETY: as above.
    let r = unsafe { RequestRef::from_raw(r) };
    match r.connection().take_close_request() {
        CloseRequest::None => {}
        CloseRequest::Graceful => {
            // SAFETY: an event handler of the request, run alone from the event loop.
            if let Some(session) = unsafe { subscriber_of(r) } {
                session.shut_down();
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
    let detached = unsafe { detach_session::<SessionCtx>(r, on_detached_event) };
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

/// Read and write event handler of an upgraded subscriber request.
unsafe extern "C" fn on_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    // SAFETY: the request owns the session until it is freed; nothing else
    // holds a reference to it during this event.
    let Some(session) = (unsafe { subscriber_of(r) }) else {
        r.finalize(false, true);
        return;
    };
    // SAFETY: the request's connection outlives this event.
    let c = unsafe { ConnectionRef::from_ptr(r.connection_ptr()) };
    let next = session.step(c, Some(r));
    session.log.update(session.ws.stats());
    if let Next::Finish { linger, error } = next {
        r.finalize(linger, error);
    }
}

/// Event handler of a subscriber connection whose request was detached.
unsafe extern "C" fn on_detached_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is the session `on_connection_event`
    // leaked into it.
    let (c, session) = unsafe { detached_session::<SessionCtx>(ev) };
    // SAFETY: as above.
    if unsafe { serve_close_request(c, session) } {
        run_detached(c, session);
    }
}

fn run_detached(c: &ConnectionRef, ctx: &mut SessionCtx) {
    let Some(session) = ctx.as_any_mut().downcast_mut::<SubscriberSession>() else {
        return;
    };
    let next = session.step(c, None);
    session.log.update(session.ws.stats());
    if let Next::Finish { linger, .. } = next {
        // SAFETY: the connection owns the session, which is not used again.
        unsafe { end_detached(c, ctx, linger) };
    }
}

/// The session of a request that `websocket_subscribe` serves.
///
/// # Safety
/// Nothing else may reference the session while the result is used, and it
/// must not be used after the request is finalized.
unsafe fn subscriber_of<'a>(r: &RequestRef) -> Option<&'a mut SubscriberSession> {
    let mut ctx = r.ctx::<SessionCtx>(Module::module())?;
    // SAFETY: guaranteed by the caller; the module's context is a `SessionCtx`.
    let ctx = unsafe { ctx.as_mut() };
    ctx.as_any_mut().downcast_mut::<SubscriberSession>()
}

impl LoggedSession for SubscriberSession {
    fn session_log(&self) -> &SessionLog {
        &self.log
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

impl DetachedSession for SubscriberSession {
    fn detach(&mut self) -> &mut Detach {
        &mut self.detach
    }

    fn shut_down(&mut self) {
        SubscriberSession::shut_down(self);
    }
}

impl SubscriberSession {
    /// The worker is exiting: the session closes when its turn comes
    /// (`websocket_shutdown_spread`), see [`Self::freeze`].
    fn shut_down(&mut self) {
        self.ws.drain();
    }

    /// The session is due to close with 1001: what was published until now
    /// (also what the other workers' wakes have not told this one yet) is
    /// fetched and still sent; nothing later is taken.
    fn freeze(&mut self) {
        self.shutting_down = true;
        if !self.sub.left {
            local::fetch(self.sub.key);
            self.sub.inbox.borrow_mut().frozen = true;
        }
    }

    fn step(&mut self, c: &ConnectionRef, mut request: Option<&mut RequestRef>) -> Next {
        let log = c.log();
        if c.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending"
            );
            return FAILED;
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
        if self.ws.due_to_close(log) {
            self.freeze();
        }
        loop {
            if !self.ws.close_sent() {
                if let Err(next) = self.serve_received(log) {
                    return next;
                }
            }
            if !self.ws.close_sent() {
                self.feed(log);
                if self.shutting_down
                    && !self.ws.close_sent()
                    && !self.ws.in_message()
                    && self.sub.inbox.borrow().queue.is_empty()
                {
                    let _ = self.ws.send_close(Some(GOING_AWAY), b"");
                }
            }
            if let Some(r) = request.as_deref_mut().filter(|r| r.output_pending()) {
                if r.flush_output().is_err() {
                    return FAILED;
                }
                if r.output_pending() {
                    return self.arm();
                }
            }
            if self.ws.close_sent() {
                self.sub.leave();
            }
            let more = !self.ws.close_sent() && !self.sub.inbox.borrow().queue.is_empty();
            match self.ws.flush() {
                Ok(true) if self.ws.close_sent() => {
                    return Next::Finish {
                        linger: !self.ws.close_received(),
                        error: false,
                    }
                }
                Ok(true) if self.ws.take_throttled() || more => continue,
                Ok(_) => {
                    self.sub.inbox.borrow_mut().ws_queued = self.ws.queued();
                    return self.arm();
                }
                Err(_) => return FAILED,
            }
        }
    }

    /// Moves messages from the inbox to the output queue while it is short.
    fn feed(&mut self, log: *mut ngx_log_t) {
        loop {
            if self.ws.queued() >= FEED_HIGH_WATER {
                break;
            }
            let (m, end) = {
                let mut inbox = self.sub.inbox.borrow_mut();
                (inbox.pop(), inbox.end)
            };
            let Some(m) = m else {
                match end {
                    Some(End::Overflow) => {
                        ngx_log_error!(
                            NGX_LOG_INFO,
                            log,
                            "websocket: subscriber too slow (unsent data past its limit), closing with {POLICY}"
                        );
                        let _ = self.ws.send_close(Some(POLICY), b"");
                    }
                    Some(End::Deleted) => {
                        let _ = self.ws.send_close(Some(NORMAL), b"");
                    }
                    None => {}
                }
                break;
            };
            if self.send_message(&m).is_err() {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: cannot send a channel message, closing with {INTERNAL}"
                );
                let _ = self.ws.send_close(Some(INTERNAL), b"");
                break;
            }
        }
        self.sub.inbox.borrow_mut().ws_queued = self.ws.queued();
    }

    /// Sends one channel message, in frames of at most `max_send_len`.
    fn send_message(&mut self, m: &super::shm::Message) -> Result<(), WsError> {
        let enveloped;
        let (opcode, payload) = if self.envelope {
            let id = json_string(&self.store.format_id(m.seq));
            enveloped = match (m.binary, core::str::from_utf8(&m.data)) {
                (false, Ok(text)) => format!("{{\"id\":{id},\"data\":{}}}", json_string(text)),
                _ => format!("{{\"id\":{id},\"data_base64\":\"{}\"}}", base64(&m.data)),
            };
            (OpCode::Text, enveloped.as_bytes())
        } else if m.binary {
            (OpCode::Binary, &m.data[..])
        } else {
            (OpCode::Text, &m.data[..])
        };
        let max = usize::try_from(self.ws.max_send_len())
            .unwrap_or(usize::MAX)
            .max(1);
        if payload.len() <= max {
            return self.ws.send_frame(true, opcode, payload);
        }
        let mut chunks = payload.chunks(max).peekable();
        let mut op = opcode;
        while let Some(chunk) = chunks.next() {
            self.ws.send_frame(chunks.peek().is_none(), op, chunk)?;
            op = OpCode::Continuation;
        }
        Ok(())
    }

    /// Serves what the client sent; stops at a close.
    fn serve_received(&mut self, log: *mut ngx_log_t) -> Result<(), Next> {
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
                Err(_) => return Err(FAILED),
            };
            let sent = match received {
                Received::Message { opcode, data } => {
                    if !self.publish {
                        ngx_log_error!(
                            NGX_LOG_INFO,
                            log,
                            "websocket: client sent a message to a subscribe-only channel, closing with {POLICY}"
                        );
                        self.ws.recycle(data);
                        let _ = self.ws.send_close(Some(POLICY), b"");
                        return Ok(());
                    }
                    let binary = opcode == OpCode::Binary;
                    if self.store.redis().is_some() {
                        // [redis] it comes back through the worker's reader.
                        self.publish_to_redis(log, &data, binary);
                    } else if let Err(e) =
                        local::publish(self.store, Ok(self.sub.key), &data, binary)
                    {
                        ngx_log_error!(
                            NGX_LOG_ERR,
                            log,
                            "websocket: cannot publish to zone \"{}\": {e:?}",
                            self.store.name()
                        );
                    }
                    self.ws.recycle(data);
                    Ok(())
                }
                Received::Ping(ping) => self.ws.send_pong(ping.payload()),
                Received::Pong(_) => Ok(()),
                Received::Close(close) => {
                    let code = close.map_or(NORMAL, |(code, _)| code);
                    return self.ws.send_close(Some(code), b"").map_err(|_| FAILED);
                }
            };
            if sent.is_err() {
                return Err(FAILED);
            }
            // Our own message came back to the inbox: send it before
            // reading on, so that reading stops for a client that does not read.
            self.feed(log);
            if self.ws.close_sent() {
                return Ok(());
            }
        }
    }

    /// Publishes a message of the client to a zone in Redis; a failure (now
    /// or when Redis answers) is logged, the session goes on.
    fn publish_to_redis(&self, log: *mut ngx_log_t, data: &[u8], binary: bool) {
        let store = self.store;
        let failed = move |log: *mut ngx_log_t, why: &str| {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "websocket: cannot publish to zone \"{}\": {why}",
                store.name()
            );
        };
        let sent = remote::publish(store, &self.channel, data, binary, move |published| {
            if let Err(why) = published {
                failed(cycle_log(), &why);
            }
        });
        if let Err(why) = sent {
            failed(log, &why);
        }
    }

    fn arm(&self) -> Next {
        match self.ws.arm(!self.ws.close_sent()) {
            Ok(()) => Next::Wait,
            Err(_) => FAILED,
        }
    }
}
