//! Keepalive pools of upstream WebSocket connections, one set per worker.
//!
//! A pool is named (`websocket_keepalive_pool`, by default `host:port`, plus
//! the TLS context so connections never cross security settings). It keeps
//! at most `size` idle, already handshaken connections, least recently used
//! first out, closes them after the idle timeout or when the upstream sends
//! anything but a ping, and with a backlog it also bounds the open
//! connections and queues the sessions that wait for one.
//!
//! The upstream does not know where one client's session ends and the next
//! begins, so a message it sends for the old session must never reach the
//! next. The relay therefore fences a connection before it gives it back
//! (see [`Fence`]): the upstream gets a ping with a random payload, and the
//! connection comes here only if the matching pong arrived with no data or
//! close before it. TCP keeps the upstream's frames in order, so all it sent
//! for the old session was seen (and relayed to that session's client) by
//! then. Here, what arrives afterwards but a ping closes the connection: on
//! release, while pooled, and when a session is about to reuse it (the
//! socket is read once more first, reported or not).
//!
//! A pool that holds no connection and serves no session leaves the
//! worker's map, so names chosen by clients (`websocket_keepalive_pool
//! $arg_p`) cannot grow it.

use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use ngx::ffi::{ngx_connection_t, ngx_event_t, ngx_msec_t, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::client::Agreed;
use crate::ngx_io::{cycle_log, post_write_event, Direction, Io};
use crate::ngx_peer::UpstreamConn;
use crate::protocol::frame::{build_frame, parse_header, OpCode, ParseConfig};
use crate::random;
use crate::session::{WebSocket, WsError};

/// `websocket_keepalive*` of a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: usize,
    pub idle_timeout: ngx_msec_t,
    /// With a backlog, at most `size` connections are open at once.
    pub backlog: Option<usize>,
}

/// Identifies a waiting session: its client connection, whose write event
/// is posted when it may try again.
type WaiterId = NonNull<ngx_connection_t>;

/// The shared state of one named pool. Its idle connections, sessions and
/// waiters hold it (an `Rc` in every `Slot` and `Keepalive`); the last one
/// to go drops it.
pub struct Pool {
    name: String,
    idle: RefCell<VecDeque<Box<Idle>>>,
    /// Connections counted against the backlog limit: in use or idle.
    open: Cell<usize>,
    waiters: RefCell<VecDeque<WaiterId>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // `try_*`: the map is gone while the thread's locals are destroyed,
        // and `pool()` holds it only to replace an entry, which drops a
        // `Weak`, never a pool. A dead entry left behind is replaced by the
        // next `pool()` of that name.
        let _ = POOLS.try_with(|pools| {
            if let Ok(mut pools) = pools.try_borrow_mut() {
                if pools.get(&self.name).is_some_and(|p| p.strong_count() == 0) {
                    pools.remove(&self.name);
                }
            }
        });
    }
}

/// A session's place in a keepalive pool.
pub struct Keepalive {
    pub pool: Rc<Pool>,
    /// The upstream handshake (`ClientOptions::handshake`): a pooled
    /// connection serves only an identical one.
    pub handshake: Vec<u8>,
    pub settings: PoolSettings,
    /// The counted place of this session's upstream connection.
    pub slot: Option<Slot>,
    /// The client connection, which identifies the session while it waits.
    pub me: WaiterId,
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.pool.leave_line(self.me);
    }
}

/// A pooled connection.
struct Idle {
    conn: UpstreamConn,
    slot: Slot,
    handshake: Vec<u8>,
    agreed: Agreed,
    /// Bytes of a ping that has not fully arrived yet.
    partial: RefCell<Vec<u8>>,
}

/// A place among a pool's open connections; giving it back lets the first
/// waiting session try again.
pub struct Slot {
    pool: Rc<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.open.set(self.pool.open.get() - 1);
        self.pool.wake_first();
    }
}

thread_local! {
    /// A worker's pools in use, by name. nginx runs each worker on one
    /// thread. The map does not keep a pool alive (see `Drop for Pool`).
    static POOLS: RefCell<HashMap<String, Weak<Pool>>> = RefCell::new(HashMap::new());
}

/// The pool named `name`, made when none is in use.
pub fn pool(name: &str) -> Rc<Pool> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        if let Some(pool) = pools.get(name).and_then(Weak::upgrade) {
            return pool;
        }
        let pool = Rc::new(Pool {
            name: name.to_owned(),
            idle: RefCell::new(VecDeque::new()),
            open: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
        });
        pools.insert(name.to_owned(), Rc::downgrade(&pool));
        pool
    })
}

/// The ping that fences an upstream connection before it goes back to its
/// keepalive pool.
///
/// The upstream does not know where one client's session ends and the next
/// begins, so what it sends for the old session must never reach the next.
/// A relay whose client closed normally while the upstream leg is
/// [`reusable`](crate::WebSocket::reusable) does not forward that close:
/// it sends a [`Fence`] (a ping with a random payload) instead, and keeps
/// relaying towards the client. The pong that
/// [`answers`](Fence::answered_by) it, with no data or close before it,
/// shows that all the upstream sent for the session was seen (TCP keeps
/// its frames in order): the relay then answers the client's close and
/// asks for [`WsClient::set_keepalive`](crate::WsClient::set_keepalive).
/// Data or a close first breaks the fence: the relay closes the upstream
/// as usual instead. Once pooled, anything but a ping from the upstream
/// closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence([u8; 8]);

impl Fence {
    /// Queues the fencing ping on the upstream leg (a
    /// [`WsClient`](crate::WsClient), through its [`WebSocket`]).
    pub fn send(upstream: &mut WebSocket) -> Result<Fence, WsError> {
        let mut token = [0; 8];
        random::fill(&mut token)?;
        upstream.send_ping(&token)?;
        Ok(Fence(token))
    }

    /// Whether a pong with `payload` answers this fence: an answer to an
    /// earlier ping of the session does not pass for it.
    pub fn answered_by(&self, payload: &[u8]) -> bool {
        self.0[..] == *payload
    }
}

/// What a session gets from [`Pool::acquire`].
pub enum Acquired {
    /// A pooled connection, already handshaken, with what it agreed to.
    Reused {
        conn: UpstreamConn,
        slot: Slot,
        agreed: Agreed,
    },
    /// Connect a new one, counted with this slot.
    Connect(Slot),
    /// All connections are busy: wait in line until woken.
    Wait,
    /// The line is full.
    Overflow,
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection for a session whose upstream handshake is `handshake`,
    /// to the peer at `address` that the balancer picked (as nginx's
    /// `keepalive` reuses only a connection to the picked peer).
    /// `me` identifies the session if it has to wait.
    pub fn acquire(
        self: &Rc<Self>,
        handshake: &[u8],
        address: &[u8],
        settings: PoolSettings,
        me: WaiterId,
    ) -> Acquired {
        let position = self.waiters.borrow().iter().position(|w| *w == me);
        let queued_ahead = match position {
            Some(i) => i > 0,
            None => !self.waiters.borrow().is_empty(),
        };
        if !(settings.backlog.is_some() && queued_ahead) {
            if let Some(idle) = self.take_reusable(handshake, address) {
                self.leave_line(me);
                let Idle {
                    conn, slot, agreed, ..
                } = *idle;
                conn.set_idle(false);
                conn.connection().del_timer(Direction::Read);
                return Acquired::Reused { conn, slot, agreed };
            }
            let full = settings.backlog.is_some() && self.open.get() >= settings.size;
            if full {
                // Another handshake's idle connection gives its place up.
                let oldest = self.idle.borrow_mut().pop_front();
                drop(oldest);
            }
            if settings.backlog.is_none() || self.open.get() < settings.size {
                self.leave_line(me);
                self.open.set(self.open.get() + 1);
                return Acquired::Connect(Slot {
                    pool: Rc::clone(self),
                });
            }
        }
        if position.is_some() {
            return Acquired::Wait;
        }
        let mut waiters = self.waiters.borrow_mut();
        if waiters.len() >= settings.backlog.unwrap_or(0) {
            return Acquired::Overflow;
        }
        waiters.push_back(me);
        Acquired::Wait
    }

    /// The most recently released connection to `address` for `handshake`
    /// that has still received nothing but pings; others found on the way
    /// are closed.
    fn take_reusable(&self, handshake: &[u8], address: &[u8]) -> Option<Box<Idle>> {
        loop {
            let candidate = {
                let mut idle = self.idle.borrow_mut();
                let found = idle
                    .iter()
                    .rposition(|i| i.conn.address() == address && i.handshake == handshake);
                found.and_then(|i| idle.remove(i))
            }?;
            // What arrived since the last read event, reported or not, is
            // read before the connection changes hands; half a ping cannot
            // be handed over either.
            candidate.conn.connection().assume_readable();
            if answer_pings(&candidate) && candidate.partial.borrow().is_empty() {
                return Some(candidate);
            }
            log_closing(&candidate, "it received more than pings");
        }
    }

    /// Removes a session from the line (it got a connection, or gave up).
    pub fn leave_line(&self, me: WaiterId) {
        let mut waiters = self.waiters.borrow_mut();
        if let Some(i) = waiters.iter().position(|w| *w == me) {
            waiters.remove(i);
        }
    }

    fn wake_first(&self) {
        if let Some(first) = self.waiters.borrow().front() {
            // SAFETY: a waiter's `Keepalive` leaves the line when dropped,
            // which its session does before the client connection closes.
            unsafe { post_write_event(*first) };
        }
    }

    /// Keeps an idle, handshaken connection, fenced by the relay, for a
    /// later session; the least recently used one is closed when the pool is
    /// full. False when the connection was closed instead: the upstream sent
    /// more than pings after the fence.
    /// Either way the balancer hears that the session is done with the peer.
    pub fn release(
        self: &Rc<Self>,
        mut conn: UpstreamConn,
        slot: Slot,
        handshake: &[u8],
        agreed: Agreed,
        settings: PoolSettings,
    ) -> bool {
        conn.release_peer();
        let mut idle = Box::new(Idle {
            conn,
            slot,
            handshake: handshake.to_vec(),
            agreed,
            partial: RefCell::new(Vec::new()),
        });
        let data = core::ptr::addr_of_mut!(*idle).cast();
        idle.conn.attach(data, idle_event, cycle_log());
        idle.conn.set_idle(true);
        let c = idle.conn.connection();
        // The relay stopped reading at the fence's pong: what came since is
        // in the socket, maybe reported to the relay and left unread.
        c.assume_readable();
        if !answer_pings(&idle) || c.handle_event(Direction::Read).is_err() {
            return false; // dropping `idle` closes it
        }
        c.add_timer(Direction::Read, settings.idle_timeout);
        let evicted = {
            let mut pooled = self.idle.borrow_mut();
            pooled.push_back(idle);
            if pooled.len() > settings.size {
                pooled.pop_front()
            } else {
                None
            }
        };
        drop(evicted);
        self.wake_first();
        true
    }

    /// Takes a pooled connection out (to close it).
    fn remove(&self, target: *const Idle) -> Option<Box<Idle>> {
        let mut idle = self.idle.borrow_mut();
        let i = idle.iter().position(|i| core::ptr::eq(&**i, target))?;
        idle.remove(i)
    }
}

/// Read events of a pooled connection: a ping is answered; a timeout, a
/// close, anything else from the upstream, or a worker exiting closes it.
unsafe extern "C" fn idle_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection was attached with its `Idle` as data, which
    // stays in its pool's list until removed below.
    let idle: *const Idle = unsafe { (*(*ev).data.cast::<ngx_connection_t>()).data.cast() };
    let idle_ref = unsafe { &*idle };
    let c = idle_ref.conn.connection();
    let why = if c.take_timedout(Direction::Read) {
        "idle timeout"
    } else if idle_ref.conn.close_requested() {
        "worker is exiting"
    } else if !answer_pings(idle_ref) {
        "the upstream closed it or sent more than pings"
    } else if c.handle_event(Direction::Read).is_err() {
        "cannot wait for its events"
    } else {
        return;
    };
    let pool = Rc::clone(&idle_ref.slot.pool);
    log_closing(idle_ref, why);
    let removed = pool.remove(idle);
    drop(removed);
}

fn log_closing(idle: &Idle, why: &str) {
    ngx_log_error!(
        NGX_LOG_INFO,
        cycle_log(),
        "websocket: closing pooled upstream connection to {} (pool \"{}\"): {why}",
        idle.conn.name(),
        idle.slot.pool.name
    );
}

/// Reads what a pooled connection received; answers pings, also ones that
/// arrive in pieces. False when the connection must go (closed, an error,
/// or any other frame).
fn answer_pings(idle: &Idle) -> bool {
    let c = idle.conn.connection();
    let mut pending = idle.partial.borrow_mut();
    let mut buf = [0u8; 256];
    loop {
        let n = match c.recv(&mut buf) {
            Io::Again => return true,
            Io::Done(n) => n,
            Io::Eof | Io::Error => return false,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        loop {
            let header = match parse_header(&pending[at..], &ParseConfig::client(125)) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => return false,
            };
            let (header, len) = header;
            if header.opcode != OpCode::Ping {
                return false;
            }
            let end = at + len + header.payload_len as usize;
            if end > pending.len() {
                break;
            }
            let Ok(mask) = random::mask() else {
                return false;
            };
            let pong = build_frame(true, OpCode::Pong, &pending[at + len..end], Some(mask));
            if c.send(&pong) != Io::Done(pong.len()) {
                return false;
            }
            at = end;
        }
        pending.drain(..at);
    }
}

