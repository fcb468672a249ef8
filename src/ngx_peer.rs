//! Outgoing connections through nginx's balancers: an `upstream {}` block
//! (or the implicit one nginx makes for `host:port`) picks the peer,
//! `ngx_event_connect_peer` connects without blocking, and the balancer
//! hears whether the peer worked.

use core::ffi::c_void;
use core::mem;
use core::ptr::{self, NonNull};

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    getsockopt, ngx_close_connection, ngx_connection_t, ngx_create_pool, ngx_destroy_pool,
    ngx_event_connect_peer, ngx_event_t, ngx_http_request_t, ngx_http_upstream_srv_conf_t,
    ngx_http_upstream_t, ngx_int_t, ngx_pcalloc, ngx_peer_connection_t, socklen_t, NGX_AGAIN,
    NGX_BUSY, NGX_DECLINED, NGX_LOG_ERR, NGX_OK, NGX_PEER_FAILED, SOL_SOCKET, SO_ERROR,
};

use crate::ngx_io::{ConnectionRef, NgxError, RequestRef};

/// An event handler of an upstream connection.
pub type EventHandler = unsafe extern "C" fn(*mut ngx_event_t);

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
    /// Prepares `uscf`'s balancer for `r`.
    pub fn new(
        r: &mut RequestRef,
        uscf: NonNull<ngx_http_upstream_srv_conf_t>,
    ) -> Result<Self, NgxError> {
        let r = r.as_ptr();
        // SAFETY: `r` is live; the upstream object is zeroed pool memory, as
        // nginx's own ngx_http_upstream_create makes it, and lives as long as
        // the request. Balancer init functions only touch `r->upstream->peer`.
        unsafe {
            let u: *mut ngx_http_upstream_t =
                ngx_pcalloc((*r).pool, mem::size_of::<ngx_http_upstream_t>()).cast();
            let u = NonNull::new(u).ok_or(NgxError("ngx_pcalloc"))?;
            (*r).upstream = u.as_ptr();
            let pc = &mut (*u.as_ptr()).peer;
            pc.log = (*(*r).connection).log;
            pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_ERR as _);
            let init = (*uscf.as_ptr())
                .peer
                .init
                .ok_or(NgxError("upstream peer init"))?;
            if init(r, uscf.as_ptr()) != NGX_OK as ngx_int_t {
                return Err(NgxError("upstream peer init"));
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
        if c.is_null() {
            return;
        }
        pc.connection = ptr::null_mut();
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
