//! The access-log line of a session whose request was freed after the 101.
//!
//! nginx writes a request's access-log line when it frees the request: for
//! an upgraded session, when the session ends (after its lingering close).
//! Keeping the request that long costs an idle session 8 KiB or more (two
//! blocks of the request pool and the header buffer). Instead, what the
//! line needs is taken before the request is freed: the value of every
//! variable that the location's access logs use (in their formats and
//! `if=` conditions), except those only the end can tell. These are
//! evaluated when the line is written, on a small request made for it that
//! carries what they read: the connection (`$bytes_sent`,
//! `$connection_time`, `$tcpinfo_*`), the request's start time, status,
//! header and request sizes (`$request_time`, `$status`,
//! `$body_bytes_sent`, `$request_length`), the clock (`$msec`,
//! `$time_local`). The `$websocket_*` variables are read from the session
//! as it ends, before it is dropped. Then nginx's log phase runs on that
//! request, so the line is the one nginx would have written, as late as
//! nginx would have written it.
//!
//! A location keeps its request (and the line is written as before) when
//! its access log has variables in its path (nginx resolves those against
//! the request's URI), or when a module other than nginx's access log has a
//! log-phase handler (it may read anything of the request).
//!
//! A variable taken at the 101 holds its value from then on: a `map` of a
//! `$websocket_*` variable would be read too early, so `$websocket_*` values
//! belong directly in the format (or in an `if=` condition).

use core::ffi::c_void;
use core::ptr::NonNull;

use ngx::ffi::{
    ngx_array_t, ngx_connection_t, ngx_create_pool, ngx_destroy_pool, ngx_http_complex_value_t,
    ngx_http_core_main_conf_t, ngx_http_core_module, ngx_http_get_indexed_variable,
    ngx_http_max_module, ngx_http_request_t, ngx_http_variable_t, ngx_http_variable_value_t,
    ngx_pcalloc, ngx_pool_t, ngx_str_t, ngx_uint_t, off_t, time_t, ngx_msec_t,
    ngx_http_phases_NGX_HTTP_LOG_PHASE as NGX_HTTP_LOG_PHASE,
};

use super::{ngx_http_log_module, LogLocConfHead};
use crate::ngx_io::RequestRef;
use foreign_types::ForeignTypeRef;

/// `ngx_http_log_t`, private to ngx_http_log_module.c (nginx 1.7.x on).
#[repr(C)]
struct Log {
    file: *mut c_void,
    script: *mut c_void,
    disk_full_time: time_t,
    error_log_time: time_t,
    syslog_peer: *mut c_void,
    format: *const LogFormat,
    filter: *const ngx_http_complex_value_t,
}

/// `ngx_http_log_fmt_t`.
#[repr(C)]
struct LogFormat {
    name: ngx_str_t,
    flushes: *mut ngx_array_t,
    ops: *const ngx_array_t,
}

/// `ngx_http_log_op_t`: a variable's op has no fixed length, a `getlen`,
/// and the variable's index as its data (in every escape mode); the others
/// (text, `$status`, `$request_time` and the like) have a fixed length.
#[repr(C)]
struct LogOp {
    len: usize,
    getlen: Option<unsafe extern "C" fn(*mut ngx_http_request_t, usize) -> usize>,
    run: *const c_void,
    data: usize,
}

/// Variables that only the end of the session can tell: evaluated when the
/// line is written.
const AT_END: [&[u8]; 11] = [
    b"request_time",
    b"bytes_sent",
    b"body_bytes_sent",
    b"connection_time",
    b"msec",
    b"time_local",
    b"time_iso8601",
    b"tcpinfo_rtt",
    b"tcpinfo_rttvar",
    b"tcpinfo_snd_cwnd",
    b"tcpinfo_rcv_space",
];

/// The variables this module reads from the session as it ends.
const SESSION_PREFIX: &[u8] = b"websocket_";

/// A variable's value taken at the 101: `text[start..start + len]`.
struct Taken {
    index: usize,
    start: usize,
    len: usize,
    not_found: bool,
    escape: bool,
}

/// What the request's log line needs, kept while the session runs.
pub struct PendingLog {
    main_conf: *mut *mut c_void,
    srv_conf: *mut *mut c_void,
    loc_conf: *mut *mut c_void,
    http_connection: *mut ngx::ffi::ngx_http_connection_t,
    start_sec: time_t,
    start_msec: ngx_msec_t,
    status: ngx_uint_t,
    err_status: ngx_uint_t,
    http_version: ngx_uint_t,
    method: ngx_uint_t,
    header_size: usize,
    request_length: off_t,
    request_complete: bool,
    pipeline: bool,
    taken: Vec<Taken>,
    text: Vec<u8>,
    /// `$websocket_*` variables the logs use: read as the session ends.
    from_session: Vec<usize>,
    /// The module context slot of the session in the request.
    ctx_index: usize,
}

/// The core module's main configuration of a request.
///
/// # Safety
/// `r` must be a live request or one made by [`PendingLog::session_ended`].
unsafe fn core_main_conf(r: *mut ngx_http_request_t) -> *mut ngx_http_core_main_conf_t {
    // SAFETY: guaranteed by the caller; every request has the core module's
    // main configuration.
    unsafe { (*(*r).main_conf.add(ngx_http_core_module.ctx_index)).cast() }
}

/// The variable indexes that the access logs of `r`'s location read, or
/// `None` when its line cannot be written without the request.
///
/// # Safety
/// `r` must be a live request whose location logs (not `access_log off`).
unsafe fn logged_variables(r: *mut ngx_http_request_t) -> Option<Vec<usize>> {
    // SAFETY: guaranteed by the caller; the log module's structures are
    // those of nginx 1.7.x on, built at configuration time.
    unsafe {
        let cmcf = &*core_main_conf(r);
        if cmcf.phases[NGX_HTTP_LOG_PHASE as usize].handlers.nelts != 1 {
            return None;
        }
        let lcf: *const LogLocConfHead = (*(*r).loc_conf.add(ngx_http_log_module.ctx_index)).cast();
        if lcf.is_null() || (*lcf).logs.is_null() {
            return None;
        }
        let logs: &ngx_array_t = &*(*lcf).logs.cast::<ngx_array_t>();
        let mut indexes = Vec::new();
        for log in core::slice::from_raw_parts(logs.elts.cast::<Log>(), logs.nelts) {
            if !log.script.is_null() {
                return None;
            }
            let ops: &ngx_array_t = &*(*log.format).ops;
            for op in core::slice::from_raw_parts(ops.elts.cast::<LogOp>(), ops.nelts) {
                if op.len == 0 && op.getlen.is_some() {
                    indexes.push(op.data);
                }
            }
            if !log.filter.is_null() {
                let mut flush = (*log.filter).flushes;
                while !flush.is_null() && *flush != ngx_uint_t::MAX {
                    indexes.push(*flush);
                    flush = flush.add(1);
                }
            }
        }
        indexes.sort_unstable();
        indexes.dedup();
        Some(indexes)
    }
}

impl PendingLog {
    /// Takes what the line of `r` needs; `None` when the request must stay
    /// for it. The session is in the module context slot `ctx_index`.
    ///
    /// # Safety
    /// `r` must be a live main request whose response header went out and
    /// whose location logs (not `access_log off`).
    pub unsafe fn capture(r: &RequestRef, ctx_index: usize) -> Option<PendingLog> {
        let r = r.as_ptr();
        // SAFETY: guaranteed by the caller.
        unsafe {
            let indexes = logged_variables(r)?;
            let cmcf = &*core_main_conf(r);
            let vars = core::slice::from_raw_parts(
                cmcf.variables.elts.cast::<ngx_http_variable_t>(),
                cmcf.variables.nelts,
            );
            let req = &*r;
            let mut log = PendingLog {
                main_conf: req.main_conf,
                srv_conf: req.srv_conf,
                loc_conf: req.loc_conf,
                http_connection: req.http_connection,
                start_sec: req.start_sec,
                start_msec: req.start_msec,
                status: req.headers_out.status,
                err_status: req.err_status,
                http_version: req.http_version,
                method: req.method,
                header_size: req.header_size,
                request_length: req.request_length,
                request_complete: req.request_complete() != 0,
                pipeline: req.pipeline() != 0,
                taken: Vec::new(),
                text: Vec::new(),
                from_session: Vec::new(),
                ctx_index,
            };
            for index in indexes {
                let name = vars.get(index)?.name.as_bytes();
                if AT_END.contains(&name) {
                    continue;
                }
                if name.starts_with(SESSION_PREFIX) {
                    log.from_session.push(index);
                    continue;
                }
                let v = ngx_http_get_indexed_variable(r, index);
                let v: &ngx_http_variable_value_t = v.as_ref()?;
                let found = v.not_found() == 0 && !v.data.is_null();
                let value: &[u8] = match found {
                    true => core::slice::from_raw_parts(v.data, v.len() as usize),
                    false => &[],
                };
                log.taken.push(Taken {
                    index,
                    start: log.text.len(),
                    len: value.len(),
                    not_found: v.not_found() != 0,
                    escape: v.escape() != 0,
                });
                log.text.extend_from_slice(value);
            }
            log.taken.shrink_to_fit();
            log.text.shrink_to_fit();
            log.from_session.shrink_to_fit();
            Some(log)
        }
    }

    /// The session ended: makes the request its line is written on, and
    /// reads the `$websocket_*` values from `session` (which the caller
    /// drops afterwards). `None` when memory ran out (the line is lost, as
    /// nginx loses it then).
    ///
    /// # Safety
    /// `c` must be the session's live connection; `session` the session
    /// that was in the request's context slot, not used elsewhere meanwhile.
    pub unsafe fn session_ended<T: 'static>(
        self: Box<Self>,
        c: *mut ngx_connection_t,
        session: &mut T,
    ) -> Option<LogLine> {
        // SAFETY: guaranteed by the caller; the request is made in a pool
        // of its own, its arrays sized as nginx sizes a request's.
        unsafe {
            let pool = NonNull::new(ngx_create_pool(4096, (*c).log))?;
            let Some(r) = self.make_request(c, pool.as_ptr()) else {
                ngx_destroy_pool(pool.as_ptr());
                return None;
            };
            let req = RequestRef::from_raw(r.as_ptr());
            if req.lend_ctx(self.ctx_index, session) {
                for &index in &self.from_session {
                    if let Some(v) = ngx_http_get_indexed_variable(r.as_ptr(), index).as_mut() {
                        // Kept as read: the log's flush must not read it again.
                        v.set_no_cacheable(0);
                    }
                }
                req.end_loan(self.ctx_index);
            }
            Some(LogLine {
                pending: self,
                pool,
                r,
            })
        }
    }

    /// A request in `pool` with what the log reads of it.
    ///
    /// # Safety
    /// `c` must be a live connection, `pool` a pool of its own.
    unsafe fn make_request(&self, c: *mut ngx_connection_t, pool: *mut ngx_pool_t) -> Option<NonNull<ngx_http_request_t>> {
        // SAFETY: guaranteed by the caller; the values' text lives in
        // `self`, which the line keeps until it is written.
        unsafe {
            let r: *mut ngx_http_request_t = ngx_pcalloc(pool, core::mem::size_of::<ngx_http_request_t>()).cast();
            let r = NonNull::new(r)?;
            let cmcf = &*(*self.main_conf.add(ngx_http_core_module.ctx_index)).cast::<ngx_http_core_main_conf_t>();
            let nvars = cmcf.variables.nelts;
            let ctx = ngx_pcalloc(pool, core::mem::size_of::<*mut c_void>() * ngx_http_max_module);
            let variables: *mut ngx_http_variable_value_t =
                ngx_pcalloc(pool, core::mem::size_of::<ngx_http_variable_value_t>() * nvars.max(1)).cast();
            if ctx.is_null() || variables.is_null() {
                return None;
            }
            for t in &self.taken {
                let v = &mut *variables.add(t.index);
                v.data = self.text.as_ptr().add(t.start).cast_mut();
                v.set_len(t.len as u32);
                v.set_valid(u32::from(!t.not_found));
                v.set_not_found(u32::from(t.not_found));
                v.set_escape(u32::from(t.escape));
                v.set_no_cacheable(0);
            }
            let q = &mut *r.as_ptr();
            q.signature = 0x5054_5448; // NGX_HTTP_MODULE, as nginx marks its requests
            q.connection = c;
            q.pool = pool;
            q.main = r.as_ptr();
            q.set_count(1);
            q.ctx = ctx.cast();
            q.variables = variables;
            q.main_conf = self.main_conf;
            q.srv_conf = self.srv_conf;
            q.loc_conf = self.loc_conf;
            q.http_connection = self.http_connection;
            q.start_sec = self.start_sec;
            q.start_msec = self.start_msec;
            q.headers_out.status = self.status;
            q.headers_out.content_length_n = -1;
            q.headers_out.last_modified_time = -1;
            q.err_status = self.err_status;
            q.http_version = self.http_version;
            q.method = self.method;
            q.header_size = self.header_size;
            q.request_length = self.request_length;
            q.set_request_complete(u32::from(self.request_complete));
            q.set_pipeline(u32::from(self.pipeline));
            Some(r)
        }
    }
}

/// A session's line, ready to be written once its connection closes.
pub struct LogLine {
    pending: Box<PendingLog>,
    pool: NonNull<ngx_pool_t>,
    r: NonNull<ngx_http_request_t>,
}

impl LogLine {
    /// Runs nginx's log phase on the line's request, then frees it.
    pub fn write(self) {
        // SAFETY: the request `session_ended` made, whose configuration and
        // connection are live; its pool is destroyed once, here.
        unsafe {
            let r = self.r.as_ptr();
            // As nginx says of errors while it logs a request.
            (*(*(*r).connection).log).action = c"logging request".as_ptr().cast_mut();
            let cmcf = &*core_main_conf(r);
            let handlers = &cmcf.phases[NGX_HTTP_LOG_PHASE as usize].handlers;
            let handlers = core::slice::from_raw_parts(handlers.elts.cast::<ngx::ffi::ngx_http_handler_pt>(), handlers.nelts);
            for handler in handlers.iter().flatten() {
                handler(r);
            }
            ngx_destroy_pool(self.pool.as_ptr());
        }
        drop(self.pending);
    }
}
