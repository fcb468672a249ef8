//! Plain data below the session: what a session counts ([`Stats`]) and the
//! limits it applies ([`Limits`]). Nothing here does I/O or names nginx
//! objects, so the session, the metrics and the variables all use it.

use ngx::ffi::ngx_msec_t;

/// What crossed this connection, for the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent.
    pub messages_out: u64,
    /// Payload bytes of the data messages received.
    pub bytes_in: u64,
    /// Payload bytes of the data messages sent.
    pub bytes_out: u64,
    /// Of the messages received, the ones that came compressed (permessage-deflate).
    pub compressed_in: u64,
    /// Of the messages sent, the ones that went compressed.
    pub compressed_out: u64,
    /// Code of the first close frame, received or sent (1005 for one
    /// without a code).
    pub close_code: Option<u16>,
}

/// The limits and timers of one WebSocket object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_recv_len: u64,
    pub max_send_len: u64,
    pub send_masked: bool,
    pub timeout_ms: ngx_msec_t,
    /// `websocket_ping_interval`, when heartbeats are on.
    pub ping_interval_ms: Option<ngx_msec_t>,
    pub ping_timeout_ms: ngx_msec_t,
    /// `websocket_max_session_time`, when set.
    pub max_session_ms: Option<ngx_msec_t>,
    /// `websocket_shutdown_spread`.
    pub shutdown_spread_ms: ngx_msec_t,
}

