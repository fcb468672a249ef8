//! ngx_http_websocket_module: an RFC 6455 WebSocket server, client and proxy
//! for nginx, and the library that other nginx modules written in Rust use to
//! write their own WebSocket handlers.
//!
//! # Using the crate as a library
//!
//! Depend on it with `default-features = false`, so that your module does not
//! export this crate's `ngx_modules`:
//!
//! ```toml
//! [dependencies]
//! ngx_http_websocket_module = { path = "...", default-features = false }
//! ```
//!
//! A content handler upgrades its request with [`upgrade`] and hands the
//! resulting [`Upgraded`] session to [`serve`] together with a [`Handler`].
//! From then on the library owns the connection: it reads, decodes,
//! validates, answers pings, flushes writes, applies the [`ServerOptions`]
//! (limits, timeouts) and calls [`Handler::step`] whenever something
//! happened; the handler receives with [`WebSocket::recv`] or
//! [`WebSocket::recv_frame`] and sends with the seed's `send_*` names.
//!
//! ## Why a handler trait, not futures
//!
//! nginx drives everything from event handlers on one thread; the seed's
//! `recv_frame()` loop is a coroutine. The `ngx` 0.5.1 crate has an async
//! executor, but its wakes re-enter a task that is being polled, and a task
//! dropped while its I/O is in flight leaves nginx holding a pointer to freed
//! memory (use after free on cancel). A handler trait keeps the same shape
//! as nginx's own modules: one generic set of `extern "C"` trampolines,
//! written once in this crate, calls a plain `&mut self` method with a
//! [`Context`], so no handler has to write `unsafe` or hold an nginx pointer,
//! and the session is freed on exactly one path. Events from elsewhere
//! (another session, a timer) reach a session through its [`Waker`].
//!
//! ## A client
//!
//! [`connect`] is the seed's `client:new` + `wb:connect`: from a content
//! handler it connects the request to a `ws://` or `wss://` upstream (an
//! `upstream {}` block, an address or a resolved name; a keepalive-pooled
//! connection when one is idle), with [`ClientOptions`] and
//! [`ConnectOptions`], and delivers the outcome to a [`ClientHandler`] on
//! the same kind of trampolines: [`ClientHandler::connected`] once, then
//! [`ClientHandler::step`] on the upstream's events, with the connection
//! lent as a [`WsClient`]. The handler answers its request and returns
//! [`ClientNext::Finish`]; the library then closes or pools the connection
//! as [`WsClient::close`] or [`WsClient::set_keepalive`] asked.
//!
//! ## A relay
//!
//! A [`ClientHandler`] whose connect completed can instead upgrade its
//! request with [`ClientContext::upgrade`] and hand both legs, the client's
//! [`WebSocket`] and the upstream's [`WsClient`], to a [`RelayHandler`]
//! with [`Relaying::serve`]: one session, on [`serve`]'s trampolines, whose
//! [`RelayHandler::step`] moves frames between the legs (see
//! [`RelayContext`]) and whose upstream goes back to its keepalive pool at
//! the end after [`WsClient::set_keepalive`]. [`Relay`] is the library's
//! ready-made [`RelayHandler`] (`websocket_pass`'s, which is such a
//! [`ClientHandler`]), to use as is; a relay of one's own does what it does
//! with the public timeout ([`WebSocket::take_timedout`],
//! [`WebSocket::on_read_timeout`]), backpressure
//! ([`WebSocket::pause_reading_above`], [`WebSocket::take_throttled`]) and
//! pooling ([`WebSocket::reusable`], [`Fence`]) methods. [`validate`] checks
//! the client's handshake before the upstream is connected.
//!
//! # Layers
//!
//! Top to bottom, each uses only the ones below it (`tools/import-graph.sh`
//! checks it):
//! - `module` and `config`: the nginx module, its directives and their merge;
//! - `echo`, `proxy` (with `relay`, `pool`), `channels`, `status`: the
//!   directives' content handlers; echo and the channels' subscriber are
//!   [`Handler`]s on the public API, pass a [`ClientHandler`] that serves
//!   the public [`Relay`], all counted by kind in the metrics by `counted`
//!   (from their `finish`);
//!   `status` renders `metrics` and the zones' families;
//! - `limit`, `metrics`, `variables`: shared-memory zones and the session's
//!   log, beside the session they account for;
//! - `relay`, `serve`, `upgrade`, `connect`, `client`, `ws_client`, `pool`:
//!   [`Relay`], [`upgrade`], [`serve`] (one generic set of trampolines for
//!   every session), [`connect`] (the client's), its handshake,
//!   [`WsClient`] and its keepalive pools;
//! - `session`: the WebSocket object over an nginx connection; below it
//!   `clock` (heartbeat and session-age timers) and `stats` (`Stats`,
//!   `Limits`), I/O-free and unit-tested;
//! - `ngx_io`, `ngx_detach`, `ngx_peer`, `ngx_ssl`, `ngx_resolve`: thin
//!   wrappers around nginx, the only places that dereference nginx pointers;
//! - [`protocol`]: the pure RFC 6455 codec, free of nginx types (its own crate,
//!   `ngx-websocket-protocol`).
#![deny(missing_docs)]
// Unit tests, and a dependent's build (no `export-modules`), leave the nginx
// module out, and with it what only its directives reach.
#![cfg_attr(any(test, not(feature = "export-modules")), allow(dead_code))]

mod buffers;
mod channels;
mod clock;
mod client;
mod connect;
mod compression;
mod config;
mod counted;
mod drain;
mod echo;
mod limit;
mod metrics;
mod module;
mod ngx_detach;
mod ngx_io;
mod ngx_peer;
mod ngx_resolve;
mod ngx_ssl;
mod pool;
mod proxy;
mod random;
// The RESP client that channels' `redis=` is built on.
mod redis;
mod relay;
mod serve;
mod session;
mod stats;
mod status;
mod upgrade;
mod url;
mod variables;
mod ws_client;

pub use ngx_websocket_protocol as protocol;

pub use client::ClientError;
pub use connect::{
    connect, ClientContext, ClientHandler, ClientNext, ClientOptions, ConnectOptions, Connected,
    Relaying, TlsContext,
};
pub use ngx_io::{ConnectionRef, Direction, NgxError, RequestRef};
pub use random::EntropyError;
pub use pool::Fence;
pub use relay::Relay;
pub use serve::{
    serve, Context, Handler, Next, Origin, RelayContext, RelayHandler, RelayNext, Waker,
};
pub use upgrade::{upgrade, validate, ClientHandshake, Deflate, ServerOptions, Upgraded};
pub use session::{FrameRef, Quiet, Received, RecvFrame, WebSocket, WsError};
pub use ws_client::{KeepaliveError, WsClient};
pub use stats::Stats;
