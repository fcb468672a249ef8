//! Host names resolved at run time with nginx's own asynchronous resolver
//! (the `resolver` directive), for `websocket_pass` URLs with variables.

use core::ffi::{c_void, CStr};
use core::mem;
use core::ptr::{self, NonNull};

use ngx::ffi::{
    ngx_http_core_loc_conf_t, ngx_pnalloc, ngx_resolve_name, ngx_resolve_name_done,
    ngx_resolve_start, ngx_resolver_addr_t, ngx_resolver_ctx_t, ngx_resolver_strerror, ngx_str_t,
    NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::ngx_io::RequestRef;

/// Called by nginx when a query ends, with the query.
pub type ResolveHandler = unsafe extern "C" fn(*mut ngx_resolver_ctx_t);

/// A query in flight; dropping it cancels it.
pub struct NameQuery(NonNull<ngx_resolver_ctx_t>);

/// Why a name could not be resolved.
#[derive(Debug)]
pub enum ResolveError {
    NoResolver,
    Failed(String),
}

impl core::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ResolveError::NoResolver => f.write_str("no resolver defined"),
            ResolveError::Failed(why) => f.write_str(why),
        }
    }
}

/// The addresses of a resolved name, copied into the request pool.
pub struct Addresses {
    /// The name that was resolved (request pool memory).
    pub host: ngx_str_t,
    pub addrs: *mut ngx_resolver_addr_t,
    pub naddrs: usize,
}

/// Starts resolving `host` with the location's resolver.
///
/// The handler may run before this returns (a cached answer) and then has
/// already freed the query: the caller must tell from its own state whether
/// the handler ran and, if so, [`NameQuery::forget`] the result.
pub fn start(
    r: &RequestRef,
    host: &str,
    handler: ResolveHandler,
    data: *mut c_void,
) -> Result<NameQuery, ResolveError> {
    let clcf: &ngx_http_core_loc_conf_t =
        NgxHttpCoreModule::location_conf(r).ok_or(ResolveError::NoResolver)?;
    // SAFETY: the core loc conf's resolver is set (maybe to the "none"
    // marker); the name is copied into the request pool, which outlives the
    // query; nginx owns the context until ngx_resolve_name_done.
    unsafe {
        let pool = (*foreign_types::ForeignTypeRef::as_ptr(r)).pool;
        let mut temp: ngx_resolver_ctx_t = mem::zeroed();
        // In the request pool: the answer refers to it after the query is freed.
        temp.name = ngx_str_t::from_bytes(pool, host.as_bytes()).ok_or(ResolveError::NoResolver)?;
        let ctx = ngx_resolve_start(clcf.resolver, &mut temp);
        if ctx.is_null() {
            return Err(ResolveError::Failed("cannot start resolving".into()));
        }
        if ctx as isize == -1 {
            return Err(ResolveError::NoResolver);
        }
        (*ctx).name = temp.name;
        (*ctx).handler = Some(handler);
        (*ctx).data = data;
        (*ctx).timeout = clcf.resolver_timeout;
        // On failure nginx frees the query itself.
        if ngx_resolve_name(ctx) != NGX_OK as _ {
            return Err(ResolveError::Failed("cannot resolve".into()));
        }
        Ok(NameQuery(NonNull::new_unchecked(ctx)))
    }
}

/// In the handler: takes the answer, frees the query, and returns the data
/// pointer given to [`start`].
///
/// # Safety
/// `ctx` must be the query nginx passed to the handler; it is freed here,
/// so a [`NameQuery`] for it must be forgotten, not dropped.
pub unsafe fn finish(
    r_pool: *mut ngx::ffi::ngx_pool_t,
    ctx: *mut ngx_resolver_ctx_t,
) -> (*mut c_void, Result<Addresses, ResolveError>) {
    // SAFETY: guaranteed by the caller; the addresses are copied into the
    // request pool before the query is freed.
    unsafe {
        let data = (*ctx).data;
        let result = if (*ctx).state != 0 {
            let why = CStr::from_ptr(ngx_resolver_strerror((*ctx).state));
            Err(ResolveError::Failed(format!(
                "\"{}\" could not be resolved ({}: {})",
                String::from_utf8_lossy((*ctx).name.as_bytes()),
                (*ctx).state,
                why.to_string_lossy()
            )))
        } else {
            copy_addresses(r_pool, (*ctx).addrs, (*ctx).naddrs).map(|a| Addresses {
                host: (*ctx).name,
                ..a
            })
        };
        ngx_resolve_name_done(ctx);
        (data, result)
    }
}

/// # Safety
/// `addrs` holds `n` valid addresses.
unsafe fn copy_addresses(
    pool: *mut ngx::ffi::ngx_pool_t,
    addrs: *const ngx_resolver_addr_t,
    n: usize,
) -> Result<Addresses, ResolveError> {
    let oom = || ResolveError::Failed("out of memory".into());
    // SAFETY: guaranteed by the caller; the copies are pool memory.
    unsafe {
        let out: *mut ngx_resolver_addr_t =
            ngx_pnalloc(pool, n * mem::size_of::<ngx_resolver_addr_t>()).cast();
        if out.is_null() {
            return Err(oom());
        }
        for i in 0..n {
            let src = &*addrs.add(i);
            let sa = ngx_pnalloc(pool, src.socklen as usize);
            if sa.is_null() {
                return Err(oom());
            }
            ptr::copy_nonoverlapping(
                src.sockaddr.cast::<u8>(),
                sa.cast::<u8>(),
                src.socklen as usize,
            );
            out.add(i).write(ngx_resolver_addr_t {
                sockaddr: sa.cast(),
                socklen: src.socklen,
                name: ngx_str_t::empty(),
                priority: 0,
                weight: 0,
            });
        }
        Ok(Addresses {
            host: ngx_str_t::empty(),
            addrs: out,
            naddrs: n,
        })
    }
}

impl NameQuery {
    /// Gives up ownership: the handler freed the query already.
    pub fn forget(self) {
        mem::forget(self);
    }
}

impl Drop for NameQuery {
    fn drop(&mut self) {
        // SAFETY: a query still in flight; nginx will not call its handler
        // after ngx_resolve_name_done.
        unsafe { ngx_resolve_name_done(self.0.as_ptr()) }
    }
}
