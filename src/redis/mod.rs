//! Our own small Redis client, for the channels' Redis backend
//! (`websocket_channel_zone ... redis=redis://host:port[/db]`).
//!
//! - [`resp`]: the protocol, pure (commands out, an incremental reply
//!   parser in, typed stream replies);
//! - [`url`]: the `redis=` URL;
//! - [`backoff`]: reconnect delays;
//! - [`conn`]: connections on nginx's event loop (non-blocking, pipelined,
//!   reconnecting with backoff).

pub mod backoff;
pub mod resp;
pub mod url;
