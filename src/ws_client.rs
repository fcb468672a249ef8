//! The seed's client object: a WebSocket that we opened to an upstream,
//! with the `wb` operations of [`WebSocket`], `close`, and `set_keepalive`,
//! which hands the still open connection to its keepalive pool.

use core::fmt;
use core::ops::{Deref, DerefMut};

use ngx::ffi::ngx_msec_t;

use crate::client::Agreed;
use crate::ngx_peer::{EventHandler, UpstreamConn};
use crate::pool::{Keepalive, PoolSettings};
use crate::protocol::close::NORMAL;
use crate::session::{WebSocket, WsError};

/// The seed's client object: a WebSocket that we opened to an upstream
/// with [`connect`](crate::connect). It dereferences to [`WebSocket`] for
/// the `wb` operations (`send_text`, `recv_frame`, `set_timeout`, ...); the
/// library owns it and lends it to the [`ClientHandler`](crate::ClientHandler).
/// [`WsClient::close`] and [`WsClient::set_keepalive`] say how the
/// connection ends once the handler returns
/// [`ClientNext::Finish`](crate::ClientNext::Finish).
pub struct WsClient {
    ws: WebSocket,
    conn: UpstreamConn,
    agreed: Agreed,
    keepalive: Option<Keepalive>,
    ending: Option<Ending>,
}

/// How the handler asked the connection to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `close`: the close frame is flushed, then the connection closed.
    Close,
    /// `set_keepalive`: flushed, then pooled.
    Keepalive {
        max_idle_timeout: ngx_msec_t,
        pool_size: usize,
    },
}

/// Why `set_keepalive` closed the connection instead of pooling it (logged
/// when the request ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveError {
    /// The connection was opened without a pool (`websocket_keepalive` off).
    NoPool,
    /// A message is half sent or half received, output is queued, a close
    /// frame went either way, compression keeps state between messages, or
    /// the upstream sent more than pings after the relay's fence: the next
    /// session would inherit it.
    Unclean,
}

impl fmt::Display for KeepaliveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepaliveError::NoPool => "no keepalive pool for this connection",
            KeepaliveError::Unclean => "connection is not idle and clean",
        })
    }
}

impl std::error::Error for KeepaliveError {}

impl WsClient {
    /// The subprotocol the upstream agreed to, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.agreed.subprotocol.as_deref()
    }

    /// The seed's `wb:close()`: queues a close frame (1000, unless one was
    /// sent). Once the handler returns [`ClientNext::Finish`], the library
    /// flushes it and closes the connection; until then the handler may
    /// still receive (the upstream's answering close, say).
    ///
    /// [`ClientNext::Finish`]: crate::ClientNext::Finish
    pub fn close(&mut self) -> Result<(), WsError> {
        self.ending = Some(Ending::Close);
        if self.ws.close_sent() {
            return Ok(());
        }
        self.ws.send_close(Some(NORMAL), b"")
    }

    /// The seed's `wb:set_keepalive(max_idle_timeout, pool_size)`: once the
    /// handler returns [`ClientNext::Finish`], the library flushes what is
    /// queued and puts the connection into its pool for at most
    /// `max_idle_timeout` milliseconds, in a pool of at most `pool_size`
    /// idle connections. Fails at once with [`KeepaliveError::NoPool`] when
    /// the connect had no pool; a connection that is not clean then (a
    /// message half sent or received, a close frame either way, compression
    /// state kept between messages) is closed instead, and that logged.
    ///
    /// [`ClientNext::Finish`]: crate::ClientNext::Finish
    pub fn set_keepalive(
        &mut self,
        max_idle_timeout: ngx_msec_t,
        pool_size: usize,
    ) -> Result<(), KeepaliveError> {
        if self.keepalive.is_none() {
            return Err(KeepaliveError::NoPool);
        }
        self.ending = Some(Ending::Keepalive {
            max_idle_timeout,
            pool_size,
        });
        Ok(())
    }

    /// How the handler asked the connection to end.
    pub(crate) fn ending(&self) -> Option<Ending> {
        self.ending
    }
}

impl WsClient {
    /// `agreed` is what the upstream's handshake (or the pooled
    /// connection's) settled.
    pub(crate) fn new(
        ws: WebSocket,
        conn: UpstreamConn,
        agreed: Agreed,
        keepalive: Option<Keepalive>,
    ) -> WsClient {
        WsClient {
            ws,
            conn,
            agreed,
            keepalive,
            ending: None,
        }
    }

    /// Puts the connection into its pool for at most `max_idle_timeout`
    /// milliseconds, in a pool of at most `pool_size` idle connections (what
    /// `set_keepalive` asks for). The relay fences it first (`pool::Fence`),
    /// so that nothing the upstream sent for this session reaches the next;
    /// what the upstream keeps for the session in-band (a login,
    /// subscriptions) goes with it. The object is consumed either way, so no
    /// operation but a new connect can follow; on an error the connection is
    /// closed.
    pub(crate) fn into_pool(
        self,
        max_idle_timeout: ngx_msec_t,
        pool_size: usize,
    ) -> Result<(), KeepaliveError> {
        let WsClient {
            ws,
            conn,
            agreed,
            keepalive,
            ..
        } = self;
        let clean = ws.reusable();
        drop(ws);
        let Some((keepalive, slot)) =
            keepalive.and_then(|mut k| k.slot.take().map(|slot| (k, slot)))
        else {
            return Err(KeepaliveError::NoPool);
        };
        // Compression state kept between messages would be lost.
        let stateless = agreed
            .deflate
            .is_none_or(|d| d.server_no_context_takeover && d.client_no_context_takeover);
        if !clean || !stateless {
            return Err(KeepaliveError::Unclean);
        }
        let settings = PoolSettings {
            size: pool_size,
            idle_timeout: max_idle_timeout,
            ..keepalive.settings
        };
        let kept = keepalive
            .pool
            .release(conn, slot, &keepalive.handshake, agreed, settings);
        kept.then_some(()).ok_or(KeepaliveError::Unclean)
    }
}

impl WsClient {
    /// Sends the upstream connection's events to `handler` with `data` as
    /// the connection's data (the session moved to another owner).
    pub(crate) fn redirect_events(&self, data: *mut core::ffi::c_void, handler: EventHandler) {
        self.conn
            .attach(data, handler, self.conn.connection().log());
    }
}

impl Deref for WsClient {
    type Target = WebSocket;

    fn deref(&self) -> &WebSocket {
        &self.ws
    }
}

impl DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut WebSocket {
        &mut self.ws
    }
}
