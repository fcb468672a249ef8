//! Our own small Redis client, for the channels' Redis backend
//! (`websocket_channel_zone ... redis=redis://host:port[/db]`).
//!
//! - [`resp`]: the protocol, pure (commands out, an incremental reply
//!   parser in, typed stream replies);
//! - [`url`]: the `redis=` URL;
//! - [`backoff`]: reconnect delays;
//! - [`conn`]: connections on nginx's event loop (non-blocking, pipelined,
//!   reconnecting with backoff);
//! - [`streams`]: following streams with `XREAD BLOCK` on a reader link,
//!   from the last ids delivered;
//! - [`channels`]: a channel zone's data in Redis streams (keys, messages,
//!   history), and the store's operations on a worker's links;
//! - `probe` (cargo feature `redis-probe`, tests only): the client on an
//!   HTTP location, for nginx-tests/63-redis-client.t.

pub mod backoff;
pub mod channels;
pub mod conn;
#[cfg(feature = "redis-probe")]
pub mod probe;
pub mod resp;
pub mod streams;
pub mod url;
