//! Outgoing connections through nginx's balancers: an `upstream {}` block
//! (or the implicit one nginx makes for `host:port`) picks the peer,
//! `ngx_event_connect_peer` connects without blocking, and the balancer
//! hears whether the peer worked.

use core::ffi::c_void;
use core::mem;
use core::ptr::{self, NonNull};
use std::rc::Rc;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    getsockopt, ngx_addr_t, ngx_close_connection, ngx_connection_t, ngx_create_pool,
    ngx_destroy_pool, ngx_event_connect_peer, ngx_event_t, ngx_http_request_t,
    ngx_http_upstream_create_round_robin_peer, ngx_http_upstream_main_conf_t,
    ngx_http_upstream_resolved_t, ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_int_t,
    ngx_palloc, ngx_parse_addr_port, ngx_pcalloc, ngx_peer_connection_t, ngx_pool_cleanup_add,
    ngx_pool_t, ngx_str_t, socklen_t, NGX_AGAIN, NGX_BUSY, NGX_DECLINED, NGX_LOG_ERR, NGX_OK,
    NGX_PEER_FAILED, SOL_SOCKET, SO_ERROR,
};

use crate::ngx_io::{cycle_log, ConnectionRef, NgxError, RequestRef};
use crate::ngx_resolve::Addresses;

/// An event handler of an upstream connection.
pub type EventHandler = unsafe extern "C" fn(*mut ngx_event_t);

/// Where the peers of a connection come from.
pub enum PeerSource {
    /// An `upstream {}` block, named or implicit.
    Upstream(NonNull<ngx_http_upstream_srv_conf_t>),
    /// One address, known only at run time (a URL with variables).
    Address(ngx_addr_t),
    /// The addresses a host name resolved to, and the port to use.
    Resolved { addrs: Addresses, port: u16 },
}

impl PeerSource {
    /// An `ip:port` or `[ipv6]:port` literal, parsed without any name
    /// resolution; `None` for a host name.
    pub fn literal(r: &RequestRef, host_port: &str) -> Option<PeerSource> {
        // SAFETY: `r` is live; nginx copies the text into the request pool.
        unsafe {
            let pool = (*r.as_ptr()).pool;
            let text = ngx_str_t::from_bytes(pool, host_port.as_bytes())?;
            let mut addr: ngx_addr_t = mem::zeroed();
            if ngx_parse_addr_port(pool, &mut addr, text.data, text.len) != NGX_OK as ngx_int_t {
                return None;
            }
            addr.name = text;
            Some(PeerSource::Address(addr))
        }
    }

    /// The `upstream {}` block defined with this name (and this port, when
    /// the block was declared with one), as `proxy_pass` with variables
    /// finds it.
    pub fn named(r: &RequestRef, host: &str, port: Option<u16>) -> Option<PeerSource> {
        // SAFETY: the upstream module's main conf exists in every http
        // block; its `upstreams` array holds pointers to live block confs.
        unsafe {
            let module = &*ptr::addr_of!(ngx::ffi::ngx_http_upstream_module);
            let umcf: *mut ngx_http_upstream_main_conf_t =
                (*(*r.as_ptr()).main_conf.add(module.ctx_index)).cast();
            let blocks: &[*mut ngx_http_upstream_srv_conf_t] = (*umcf).upstreams.as_slice();
            blocks.iter().copied().find_map(|uscf| {
                let u = &*uscf;
                let same_port = match port {
                    None => u.port == 0,
                    Some(p) => u.port == 0 || u.port == p,
                };
                let name_matches = u.host.as_bytes().eq_ignore_ascii_case(host.as_bytes());
                // Implicit blocks (made for a `host:port` elsewhere) have no
                // `servers` list of their own to pick from at run time.
                (name_matches && same_port && !u.servers.is_null())
                    .then(|| PeerSource::Upstream(NonNull::new_unchecked(uscf)))
            })
        }
    }
}

impl PeerSource {
    /// The implicit `upstream {}` block nginx made when the configuration
    /// loaded for `host:port` (a `websocket_pass` or `proxy_pass` with that
    /// address), its names resolved then.
    pub fn implicit(r: &RequestRef, host: &str, port: u16) -> Option<PeerSource> {
        // SAFETY: as in `named`.
        unsafe {
            let module = &*ptr::addr_of!(ngx::ffi::ngx_http_upstream_module);
            let umcf: *mut ngx_http_upstream_main_conf_t =
                (*(*r.as_ptr()).main_conf.add(module.ctx_index)).cast();
            let blocks: &[*mut ngx_http_upstream_srv_conf_t] = (*umcf).upstreams.as_slice();
            blocks.iter().copied().find_map(|uscf| {
                let u = &*uscf;
                let same = u.port == port && u.host.as_bytes().eq_ignore_ascii_case(host.as_bytes());
                (same && u.flags == 0).then(|| PeerSource::Upstream(NonNull::new_unchecked(uscf)))
            })
        }
    }
}

/// What one connect attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    Connected,
    /// Wait for the write event, then call [`UpstreamPeer::test_connect`].
    InProgress,
    /// This peer refused at once; [`UpstreamPeer::fail`] and try the next.
    Declined,
    /// The balancer has no live peer left.
    NoLivePeers,
    Error,
}

/// What asking the balancer for a peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Picked,
    /// The balancer has no live peer left.
    NoLivePeers,
    Error,
}

/// Memory that a request's balancer state lives in: what the balancer
/// allocates for the request, and the peer connection once the session
/// holds it without its request. nginx keeps that state in the request
/// pool, but a session outlives its request with `access_log off`, and the
/// balancer must hear of the session's end; so it gets a pool of its own,
/// destroyed when both the request and the balancer state are done with it.
struct BalancerMemory {
    pool: NonNull<ngx_pool_t>,
}

impl Drop for BalancerMemory {
    fn drop(&mut self) {
        // SAFETY: the pool was made by `UpstreamPeer::new`; every pointer
        // into it belongs to the request or the balancer state, both gone.
        unsafe { ngx_destroy_pool(self.pool.as_ptr()) };
    }
}

/// Drops the request's share of its balancer memory (a request pool
/// cleanup).
pub(crate) unsafe extern "C" fn release_balancer_memory(data: *mut c_void) {
    // SAFETY: `data` holds the pointer `UpstreamPeer::new` leaked from its
    // `Rc`; each cleanup runs once.
    unsafe {
        let memory: *const BalancerMemory = *data.cast::<*const BalancerMemory>();
        drop(Rc::from_raw(memory));
    }
}

/// A request's balancer state: while it holds a peer (from the balancer's
/// `get` to its `free`), the balancer counts that peer busy. Dropping it
/// closes a connection still being set up and frees the peer as done, as
/// nginx's ngx_http_upstream_finalize_request does.
struct Balancer {
    /// `r->upstream->peer` while the request lives, then a copy of it in
    /// the balancer memory (see `outlive_request`).
    pc: NonNull<ngx_peer_connection_t>,
    memory: Rc<BalancerMemory>,
}

impl Balancer {
    fn pc(&self) -> &ngx_peer_connection_t {
        // SAFETY: `pc` lives in the request (used only while it lives) or
        // in the balancer memory, which this object keeps; only its owner
        // touches it.
        unsafe { self.pc.as_ref() }
    }

    fn pc_mut(&mut self) -> &mut ngx_peer_connection_t {
        // SAFETY: as in `pc`, and `&mut self` makes the access exclusive.
        unsafe { self.pc.as_mut() }
    }

    /// Moves the peer connection out of the request's `upstream` object
    /// (into the balancer memory), so that the balancer can be told of the
    /// peer after the request was freed. `r->upstream->peer` keeps its
    /// name, for the request's log lines.
    fn outlive_request(mut self) -> Result<Balancer, NgxError> {
        let size = mem::size_of::<ngx_peer_connection_t>();
        // SAFETY: the pool is live while `memory` is; the copy is plain
        // data, written in full before use.
        unsafe {
            let copy: *mut ngx_peer_connection_t =
                ngx_palloc(self.memory.pool.as_ptr(), size).cast();
            let copy = NonNull::new(copy).ok_or(NgxError("ngx_palloc"))?;
            ptr::copy_nonoverlapping(self.pc.as_ptr(), copy.as_ptr(), 1);
            // The request's copy must not close or free anything again.
            self.pc_mut().connection = ptr::null_mut();
            self.pc_mut().sockaddr = ptr::null_mut();
            self.pc = copy;
        }
        Ok(self)
    }

    /// Whether the balancer picked a peer that it was not told about yet
    /// (nginx marks that with `sockaddr`, as here).
    fn holds_peer(&self) -> bool {
        !self.pc().sockaddr.is_null()
    }

    fn pick(&mut self) -> Pick {
        if self.holds_peer() {
            return Pick::Picked;
        }
        let pc = self.pc_mut();
        let Some(get) = pc.get else {
            return Pick::Error;
        };
        // SAFETY: `get` is the balancer's, with its own data.
        match unsafe { get(pc, pc.data) } as i32 {
            rc if rc == NGX_OK as i32 => Pick::Picked,
            NGX_BUSY => Pick::NoLivePeers,
            _ => Pick::Error,
        }
    }

    /// Tells the balancer how its peer did, once.
    fn free(&mut self, state: u32) {
        if !self.holds_peer() {
            return;
        }
        let pc = self.pc_mut();
        if let Some(free) = pc.free {
            // SAFETY: `free` is the balancer's, with its own data. The
            // connection is not in `pc` (nginx's keepalive balancer would
            // otherwise try to cache it).
            unsafe { free(pc, pc.data, state as _) };
        }
        pc.sockaddr = ptr::null_mut();
    }

    /// Closes the connection being set up, if any.
    fn close(&mut self) {
        let pc = self.pc_mut();
        let c: *mut ngx_connection_t = pc.connection;
        pc.connection = ptr::null_mut();
        if let Some(c) = NonNull::new(c) {
            close_connection(c);
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if !self.pc().connection.is_null() {
            ngx::ngx_log_error!(
                NGX_LOG_ERR,
                self.pc().log,
                "websocket: upstream connection left open"
            );
            self.close();
        }
        self.free(0);
    }
}

/// Stands in for the balancer's `get` in `ngx_event_connect_peer` when the
/// peer was picked before (to look for a pooled connection to it first).
unsafe extern "C" fn already_picked(
    _pc: *mut ngx_peer_connection_t,
    _data: *mut c_void,
) -> ngx_int_t {
    NGX_OK as ngx_int_t
}

/// The peer connection of one request, with the balancer state in the
/// request's `upstream` object (which nginx's balancers expect there).
pub struct UpstreamPeer {
    balancer: Balancer,
}

impl UpstreamPeer {
    /// Prepares the balancer of `source` for `r`.
    pub fn new(r: &mut RequestRef, source: &PeerSource) -> Result<Self, NgxError> {
        let r = r.as_ptr();
        let memory = balancer_memory(r)?;
        // SAFETY: `r` is live; the upstream object is zeroed pool memory, as
        // nginx's own ngx_http_upstream_create makes it, and lives as long as
        // the request. Balancer init functions allocate their state from
        // `r->pool`: for their call it is the balancer memory, so that the
        // state lasts as long as the balancer needs it.
        unsafe {
            let u: *mut ngx_http_upstream_t =
                ngx_pcalloc((*r).pool, mem::size_of::<ngx_http_upstream_t>()).cast();
            let u = NonNull::new(u).ok_or(NgxError("ngx_pcalloc"))?;
            (*r).upstream = u.as_ptr();
            let pc = &mut (*u.as_ptr()).peer;
            pc.log = (*(*r).connection).log;
            pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_ERR as _);
            let request_pool = mem::replace(&mut (*r).pool, memory.pool.as_ptr());
            let ready = init_balancer(r, source);
            (*r).pool = request_pool;
            ready?;
            Ok(UpstreamPeer {
                balancer: Balancer {
                    pc: NonNull::from(&mut (*u.as_ptr()).peer),
                    memory,
                },
            })
        }
    }

    fn pc(&self) -> &ngx_peer_connection_t {
        self.balancer.pc()
    }

    /// Asks the balancer for a peer, unless it picked one already.
    pub fn pick(&mut self) -> Pick {
        self.balancer.pick()
    }

    /// The address of the peer the balancer picked (empty before).
    pub fn address(&self) -> &[u8] {
        sockaddr_bytes(self.pc())
    }

    /// Starts a connection to the peer the balancer picked (picking one
    /// first if needed). The new connection gets `data` and the handler.
    pub fn connect(&mut self, data: *mut c_void, handler: EventHandler) -> Connect {
        match self.balancer.pick() {
            Pick::Picked => {}
            Pick::NoLivePeers => return Connect::NoLivePeers,
            Pick::Error => return Connect::Error,
        }
        let pc = self.balancer.pc_mut();
        let get = pc.get.replace(already_picked);
        // SAFETY: the peer connection was initialised by the balancer,
        // which picked its peer.
        let rc = unsafe { ngx_event_connect_peer(pc) } as i32;
        pc.get = get;
        match rc {
            NGX_DECLINED => return Connect::Declined,
            rc if rc != NGX_OK as i32 && rc != NGX_AGAIN => return Connect::Error,
            _ => {}
        }
        let c = pc.connection;
        // SAFETY: on NGX_OK and NGX_AGAIN nginx made `c`, a live connection
        // with both events; the pool is what TLS and the log need.
        unsafe {
            (*c).data = data;
            (*(*c).read).handler = Some(handler);
            (*(*c).write).handler = Some(handler);
            (*c).pool = ngx_create_pool(512, pc.log);
            if (*c).pool.is_null() {
                return Connect::Error;
            }
        }
        if rc == NGX_OK as i32 {
            Connect::Connected
        } else {
            Connect::InProgress
        }
    }

    /// The connection being set up or in use.
    pub fn connection(&self) -> Option<&ConnectionRef> {
        let c = self.pc().connection;
        // SAFETY: a non-null `pc.connection` is live until `close`.
        (!c.is_null()).then(|| unsafe { ConnectionRef::from_ptr(c) })
    }

    /// The chosen peer's address, for logs.
    pub fn name(&self) -> String {
        let name = self.pc().name;
        if name.is_null() {
            return String::from("-");
        }
        // SAFETY: balancers point `name` at a string that outlives the request.
        String::from_utf8_lossy(unsafe { (*name).as_bytes() }).into_owned()
    }

    /// After a non-blocking connect: `Err(errno)` if it failed.
    pub fn test_connect(&self) -> Result<(), i32> {
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

    /// Whether the balancer allows another attempt.
    pub fn tries_left(&self) -> bool {
        self.pc().tries > 0
    }

    /// Closes the connection, if any, and tells the balancer the peer
    /// failed (nginx's `max_fails` counts it).
    pub fn fail(&mut self) {
        self.balancer.close();
        self.balancer.free(NGX_PEER_FAILED);
    }

    /// Closes the connection, if any, without telling the balancer.
    pub fn close(&mut self) {
        self.balancer.close();
    }

    /// The handshake succeeded: the connection leaves the request's peer
    /// state, so that it can outlive the request, and takes the balancer
    /// state along: the balancer counts the peer busy until the connection
    /// closes or goes idle into a keepalive pool.
    pub fn into_conn(self) -> Option<UpstreamConn> {
        let name = self.name();
        let address = self.address().to_vec();
        let UpstreamPeer { mut balancer } = self;
        let pc = balancer.pc_mut();
        let c = NonNull::new(pc.connection)?;
        pc.connection = ptr::null_mut();
        let mut conn = UpstreamConn {
            c,
            name,
            address,
            balancer: None,
        };
        // Without its balancer state the connection closes.
        conn.balancer = Some(balancer.outlive_request().ok()?);
        Some(conn)
    }

    /// A pooled connection to the picked peer serves this session: it takes
    /// the balancer state along, as a new connection would.
    pub fn reuse(self, mut conn: UpstreamConn) -> Option<UpstreamConn> {
        conn.balancer = Some(self.balancer.outlive_request().ok()?);
        Some(conn)
    }
}

/// Room for what a balancer allocates per request (nginx's own need less
/// than 200 bytes over an `upstream {}` block); more comes from the heap.
const BALANCER_STATE_SIZE: usize = 256;

/// A request's balancer memory, held by the request (a request pool
/// cleanup drops its share) and by the returned `Rc`.
fn balancer_memory(r: *mut ngx_http_request_t) -> Result<Rc<BalancerMemory>, NgxError> {
    let size = mem::size_of::<ngx_pool_t>()
        + mem::size_of::<ngx_peer_connection_t>()
        + BALANCER_STATE_SIZE;
    // SAFETY: `r` is live; the cleanup's data is a pointer-sized slot.
    unsafe {
        let pool =
            NonNull::new(ngx_create_pool(size, cycle_log())).ok_or(NgxError("ngx_create_pool"))?;
        let memory = Rc::new(BalancerMemory { pool });
        let cln = ngx_pool_cleanup_add((*r).pool, mem::size_of::<*const BalancerMemory>());
        if cln.is_null() {
            return Err(NgxError("ngx_pool_cleanup_add"));
        }
        let share = Rc::into_raw(Rc::clone(&memory));
        (*cln).data.cast::<*const BalancerMemory>().write(share);
        (*cln).handler = Some(release_balancer_memory);
        Ok(memory)
    }
}

/// Runs the init function of `source`'s balancer for `r`.
///
/// # Safety
/// `r` must be a live request whose `upstream` object is set.
unsafe fn init_balancer(r: *mut ngx_http_request_t, source: &PeerSource) -> Result<(), NgxError> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match source {
            PeerSource::Upstream(uscf) => {
                let init = (*uscf.as_ptr())
                    .peer
                    .init
                    .ok_or(NgxError("upstream peer init"))?;
                if init(r, uscf.as_ptr()) != NGX_OK as ngx_int_t {
                    return Err(NgxError("upstream peer init"));
                }
                Ok(())
            }
            PeerSource::Address(addr) => {
                let mut ur: ngx_http_upstream_resolved_t = mem::zeroed();
                ur.sockaddr = addr.sockaddr;
                ur.socklen = addr.socklen;
                ur.name = addr.name;
                ur.host = addr.name;
                ur.naddrs = 1;
                round_robin(r, ur)
            }
            PeerSource::Resolved { addrs, port } => {
                let mut ur: ngx_http_upstream_resolved_t = mem::zeroed();
                ur.host = addrs.host;
                ur.addrs = addrs.addrs;
                ur.naddrs = addrs.naddrs;
                ur.port = *port;
                round_robin(r, ur)
            }
        }
    }
}

/// The bytes of the peer address in `pc` (empty when none was picked).
fn sockaddr_bytes(pc: &ngx_peer_connection_t) -> &[u8] {
    if pc.sockaddr.is_null() {
        return &[];
    }
    // SAFETY: balancers point `sockaddr` at `socklen` bytes that live as
    // long as their state.
    unsafe { core::slice::from_raw_parts(pc.sockaddr.cast::<u8>(), pc.socklen as usize) }
}

/// A one-request round-robin balancer over run-time addresses, as
/// `proxy_pass` with variables makes one. `ur` is copied into the request
/// pool, since the balancer keeps pointing into it.
///
/// # Safety
/// `r` must be a live request whose `upstream` object is set.
unsafe fn round_robin(
    r: *mut ngx_http_request_t,
    ur: ngx_http_upstream_resolved_t,
) -> Result<(), NgxError> {
    // SAFETY: guaranteed by the caller; the copy lives as long as the request.
    unsafe {
        let p: *mut ngx_http_upstream_resolved_t =
            ngx_pcalloc((*r).pool, mem::size_of::<ngx_http_upstream_resolved_t>()).cast();
        if p.is_null() {
            return Err(NgxError("ngx_pcalloc"));
        }
        p.write(ur);
        if ngx_http_upstream_create_round_robin_peer(r, p) != NGX_OK as ngx_int_t {
            return Err(NgxError("ngx_http_upstream_create_round_robin_peer"));
        }
    }
    Ok(())
}

/// Closes an upstream connection made by [`UpstreamPeer::connect`].
fn close_connection(c: NonNull<ngx_connection_t>) {
    let c = c.as_ptr();
    // SAFETY: `c` is live and ours; its pool was made in `connect`.
    unsafe {
        if !(*c).ssl.is_null() {
            // Send close_notify without waiting for the peer's.
            (*(*c).ssl).set_no_wait_shutdown(1);
            ngx::ffi::ngx_ssl_shutdown(c);
        }
        let pool = (*c).pool;
        ngx_close_connection(c);
        if !pool.is_null() {
            ngx_destroy_pool(pool);
        }
    }
}

/// An established upstream connection, owned: dropping it closes it.
pub struct UpstreamConn {
    c: NonNull<ngx_connection_t>,
    name: String,
    /// The peer's socket address, as the balancer gave it.
    address: Vec<u8>,
    /// The balancer state of the session using the connection (none while
    /// it is idle in a pool); dropped after the connection closes, which
    /// tells the balancer the peer is done.
    balancer: Option<Balancer>,
}

impl UpstreamConn {
    pub fn connection(&self) -> &ConnectionRef {
        // SAFETY: the connection is live while this object owns it.
        unsafe { ConnectionRef::from_ptr(self.c.as_ptr()) }
    }

    /// The peer's address, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The peer's socket address, to match the balancer's pick.
    pub fn address(&self) -> &[u8] {
        &self.address
    }

    /// The connection is no longer in use (it goes idle into a keepalive
    /// pool): the balancer hears that the session is done with its peer, as
    /// nginx's keepalive module tells it when it caches a connection.
    pub fn release_peer(&mut self) {
        self.balancer = None;
    }

    /// Hands the connection's events to `handler` with `data`, logging to
    /// `log` (a request's, or the cycle's while pooled).
    pub fn attach(&self, data: *mut c_void, handler: EventHandler, log: *mut ngx::ffi::ngx_log_t) {
        let c = self.c.as_ptr();
        // SAFETY: a live connection with both events and a pool.
        unsafe {
            (*c).data = data;
            (*c).log = log;
            (*(*c).read).log = log;
            (*(*c).write).log = log;
            (*(*c).pool).log = log;
            (*(*c).read).handler = Some(handler);
            (*(*c).write).handler = Some(handler);
        }
    }

    /// Marks the connection idle, so that a worker that exits closes it
    /// through its read handler with `close` set.
    pub fn set_idle(&self, idle: bool) {
        // SAFETY: a live connection.
        unsafe { (*self.c.as_ptr()).set_idle(idle as u32) }
    }

    /// Whether nginx asked the connection to close (worker exiting).
    pub fn close_requested(&self) -> bool {
        // SAFETY: a live connection.
        unsafe { (*self.c.as_ptr()).close() != 0 }
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        close_connection(self.c);
    }
}

/// Gives the connection's events back to `handler` (nginx's TLS handshake
/// borrows them).
pub fn set_handlers(c: &ConnectionRef, handler: EventHandler) {
    let c = c.as_ptr();
    // SAFETY: a live connection with both events.
    unsafe {
        (*(*c).read).handler = Some(handler);
        (*(*c).write).handler = Some(handler);
    }
}

/// The write event of a connection, to call its handler directly.
pub fn write_event(c: &ConnectionRef) -> *mut ngx_event_t {
    // SAFETY: a live connection has a write event.
    unsafe { (*c.as_ptr()).write }
}

/// The request whose upstream connection an event belongs to.
///
/// # Safety
/// `ev` must be an event of a connection set up by [`UpstreamPeer::connect`]
/// with the request as its data.
pub unsafe fn request_of(ev: *mut ngx_event_t) -> *mut ngx_http_request_t {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let c: *mut ngx_connection_t = (*ev).data.cast();
        (*c).data.cast()
    }
}
