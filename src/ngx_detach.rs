//! A client connection that outlives its HTTP request.
//!
//! An upgraded session needs its request only for the access-log line at
//! its end. So it is freed right after the 101, together with the header
//! buffers, as nginx does for an idle keepalive connection: the request
//! pool alone is 8 KiB, most of what an idle session would otherwise cost.
//! Unless `access_log off`, what the line needs is taken first and the line
//! written when the session ends ([`log`]). The connection then carries
//! the session in `c->data`, and this module closes it (with nginx's
//! lingering close where asked) since no request will.
//!
//! To nginx's other modules the session stays one request until it ends:
//! the request's cleanups that count it (limit_conn) or that it must keep
//! (realip's client address) are carried to the connection and run when it
//! closes, on every way a session ends; a request with any cleanup that
//! cannot be carried is kept. [`cleanups`] lists those of nginx's modules.

mod cleanups;
mod log;

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use ngx::ffi::{
    ngx_chain_t, ngx_connection_t, ngx_event_t, ngx_http_close_connection,
    ngx_http_core_loc_conf_t, ngx_http_empty_handler, ngx_http_free_request, ngx_http_log_ctx_t,
    ngx_http_request_t, ngx_log_t, ngx_module_t, ngx_msec_t, ngx_pcalloc, ngx_pfree,
    ngx_pool_cleanup_add, ngx_str_t, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf, NgxHttpCoreModule};

use crate::ngx_io::{CloseRequest, ConnectionRef, Direction, Io, RequestRef};
use cleanups::{Carried, Handler, Plan};
use log::{LogLine, PendingLog};
use foreign_types::ForeignTypeRef;
use ngx::ffi::NGX_LOG_INFO;
use ngx::ngx_log_error;

extern "C" {
    /// nginx's access-log module; every nginx has it, and exports it to
    /// dynamic modules like every module object.
    static ngx_http_log_module: ngx_module_t;
}

/// The head of `ngx_http_log_loc_conf_t`, private to ngx_http_log_module.c
/// and unchanged since nginx 0.7: `off` is set by `access_log off`.
#[repr(C)]
struct LogLocConfHead {
    logs: *mut c_void,
    open_file_cache: *mut c_void,
    open_file_cache_valid: ngx::ffi::time_t,
    open_file_cache_min_uses: usize,
    off: usize,
}

impl RequestRef {
    /// Whether the location has `access_log off`, so that nothing reads the
    /// request after its response header.
    pub(crate) fn access_log_off(&self) -> bool {
        // SAFETY: the log module's loc conf exists in every location of a
        // live request and starts with the fields of `LogLocConfHead`.
        unsafe {
            let index = ngx_http_log_module.ctx_index;
            let conf: *const LogLocConfHead = (*(*self.as_ptr()).loc_conf.add(index)).cast();
            !conf.is_null() && (*conf).off != 0
        }
    }

    /// Whether nothing but the session holds the request: no subrequest in
    /// flight, no blocked operation.
    fn only_held(&self) -> bool {
        // SAFETY: the main request of a live request.
        unsafe {
            let main = &*(*self.as_ptr()).main;
            main.count() == 1 && main.blocked() == 0
        }
    }

    /// Gives the request ownership of `value` as its module context: it is
    /// dropped when the request pool is destroyed (after the access log was
    /// written), unless [`RequestRef::take_owned_ctx`] took it back first.
    pub(crate) fn set_owned_ctx<T: 'static>(&mut self, module: &ngx_module_t, value: Box<T>) -> Result<(), Box<T>> {
        let raw = Box::into_raw(value);
        // SAFETY: a box just leaked, dropped by `drop_ctx_box::<T>`.
        match unsafe { self.add_ctx(module.ctx_index, raw, drop_ctx_box::<T>) } {
            true => Ok(()),
            // SAFETY: not stored: the box is the caller's again.
            false => Err(unsafe { Box::from_raw(raw) }),
        }
    }

    /// Lends `value` to the request as the context in slot `ctx_index`,
    /// where [`RequestRef::owned_ctx`] finds it, until
    /// [`RequestRef::end_loan`]; false when memory ran out.
    ///
    /// # Safety
    /// `value` must outlive the loan, and not be used while the request
    /// has it.
    pub(crate) unsafe fn lend_ctx<T: 'static>(&mut self, ctx_index: usize, value: &mut T) -> bool {
        // SAFETY: guaranteed by the caller; `forget_ctx` only empties the slot.
        unsafe { self.add_ctx(ctx_index, value, forget_ctx) }
    }

    /// Ends a loan of [`RequestRef::lend_ctx`].
    pub(crate) fn end_loan(&mut self, ctx_index: usize) {
        // SAFETY: a live request; the slot holds a loan, which is not dropped.
        unsafe { forget_ctx(self.as_ptr(), ctx_index) }
    }

    /// Puts `value` in the context slot `ctx_index`, with a request pool
    /// cleanup that calls `drop` as the pool is destroyed, and through which
    /// [`RequestRef::owned_ctx`] finds it as a `T`.
    ///
    /// # Safety
    /// `ctx_index` must be a module index; `drop` must be sound for the
    /// slot's value whenever it runs.
    unsafe fn add_ctx<T: 'static>(
        &mut self,
        ctx_index: usize,
        value: *mut T,
        drop: unsafe fn(*mut ngx_http_request_t, usize),
    ) -> bool {
        let r = self.as_ptr();
        // SAFETY: the request pool lives until the request is freed; the
        // cleanup's data is the request, still valid when the pool's
        // cleanups run (the request lives in its own pool, freed last).
        unsafe {
            let cln = ngx_pool_cleanup_add((*r).pool, core::mem::size_of::<OwnedCtx>());
            if cln.is_null() {
                return false;
            }
            let data: *mut OwnedCtx = (*cln).data.cast();
            data.write(OwnedCtx {
                r,
                ctx_index,
                drop,
                type_id: core::any::TypeId::of::<T>(),
            });
            (*cln).handler = Some(drop_owned_ctx);
            *(*r).ctx.add(ctx_index) = value.cast();
        }
        true
    }

    /// The context that [`RequestRef::set_owned_ctx`] gave as a `T`, found
    /// among the request pool's cleanups, whatever the module.
    pub(crate) fn owned_ctx<T: 'static>(&self) -> Option<NonNull<T>> {
        let index = self.owned_ctx_index::<T>()?;
        // SAFETY: the slot of a module index nginx assigned, in a live request.
        NonNull::new(unsafe { *(*self.as_ptr()).ctx.add(index) }.cast())
    }

    /// The context slot that [`RequestRef::set_owned_ctx`] filled with a `T`.
    fn owned_ctx_index<T: 'static>(&self) -> Option<usize> {
        let r = self.as_ptr();
        // SAFETY: a live request: its pool's cleanup list is well formed, and
        // a cleanup whose handler is `drop_owned_ctx` has an `OwnedCtx` as
        // its data, written by `set_owned_ctx` with the context's type.
        unsafe {
            let mut cln = (*(*r).pool).cleanup;
            while !cln.is_null() {
                if (*cln).handler.map(|h| h as usize) == Some(drop_owned_ctx as *const () as usize) {
                    let owned: &OwnedCtx = &*(*cln).data.cast();
                    if owned.type_id == core::any::TypeId::of::<T>() {
                        return Some(owned.ctx_index);
                    }
                }
                cln = (*cln).next;
            }
        }
        None
    }

    /// Takes back the context given by [`RequestRef::set_owned_ctx`].
    fn take_owned_ctx<T: 'static>(&mut self) -> Option<Box<T>> {
        let index = self.owned_ctx_index::<T>()?;
        // SAFETY: a live request; its slot was filled by `set_owned_ctx::<T>`.
        unsafe { take_ctx_box(self.as_ptr(), index) }
    }
}

/// Empties the module context slot `ctx_index` of `r` and returns the box
/// it held.
///
/// # Safety
/// `r` must be readable, and the slot null or a `Box<T>` that
/// `set_owned_ctx::<T>` put there.
unsafe fn take_ctx_box<T>(r: *mut ngx_http_request_t, ctx_index: usize) -> Option<Box<T>> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let slot = (*r).ctx.add(ctx_index);
        let value: *mut T = core::mem::replace(&mut *slot, ptr::null_mut()).cast();
        NonNull::new(value).map(|p| Box::from_raw(p.as_ptr()))
    }
}

/// Empties a module context slot without dropping what it held (a loan).
///
/// # Safety
/// `r` must be a live request and `ctx_index` a module index.
unsafe fn forget_ctx(r: *mut ngx_http_request_t, ctx_index: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { *(*r).ctx.add(ctx_index) = ptr::null_mut() };
}

/// Drops the box in a module context slot, as [`take_ctx_box`].
///
/// # Safety
/// As for [`take_ctx_box`].
unsafe fn drop_ctx_box<T>(r: *mut ngx_http_request_t, ctx_index: usize) {
    // SAFETY: guaranteed by the caller.
    drop(unsafe { take_ctx_box::<T>(r, ctx_index) });
}

#[repr(C)]
struct OwnedCtx {
    r: *mut ngx_http_request_t,
    ctx_index: usize,
    /// `drop_ctx_box` of the context's type.
    drop: unsafe fn(*mut ngx_http_request_t, usize),
    /// The context's type, for [`RequestRef::owned_ctx`].
    type_id: core::any::TypeId,
}

/// The request pool cleanup of every owned context: one function, so that
/// a detaching session knows it among the request's cleanups.
unsafe extern "C" fn drop_owned_ctx(data: *mut c_void) {
    // SAFETY: `data` is the `OwnedCtx` written by `set_owned_ctx`; its
    // request is being destroyed, its memory still readable.
    unsafe {
        let owned: &OwnedCtx = &*data.cast();
        (owned.drop)(owned.r, owned.ctx_index);
    }
}

/// nginx's lingering close, as the request's location configured it.
#[derive(Debug, Clone, Copy)]
struct Lingering {
    /// `lingering_time`: the longest the whole drain may take.
    time_ms: ngx_msec_t,
    /// `lingering_timeout`: the longest wait for more bytes.
    timeout_ms: ngx_msec_t,
}

/// Whether a session may drop its request, how its connection lingers at
/// the close once it did, the request's cleanups it carries and what its
/// access-log line needs.
pub struct Detach {
    /// False once the request must be kept.
    wanted: bool,
    /// Set once the request is detached.
    lingering: Option<Lingering>,
    /// Run once the connection closes.
    carried: Carried,
    /// The request's access-log line, unless `access_log off`.
    log: Option<Box<PendingLog>>,
}

impl Detach {
    /// A session's: whether it drops its request is decided once the 101
    /// is out ([`detach_session`]), by what the request still has to do.
    pub fn for_request(_r: &RequestRef) -> Detach {
        Detach {
            wanted: true,
            lingering: None,
            carried: Carried::default(),
            log: None,
        }
    }
}

/// What happens as a detached session's connection closes, in nginx's
/// order for a request: its access-log line, then its carried cleanups.
#[derive(Default)]
struct Ending {
    line: Option<LogLine>,
    carried: Carried,
}

impl Ending {
    fn run(self) {
        if let Some(line) = self.line {
            line.write();
        }
        drop(self.carried);
    }
}

/// A session that its connection owns once the request was detached: the
/// connection's data is the session, leaked from its box.
pub trait DetachedSession {
    fn detach(&mut self) -> &mut Detach;
    /// The worker is exiting: finish what is under way, then close.
    fn shut_down(&mut self);
}

/// Once the 101 is out, frees the request of a session that wants it (the
/// request's module context, given by [`RequestRef::set_owned_ctx`]) and
/// moves the session onto the connection, whose events then go to
/// `handler`. Returns the session, now the connection's, or `None` when
/// the request stays: nginx is still busy with it (a subrequest), or it has
/// a cleanup that cannot be carried.
///
/// # Safety
/// As for [`detach_request`]; the session must not be referenced elsewhere.
pub unsafe fn detach_session<T: DetachedSession + 'static>(
    r: &mut RequestRef,
    handler: unsafe extern "C" fn(*mut ngx_event_t),
) -> Option<&'static mut T> {
    let mut ctx = r.owned_ctx::<T>()?;
    // SAFETY: guaranteed by the caller.
    let detach = unsafe { ctx.as_mut() }.detach();
    if !detach.wanted || r.output_pending() || !r.only_held() {
        return None;
    }
    // Ours run as the request is freed: the session's slot is emptied first,
    // and the upstream connection holds its own share of the balancer memory.
    let own: [Handler; 2] = [drop_owned_ctx, crate::ngx_peer::release_balancer_memory];
    // SAFETY: a live main request (guaranteed by the caller).
    let Some(plan) = (unsafe { Plan::for_request(r.as_ptr(), &own) }) else {
        // Its cleanups stay as they are: it is kept for good.
        detach.wanted = false;
        return None;
    };
    let ctx_index = r.owned_ctx_index::<T>()?;
    let log = match r.access_log_off() {
        true => None,
        // SAFETY: a live main request whose response header went out.
        false => match unsafe { PendingLog::capture(r, ctx_index) } {
            Some(log) => Some(Box::new(log)),
            None => {
                // SAFETY: as above.
                unsafe { ctx.as_mut() }.detach().wanted = false;
                return None;
            }
        },
    };
    let mut session = r.take_owned_ctx::<T>()?;
    session.detach().log = log;
    // SAFETY: the request is still live; it is freed right after.
    session.detach().carried = unsafe { plan.take() };
    let raw: *mut T = &mut *session;
    // SAFETY: guaranteed by the caller.
    let lingering = unsafe { detach_request(r, raw.cast(), handler) };
    session.detach().lingering = Some(lingering);
    Some(Box::leak(session))
}

/// Frees the request of an upgraded client connection and keeps the
/// connection: afterwards `c->data` is `data` and both events call
/// `handler`. Returns the location's lingering-close settings, for
/// [`close_detached`].
///
/// # Safety
/// `r` must be a live main request whose response header went out in full,
/// whose bytes after the header were taken, and whose handler returned
/// (nothing up the stack still uses it). Nothing may touch `r` afterwards.
unsafe fn detach_request(
    r: &mut RequestRef,
    data: *mut c_void,
    handler: unsafe extern "C" fn(*mut ngx_event_t),
) -> Lingering {
    let lingering = NgxHttpCoreModule::location_conf(r).map_or(
        Lingering {
            time_ms: 30_000,
            timeout_ms: 5_000,
        },
        |clcf: &ngx_http_core_loc_conf_t| Lingering {
            time_ms: clcf.lingering_time,
            timeout_ms: clcf.lingering_timeout,
        },
    );
    let server = NgxHttpCoreModule::server_conf(r).map(|cscf| cscf.server_name);
    let r = r.as_ptr();
    // SAFETY: guaranteed by the caller; the steps are those of nginx's own
    // ngx_http_set_keepalive for a connection without a pipelined request.
    unsafe {
        let c = (*r).connection;
        let hc = (*r).http_connection;
        let log_ctx = DetachedLogCtx::new(r, server.unwrap_or_default());
        let action = (*(*c).log).action;
        // Its access-log line, if any, is written when the session ends.
        (*r).set_logged(1);
        ngx_http_free_request(r, 0);
        (*(*c).log).action = action;
        if let Some(ctx) = log_ctx {
            (*(*c).log).data = ctx.as_ptr().cast();
            (*(*c).log).handler = Some(detached_log_error);
        }
        // free_request marks the connection destroyed for its callers; this
        // one lives on.
        (*c).set_destroyed(0);
        (*c).data = data;
        (*(*c).read).handler = Some(handler);
        (*(*c).write).handler = Some(handler);
        // The header buffers: c->buffer, and large ones for long headers.
        let b = (*c).buffer;
        if !b.is_null() {
            if ngx_pfree((*c).pool, (*b).start.cast()) == NGX_OK as isize {
                (*c).buffer = ptr::null_mut();
            } else {
                (*b).pos = (*b).start;
                (*b).last = (*b).start;
            }
        }
        for list in [ptr::addr_of_mut!((*hc).free), ptr::addr_of_mut!((*hc).busy)] {
            let mut cl: *mut ngx_chain_t = *list;
            while !cl.is_null() {
                ngx_pfree((*c).pool, (*(*cl).buf).start.cast());
                cl = (*cl).next;
            }
            *list = ptr::null_mut();
        }
        (*hc).nbusy = 0;
    }
    lingering
}

/// What error.log lines of a detached session say of it: what nginx's
/// own handler says of a request (client, server, request line, upstream,
/// host), from copies in the connection pool. Starts like nginx's HTTP log context,
/// which other code may read through `log->data`.
#[repr(C)]
struct DetachedLogCtx {
    http: ngx_http_log_ctx_t,
    server: ngx_str_t,
    request_line: ngx_str_t,
    upstream: ngx_str_t,
    host: ngx_str_t,
}

impl DetachedLogCtx {
    /// # Safety
    /// `r` must be a live request; the result lives in its connection's pool.
    unsafe fn new(r: *mut ngx_http_request_t, server: ngx_str_t) -> Option<NonNull<Self>> {
        // SAFETY: guaranteed by the caller; the strings are copied out of
        // the request before it is freed.
        unsafe {
            let c = (*r).connection;
            let pool = (*c).pool;
            let host = match (*r).headers_in.host.as_ref() {
                Some(h) => ngx_str_t::from_bytes(pool, h.value.as_bytes())?,
                None => ngx_str_t::empty(),
            };
            let request_line = ngx_str_t::from_bytes(pool, (*r).request_line.as_bytes())?;
            let u = (*r).upstream;
            let upstream = match u.is_null() || (*u).peer.name.is_null() {
                true => ngx_str_t::empty(),
                false => ngx_str_t::from_bytes(pool, (*(*u).peer.name).as_bytes())?,
            };
            let ctx: *mut Self = ngx_pcalloc(pool, core::mem::size_of::<Self>()).cast();
            let ctx = NonNull::new(ctx)?;
            ctx.as_ptr().write(DetachedLogCtx {
                http: ngx_http_log_ctx_t {
                    connection: c,
                    request: ptr::null_mut(),
                    current_request: ptr::null_mut(),
                },
                server,
                request_line,
                upstream,
                host,
            });
            Some(ctx)
        }
    }
}

/// Appends `parts` to the log line at `buf` (at most `len` bytes) and
/// returns its new end, as nginx's log handlers do.
fn append(buf: *mut u8, len: usize, parts: &[&[u8]]) -> *mut u8 {
    // SAFETY: nginx hands the handler `len` writable bytes at `buf`.
    let out = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    let mut n = 0;
    for part in parts {
        let take = part.len().min(out.len() - n);
        out[n..n + take].copy_from_slice(&part[..take]);
        n += take;
    }
    // SAFETY: n <= len.
    unsafe { buf.add(n) }
}

unsafe extern "C" fn detached_log_error(log: *mut ngx_log_t, buf: *mut u8, len: usize) -> *mut u8 {
    // SAFETY: nginx calls the handler with the connection's log, whose data
    // is the context `detach_request` made; `action` is a C string.
    unsafe {
        let ctx: &DetachedLogCtx = &*(*log).data.cast();
        let action: &[u8] = match (*log).action.is_null() {
            true => b"",
            false => core::ffi::CStr::from_ptr((*log).action).to_bytes(),
        };
        let addr = (*ctx.http.connection).addr_text.as_bytes();
        let mut p = buf;
        let mut left = len;
        let mut put = |parts: &[&[u8]]| {
            let end = append(p, left, parts);
            left -= end.offset_from(p) as usize;
            p = end;
        };
        if !action.is_empty() {
            put(&[b" while ", action]);
        }
        put(&[b", client: ", addr, b", server: ", ctx.server.as_bytes()]);
        if ctx.request_line.len > 0 {
            put(&[b", request: \"", ctx.request_line.as_bytes(), b"\""]);
        }
        if ctx.upstream.len > 0 {
            put(&[b", upstream: \"", ctx.upstream.as_bytes(), b"\""]);
        }
        if ctx.host.len > 0 {
            put(&[b", host: \"", ctx.host.as_bytes(), b"\""]);
        }
        p
    }
}

/// The connection of an event of a detached session, and the session.
///
/// # Safety
/// `ev` must be an event of a connection whose data is a leaked `T`, and
/// nothing else may reference that session during the event.
pub unsafe fn detached_session<'a, T>(ev: *mut ngx_event_t) -> (&'a ConnectionRef, &'a mut T) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let c: *mut ngx_connection_t = (*ev).data.cast();
        (ConnectionRef::from_ptr(c), &mut *(*c).data.cast::<T>())
    }
}

/// Does what nginx asks of the connection when the worker exits; false
/// when the session ended here (`worker_shutdown_timeout` expired) and must
/// not be touched again.
///
/// # Safety
/// As for [`end_detached`].
pub unsafe fn serve_close_request<T: DetachedSession + 'static>(c: &ConnectionRef, session: &mut T) -> bool {
    match c.take_close_request() {
        CloseRequest::None => true,
        CloseRequest::Graceful => {
            session.shut_down();
            true
        }
        CloseRequest::Now => {
            ngx_log_error!(
                NGX_LOG_INFO,
                c.log(),
                "websocket: worker_shutdown_timeout expired, closing"
            );
            // SAFETY: guaranteed by the caller.
            unsafe { end_detached(c, session, false) };
            false
        }
    }
}

/// Drops a detached session and closes its connection, with a lingering
/// close when `linger`.
///
/// # Safety
/// `session` must be the one leaked into `c->data`; neither is used again.
pub unsafe fn end_detached<T: DetachedSession + 'static>(c: &ConnectionRef, session: &mut T, linger: bool) {
    let lingering = session.detach().lingering.filter(|_| linger);
    let carried = core::mem::take(&mut session.detach().carried);
    let pending = session.detach().log.take();
    // SAFETY: the session's live connection; the session is not otherwise
    // used meanwhile (guaranteed by the caller).
    let line = pending.and_then(|p| unsafe { p.session_ended(c.as_ptr(), session) });
    // SAFETY: guaranteed by the caller: a box its owner leaked.
    drop(unsafe { Box::from_raw(session as *mut T) });
    // SAFETY: the session is gone; the connection is closed here.
    unsafe { close_detached(c.as_ptr(), lingering, Ending { line, carried }) };
}

/// Closes a connection whose request was detached, once its session was
/// dropped: at once, or (`linger`) after half-closing it and draining what
/// the peer still sends, so that a close frame just sent is not lost to a
/// TCP reset. A TLS connection closes at once, after its TLS shutdown.
/// The request's access-log line is written and its carried cleanups run
/// right before the close, as nginx does when it frees a request before
/// closing its connection (after a lingering close too).
///
/// # Safety
/// `c` must be a live connection of this worker returned by
/// [`detach_request`] whose `c->data` is no longer used.
unsafe fn close_detached(c: *mut ngx_connection_t, linger: Option<Lingering>, ending: Ending) {
    // SAFETY: guaranteed by the caller.
    let conn = unsafe { ConnectionRef::from_ptr(c) };
    conn.del_timer(Direction::Read);
    conn.del_timer(Direction::Write);
    conn.set_idle(false);
    // SAFETY: a live connection; `ssl` is null for plain TCP.
    let tls = unsafe { !(*c).ssl.is_null() };
    match linger {
        Some(linger) if !tls => unsafe { start_lingering(c, linger, ending) },
        _ => {
            ending.run();
            // SAFETY: nginx closes the socket and destroys the connection pool.
            unsafe { ngx_http_close_connection(c) }
        }
    }
}

/// What a lingering connection waits for: until when it may drain, and
/// the longest pause between the peer's bytes; and the request's log line
/// and cleanups, at the close.
struct Drain {
    until_sec: i64,
    timeout_ms: ngx_msec_t,
    ending: Ending,
}

/// nginx's cached current time in seconds.
fn now_sec() -> i64 {
    // SAFETY: a plain read of the worker's time cache.
    unsafe { (*ngx::ffi::ngx_cached_time).sec }
}

unsafe fn start_lingering(c: *mut ngx_connection_t, linger: Lingering, ending: Ending) {
    let drain = Box::new(Drain {
        until_sec: now_sec() + (linger.time_ms / 1000) as i64,
        timeout_ms: linger.timeout_ms,
        ending,
    });
    // SAFETY: a live connection of this worker; its data slot is free.
    unsafe {
        (*c).data = Box::into_raw(drain).cast();
        (*(*c).read).handler = Some(drain_handler);
        (*(*c).write).handler = Some(ngx_http_empty_handler);
        if ngx::ffi::shutdown((*c).fd, ngx::ffi::SHUT_WR as i32) == -1 {
            finish_lingering(c);
            return;
        }
        let conn = ConnectionRef::from_ptr(c);
        if conn.handle_event(Direction::Read).is_err() {
            finish_lingering(c);
            return;
        }
        conn.add_timer(Direction::Read, linger.timeout_ms);
        if conn.ready(Direction::Read) {
            drain_handler((*c).read);
        }
    }
}

/// Reads and discards until the peer closes, goes quiet for
/// `lingering_timeout`, or `lingering_time` is over.
unsafe extern "C" fn drain_handler(rev: *mut ngx_event_t) {
    // SAFETY: the read event of a lingering connection; its data is the
    // `Drain` put there by `start_lingering`.
    unsafe {
        let c: *mut ngx_connection_t = (*rev).data.cast();
        let drain: &Drain = &*(*c).data.cast::<Drain>();
        let left = drain.until_sec - now_sec();
        if (*rev).timedout() != 0 || ngx_connection_t::close_raw(c) != 0 || left <= 0 {
            finish_lingering(c);
            return;
        }
        let conn = ConnectionRef::from_ptr(c);
        let mut scratch = [0u8; 4096];
        loop {
            match conn.recv(&mut scratch) {
                Io::Done(_) if conn.ready(Direction::Read) => {}
                Io::Done(_) | Io::Again => break,
                Io::Eof | Io::Error => {
                    finish_lingering(c);
                    return;
                }
            }
        }
        if conn.handle_event(Direction::Read).is_err() {
            finish_lingering(c);
            return;
        }
        let timer = ((left as ngx_msec_t) * 1000).min(drain.timeout_ms);
        conn.add_timer(Direction::Read, timer);
    }
}

unsafe fn finish_lingering(c: *mut ngx_connection_t) {
    // SAFETY: `c->data` is the `Drain` box of `start_lingering`; the
    // connection is closed and never touched again.
    unsafe {
        let drain = Box::from_raw((*c).data.cast::<Drain>());
        (*c).data = ptr::null_mut();
        ConnectionRef::from_ptr(c).del_timer(Direction::Read);
        drain.ending.run();
        ngx_http_close_connection(c);
    }
}
