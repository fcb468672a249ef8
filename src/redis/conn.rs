//! Connections to Redis on nginx's event loop.
//!
//! A [`Link`] is one TCP connection that a worker keeps to the zone's
//! Redis, and keeps reconnecting: it connects without blocking (bounded by
//! `connect_timeout`), `SELECT`s the database, asks its `CLIENT ID` (so
//! that a blocked reader can be woken with `CLIENT UNBLOCK` from another
//! connection), then pipelines commands, each reply completing the oldest
//! command still waiting (a FIFO of callbacks). A reply that does not come
//! within the command's timeout, a malformed reply, or a closed connection
//! fails every command waiting on it and starts the reconnect: after
//! 100 ms, doubling up to 5 s (less up to a fifth, at random); so does a
//! `-LOADING` answer (a server that restarted and reads its data back). The outage
//! is logged once at [error], the return at [notice]. While the link is not
//! up, [`Link::command`] fails at once (a publish answers 503 instead of
//! waiting).
//!
//! The channels use two links per worker and zone: one for commands
//! (`XADD`, `XRANGE`, ...) and one for `XREAD BLOCK`, which holds its
//! connection until something arrives or the block times out.
//!
//! No thread and no blocking call: the connection's events and a timer
//! drive everything. The worker's exit closes the links (their
//! connections are marked idle, their timers are cancelable).

use core::ffi::c_void;
use core::mem;
use core::ptr::{self, NonNull};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    getsockopt, ngx_close_connection, ngx_connection_t, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_log_t, ngx_msec_t, ngx_peer_connection_t, ngx_str_t, sockaddr, socklen_t,
    NGX_AGAIN, NGX_LOG_CRIT, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_OK, SOL_SOCKET,
    SO_ERROR,
};
use ngx::ngx_log_error;

use super::backoff::Backoff;
use super::resp::{self, Limits, Parser, RespError, Value};
use crate::ngx_io::{cycle_log, now_msec, CloseRequest, ConnectionRef, Direction, Io};

/// How a link reaches its Redis.
#[derive(Debug, Clone)]
pub struct Settings {
    /// For log lines: the URL as configured.
    pub name: String,
    /// The socket addresses the host resolved to (tried in turn).
    pub addrs: Vec<Vec<u8>>,
    pub db: u32,
    pub connect_timeout_ms: u64,
    /// How long a reply may take (`XREAD BLOCK` adds its block time).
    pub command_timeout_ms: u64,
    pub limits: Limits,
    /// Bytes of commands that may wait for the socket (see `Busy`).
    pub max_unsent: usize,
    pub backoff_first_ms: u64,
    pub backoff_max_ms: u64,
}

impl Settings {
    pub fn new(name: String, addrs: Vec<Vec<u8>>, db: u32) -> Self {
        Settings {
            name,
            addrs,
            db,
            connect_timeout_ms: 1000,
            command_timeout_ms: 5000,
            limits: Limits::default(),
            max_unsent: 16 << 20,
            backoff_first_ms: Backoff::DEFAULT_FIRST_MS,
            backoff_max_ms: Backoff::DEFAULT_MAX_MS,
        }
    }
}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// The link is not connected (an outage, or still connecting).
    Down,
    /// The connection was lost before the reply came.
    Closed,
    /// No reply within the command's timeout (the connection was closed).
    Timeout,
    /// The server sent something that is not RESP.
    Protocol(RespError),
    /// More than `max_unsent` bytes of commands wait for the socket (Redis
    /// reads slower than commands come): refused, like `Down`.
    Busy,
}

impl core::fmt::Display for RedisError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RedisError::Down => f.write_str("redis is unreachable"),
            RedisError::Closed => f.write_str("connection to redis lost"),
            RedisError::Timeout => f.write_str("redis timed out"),
            RedisError::Protocol(e) => write!(f, "bad reply from redis: {e}"),
            RedisError::Busy => f.write_str("too many commands waiting for redis"),
        }
    }
}

impl std::error::Error for RedisError {}

/// A command's outcome. A server's error reply (`-ERR ...`) is a value:
/// the typed readers in [`resp`] turn it into an error.
pub type Reply = Result<Value, RedisError>;
type Done = Box<dyn FnOnce(Reply)>;
type StateHook = Rc<dyn Fn(bool)>;

/// What a reply in the FIFO is for.
enum Waiting {
    Select,
    ClientId,
    User(Done),
}

struct Pending {
    waiting: Waiting,
    timeout_ms: u64,
    /// When its bytes were queued, or when the one before it was
    /// answered: a reply is due `timeout_ms` after the later of the two.
    since: ngx_msec_t,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection; the reconnect timer is set (or the link stopped).
    Waiting,
    Connecting,
    /// Connected; SELECT and CLIENT ID not answered yet.
    Handshake,
    Up,
    /// The worker is exiting: no more connections.
    Stopped,
}

/// Callbacks to run once the link is no longer borrowed.
#[derive(Default)]
struct Effects {
    replies: Vec<(Done, Reply)>,
    state: Option<(StateHook, bool)>,
}

impl Effects {
    fn run(self) {
        for (done, reply) in self.replies {
            done(reply);
        }
        if let Some((hook, up)) = self.state {
            hook(up);
        }
    }
}

struct Inner {
    settings: Rc<Settings>,
    state: State,
    peer: Peer,
    /// Which of `settings.addrs` the next connection tries.
    next_addr: usize,
    out: Vec<u8>,
    input: Vec<u8>,
    parser: Parser,
    pending: VecDeque<Pending>,
    backoff: Backoff,
    /// This outage was logged already.
    outage_logged: bool,
    /// Ever connected: the next time up is a return.
    was_up: bool,
    /// The server answered `-LOADING` (it restarted and reads its data
    /// back): the link waits for it as for an outage, and the backoff goes
    /// on growing until a command gets a real answer.
    loading: bool,
    client_id: Option<i64>,
    on_state: Option<StateHook>,
    timer: Box<ngx_event_t>,
    /// The cycle's log at a level that hides nginx's own connect() and
    /// recv() errors: the link logs its outages itself, once each.
    quiet_log: Box<ngx_log_t>,
    /// The `RefCell<Inner>` this lives in (see `with_link`).
    me: *mut c_void,
}

/// One connection to Redis, reconnecting; cloning shares it.
#[derive(Clone)]
pub struct Link(Rc<RefCell<Inner>>);

impl Link {
    /// Makes the link and starts its first connection.
    pub fn new(settings: Rc<Settings>) -> Link {
        let backoff = Backoff::new(settings.backoff_first_ms, settings.backoff_max_ms);
        let limits = settings.limits;
        let link = Link(Rc::new(RefCell::new(Inner {
            settings,
            state: State::Waiting,
            peer: Peer::default(),
            next_addr: 0,
            out: Vec::new(),
            input: Vec::new(),
            parser: Parser::new(limits),
            pending: VecDeque::new(),
            backoff,
            outage_logged: false,
            was_up: false,
            loading: false,
            client_id: None,
            on_state: None,
            timer: new_timer(),
            quiet_log: quiet_log(),
            me: ptr::null_mut(),
        })));
        {
            let mut inner = link.0.borrow_mut();
            let data = Rc::as_ptr(&link.0).cast_mut().cast::<c_void>();
            let log: *mut ngx_log_t = &mut *inner.quiet_log;
            init_timer(&mut inner.timer, data, log);
            inner.me = data;
        }
        let mut effects = Effects::default();
        link.0.borrow_mut().connect(&mut effects);
        effects.run();
        link
    }

    pub fn is_up(&self) -> bool {
        self.0.borrow().state == State::Up
    }

    /// The server's id of this connection (for `CLIENT UNBLOCK`), once up.
    pub fn client_id(&self) -> Option<i64> {
        let inner = self.0.borrow();
        (inner.state == State::Up)
            .then_some(inner.client_id)
            .flatten()
    }

    /// Called with `true` each time the link comes up, `false` each time it
    /// goes down; after the callbacks of the commands that failed with it.
    pub fn on_state(&self, hook: impl Fn(bool) + 'static) {
        self.0.borrow_mut().on_state = Some(Rc::new(hook));
    }

    /// Sends a command; `done` gets its reply later (never from within
    /// this call). `Err(Down)` at once, without calling `done`, while the
    /// link is not up.
    pub fn command<A: AsRef<[u8]>>(
        &self,
        args: &[A],
        done: impl FnOnce(Reply) + 'static,
    ) -> Result<(), RedisError> {
        let timeout = self.0.borrow().settings.command_timeout_ms;
        self.command_with_timeout(args, timeout, done)
    }

    /// As [`Link::command`], with a timeout of its own (`XREAD BLOCK ms`
    /// needs `ms` more than the usual).
    pub fn command_with_timeout<A: AsRef<[u8]>>(
        &self,
        args: &[A],
        timeout_ms: u64,
        done: impl FnOnce(Reply) + 'static,
    ) -> Result<(), RedisError> {
        let mut inner = self.0.borrow_mut();
        if inner.state != State::Up {
            return Err(RedisError::Down);
        }
        if inner.out.len() > inner.settings.max_unsent {
            return Err(RedisError::Busy);
        }
        inner.queue(args, Waiting::User(Box::new(done)), timeout_ms);
        Ok(())
    }
}

impl Inner {
    /// What the events of the link carry: the `RefCell` in its `Rc`.
    fn data(&self) -> *mut c_void {
        self.me
    }

    fn queue<A: AsRef<[u8]>>(&mut self, args: &[A], waiting: Waiting, timeout_ms: u64) {
        let was_idle = self.out.is_empty();
        resp::encode(args, &mut self.out);
        let since = now_msec();
        self.pending.push_back(Pending {
            waiting,
            timeout_ms,
            since,
        });
        if self.pending.len() == 1 {
            self.arm_reply_timer();
        }
        // Sent from the write handler, so that the commands of one loop
        // iteration leave in one write.
        if was_idle {
            if let Some(c) = self.peer.connection() {
                c.post(Direction::Write);
            }
        }
    }

    fn arm_reply_timer(&self) {
        let Some(c) = self.peer.connection() else {
            return;
        };
        match self.pending.front() {
            Some(p) => {
                let due = p.since.wrapping_add(p.timeout_ms as ngx_msec_t);
                let left = due.wrapping_sub(now_msec()) as isize;
                c.add_timer(Direction::Read, left.max(1) as ngx_msec_t);
            }
            None => c.del_timer(Direction::Read),
        }
    }

    /// Starts a connection attempt.
    fn connect(&mut self, effects: &mut Effects) {
        // SAFETY: a plain read of the worker's exit flag.
        if unsafe { ngx::ffi::ngx_exiting } != 0 || self.state == State::Stopped {
            self.state = State::Stopped;
            return;
        }
        let settings = Rc::clone(&self.settings);
        if settings.addrs.is_empty() {
            self.failed("no address", effects);
            return;
        }
        let addr = &settings.addrs[self.next_addr % settings.addrs.len()];
        self.next_addr = self.next_addr.wrapping_add(1);
        let log: *mut ngx_log_t = &mut *self.quiet_log;
        match self
            .peer
            .connect(addr, &settings.name, log, self.data(), on_event)
        {
            Err(errno) => self.failed(
                &format!("connect() failed ({})", errno_text(errno)),
                effects,
            ),
            Ok(connected) => {
                self.state = State::Connecting;
                let c = self.peer.connection().expect("just connected");
                c.set_idle(true);
                if connected {
                    self.connected(effects);
                } else {
                    c.add_timer(Direction::Write, settings.connect_timeout_ms as ngx_msec_t);
                }
            }
        }
    }

    /// The TCP connection is there: the handshake commands go first.
    fn connected(&mut self, effects: &mut Effects) {
        self.state = State::Handshake;
        if let Some(c) = self.peer.connection() {
            c.del_timer(Direction::Write);
            let _ = c.tcp_nodelay();
        }
        let timeout = self.settings.connect_timeout_ms.max(1);
        if self.settings.db != 0 {
            let db = self.settings.db.to_string();
            self.queue(&["SELECT", db.as_str()], Waiting::Select, timeout);
        }
        self.queue(&["CLIENT", "ID"], Waiting::ClientId, timeout);
        self.flush(effects);
    }

    /// Handles an event of the connection.
    fn handle(&mut self, write: bool, effects: &mut Effects) {
        let Some(c) = self.peer.connection() else {
            return;
        };
        match c.take_close_request() {
            CloseRequest::None => {}
            CloseRequest::Graceful | CloseRequest::Now => {
                self.stop(effects);
                return;
            }
        }
        if self.state == State::Connecting {
            if !write {
                return;
            }
            if c.take_timedout(Direction::Write) {
                self.failed("connect timed out", effects);
                return;
            }
            match self.peer.test_connect() {
                Ok(()) => self.connected(effects),
                Err(errno) => self.failed(
                    &format!("connect() failed ({})", errno_text(errno)),
                    effects,
                ),
            }
            return;
        }
        if c.take_timedout(Direction::Read) {
            self.lost(RedisError::Timeout, "no reply in time", effects);
            return;
        }
        if c.take_timedout(Direction::Write) {
            self.lost(RedisError::Timeout, "send timed out", effects);
            return;
        }
        if write || !self.out.is_empty() {
            self.flush(effects);
            if self.peer.connection().is_none() {
                return;
            }
        }
        self.read(effects);
    }

    fn flush(&mut self, effects: &mut Effects) {
        let Some(c) = self.peer.connection() else {
            return;
        };
        let mut sent = 0;
        while sent < self.out.len() {
            match c.send(&self.out[sent..]) {
                Io::Done(n) => sent += n,
                Io::Again => break,
                Io::Eof | Io::Error => {
                    self.out.clear();
                    self.lost(RedisError::Closed, "send() failed", effects);
                    return;
                }
            }
        }
        self.out.drain(..sent);
        if self.out.is_empty() && self.out.capacity() > 256 * 1024 {
            self.out = Vec::new();
        }
        if self.out.is_empty() {
            c.del_timer(Direction::Write);
        } else {
            c.add_timer(
                Direction::Write,
                self.settings.command_timeout_ms as ngx_msec_t,
            );
        }
        if c.handle_event(Direction::Write).is_err() {
            self.lost(RedisError::Closed, "cannot wait for the socket", effects);
        }
    }

    fn read(&mut self, effects: &mut Effects) {
        loop {
            let Some(c) = self.peer.connection() else {
                return;
            };
            let have = self.input.len();
            let room = (16 * 1024).min(self.settings.limits.max_reply.max(4096));
            self.input.resize(have + room, 0);
            let io = c.recv(&mut self.input[have..]);
            let got = if let Io::Done(n) = io { n } else { 0 };
            self.input.truncate(have + got);
            match io {
                Io::Done(_) => {}
                Io::Again => break,
                Io::Eof => {
                    self.lost(RedisError::Closed, "redis closed the connection", effects);
                    return;
                }
                Io::Error => {
                    self.lost(RedisError::Closed, "recv() failed", effects);
                    return;
                }
            }
            if !self.take_replies(effects) {
                return;
            }
        }
        if let Some(c) = self.peer.connection() {
            if c.handle_event(Direction::Read).is_err() {
                self.lost(RedisError::Closed, "cannot wait for the socket", effects);
            }
        }
    }

    /// Completes the commands whose replies are in `input`; false when the
    /// connection was closed meanwhile.
    fn take_replies(&mut self, effects: &mut Effects) -> bool {
        let mut used = 0;
        let ok = loop {
            match self.parser.parse(&self.input[used..]) {
                Ok(None) => break true,
                Ok(Some((value, n))) => {
                    used += n;
                    if !self.complete(value, effects) {
                        break false;
                    }
                }
                Err(e) => {
                    self.lost(
                        RedisError::Protocol(e),
                        &format!("bad reply ({e})"),
                        effects,
                    );
                    break false;
                }
            }
        };
        if ok {
            self.input.drain(..used);
            // A large reply's buffer is not kept for the small ones.
            if self.input.is_empty() && self.input.capacity() > 256 * 1024 {
                self.input = Vec::new();
            }
            self.arm_reply_timer();
        }
        ok
    }

    fn complete(&mut self, value: Value, effects: &mut Effects) -> bool {
        let Some(pending) = self.pending.pop_front() else {
            self.lost(RedisError::Closed, "a reply to no command", effects);
            return false;
        };
        if let Some(next) = self.pending.front_mut() {
            next.since = now_msec();
        }
        match pending.waiting {
            Waiting::User(done) => {
                let loading = matches!(&value, Value::Error(e) if e.starts_with(b"LOADING"));
                effects.replies.push((done, Ok(value)));
                self.loading = loading;
                if loading {
                    self.lost(RedisError::Closed, "redis is loading its data", effects);
                    return false;
                }
            }
            Waiting::Select => {
                if let Err(e) = resp::ok(&value) {
                    self.lost(RedisError::Closed, &format!("SELECT failed: {e}"), effects);
                    return false;
                }
            }
            Waiting::ClientId => match resp::integer(&value) {
                Ok(id) => {
                    self.client_id = Some(id);
                    self.up(effects);
                }
                Err(e) => {
                    self.lost(
                        RedisError::Closed,
                        &format!("CLIENT ID failed: {e}"),
                        effects,
                    );
                    return false;
                }
            },
        }
        true
    }

    fn up(&mut self, effects: &mut Effects) {
        self.state = State::Up;
        if !self.loading {
            self.backoff.reset();
        }
        let (level, again) = if self.outage_logged {
            (NGX_LOG_NOTICE, " again")
        } else {
            (NGX_LOG_INFO, "")
        };
        if self.outage_logged || !self.was_up {
            ngx_log_error!(
                level as usize,
                cycle_log(),
                "websocket: redis {} reachable{again}",
                self.settings.name
            );
        }
        self.outage_logged = false;
        self.was_up = true;
        if let Some(hook) = &self.on_state {
            effects.state = Some((Rc::clone(hook), true));
        }
    }

    /// A connection attempt failed.
    fn failed(&mut self, why: &str, effects: &mut Effects) {
        self.lost(RedisError::Closed, why, effects);
    }

    /// Closes the connection, fails what waits on it, logs the outage
    /// (once), and schedules the next attempt.
    fn lost(&mut self, error: RedisError, why: &str, effects: &mut Effects) {
        let was_up = self.state == State::Up;
        self.close(error, effects);
        if !self.outage_logged {
            self.outage_logged = true;
            ngx_log_error!(
                NGX_LOG_ERR as usize,
                cycle_log(),
                "websocket: redis {} unreachable: {why}; retrying",
                self.settings.name
            );
        }
        if was_up {
            if let Some(hook) = &self.on_state {
                effects.state = Some((Rc::clone(hook), false));
            }
        }
        let mut random = [0u8; 4];
        let _ = crate::random::fill(&mut random);
        let delay = self.backoff.next_delay_jittered(u32::from_ne_bytes(random));
        self.state = State::Waiting;
        // SAFETY: the timer lives in this object; nothing else arms it.
        unsafe { ngx::ffi::ngx_add_timer(&mut *self.timer, delay as ngx_msec_t) };
    }

    /// The worker is exiting.
    fn stop(&mut self, effects: &mut Effects) {
        let was_up = self.state == State::Up;
        self.close(RedisError::Closed, effects);
        self.state = State::Stopped;
        if was_up {
            if let Some(hook) = &self.on_state {
                effects.state = Some((Rc::clone(hook), false));
            }
        }
    }

    fn close(&mut self, error: RedisError, effects: &mut Effects) {
        self.peer.close();
        self.out.clear();
        self.input.clear();
        self.parser.reset();
        self.client_id = None;
        for p in self.pending.drain(..) {
            if let Waiting::User(done) = p.waiting {
                effects.replies.push((done, Err(error.clone())));
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.peer.close();
        del_timer(&mut self.timer);
    }
}

/// Runs `f` on the link whose event this is, then the callbacks it left.
///
/// # Safety
/// `data` must be the `Rc<RefCell<Inner>>` pointer `Link::new` gave.
unsafe fn with_link(data: *mut c_void, f: impl FnOnce(&mut Inner, &mut Effects)) {
    let cell: *const RefCell<Inner> = data.cast_const().cast();
    // SAFETY: the events are removed (connection closed, timer deleted)
    // before the Rc's last owner drops it, so it is alive; holding a
    // strong count keeps it so while the callbacks run.
    let link = unsafe {
        Rc::increment_strong_count(cell);
        Rc::from_raw(cell)
    };
    let mut effects = Effects::default();
    if let Ok(mut inner) = link.try_borrow_mut() {
        f(&mut inner, &mut effects);
    }
    effects.run();
}

unsafe extern "C" fn on_event(ev: *mut ngx_event_t) {
    // SAFETY: `ev` belongs to a connection `Peer::connect` made with the
    // link as its data.
    unsafe {
        let write = (*ev).write() != 0;
        let c: *mut ngx_connection_t = (*ev).data.cast();
        with_link((*c).data, |inner, effects| inner.handle(write, effects));
    }
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: the timer event's data is the link (`init_timer`).
    unsafe {
        with_link((*ev).data, |inner, effects| {
            if inner.state == State::Waiting {
                inner.connect(effects);
            }
        });
    }
}

// ------------------------------------------------------------ thin wrappers

/// A peer connection made without a request: one fixed address.
#[derive(Default)]
struct Peer {
    pc: Option<Box<ngx_peer_connection_t>>,
    /// The name nginx's log lines point to.
    name: Vec<u8>,
    name_str: Option<Box<ngx_str_t>>,
}

impl Peer {
    /// Starts a non-blocking connect: `Ok(true)` connected, `Ok(false)` in
    /// progress (wait for the write event), `Err(errno)` failed.
    fn connect(
        &mut self,
        addr: &[u8],
        name: &str,
        log: *mut ngx_log_t,
        data: *mut c_void,
        handler: unsafe extern "C" fn(*mut ngx_event_t),
    ) -> Result<bool, i32> {
        self.close();
        self.name = name.as_bytes().to_vec();
        let name_str = self.name_str.insert(Box::new(ngx_str_t {
            len: self.name.len(),
            data: self.name.as_mut_ptr(),
        }));
        // SAFETY: a zeroed peer connection is nginx's initial state;
        // `sockaddr` and `name` point into this object, which outlives the
        // connection (`close` runs first).
        let pc = self.pc.insert(Box::new(unsafe { mem::zeroed() }));
        pc.sockaddr = addr.as_ptr().cast_mut().cast::<sockaddr>();
        pc.socklen = addr.len() as socklen_t;
        pc.name = &mut **name_str;
        pc.get = Some(ngx_event_get_peer);
        pc.log = log;
        pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_INFO as _);
        pc.tries = 1;
        // SAFETY: the peer connection is initialised as above.
        let rc = unsafe { ngx_event_connect_peer(&mut **pc) } as i32;
        if rc != NGX_OK as i32 && rc != NGX_AGAIN {
            // nginx closed the socket itself (NGX_DECLINED) or had none.
            pc.connection = ptr::null_mut();
            return Err(ngx::ffi::ngx_socket_errno());
        }
        let c = pc.connection;
        // SAFETY: on NGX_OK and NGX_AGAIN nginx made `c`, a live
        // connection with both events.
        unsafe {
            (*c).data = data;
            (*(*c).read).handler = Some(handler);
            (*(*c).write).handler = Some(handler);
            // Like the link's own timer: the worker may exit without
            // waiting for these.
            (*(*c).read).set_cancelable(1);
            (*(*c).write).set_cancelable(1);
        }
        Ok(rc == NGX_OK as i32)
    }

    fn connection(&self) -> Option<&ConnectionRef> {
        let c = self.pc.as_ref()?.connection;
        // SAFETY: a non-null `pc.connection` is live until `close`.
        (!c.is_null()).then(|| unsafe { ConnectionRef::from_ptr(c) })
    }

    fn test_connect(&self) -> Result<(), i32> {
        let Some(c) = self.connection() else {
            return Err(0);
        };
        let mut err: i32 = 0;
        let mut len = mem::size_of::<i32>() as socklen_t;
        // SAFETY: a valid socket and an int-sized output buffer.
        let rc = unsafe {
            getsockopt(
                c.fd(),
                SOL_SOCKET as i32,
                SO_ERROR as i32,
                ptr::addr_of_mut!(err).cast(),
                &mut len,
            )
        };
        if rc == -1 {
            err = ngx::ffi::ngx_socket_errno();
        }
        if err == 0 {
            Ok(())
        } else {
            Err(err)
        }
    }

    fn close(&mut self) {
        let Some(pc) = self.pc.as_mut() else {
            return;
        };
        let c = mem::replace(&mut pc.connection, ptr::null_mut());
        if let Some(c) = NonNull::new(c) {
            // SAFETY: `c` is live and ours; nginx deletes its timers and
            // events. It has no pool (nothing allocates from one).
            unsafe { ngx_close_connection(c.as_ptr()) };
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.close();
    }
}

fn new_timer() -> Box<ngx_event_t> {
    // SAFETY: a zeroed event is nginx's initial state for a timer.
    Box::new(unsafe { mem::zeroed() })
}

fn init_timer(ev: &mut ngx_event_t, data: *mut c_void, log: *mut ngx_log_t) {
    ev.handler = Some(on_timer);
    ev.data = data;
    ev.log = log;
    ev.set_cancelable(1);
}

fn del_timer(ev: &mut ngx_event_t) {
    if ev.timer_set() != 0 {
        // SAFETY: the event is in the worker's timer tree.
        unsafe { ngx::ffi::ngx_del_timer(ev) };
    }
}

/// A copy of the cycle's log whose level is at most [crit].
fn quiet_log() -> Box<ngx_log_t> {
    // SAFETY: the cycle's log is live; the copy shares its file and
    // `next` logs, which live as long as the cycle.
    let mut log: Box<ngx_log_t> = Box::new(unsafe { ptr::read(cycle_log()) });
    log.log_level = log.log_level.min(NGX_LOG_CRIT as usize);
    log.action = ptr::null_mut();
    log.handler = None;
    log.data = ptr::null_mut();
    log
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// The socket addresses of `url`'s host, resolved when the configuration
/// loads (as `proxy_pass host:port` resolves), for [`Settings::addrs`].
///
/// # Safety
/// `cf` must be the configuration nginx is parsing.
pub unsafe fn resolve(
    cf: *mut ngx::ffi::ngx_conf_t,
    url: &super::url::RedisUrl,
) -> Result<Vec<Vec<u8>>, String> {
    let authority = url.authority();
    // SAFETY: the URL text is copied into the configuration pool, which
    // also receives the addresses; they are copied out before returning.
    unsafe {
        let mut u: ngx::ffi::ngx_url_t = mem::zeroed();
        u.url = ngx_str_t::from_bytes((*cf).pool, authority.as_bytes())
            .ok_or_else(|| String::from("out of memory"))?;
        u.default_port = super::url::DEFAULT_PORT;
        if ngx::ffi::ngx_parse_url((*cf).pool, &mut u) != NGX_OK as ngx::ffi::ngx_int_t {
            let why = if u.err.is_null() {
                String::from("cannot resolve it")
            } else {
                core::ffi::CStr::from_ptr(u.err)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("redis host \"{}\": {why}", url.host));
        }
        if u.addrs.is_null() || u.naddrs == 0 {
            return Err(format!("redis host \"{}\" has no address", url.host));
        }
        let addrs = core::slice::from_raw_parts(u.addrs, u.naddrs);
        Ok(addrs
            .iter()
            .map(|a| {
                core::slice::from_raw_parts(a.sockaddr.cast::<u8>(), a.socklen as usize).to_vec()
            })
            .collect())
    }
}
