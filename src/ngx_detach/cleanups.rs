//! The cleanups of a request that must outlive it when its session drops
//! it: they are taken off the request before it is freed, with copies of
//! their data (which lives in the request pool), and run once when the
//! session's connection closes.
//!
//! nginx 1.28's own HTTP modules register these on the request pool
//! (`ngx_pool_cleanup_add(r->pool)`) or as request cleanups
//! (`ngx_http_cleanup_add`, on `r->main->cleanup`):
//! - limit_conn (preaccess): releases the connection count. Carried.
//! - realip (post-read/preaccess): puts the connection's own address back.
//!   Carried, with the real client's address (parsed into the request pool)
//!   copied to the connection pool, so the session's error-log lines keep
//!   naming the client as they do with the request.
//! - upstream (`ngx_http_cleanup_add`): a subrequest's upstream (auth_request,
//!   mirror); nginx clears its handler when the subrequest finishes. One
//!   still set (a mirror in flight) keeps the request.
//! - open file and open_file_cache (`ngx_open_cached_file`: try_files, `if
//!   -f`, static, index, log paths with variables), temp files (request
//!   bodies, proxy buffering), the file cache (proxy_cache in a subrequest),
//!   xslt and image_filter buffers: resource releases that nothing counts;
//!   the request is kept whenever one is registered (not in the usual case:
//!   try_files and `if -f` only stat without a file cache, and an upgraded
//!   GET has no body).
//! - HTTP/2 and HTTP/3 stream cleanups: a WebSocket upgrade is HTTP/1.1 only.
//!
//! Any other cleanup with a handler (another module's) keeps the request,
//! so nothing is lost or run early.

use core::ffi::{c_void, CStr};
use core::ptr;

use ngx::ffi::{
    ngx_connection_t, ngx_cycle, ngx_http_request_t, ngx_module_t, ngx_palloc, ngx_pool_cleanup_t,
    ngx_shm_zone_t, ngx_str_t, sockaddr, socklen_t,
};

/// A cleanup handler as nginx stores it.
pub type Handler = unsafe extern "C" fn(*mut c_void);

/// `ngx_http_limit_conn_cleanup_t`: the zone and the node whose count the
/// request holds; both in shared memory.
#[repr(C)]
#[derive(Clone, Copy)]
struct LimitConnCleanup {
    shm_zone: *mut ngx_shm_zone_t,
    node: *mut c_void,
}

/// `ngx_http_realip_ctx_t`: the connection and its own address, from the
/// connection pool (or the listening socket).
#[repr(C)]
#[derive(Clone, Copy)]
struct RealipCtx {
    connection: *mut ngx_connection_t,
    sockaddr: *mut sockaddr,
    socklen: socklen_t,
    addr_text: ngx_str_t,
}

/// The copy of a carried cleanup's data, in the layout its handler reads.
enum Data {
    LimitConn(LimitConnCleanup),
    Realip(RealipCtx),
}

impl Data {
    fn as_mut_ptr(&mut self) -> *mut c_void {
        match self {
            Data::LimitConn(d) => ptr::from_mut(d).cast(),
            Data::Realip(d) => ptr::from_mut(d).cast(),
        }
    }
}

struct Cleanup {
    handler: Handler,
    data: Data,
}

/// Cleanups taken from a freed request; they run, in the order nginx would
/// have run them, when this is dropped (once the session and its connection
/// are done with them).
#[derive(Default)]
pub struct Carried(Box<[Cleanup]>);

impl Drop for Carried {
    fn drop(&mut self) {
        for cleanup in self.0.iter_mut() {
            // SAFETY: the handler nginx registered, with a copy of the data it
            // was registered with; what the data points to outlives the
            // connection (shared memory, the connection and its pool).
            unsafe { (cleanup.handler)(cleanup.data.as_mut_ptr()) };
        }
    }
}

/// What to take from a request, found without changing it.
pub struct Plan {
    cleanups: Vec<Cleanup>,
    /// The pool cleanups to disarm in the request, as [`Plan::cleanups`].
    taken: Vec<*mut ngx_pool_cleanup_t>,
    /// realip's address of the client, copied to the connection pool.
    client_addr: Option<(*mut ngx_connection_t, *mut sockaddr)>,
}

impl Plan {
    /// Finds the cleanups of `r` to carry; `None` when one of them cannot
    /// be (the request must then be kept). `own` are the handlers of this
    /// module's own cleanups, which may run when the request is freed.
    ///
    /// # Safety
    /// `r` must be a live main request of this worker.
    pub unsafe fn for_request(r: *mut ngx_http_request_t, own: &[Handler]) -> Option<Plan> {
        // SAFETY: guaranteed by the caller; nginx's lists end with null.
        unsafe {
            let mut cln = (*(*r).main).cleanup;
            while !cln.is_null() {
                if (*cln).handler.is_some() {
                    return None;
                }
                cln = (*cln).next;
            }
            let realip = module_named(c"ngx_http_realip_module")
                .map(|m| *(*r).ctx.add(m.ctx_index))
                .filter(|ctx| !ctx.is_null());
            let limit_conn = module_named(c"ngx_http_limit_conn_module");
            let mut plan = Plan {
                cleanups: Vec::new(),
                taken: Vec::new(),
                client_addr: None,
            };
            let mut cln = (*(*r).pool).cleanup;
            while !cln.is_null() {
                let cur = cln;
                cln = (*cur).next;
                let (handler, data) = ((*cur).handler, (*cur).data);
                let Some(handler) = handler else { continue };
                if own.iter().any(|&h| h as usize == handler as usize) {
                    continue;
                }
                let data = if realip == Some(data) {
                    let ctx: RealipCtx = data.cast::<RealipCtx>().read();
                    plan.client_addr = Some(copy_client_addr(ctx.connection)?);
                    Data::Realip(ctx)
                } else if limit_conn.is_some_and(|m| holds_zone_of(data, m)) {
                    Data::LimitConn(data.cast::<LimitConnCleanup>().read())
                } else {
                    return None;
                };
                plan.cleanups.push(Cleanup { handler, data });
                plan.taken.push(cur);
            }
            Some(plan)
        }
    }

    /// Takes the planned cleanups off the request, which may then be freed.
    ///
    /// # Safety
    /// The request `for_request` planned for must still be live.
    pub unsafe fn take(self) -> Carried {
        // SAFETY: guaranteed by the caller: cleanups of its pool, and its
        // connection.
        unsafe {
            for cln in self.taken {
                (*cln).handler = None;
            }
            if let Some((c, addr)) = self.client_addr {
                (*c).sockaddr = addr;
            }
        }
        // Exactly as long as needed: it lives as long as the session.
        Carried(self.cleanups.into_boxed_slice())
    }
}

/// Copies the address realip gave the connection (parsed into the request
/// pool) to the connection pool.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn copy_client_addr(
    c: *mut ngx_connection_t,
) -> Option<(*mut ngx_connection_t, *mut sockaddr)> {
    // SAFETY: guaranteed by the caller; `sockaddr` holds `socklen` bytes.
    unsafe {
        let len = (*c).socklen as usize;
        let copy: *mut sockaddr = ngx_palloc((*c).pool, len).cast();
        if copy.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping((*c).sockaddr.cast::<u8>(), copy.cast::<u8>(), len);
        Some((c, copy))
    }
}

/// The module of this name in the running configuration, if nginx was
/// built with it.
fn module_named(name: &CStr) -> Option<&'static ngx_module_t> {
    // SAFETY: the worker's cycle lists its modules, each with a C name.
    unsafe {
        let cycle = &*ngx_cycle;
        (0..cycle.modules_n)
            .map(|i| &**cycle.modules.add(i))
            .find(|m| !m.name.is_null() && CStr::from_ptr(m.name) == name)
    }
}

/// Whether a cleanup's data starts with one of `module`'s shared memory
/// zones, as limit_conn's does: nothing else points at a zone structure.
///
/// # Safety
/// `data` must be null or a cleanup's data: nginx allocates it aligned, at
/// least a pointer wide (`ngx_palloc`), or points it at a structure.
unsafe fn holds_zone_of(data: *mut c_void, module: &ngx_module_t) -> bool {
    if data.is_null() || !data.cast::<*mut ngx_shm_zone_t>().is_aligned() {
        return false;
    }
    // SAFETY: guaranteed by the caller; only compared, never followed
    // unless it is one of the zones.
    let first: *mut ngx_shm_zone_t = unsafe { data.cast::<*mut ngx_shm_zone_t>().read() };
    let tag: *const ngx_module_t = module;
    // SAFETY: the cycle's list of shared memory zones, walked part by part.
    unsafe {
        let mut part = ptr::addr_of!((*ngx_cycle).shared_memory.part);
        while !part.is_null() {
            let zones: *mut ngx_shm_zone_t = (*part).elts.cast();
            for i in 0..(*part).nelts {
                let zone = zones.add(i);
                if zone == first && ptr::eq((*zone).tag.cast_const().cast(), tag) {
                    return true;
                }
            }
            part = (*part).next;
        }
    }
    false
}
