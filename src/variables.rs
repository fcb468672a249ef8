//! The `$websocket_*` variables, for `log_format`: what a session did, read
//! when its access-log line is written at the end.

use core::any::Any;
use core::ptr::NonNull;

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_int_t, ngx_pnalloc, ngx_str_t,
    ngx_variable_value_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE, NGX_OK,
};

use crate::metrics;
use crate::ngx_detach::{Detach, DetachedSession};
use crate::ngx_io::RequestRef;
use crate::stats::Stats;

/// A session of this module, as the request's module context holds it
/// (boxed once more: a thin pointer fits the context slot): the variables
/// read its [`SessionLog`] through this trait, whatever the session.
pub trait LoggedSession: DetachedSession + Any {
    /// What the access log reports of the session.
    fn session_log(&self) -> &SessionLog;
    /// For the session's own handlers, to get their type back.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The module context of a request that a session of this module serves.
pub type SessionCtx = Box<dyn LoggedSession>;

impl DetachedSession for SessionCtx {
    fn detach(&mut self) -> &mut Detach {
        (**self).detach()
    }

    fn shut_down(&mut self) {
        (**self).shut_down()
    }
}

/// What the access log reports of a session.
#[derive(Debug, Default)]
pub struct SessionLog {
    /// The client leg's counts.
    pub stats: Stats,
    pub subprotocol: Option<String>,
    pub upstream_addr: Option<String>,
    pub upstream_reused: bool,
    /// What was added to the metrics so far.
    pub reported: Stats,
}

impl SessionLog {
    pub fn new(subprotocol: Option<String>) -> Self {
        SessionLog {
            subprotocol,
            ..SessionLog::default()
        }
    }

    /// Takes the client leg's latest counts into the log and the metrics.
    pub fn update(&mut self, stats: Stats) {
        self.stats = stats;
        metrics::report_traffic(&self.stats, &mut self.reported);
    }
}

type Getter = fn(&SessionLog) -> Option<String>;

const VARIABLES: [(&str, Getter); 10] = [
    ("websocket_messages_in", |l| {
        Some(l.stats.messages_in.to_string())
    }),
    ("websocket_messages_out", |l| {
        Some(l.stats.messages_out.to_string())
    }),
    ("websocket_bytes_in", |l| Some(l.stats.bytes_in.to_string())),
    ("websocket_bytes_out", |l| {
        Some(l.stats.bytes_out.to_string())
    }),
    ("websocket_compressed_in", |l| {
        Some(l.stats.compressed_in.to_string())
    }),
    ("websocket_compressed_out", |l| {
        Some(l.stats.compressed_out.to_string())
    }),
    ("websocket_close_code", |l| {
        Some(l.stats.close_code.map_or("-".into(), |c| c.to_string()))
    }),
    ("websocket_subprotocol", |l| {
        Some(l.subprotocol.clone().unwrap_or_default())
    }),
    ("websocket_upstream_addr", |l| l.upstream_addr.clone()),
    ("websocket_upstream_reused", |l| {
        l.upstream_addr
            .as_ref()
            .map(|_| if l.upstream_reused { "1" } else { "0" }.into())
    }),
];

/// Registers the variables (the module's `preconfiguration`).
///
/// # Safety
/// Called by nginx with the configuration being loaded.
pub unsafe extern "C" fn add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    for (index, (name, _)) in VARIABLES.iter().enumerate() {
        let mut name = ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        };
        // SAFETY: nginx copies the name; the variable lives with the cycle.
        let var = unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as _) };
        let Some(var) = NonNull::new(var) else {
            return NGX_ERROR as ngx_int_t;
        };
        // SAFETY: a variable nginx just created for us.
        unsafe {
            (*var.as_ptr()).get_handler = Some(get_variable);
            (*var.as_ptr()).data = index;
        }
    }
    NGX_OK as ngx_int_t
}

/// The get handler of every `$websocket_*` variable; `data` is its index.
unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls variable handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    // Found by its type among the request's owned contexts: a context of
    // another type (a session stored otherwise) reads as no session, never
    // as a wrong one.
    let ctx: Option<NonNull<SessionCtx>> = r.owned_ctx::<SessionCtx>();
    // SAFETY: a `SessionCtx` that the request owns (`set_owned_ctx`);
    // nothing else uses it during this call.
    let value = ctx.and_then(|ctx| (VARIABLES[data].1)(unsafe { ctx.as_ref() }.session_log()));
    // SAFETY: `v` is the value slot nginx passes; the text is copied into
    // the request pool.
    unsafe {
        let Some(value) = value else {
            (*v).set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        let pool = (*foreign_types::ForeignTypeRef::as_ptr(&*r)).pool;
        let p: *mut u8 = ngx_pnalloc(pool, value.len().max(1)).cast();
        if p.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        core::ptr::copy_nonoverlapping(value.as_ptr(), p, value.len());
        (*v).data = p;
        (*v).set_len(value.len() as u32);
        (*v).set_valid(1);
        (*v).set_no_cacheable(1);
        (*v).set_not_found(0);
    }
    NGX_OK as ngx_int_t
}
