//! Channels: messages between sessions and across workers (SPEC
//! "Channels"). Its own nginx module in the same shared object, so that
//! its directives, configuration and process hooks stay out of the
//! WebSocket module's: `ngx_http_websocket_channel_module`.
//!
//! - [`shm`]: a zone's channels and stored messages in shared memory;
//! - [`store`]: where a zone's channels live (shared memory, or Redis);
//! - [`local`]: a worker's subscribers and their inboxes;
//! - [`remote`]: a worker's subscribers of a zone in Redis (`redis=`);
//! - [`ipc`]: waking the other workers (a datagram socket per worker);
//! - [`publish`]: the `websocket_publish` HTTP endpoint;
//! - [`subscriber`]: the `websocket_subscribe` WebSocket session.

pub mod ipc;
pub mod local;
pub mod publish;
pub mod remote;
pub mod shm;
pub mod store;
pub mod subscriber;

use core::ffi::{c_char, c_void};
use core::fmt::Write;
use core::ptr::{self, addr_of, NonNull};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_conf_t, ngx_core_conf_t, ngx_cycle_t, ngx_flag_t,
    ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_parse_size, ngx_parse_time,
    ngx_shared_memory_add, ngx_str_t, ngx_uint_t, NGX_CONF_2MORE, NGX_CONF_FLAG, NGX_CONF_TAKE1,
    NGX_CONF_TAKE2, NGX_ERROR, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_OK,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError,
    NgxHttpCoreModule,
};
use ngx::{ngx_log_error, ngx_string};

use crate::ngx_io::{conf_args, conf_error, set_content_handler, ComplexValue};
use crate::redis::channels::History;
use shm::{ShmZone, MAX_WORKERS};
use store::{RedisZone, Store};

/// Marker type of the channel module.
pub struct ChannelModule;

impl HttpModule for ChannelModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: written by nginx only while loading the configuration.
        unsafe { &*addr_of!(ngx_http_websocket_channel_module) }
    }
}

// SAFETY: `MainConf` is what `create_main_conf` allocates for this module.
unsafe impl HttpModuleMainConf for ChannelModule {
    type MainConf = MainConf;
}

// SAFETY: `ChannelConf` is what `create_loc_conf` allocates for this module.
unsafe impl HttpModuleLocationConf for ChannelModule {
    type LocationConf = ChannelConf;
}

/// The zones (`websocket_channel_zone`), boxed so their addresses hold.
#[derive(Default)]
pub struct MainConf {
    // Boxed: locations keep the address of their zone while more are added.
    #[allow(clippy::vec_box)]
    zones: Vec<Box<Store>>,
}

/// A zone named by a location: it lives as long as the configuration.
#[derive(Clone, Copy)]
pub struct ZoneRef(NonNull<Store>);

impl ZoneRef {
    pub fn get(&self) -> &'static Store {
        // SAFETY: the store is boxed in the main configuration, which lives
        // as long as the cycle, and a worker's cycle as long as the worker.
        unsafe { &*self.0.as_ptr() }
    }
}

/// Per-location configuration of the channel directives.
pub struct ChannelConf {
    /// `websocket_subscribe ZONE CHANNEL` (location only).
    pub subscribe: Option<(ZoneRef, ComplexValue)>,
    /// `websocket_publish ZONE CHANNEL` (location only).
    pub publish: Option<(ZoneRef, ComplexValue)>,
    pub channel_publish: ngx_flag_t,
    pub envelope: ngx_flag_t,
    pub resume: Option<ComplexValue>,
}

impl Default for ChannelConf {
    fn default() -> Self {
        ChannelConf {
            subscribe: None,
            publish: None,
            channel_publish: -1,
            envelope: -1,
            resume: None,
        }
    }
}

impl Merge for ChannelConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        for (conf, prev) in [
            (&mut self.channel_publish, prev.channel_publish),
            (&mut self.envelope, prev.envelope),
        ] {
            if *conf == -1 {
                *conf = if prev == -1 { 0 } else { prev };
            }
        }
        self.resume = self.resume.or(prev.resume);
        Ok(())
    }
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: Some(ChannelModule::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(ChannelModule::create_loc_conf),
    merge_loc_conf: Some(ChannelModule::merge_loc_conf),
};

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

const fn command(
    name: ngx_str_t,
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    conf: usize,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf,
        offset,
        post: ptr::null_mut(),
    }
}

static mut COMMANDS: [ngx_command_t; 7] = [
    command(
        ngx_string!("websocket_channel_zone"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE,
        cmd_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("websocket_subscribe"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE2,
        cmd_subscribe,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("websocket_publish"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE2,
        cmd_publish,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("websocket_channel_publish"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        core::mem::offset_of!(ChannelConf, channel_publish),
    ),
    command(
        ngx_string!("websocket_channel_envelope"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        NGX_HTTP_LOC_CONF_OFFSET,
        core::mem::offset_of!(ChannelConf, envelope),
    ),
    command(
        ngx_string!("websocket_channel_resume"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_resume,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
];

#[cfg_attr(not(test), used)]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_websocket_channel_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as _,
    // SAFETY: nginx reads the command table through this pointer and never
    // writes it; the array ends with a null command.
    commands: unsafe { addr_of!(COMMANDS[0]) as *mut _ },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(init_module),
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// The current cycle's zones.
fn zones() -> &'static [Box<Store>] {
    // SAFETY: the current cycle lives as long as the process uses it.
    let cycle = unsafe { &*ngx::ffi::ngx_cycle };
    ChannelModule::main_conf(cycle).map_or(&[], |m| &m.zones)
}

/// In the master: the zones tell workers apart by their number.
extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx calls init_module with the new cycle.
    let cycle = unsafe { &*cycle };
    if ChannelModule::main_conf(cycle).is_none_or(|m| m.zones.is_empty()) {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: the core module's configuration exists in every cycle.
    let workers = unsafe {
        let ccf: *const ngx_core_conf_t =
            (*cycle.conf_ctx.add(ngx::ffi::ngx_core_module.index)).cast();
        (*ccf).worker_processes.max(1) as usize
    };
    if workers > MAX_WORKERS {
        ngx_log_error!(
            NGX_LOG_EMERG,
            cycle.log,
            "websocket_channel_zone supports at most {MAX_WORKERS} worker processes"
        );
        return NGX_ERROR as ngx_int_t;
    }
    NGX_OK as ngx_int_t
}

/// In each worker: its wake socket joins the event loop and the zones.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let zones: Vec<&ShmZone> = zones().iter().map(|s| s.zone()).collect();
    if zones.is_empty() {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: a plain read of the process type.
    let process = unsafe { ngx::ffi::ngx_process } as u32;
    if process != ngx::ffi::NGX_PROCESS_WORKER && process != ngx::ffi::NGX_PROCESS_SINGLE {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: the worker's cycle.
    if let Err(e) = unsafe { ipc::register(cycle, &zones) } {
        // SAFETY: as above.
        ngx_log_error!(
            NGX_LOG_EMERG,
            unsafe { (*cycle).log },
            "websocket channels: {e}"
        );
        return NGX_ERROR as ngx_int_t;
    }
    // [redis] the worker's links to the zones' Redis.
    for store in self::zones() {
        remote::start(store);
    }
    NGX_OK as ngx_int_t
}

/// After a wake: zones whose wakes for this worker were lost.
pub fn check_overflow() {
    let me = local::me();
    for store in zones() {
        if store.zone().take_overflow(me) {
            local::fetch_all(Some(store));
        }
    }
}

/// The channel metrics, appended to `websocket_status`.
pub fn render_metrics(out: &mut String) {
    let zones = zones();
    if zones.is_empty() {
        return;
    }
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn((u64, u64, u64)) -> u64,
    );
    let families: [Family; 3] = [
        (
            "nginx_websocket_channel_published_total",
            "counter",
            "Messages published to the zone's channels.",
            |c| c.0,
        ),
        (
            "nginx_websocket_channel_delivered_total",
            "counter",
            "Messages handed to subscribers (one per subscriber).",
            |c| c.1,
        ),
        (
            "nginx_websocket_channel_subscribers",
            "gauge",
            "Subscribers of the zone's channels, on every worker.",
            |c| c.2,
        ),
    ];
    for (name, kind, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for store in zones {
            let value = pick(store.zone().counters());
            let zone = store.name().replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{zone=\"{zone}\"}} {value}");
        }
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------- directives

fn conf_fail(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    // SAFETY: `cf` is the configuration being parsed.
    unsafe { conf_error(cf, msg) };
    NGX_CONF_ERROR
}

/// `websocket_channel_zone NAME SIZE [history=N] [history_time=TIME] [redis=URL];`
unsafe extern "C" fn cmd_zone(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    // SAFETY: `cf` is the configuration being parsed.
    let args: Vec<&[u8]> = unsafe { conf_args(cf) }.collect();
    let (name, size) = (args[0], args[1]);
    if name.is_empty() {
        return conf_fail(cf, "invalid zone name \"\" in \"websocket_channel_zone\"");
    }
    let name_str = String::from_utf8_lossy(name).into_owned();
    if main.zones.iter().any(|z| z.name() == name_str) {
        return conf_fail(
            cf,
            &format!("duplicate websocket_channel_zone \"{name_str}\""),
        );
    }
    let mut s = ngx_str_t {
        len: size.len(),
        data: size.as_ptr().cast_mut(),
    };
    // SAFETY: parses the argument in place.
    let bytes = unsafe { ngx_parse_size(&mut s) };
    // nginx's smallest slab zone is 8 pages.
    if bytes < 8 * 4096 {
        return conf_fail(
            cf,
            &format!(
                "invalid zone size \"{}\" in \"websocket_channel_zone\" (at least 32k)",
                size.escape_ascii()
            ),
        );
    }
    let (mut history, mut history_time_ms) = (0u32, 0u64);
    let mut redis = None;
    for arg in &args[2..] {
        if let Some(n) = arg.strip_prefix(b"history=") {
            match core::str::from_utf8(n).ok().and_then(|n| n.parse().ok()) {
                Some(n) => history = n,
                None => {
                    return conf_fail(
                        cf,
                        &format!(
                            "invalid history \"{}\" in \"websocket_channel_zone\"",
                            arg.escape_ascii()
                        ),
                    )
                }
            }
        } else if let Some(t) = arg.strip_prefix(b"history_time=") {
            let mut s = ngx_str_t {
                len: t.len(),
                data: t.as_ptr().cast_mut(),
            };
            // SAFETY: parses the argument in place.
            let ms = unsafe { ngx_parse_time(&mut s, 0) };
            if ms < 0 {
                return conf_fail(
                    cf,
                    &format!(
                        "invalid history_time \"{}\" in \"websocket_channel_zone\"",
                        arg.escape_ascii()
                    ),
                );
            }
            history_time_ms = ms as u64;
        } else if let Some(url) = arg.strip_prefix(b"redis=") {
            let text = String::from_utf8_lossy(url).into_owned();
            let url = match crate::redis::url::parse(&text) {
                Ok(url) => url,
                Err(e) => return conf_fail(cf, &format!("{e} in \"websocket_channel_zone\"")),
            };
            // SAFETY: `cf` is the configuration being parsed.
            let addrs = match unsafe { crate::redis::conn::resolve(cf, &url) } {
                Ok(addrs) => addrs,
                Err(e) => return conf_fail(cf, &format!("{e} in \"websocket_channel_zone\"")),
            };
            redis = Some(crate::redis::conn::Settings::new(
                url.to_string(),
                addrs,
                url.db,
            ));
        } else {
            return conf_fail(
                cf,
                &format!(
                    "invalid parameter \"{}\" in \"websocket_channel_zone\"",
                    arg.escape_ascii()
                ),
            );
        }
    }
    let zone_name = format!("websocket_channel:{name_str}");
    // The zone's name must outlive the configuration: copy it to its pool.
    // SAFETY: the pool of the configuration being loaded.
    let Some(mut zname) = (unsafe { ngx_str_t::from_bytes((*cf).pool, zone_name.as_bytes()) })
    else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: the tag is this module, as nginx's own modules do.
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut zname,
            bytes as usize,
            ptr::addr_of_mut!(ngx_http_websocket_channel_module).cast(),
        )
    };
    let Some(zone) = NonNull::new(zone) else {
        return NGX_CONF_ERROR;
    };
    // SAFETY: a zone nginx just registered; it calls `init` when mapping it.
    unsafe { (*zone.as_ptr()).init = Some(shm::init_zone) };
    // SAFETY: `init_zone` maps this zone.
    let shm = unsafe { ShmZone::new(zone, name_str, history, history_time_ms) };
    let store = match redis {
        None => Store::Shm(shm),
        Some(settings) => Store::Redis(
            shm,
            RedisZone {
                settings,
                history: History {
                    count: history as usize,
                    time_ms: history_time_ms,
                },
            },
        ),
    };
    main.zones.push(Box::new(store));
    NGX_CONF_OK
}

/// The zone named by a location directive: defined earlier in `http`.
fn find_zone(cf: *mut ngx_conf_t, name: &[u8]) -> Option<ZoneRef> {
    // SAFETY: `cf` is the configuration being parsed.
    let main = ChannelModule::main_conf(unsafe { &*cf })?;
    main.zones
        .iter()
        .find(|z| z.name().as_bytes() == name)
        .map(|z| ZoneRef(NonNull::from(&**z)))
}

/// `websocket_subscribe` and `websocket_publish`: ZONE CHANNEL.
unsafe fn zone_and_channel(
    cf: *mut ngx_conf_t,
    directive: &str,
) -> Result<(ZoneRef, ComplexValue), *mut c_char> {
    // SAFETY: `cf` is the configuration being parsed.
    let args: Vec<&[u8]> = unsafe { conf_args(cf) }.collect();
    let Some(zone) = find_zone(cf, args[0]) else {
        return Err(conf_fail(
            cf,
            &format!(
                "unknown websocket_channel_zone \"{}\" in \"{directive}\" (define it before, in http)",
                args[0].escape_ascii()
            ),
        ));
    };
    if args[1].is_empty() {
        return Err(conf_fail(
            cf,
            &format!("empty channel name in \"{directive}\""),
        ));
    }
    // SAFETY: as above.
    let cv = unsafe { ComplexValue::compile(cf, args[1]) }.map_err(|_| NGX_CONF_ERROR)?;
    Ok((zone, cv))
}

/// Another content directive already claimed the location.
fn has_content_handler(cf: *mut ngx_conf_t) -> bool {
    // SAFETY: `cf` is the configuration being parsed, in a location.
    NgxHttpCoreModule::location_conf(unsafe { &*cf }).is_some_and(|clcf| clcf.handler.is_some())
}

/// `websocket_subscribe ZONE CHANNEL;`
unsafe extern "C" fn cmd_subscribe(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf.
    let conf = unsafe { &mut *conf.cast::<ChannelConf>() };
    if conf.subscribe.is_some() || conf.publish.is_some() || has_content_handler(cf) {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: as nginx passes it.
    match unsafe { zone_and_channel(cf, "websocket_subscribe") } {
        Ok(v) => conf.subscribe = Some(v),
        Err(rv) => return rv,
    }
    // SAFETY: as above, inside a location block.
    if unsafe { set_content_handler(cf, subscriber::handler) }.is_err() {
        return NGX_CONF_ERROR;
    }
    NGX_CONF_OK
}

/// `websocket_publish ZONE CHANNEL;`
unsafe extern "C" fn cmd_publish(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf.
    let conf = unsafe { &mut *conf.cast::<ChannelConf>() };
    if conf.subscribe.is_some() || conf.publish.is_some() || has_content_handler(cf) {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: as nginx passes it.
    match unsafe { zone_and_channel(cf, "websocket_publish") } {
        Ok(v) => conf.publish = Some(v),
        Err(rv) => return rv,
    }
    // SAFETY: as above, inside a location block.
    if unsafe { set_content_handler(cf, publish::handler) }.is_err() {
        return NGX_CONF_ERROR;
    }
    NGX_CONF_OK
}

/// `websocket_channel_resume VALUE;`
unsafe extern "C" fn cmd_resume(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf.
    let conf = unsafe { &mut *conf.cast::<ChannelConf>() };
    if conf.resume.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf` is the configuration being parsed.
    let value = unsafe { conf_args(cf) }.next().unwrap_or_default();
    // SAFETY: as above.
    match unsafe { ComplexValue::compile(cf, value) } {
        Ok(cv) => {
            conf.resume = Some(cv);
            NGX_CONF_OK
        }
        Err(_) => NGX_CONF_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::{base64, json_string};

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\xff\x00\x10\x80"), "/wAQgA==");
    }

    #[test]
    fn json_strings_escape() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
