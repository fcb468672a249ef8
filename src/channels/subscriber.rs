//! `websocket_subscribe ZONE CHANNEL;`: upgrades the request and delivers
//! every message of the channel to the session. With
//! `websocket_channel_publish on` a data message from the client is
//! published to the channel (the sender gets it too); off, it closes the
//! session with 1008.
//!
//! The session is a [`Handler`] on the crate's public API, served as
//! `websocket_echo`'s is (the same handshake checks, permessage-deflate,
//! heartbeats, `websocket_max_session_time`, graceful reload, detached
//! requests, metrics and variables); what it sends comes from its inbox
//! (see [`super::local`]), which wakes it through its [`Waker`](crate::Waker).

use core::cell::RefCell;
use std::rc::Rc;

use ngx::ffi::{ngx_http_request_t, ngx_int_t, ngx_log_t, NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO};
use ngx::http::{HttpModule, HttpModuleLocationConf};
use ngx::ngx_log_error;

use super::local::{self, End, Inbox};
use super::remote;
use super::shm::{ChannelKey, Message};
use super::store::{Store, StoreError};
use super::{base64, json_string, ChannelModule};
use crate::metrics::{self, Kind};
use crate::module::Module;
use crate::ngx_io::cycle_log;
use crate::protocol::close::{INTERNAL, NORMAL, POLICY};
use crate::protocol::frame::OpCode;
use crate::counted::Counted;
use crate::serve::serve;
use crate::{upgrade, Context, Handler, Next, Received, RequestRef, WebSocket, WsError};

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

/// A `websocket_subscribe` session.
struct Subscriber {
    sub: Subscription,
    store: &'static Store,
    /// The channel's name (a publish to a zone in Redis names it).
    channel: Vec<u8>,
    /// `websocket_channel_publish on`.
    publish: bool,
    /// `websocket_channel_envelope on`.
    envelope: bool,
}

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
    let options = conf.server_options();
    // The handshake is checked before the channel is joined (a full zone
    // gets 503), and answered after.
    if let Err(rc) = upgrade::validate(r, &options) {
        return rc;
    }
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
    let backlog = usize::try_from(conf.limits().max_send_len.saturating_mul(16))
        .unwrap_or(usize::MAX)
        .max(MIN_BACKLOG);
    let inbox = Inbox::new(backlog);
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
    let subscriber = Subscriber {
        sub: Subscription {
            key,
            inbox,
            left: false,
        },
        store,
        channel: name.to_vec(),
        publish: chan.channel_publish == 1,
        envelope: chan.envelope == 1,
    };
    let mut upgraded = match upgrade(r, &options) {
        Ok(upgraded) => upgraded,
        Err(rc) => return rc,
    };
    // [limit] websocket_limit on the messages the subscriber publishes.
    let limiter = crate::limit::Limiter::for_request(upgraded.request(), conf);
    upgraded.ws().limit_messages(limiter);
    // SAFETY: this module's own request context slot.
    unsafe {
        serve(
            upgraded,
            Module::module(),
            Counted::new(Kind::Subscribe, subscriber),
        )
    }
}

impl Handler for Subscriber {
    fn step(&mut self, cx: &mut Context<'_>) -> Next {
        let log = cx.log();
        {
            let mut inbox = self.sub.inbox.borrow_mut();
            if !inbox.attached() {
                inbox.attach(Box::new(cx.waker()));
                cx.connection()
                    .set_log_action(c"serving WebSocket subscriber");
            }
        }
        let ws = cx.ws();
        loop {
            match ws.recv() {
                Ok(Some(Received::Message { opcode, data })) => {
                    if !self.publish {
                        ngx_log_error!(
                            NGX_LOG_INFO,
                            log,
                            "websocket: client sent a message to a subscribe-only channel, closing with {POLICY}"
                        );
                        ws.recycle(data);
                        return Next::Close(POLICY);
                    }
                    self.publish(log, &data, opcode == OpCode::Binary);
                    ws.recycle(data);
                }
                Ok(Some(Received::Ping(ping))) => {
                    if let Err(e) = ws.send_pong(ping.payload()) {
                        return Next::Fail(e);
                    }
                }
                Ok(Some(Received::Pong(_))) => {}
                Ok(Some(Received::Close(close))) => {
                    return Next::Close(close.map_or(NORMAL, |(code, _)| code))
                }
                Ok(None) => break,
                Err(e) => return Next::Fail(e),
            }
            // Our own message came back to the inbox: send it before
            // reading on, so that reading stops for a client that does not read.
            if let Err(code) = self.feed(ws, log) {
                return Next::Close(code);
            }
        }
        match self.feed(ws, log) {
            Err(code) => Next::Close(code),
            Ok(()) if self.sub.inbox.borrow().queue.is_empty() => Next::Wait,
            Ok(()) => Next::Again,
        }
    }

    /// The session is due to close with 1001: what was published until
    /// now (also what the other workers' wakes have not told this one yet)
    /// is fetched and still sent (the steps return [`Next::Again`] until it
    /// is); nothing later is taken.
    fn shut_down(&mut self, _: &mut Context<'_>) {
        if !self.sub.left {
            local::fetch(self.sub.key);
            self.sub.inbox.borrow_mut().frozen = true;
        }
    }

    fn closing(&mut self) {
        self.sub.leave();
    }
}

impl Subscriber {
    /// Moves messages from the inbox to the output queue while it is
    /// short; `Err` is the close code the session ends with, queued once
    /// the inbox is empty, however much output waits (an overflow empties
    /// the inbox: the session leaves its channel at once).
    fn feed(&mut self, ws: &mut WebSocket, log: *mut ngx_log_t) -> Result<(), u16> {
        loop {
            let (m, end) = {
                let mut inbox = self.sub.inbox.borrow_mut();
                if !inbox.queue.is_empty() && ws.queued() >= FEED_HIGH_WATER {
                    return Ok(());
                }
                (inbox.pop(), inbox.end)
            };
            let Some(m) = m else {
                return match end {
                    Some(End::Overflow) => {
                        ngx_log_error!(
                            NGX_LOG_INFO,
                            log,
                            "websocket: subscriber too slow (unsent data past its limit), closing with {POLICY}"
                        );
                        Err(POLICY)
                    }
                    Some(End::Deleted) => Err(NORMAL),
                    None => Ok(()),
                };
            };
            if self.send_message(ws, &m).is_err() {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: cannot send a channel message, closing with {INTERNAL}"
                );
                return Err(INTERNAL);
            }
        }
    }

    /// Sends one channel message, in frames of at most `max_send_len`.
    fn send_message(&self, ws: &mut WebSocket, m: &Message) -> Result<(), WsError> {
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
        let max = usize::try_from(ws.max_send_len())
            .unwrap_or(usize::MAX)
            .max(1);
        if payload.len() <= max {
            return ws.send_frame(true, opcode, payload);
        }
        let mut chunks = payload.chunks(max).peekable();
        let mut op = opcode;
        while let Some(chunk) = chunks.next() {
            ws.send_frame(chunks.peek().is_none(), op, chunk)?;
            op = OpCode::Continuation;
        }
        Ok(())
    }

    /// Publishes a message of the client to its channel; a failure is
    /// logged, the session goes on.
    fn publish(&self, log: *mut ngx_log_t, data: &[u8], binary: bool) {
        if self.store.redis().is_some() {
            // [redis] it comes back through the worker's reader.
            self.publish_to_redis(log, data, binary);
        } else if let Err(e) = local::publish(self.store, Ok(self.sub.key), data, binary) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "websocket: cannot publish to zone \"{}\": {e:?}",
                self.store.name()
            );
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
}
