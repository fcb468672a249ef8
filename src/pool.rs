//! Keepalive pools of upstream WebSocket connections, one set per worker.
//!
//! A pool is named (`websocket_keepalive_pool`, by default `host:port`, plus
//! the TLS context so connections never cross security settings). It keeps
//! at most `size` idle, already handshaken connections, least recently used
//! first out, closes them after the idle timeout or when the upstream sends
//! anything but a ping, and with a backlog it also bounds the open
//! connections and queues the sessions that wait for one.

use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use ngx::ffi::{ngx_connection_t, ngx_event_t, ngx_msec_t, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::client::Agreed;
use crate::ngx_io::{cycle_log, post_write_event, Direction, Io};
use crate::ngx_peer::UpstreamConn;
use crate::protocol::frame::{build_frame, parse_header, OpCode, ParseConfig};
use crate::random;

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

/// The shared state of one named pool.
pub struct Pool {
    name: String,
    idle: RefCell<VecDeque<Box<Idle>>>,
    /// Connections counted against the backlog limit: in use or idle.
    open: Cell<usize>,
    waiters: RefCell<VecDeque<WaiterId>>,
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
    /// A worker's pools by name. nginx runs each worker on one thread.
    static POOLS: RefCell<HashMap<String, Rc<Pool>>> = RefCell::new(HashMap::new());
}

/// The pool named `name`, made on first use.
pub fn pool(name: &str) -> Rc<Pool> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        Rc::clone(pools.entry(name.to_owned()).or_insert_with(|| {
            Rc::new(Pool {
                name: name.to_owned(),
                idle: RefCell::new(VecDeque::new()),
                open: Cell::new(0),
                waiters: RefCell::new(VecDeque::new()),
            })
        }))
    })
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

    /// Idle connections now in the pool.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
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
            let reusable = {
                let mut idle = self.idle.borrow_mut();
                let found = idle
                    .iter()
                    .rposition(|i| i.conn.address() == address && i.handshake == handshake);
                found.and_then(|i| idle.remove(i))
            };
            if let Some(idle) = reusable {
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

    /// Removes a session from the line (it got a connection, or gave up).
    pub fn leave_line(&self, me: WaiterId) {
        let mut waiters = self.waiters.borrow_mut();
        if let Some(i) = waiters.iter().position(|w| *w == me) {
            waiters.remove(i);
        }
    }

    fn wake_first(&self) {
        if let Some(first) = self.waiters.borrow().front() {
            post_write_event(*first);
        }
    }

    /// Keeps an idle, handshaken connection for a later session; the least
    /// recently used one is closed when the pool is full. The balancer
    /// hears that the session is done with the peer.
    pub fn release(
        self: &Rc<Self>,
        mut conn: UpstreamConn,
        slot: Slot,
        handshake: &[u8],
        agreed: Agreed,
        settings: PoolSettings,
    ) {
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
        if c.handle_event(Direction::Read).is_err() {
            return; // dropping `idle` closes it
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
    let keep = !c.take_timedout(Direction::Read)
        && !idle_ref.conn.close_requested()
        && answer_pings(idle_ref);
    if keep && c.handle_event(Direction::Read).is_ok() {
        return;
    }
    let pool = Rc::clone(&idle_ref.slot.pool);
    ngx_log_error!(
        NGX_LOG_INFO,
        cycle_log(),
        "websocket: closing pooled upstream connection to {} (pool \"{}\")",
        idle_ref.conn.name(),
        pool.name
    );
    let removed = pool.remove(idle);
    drop(removed);
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
