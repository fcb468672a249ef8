//! Outgoing connections through nginx's balancers: an `upstream {}` block
//! (or the implicit one nginx makes for `host:port`) picks the peer,
//! `ngx_event_connect_peer` connects without blocking, and the balancer
//! hears whether the peer worked.

use core::ffi::c_void;
use core::mem;
use core::ptr::{self, NonNull};

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    getsockopt, ngx_addr_t, ngx_close_connection, ngx_connection_t, ngx_create_pool,
    ngx_destroy_pool, ngx_event_connect_peer, ngx_event_t, ngx_http_request_t,
    ngx_http_upstream_create_round_robin_peer, ngx_http_upstream_main_conf_t,
    ngx_http_upstream_resolved_t, ngx_http_upstream_srv_conf_t, ngx_http_upstream_t, ngx_int_t,
    ngx_parse_addr_port, ngx_pcalloc, ngx_peer_connection_t, ngx_str_t, socklen_t, NGX_AGAIN,
    NGX_BUSY, NGX_DECLINED, NGX_LOG_ERR, NGX_OK, NGX_PEER_FAILED, SOL_SOCKET, SO_ERROR,
};

use crate::ngx_io::{ConnectionRef, NgxError, RequestRef};
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

/// The peer connection of one request, with the balancer state in the
/// request's `upstream` object (which nginx's balancers expect there).
pub struct UpstreamPeer {
    u: NonNull<ngx_http_upstream_t>,
}

impl UpstreamPeer {
    /// Prepares the balancer of `source` for `r`.
    pub fn new(r: &mut RequestRef, source: &PeerSource) -> Result<Self, NgxError> {
        let r = r.as_ptr();
        // SAFETY: `r` is live; the upstream object is zeroed pool memory, as
        // nginx's own ngx_http_upstream_create makes it, and lives as long as
        // the request. Balancer init functions only touch `r->upstream->peer`;
        // the resolved address lives in the request pool too.
        unsafe {
            let pool = (*r).pool;
            let u: *mut ngx_http_upstream_t =
                ngx_pcalloc(pool, mem::size_of::<ngx_http_upstream_t>()).cast();
            let u = NonNull::new(u).ok_or(NgxError("ngx_pcalloc"))?;
            (*r).upstream = u.as_ptr();
            let pc = &mut (*u.as_ptr()).peer;
            pc.log = (*(*r).connection).log;
            pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_ERR as _);
            match source {
                PeerSource::Upstream(uscf) => {
                    let init = (*uscf.as_ptr())
                        .peer
                        .init
                        .ok_or(NgxError("upstream peer init"))?;
                    if init(r, uscf.as_ptr()) != NGX_OK as ngx_int_t {
                        return Err(NgxError("upstream peer init"));
                    }
                }
                PeerSource::Address(addr) => {
                    let mut ur: ngx_http_upstream_resolved_t = mem::zeroed();
                    ur.sockaddr = addr.sockaddr;
                    ur.socklen = addr.socklen;
                    ur.name = addr.name;
                    ur.host = addr.name;
                    ur.naddrs = 1;
                    round_robin(r, ur)?;
                }
                PeerSource::Resolved { addrs, port } => {
                    let mut ur: ngx_http_upstream_resolved_t = mem::zeroed();
                    ur.host = addrs.host;
                    ur.addrs = addrs.addrs;
                    ur.naddrs = addrs.naddrs;
                    ur.port = *port;
                    round_robin(r, ur)?;
                }
            }
            Ok(UpstreamPeer { u })
        }
    }

    fn pc(&self) -> &ngx_peer_connection_t {
        // SAFETY: the upstream object lives in the request pool and only this
        // peer touches its `peer` field.
        unsafe { &(*self.u.as_ptr()).peer }
    }

    fn pc_mut(&mut self) -> &mut ngx_peer_connection_t {
        // SAFETY: as in `pc`, and `&mut self` makes the access exclusive.
        unsafe { &mut (*self.u.as_ptr()).peer }
    }

    /// Starts a connection to the next peer the balancer picks. The new
    /// connection gets `data` and the two handlers.
    pub fn connect(&mut self, data: *mut c_void, handler: EventHandler) -> Connect {
        let pc = self.pc_mut();
        // SAFETY: the peer connection was initialised by the balancer.
        let rc = unsafe { ngx_event_connect_peer(pc) } as i32;
        match rc {
            NGX_BUSY => return Connect::NoLivePeers,
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

    /// Tells the balancer this peer failed and closes its connection.
    pub fn fail(&mut self) {
        self.release(NGX_PEER_FAILED as usize);
    }

    /// Tells the balancer the peer worked and closes the connection.
    pub fn finish(&mut self) {
        self.release(0);
    }

    fn release(&mut self, state: usize) {
        let pc = self.pc_mut();
        if let Some(free) = pc.free {
            // SAFETY: `free` is the balancer's, with its own data.
            unsafe { free(pc, pc.data, state as _) };
            pc.free = None;
        }
        self.close();
    }

    /// Closes the connection, if any, without telling the balancer.
    pub fn close(&mut self) {
        let pc = self.pc_mut();
        let c: *mut ngx_connection_t = pc.connection;
        pc.connection = ptr::null_mut();
        if let Some(c) = NonNull::new(c) {
            close_connection(c);
        }
    }

    /// The handshake succeeded: the balancer hears that the peer worked, and
    /// the connection leaves the request's balancer state, so that it can
    /// outlive the request (in a keepalive pool).
    pub fn into_conn(mut self) -> Option<UpstreamConn> {
        let name = self.name();
        let pc = self.pc_mut();
        if let Some(free) = pc.free {
            // SAFETY: `free` is the balancer's, with its own data.
            unsafe { free(pc, pc.data, 0) };
            pc.free = None;
        }
        let c = NonNull::new(pc.connection)?;
        pc.connection = ptr::null_mut();
        Some(UpstreamConn { c, name })
    }
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

impl Drop for UpstreamPeer {
    fn drop(&mut self) {
        if self.connection().is_some() {
            ngx::ngx_log_error!(
                NGX_LOG_ERR,
                self.pc().log,
                "websocket: upstream connection left open"
            );
            self.close();
        }
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
