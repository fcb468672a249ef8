//! ngx_http_websocket_module: an RFC 6455 WebSocket server for nginx.
//!
//! Layers, top to bottom (each uses only the ones below it):
//! - [`module`] and [`config`]: the nginx module, its directives and their merge;
//! - [`echo`]: the `websocket_echo` content handler;
//! - [`upgrade`]: the server handshake on an nginx request;
//! - [`session`]: the WebSocket object (`wb` operations) over an nginx connection;
//! - [`ngx_io`]: thin wrappers around nginx's request, connection and events, the
//!   only place that dereferences nginx pointers;
//! - [`protocol`]: the pure RFC 6455 codec, free of nginx types.

pub mod buffers;
// Channels (issue 18): their own nginx module, nothing of the library API.
mod channels;
pub mod client;
pub mod compression;
pub mod config;
pub mod drain;
pub mod echo;
pub mod limit;
pub mod metrics;
pub mod module;
pub mod ngx_detach;
pub mod ngx_io;
pub mod ngx_peer;
pub mod ngx_resolve;
pub mod ngx_ssl;
pub mod pool;
pub use ngx_websocket_protocol as protocol;
pub mod proxy;
pub mod random;
pub mod relay;
pub mod session;
pub mod upgrade;
pub mod url;
pub mod variables;
pub mod ws_client;
