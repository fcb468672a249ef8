//! `websocket_limit_zone KEY zone=NAME:SIZE rate=RATE;` and
//! `websocket_limit zone=NAME [burst=N] [close];`, parsed as nginx parses
//! `limit_req_zone` and `limit_req`. A zone may be defined after its
//! first use in the `http {}` block; one that is never defined is
//! reported at the merge with the file and line of its use.

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_pagesize, ngx_palloc, ngx_parse_size, ngx_shared_memory_add,
    ngx_str_t, NGX_LOG_EMERG,
};
use ngx::ngx_log_error;

use super::bucket::{parse_burst, parse_rate};
use super::zone::{init_zone, tag, Zone, ZoneConf};
use crate::config::LocConf;
use crate::ngx_io::{conf_args, conf_error, ComplexValue};

/// One `websocket_limit` of a location.
#[derive(Clone)]
pub struct Rule {
    pub zone: Zone,
    /// Milli-messages.
    pub burst: u64,
    /// Close with 1008 instead of pausing.
    pub close: bool,
    /// Where it was written, for the error when its zone is unknown.
    file: String,
    line: usize,
}

/// An `ngx_str_t` over `len` bytes of an argument (which lives in the
/// configuration's pool, as the zone's name must).
fn arg_str(arg: &[u8]) -> ngx_str_t {
    ngx_str_t {
        len: arg.len(),
        data: arg.as_ptr().cast_mut(),
    }
}

/// `websocket_limit_zone KEY zone=NAME:SIZE rate=RATE;` (http level).
///
/// # Safety
/// Called by nginx as a directive handler.
pub unsafe extern "C" fn cmd_limit_zone(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: `cf` is the configuration being parsed.
    let mut args = unsafe { conf_args(cf) };
    let key = args.next().unwrap_or_default();
    let mut zone: Option<(&[u8], usize)> = None;
    let mut rate = None;
    for arg in args {
        let fail = |what: &str| {
            // SAFETY: as above.
            unsafe {
                conf_error(
                    cf,
                    &format!(
                        "{what} \"{}\" in \"websocket_limit_zone\"",
                        arg.escape_ascii()
                    ),
                )
            };
            NGX_CONF_ERROR
        };
        if let Some(spec) = arg.strip_prefix(b"zone=") {
            let Some(colon) = spec.iter().position(|b| *b == b':') else {
                return fail("invalid zone size");
            };
            let (name, size) = (&spec[..colon], &spec[colon + 1..]);
            let mut s = arg_str(size);
            // SAFETY: nginx's size parser reads the string only.
            let size = unsafe { ngx_parse_size(&mut s) };
            if size < 0 {
                return fail("invalid zone size");
            }
            // SAFETY: set by nginx at startup.
            if (size as usize) < 8 * unsafe { ngx_pagesize } {
                let msg = format!(
                    "zone \"{}\" is too small in \"websocket_limit_zone\"",
                    arg.escape_ascii()
                );
                // SAFETY: as above.
                unsafe { conf_error(cf, &msg) };
                return NGX_CONF_ERROR;
            }
            zone = Some((name, size as usize));
        } else if let Some(r) = arg.strip_prefix(b"rate=") {
            match parse_rate(r) {
                Some(r) => rate = Some(r),
                None => return fail("invalid rate"),
            }
        } else {
            return fail("invalid parameter");
        }
    }
    let Some((name, size)) = zone.filter(|(name, _)| !name.is_empty()) else {
        // SAFETY: as above.
        unsafe { conf_error(cf, "\"websocket_limit_zone\" must have \"zone\" parameter") };
        return NGX_CONF_ERROR;
    };
    let Some(rate) = rate else {
        // SAFETY: as above.
        unsafe { conf_error(cf, "\"websocket_limit_zone\" must have \"rate\" parameter") };
        return NGX_CONF_ERROR;
    };
    // SAFETY: as above.
    let Ok(key_value) = (unsafe { ComplexValue::compile(cf, key) }) else {
        return NGX_CONF_ERROR;
    };
    let mut name = arg_str(name);
    // SAFETY: as above; the tag keeps our zones apart from other modules'.
    let shm = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag()) };
    let Some(shm) = NonNull::new(shm) else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: a zone nginx just registered or found, with our tag.
    let zone = unsafe { Zone::from_ptr(shm) };
    if let Some(defined) = zone.conf() {
        let msg = format!(
            "websocket_limit_zone \"{}\" is already bound to key \"{}\"",
            name, defined.key_source
        );
        // SAFETY: as above.
        unsafe { conf_error(cf, &msg) };
        return NGX_CONF_ERROR;
    }
    // SAFETY: the configuration's pool outlives the zone's use; the
    // allocation is written whole before nginx sees it.
    unsafe {
        let data: *mut ZoneConf = ngx_palloc((*cf).pool, core::mem::size_of::<ZoneConf>()).cast();
        if data.is_null() {
            return NGX_CONF_ERROR;
        }
        data.write(ZoneConf::new(key_value, arg_str(key), rate));
        let shm = shm.as_ptr();
        (*shm).init = Some(init_zone);
        (*shm).data = data.cast();
    }
    NGX_CONF_OK
}

/// `websocket_limit zone=NAME [burst=N] [close];` (any level).
///
/// # Safety
/// Called by nginx as a directive handler of this module's location
/// configuration.
pub unsafe extern "C" fn cmd_limit(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    let mut zone = None;
    let mut burst = 0;
    let mut close = false;
    // SAFETY: `cf` is the configuration being parsed.
    for arg in unsafe { conf_args(cf) } {
        let fail = |what: &str| {
            // SAFETY: as above.
            unsafe {
                conf_error(
                    cf,
                    &format!("{what} \"{}\" in \"websocket_limit\"", arg.escape_ascii()),
                )
            };
            NGX_CONF_ERROR
        };
        if let Some(name) = arg.strip_prefix(b"zone=").filter(|n| !n.is_empty()) {
            let mut name = arg_str(name);
            // SAFETY: as above; size 0 finds the zone or reserves its name.
            let shm = unsafe { ngx_shared_memory_add(cf, &mut name, 0, tag()) };
            let Some(shm) = NonNull::new(shm) else {
                return NGX_CONF_ERROR;
            };
            // SAFETY: a zone with our tag.
            zone = Some(unsafe { Zone::from_ptr(shm) });
        } else if let Some(n) = arg.strip_prefix(b"burst=") {
            match parse_burst(n) {
                Some(b) => burst = b,
                None => return fail("invalid burst value"),
            }
        } else if arg == b"close" {
            close = true;
        } else {
            return fail("invalid parameter");
        }
    }
    let Some(zone) = zone else {
        // SAFETY: as above.
        unsafe { conf_error(cf, "\"websocket_limit\" must have \"zone\" parameter") };
        return NGX_CONF_ERROR;
    };
    let rules = conf.rate_limits.get_or_insert_with(Vec::new);
    if rules.iter().any(|r| r.zone.name() == zone.name()) {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: while parsing, `conf_file` is the file being read.
    let (file, line) = unsafe {
        let f = (*cf).conf_file;
        ((*f).file.name.to_string(), (*f).line)
    };
    rules.push(Rule {
        zone,
        burst,
        close,
        file,
        line,
    });
    NGX_CONF_OK
}

/// At the merge, when every zone of the `http {}` block is known: a rule
/// naming a zone no `websocket_limit_zone` defined fails the configuration.
///
/// # Safety
/// `cf` is the configuration being merged.
pub unsafe fn check_zones(cf: *mut ngx_conf_t, conf: &LocConf) -> bool {
    let Some(rules) = conf.rate_limits.as_deref() else {
        return true;
    };
    if let Some(rule) = rules.iter().find(|r| r.zone.conf().is_none()) {
        // SAFETY: `cf` is the configuration being merged.
        let log = unsafe { (*cf).log };
        ngx_log_error!(
            NGX_LOG_EMERG,
            log,
            "unknown websocket_limit_zone \"{}\" in \"websocket_limit\" in {}:{}",
            String::from_utf8_lossy(rule.zone.name()),
            rule.file,
            rule.line
        );
        return false;
    }
    true
}
