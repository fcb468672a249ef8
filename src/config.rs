//! Directives, the location configuration they fill, and its merge.
//!
//! Scalar directives use nginx's own slot setters (sizes `64k`, times `5s`,
//! `on|off`), so values parse and fail exactly as in nginx's C modules.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_set_flag_slot, ngx_conf_set_msec_slot, ngx_conf_set_num_slot,
    ngx_conf_set_size_slot, ngx_conf_set_str_slot, ngx_conf_t, ngx_flag_t,
    ngx_int_t, ngx_msec_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE123, NGX_CONF_TAKE2,
    NGX_CONF_TAKE3, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_SRV_CONF,
};
use ngx::http::{Merge, MergeConfigError};
use ngx::ngx_string;

use crate::compression::DeflateSettings;
pub use crate::stats::Limits;
use crate::upgrade::{Deflate, ServerOptions};
use crate::ngx_io::{conf_args, conf_error, set_content_handler, upstream_add, ComplexValue};
use crate::ngx_ssl::{ClientTls, TlsSettings};
use crate::pool::PoolSettings;
use crate::protocol::deflate::DeflateConfig;
use crate::url::{UrlError, WsUrl};

const UNSET_SIZE: usize = usize::MAX;
const UNSET_MSEC: ngx_msec_t = ngx_msec_t::MAX;
const UNSET_FLAG: ngx_flag_t = -1;
const UNSET_INT: ngx_int_t = -1;

/// `websocket_max_payload_len` default: the largest 16-bit frame length.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 65535;
/// `websocket_ping_timeout` default, milliseconds.
pub const DEFAULT_PING_TIMEOUT_MS: ngx_msec_t = 30_000;
/// `websocket_timeout` default, milliseconds.
pub const DEFAULT_TIMEOUT_MS: ngx_msec_t = 60_000;
/// `websocket_deflate_mem_level` default: zlib's hash table and block buffer
/// take 16 KiB per compressing connection instead of zlib's 128 KiB (level
/// 8), for little loss on WebSocket-sized messages.
pub const DEFAULT_DEFLATE_MEM_LEVEL: ngx_int_t = 5;

/// Per-location configuration. `#[repr(C)]` because nginx's slot setters write
/// the scalar fields through their byte offsets.
#[repr(C)]
pub struct LocConf {
    pub max_payload_len: usize,
    pub max_recv_len: usize,
    pub max_send_len: usize,
    pub timeout: ngx_msec_t,
    pub send_masked: ngx_flag_t,
    /// `websocket_protocols`; `None` inherits from the enclosing level.
    pub protocols: Option<Vec<String>>,
    /// `websocket_origins`; `None` inherits, and no list means any Origin.
    pub origins: Option<Vec<Vec<u8>>>,
    /// Set by `websocket_echo` (location only, never inherited).
    pub echo: bool,
    /// Set by `websocket_status` (location only, never inherited).
    pub status: bool,
    /// Set by `websocket_pass` (location only, never inherited).
    pub pass: Option<PassTarget>,
    pub connect_timeout: ngx_msec_t,
    /// `websocket_pass_header`; `None` inherits the enclosing level's list.
    pub pass_headers: Option<Vec<(String, ComplexValue)>>,
    pub pass_host: Option<ComplexValue>,
    pub pass_origin: Option<ComplexValue>,
    pub pass_send_unmasked: ngx_flag_t,
    pub ssl_verify: ngx_flag_t,
    pub ssl_trusted_certificate: ngx_str_t,
    pub ssl_server_name: ngx_str_t,
    pub ssl_certificate: ngx_str_t,
    pub ssl_certificate_key: ngx_str_t,
    /// The TLS context of a `wss://` pass, made when the configuration loads.
    pub ssl: Option<ClientTls>,
    pub keepalive: ngx_int_t,
    pub keepalive_timeout: ngx_msec_t,
    pub keepalive_backlog: ngx_int_t,
    pub keepalive_pool: Option<ComplexValue>,
    /// 0 = off.
    pub ping_interval: ngx_msec_t,
    pub ping_timeout: ngx_msec_t,
    pub deflate: ngx_flag_t,
    pub deflate_level: ngx_int_t,
    pub deflate_mem_level: ngx_int_t,
    pub deflate_window_bits: ngx_int_t,
    pub deflate_context_takeover: ngx_flag_t,
    pub deflate_min_length: usize,
    /// 0 = off.
    pub max_session_time: ngx_msec_t,
    pub shutdown_spread: ngx_msec_t,
    /// [limit] `websocket_limit` rules; `None` inherits the enclosing
    /// level's list (as `limit_req`).
    pub rate_limits: Option<Vec<crate::limit::conf::Rule>>,
}

/// Where `websocket_pass` connects.
#[derive(Clone)]
pub enum PassTarget {
    /// A URL known when the configuration loads; the `upstream {}` block
    /// that picks the peer (named, or implicit for `host:port`, made here)
    /// is what the client finds by the URL's host and port.
    Static { url: WsUrl },
    /// A URL with variables, parsed per request.
    Variable(ComplexValue),
}

impl PassTarget {
    /// Whether connections may need TLS.
    fn may_use_tls(&self) -> bool {
        match self {
            PassTarget::Static { url, .. } => url.tls,
            PassTarget::Variable(_) => true,
        }
    }
}

impl Default for LocConf {
    fn default() -> Self {
        LocConf {
            max_payload_len: UNSET_SIZE,
            max_recv_len: UNSET_SIZE,
            max_send_len: UNSET_SIZE,
            timeout: UNSET_MSEC,
            send_masked: UNSET_FLAG,
            protocols: None,
            origins: None,
            echo: false,
            status: false,
            pass: None,
            connect_timeout: UNSET_MSEC,
            pass_headers: None,
            pass_host: None,
            pass_origin: None,
            pass_send_unmasked: UNSET_FLAG,
            ssl_verify: UNSET_FLAG,
            ssl_trusted_certificate: ngx_str_t::empty(),
            ssl_server_name: ngx_str_t::empty(),
            ssl_certificate: ngx_str_t::empty(),
            ssl_certificate_key: ngx_str_t::empty(),
            ssl: None,
            keepalive: UNSET_INT,
            keepalive_timeout: UNSET_MSEC,
            keepalive_backlog: UNSET_INT,
            keepalive_pool: None,
            ping_interval: UNSET_MSEC,
            ping_timeout: UNSET_MSEC,
            deflate: UNSET_FLAG,
            deflate_level: UNSET_INT,
            deflate_mem_level: UNSET_INT,
            deflate_window_bits: UNSET_INT,
            deflate_context_takeover: UNSET_FLAG,
            deflate_min_length: UNSET_SIZE,
            max_session_time: UNSET_MSEC,
            shutdown_spread: UNSET_MSEC,
            rate_limits: None,
        }
    }
}

fn merge_value<T: Copy + PartialEq>(conf: &mut T, prev: T, unset: T, default: T) {
    if *conf == unset {
        *conf = if prev == unset { default } else { prev };
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        merge_value(
            &mut self.max_payload_len,
            prev.max_payload_len,
            UNSET_SIZE,
            DEFAULT_MAX_PAYLOAD_LEN,
        );
        // recv/send limits stay unset when not configured anywhere, so that they
        // follow this level's max_payload_len (see `limits`).
        merge_value(
            &mut self.max_recv_len,
            prev.max_recv_len,
            UNSET_SIZE,
            UNSET_SIZE,
        );
        merge_value(
            &mut self.max_send_len,
            prev.max_send_len,
            UNSET_SIZE,
            UNSET_SIZE,
        );
        merge_value(
            &mut self.timeout,
            prev.timeout,
            UNSET_MSEC,
            DEFAULT_TIMEOUT_MS,
        );
        merge_value(&mut self.send_masked, prev.send_masked, UNSET_FLAG, 0);
        if self.protocols.is_none() {
            self.protocols.clone_from(&prev.protocols);
        }
        if self.origins.is_none() {
            self.origins.clone_from(&prev.origins);
        }
        // [limit]
        if self.rate_limits.is_none() {
            self.rate_limits.clone_from(&prev.rate_limits);
        }
        merge_value(
            &mut self.connect_timeout,
            prev.connect_timeout,
            UNSET_MSEC,
            DEFAULT_TIMEOUT_MS,
        );
        if self.pass_headers.is_none() {
            self.pass_headers.clone_from(&prev.pass_headers);
        }
        self.pass_host = self.pass_host.or(prev.pass_host);
        self.pass_origin = self.pass_origin.or(prev.pass_origin);
        merge_value(
            &mut self.pass_send_unmasked,
            prev.pass_send_unmasked,
            UNSET_FLAG,
            0,
        );
        merge_value(&mut self.ssl_verify, prev.ssl_verify, UNSET_FLAG, 0);
        for (conf, prev) in [
            (
                &mut self.ssl_trusted_certificate,
                prev.ssl_trusted_certificate,
            ),
            (&mut self.ssl_server_name, prev.ssl_server_name),
            (&mut self.ssl_certificate, prev.ssl_certificate),
            (&mut self.ssl_certificate_key, prev.ssl_certificate_key),
        ] {
            if conf.data.is_null() {
                *conf = prev;
            }
        }
        merge_value(&mut self.keepalive, prev.keepalive, UNSET_INT, 0);
        merge_value(
            &mut self.keepalive_timeout,
            prev.keepalive_timeout,
            UNSET_MSEC,
            DEFAULT_TIMEOUT_MS,
        );
        merge_value(
            &mut self.keepalive_backlog,
            prev.keepalive_backlog,
            UNSET_INT,
            UNSET_INT,
        );
        self.keepalive_pool = self.keepalive_pool.or(prev.keepalive_pool);
        merge_value(&mut self.ping_interval, prev.ping_interval, UNSET_MSEC, 0);
        merge_value(
            &mut self.max_session_time,
            prev.max_session_time,
            UNSET_MSEC,
            0,
        );
        merge_value(&mut self.shutdown_spread, prev.shutdown_spread, UNSET_MSEC, 0);
        merge_value(
            &mut self.ping_timeout,
            prev.ping_timeout,
            UNSET_MSEC,
            DEFAULT_PING_TIMEOUT_MS,
        );
        merge_value(&mut self.deflate, prev.deflate, UNSET_FLAG, 0);
        merge_value(&mut self.deflate_level, prev.deflate_level, UNSET_INT, 1);
        merge_value(
            &mut self.deflate_mem_level,
            prev.deflate_mem_level,
            UNSET_INT,
            DEFAULT_DEFLATE_MEM_LEVEL,
        );
        merge_value(
            &mut self.deflate_window_bits,
            prev.deflate_window_bits,
            UNSET_INT,
            15,
        );
        merge_value(
            &mut self.deflate_context_takeover,
            prev.deflate_context_takeover,
            UNSET_FLAG,
            1,
        );
        merge_value(
            &mut self.deflate_min_length,
            prev.deflate_min_length,
            UNSET_SIZE,
            64,
        );
        Ok(())
    }
}

impl LocConf {
    /// `websocket_deflate*`, when compression is on.
    pub fn deflate(&self) -> Option<(DeflateConfig, DeflateSettings)> {
        (self.deflate == 1).then_some((
            DeflateConfig {
                window_bits: self.deflate_window_bits as u8,
                context_takeover: self.deflate_context_takeover == 1,
            },
            DeflateSettings {
                level: self.deflate_level as u32,
                mem_level: self.deflate_mem_level as u8,
                min_length: self.deflate_min_length,
            },
        ))
    }

    /// Whether a content directive (echo, pass, status) claimed the location.
    fn has_content(&self) -> bool {
        self.echo || self.status || self.pass.is_some()
    }

    /// The keepalive pool settings; `None` when pooling is off.
    pub fn pool_settings(&self) -> Option<PoolSettings> {
        (self.keepalive > 0).then(|| PoolSettings {
            size: self.keepalive as usize,
            idle_timeout: self.keepalive_timeout,
            backlog: (self.keepalive_backlog >= 0).then_some(self.keepalive_backlog as usize),
        })
    }

    /// The location's `websocket_*` options, as an upgrade takes them.
    pub fn server_options(&self) -> ServerOptions {
        let limits = self.limits();
        ServerOptions {
            max_payload_len: self.max_payload_len as u64,
            max_recv_len: Some(limits.max_recv_len),
            max_send_len: Some(limits.max_send_len),
            send_masked: limits.send_masked,
            timeout: limits.timeout_ms as u64,
            protocols: self.protocols.clone().unwrap_or_default(),
            origins: self.origins.as_ref().map(|list| {
                list.iter()
                    .map(|o| String::from_utf8_lossy(o).into_owned())
                    .collect()
            }),
            deflate: self.deflate().map(|(cfg, settings)| Deflate {
                level: settings.level,
                mem_level: settings.mem_level,
                window_bits: cfg.window_bits,
                context_takeover: cfg.context_takeover,
                min_length: settings.min_length,
            }),
            ping_interval: limits.ping_interval_ms.map(|t| t as u64),
            ping_timeout: limits.ping_timeout_ms as u64,
            max_session_time: limits.max_session_ms.map(|t| t as u64),
            shutdown_spread: limits.shutdown_spread_ms as u64,
        }
    }

    pub fn limits(&self) -> Limits {
        let or_payload = |v: usize| {
            if v == UNSET_SIZE {
                self.max_payload_len
            } else {
                v
            }
        };
        Limits {
            max_recv_len: or_payload(self.max_recv_len) as u64,
            max_send_len: or_payload(self.max_send_len) as u64,
            send_masked: self.send_masked == 1,
            timeout_ms: self.timeout,
            ping_interval_ms: (self.ping_interval > 0).then_some(self.ping_interval),
            ping_timeout_ms: self.ping_timeout,
            max_session_ms: (self.max_session_time > 0).then_some(self.max_session_time),
            shutdown_spread_ms: self.shutdown_spread,
        }
    }
}

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

const fn slot(
    name: ngx_str_t,
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset,
        post: ptr::null_mut(),
    }
}

/// The directive table nginx reads; ends with a null command.
pub static mut COMMANDS: [ngx_command_t; 37] = [
    slot(
        ngx_string!("websocket_echo"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        cmd_echo,
        0,
    ),
    slot(
        ngx_string!("websocket_max_payload_len"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        core::mem::offset_of!(LocConf, max_payload_len),
    ),
    slot(
        ngx_string!("websocket_max_recv_len"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        core::mem::offset_of!(LocConf, max_recv_len),
    ),
    slot(
        ngx_string!("websocket_max_send_len"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        core::mem::offset_of!(LocConf, max_send_len),
    ),
    slot(
        ngx_string!("websocket_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        core::mem::offset_of!(LocConf, timeout),
    ),
    slot(
        ngx_string!("websocket_send_masked"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        core::mem::offset_of!(LocConf, send_masked),
    ),
    slot(
        ngx_string!("websocket_protocols"),
        ANY_LEVEL | NGX_CONF_1MORE,
        cmd_protocols,
        0,
    ),
    slot(
        ngx_string!("websocket_origins"),
        ANY_LEVEL | NGX_CONF_1MORE,
        cmd_origins,
        0,
    ),
    slot(
        ngx_string!("websocket_pass"),
        NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
        cmd_pass,
        0,
    ),
    slot(
        ngx_string!("websocket_connect_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        core::mem::offset_of!(LocConf, connect_timeout),
    ),
    slot(
        ngx_string!("websocket_pass_header"),
        ANY_LEVEL | NGX_CONF_TAKE2,
        cmd_pass_header,
        0,
    ),
    slot(
        ngx_string!("websocket_pass_host"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_complex,
        core::mem::offset_of!(LocConf, pass_host),
    ),
    slot(
        ngx_string!("websocket_pass_origin"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_complex,
        core::mem::offset_of!(LocConf, pass_origin),
    ),
    slot(
        ngx_string!("websocket_pass_send_unmasked"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        core::mem::offset_of!(LocConf, pass_send_unmasked),
    ),
    slot(
        ngx_string!("websocket_ssl_verify"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        core::mem::offset_of!(LocConf, ssl_verify),
    ),
    slot(
        ngx_string!("websocket_ssl_trusted_certificate"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_str_slot,
        core::mem::offset_of!(LocConf, ssl_trusted_certificate),
    ),
    slot(
        ngx_string!("websocket_ssl_server_name"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_str_slot,
        core::mem::offset_of!(LocConf, ssl_server_name),
    ),
    slot(
        ngx_string!("websocket_ssl_certificate"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_str_slot,
        core::mem::offset_of!(LocConf, ssl_certificate),
    ),
    slot(
        ngx_string!("websocket_ssl_certificate_key"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_str_slot,
        core::mem::offset_of!(LocConf, ssl_certificate_key),
    ),
    slot(
        ngx_string!("websocket_keepalive"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        core::mem::offset_of!(LocConf, keepalive),
    ),
    slot(
        ngx_string!("websocket_keepalive_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        core::mem::offset_of!(LocConf, keepalive_timeout),
    ),
    slot(
        ngx_string!("websocket_keepalive_backlog"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        core::mem::offset_of!(LocConf, keepalive_backlog),
    ),
    slot(
        ngx_string!("websocket_keepalive_pool"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_complex,
        core::mem::offset_of!(LocConf, keepalive_pool),
    ),
    slot(
        ngx_string!("websocket_ping_interval"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_msec_or_off,
        core::mem::offset_of!(LocConf, ping_interval),
    ),
    slot(
        ngx_string!("websocket_ping_timeout"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        core::mem::offset_of!(LocConf, ping_timeout),
    ),
    slot(
        ngx_string!("websocket_max_session_time"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_msec_or_off,
        core::mem::offset_of!(LocConf, max_session_time),
    ),
    slot(
        ngx_string!("websocket_shutdown_spread"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        core::mem::offset_of!(LocConf, shutdown_spread),
    ),
    slot(
        ngx_string!("websocket_status"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        cmd_status,
        0,
    ),
    slot(
        ngx_string!("websocket_deflate"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        core::mem::offset_of!(LocConf, deflate),
    ),
    slot(
        ngx_string!("websocket_deflate_level"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_deflate_level,
        core::mem::offset_of!(LocConf, deflate_level),
    ),
    slot(
        ngx_string!("websocket_deflate_mem_level"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_deflate_mem_level,
        core::mem::offset_of!(LocConf, deflate_mem_level),
    ),
    slot(
        ngx_string!("websocket_deflate_window_bits"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        cmd_deflate_window_bits,
        core::mem::offset_of!(LocConf, deflate_window_bits),
    ),
    slot(
        ngx_string!("websocket_deflate_context_takeover"),
        ANY_LEVEL | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        core::mem::offset_of!(LocConf, deflate_context_takeover),
    ),
    slot(
        ngx_string!("websocket_deflate_min_length"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        core::mem::offset_of!(LocConf, deflate_min_length),
    ),
    // [limit]
    slot(
        ngx_string!("websocket_limit_zone"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE3,
        crate::limit::conf::cmd_limit_zone,
        0,
    ),
    slot(
        ngx_string!("websocket_limit"),
        ANY_LEVEL | NGX_CONF_TAKE123,
        crate::limit::conf::cmd_limit,
        0,
    ),
    ngx_command_t::empty(),
];

/// `websocket_deflate_level 1..9`.
unsafe extern "C" fn cmd_deflate_level(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as nginx passes them to a directive handler.
    unsafe { set_num_within(cf, cmd, conf, 1..=9, c"must be between 1 and 9") }
}

/// `websocket_deflate_mem_level 1..9`.
unsafe extern "C" fn cmd_deflate_mem_level(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as nginx passes them to a directive handler.
    unsafe { set_num_within(cf, cmd, conf, 1..=9, c"must be between 1 and 9") }
}

/// `websocket_deflate_window_bits 8..15`.
unsafe extern "C" fn cmd_deflate_window_bits(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as nginx passes them to a directive handler.
    unsafe { set_num_within(cf, cmd, conf, 8..=15, c"must be between 8 and 15") }
}

/// nginx's number slot, then a range check whose message nginx prints after
/// the directive's name (its own bounds post handler does not name it).
///
/// # Safety
/// As nginx passes them to the handler of a command whose offset is an
/// `ngx_int_t` field of [`LocConf`].
unsafe fn set_num_within(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
    range: core::ops::RangeInclusive<ngx_int_t>,
    out_of_range: &'static core::ffi::CStr,
) -> *mut c_char {
    // SAFETY: guaranteed by the caller.
    let rv = unsafe { ngx_conf_set_num_slot(cf, cmd, conf) };
    if rv != NGX_CONF_OK {
        return rv;
    }
    // SAFETY: the slot setter just wrote this ngx_int_t field.
    let value = unsafe { *conf.cast::<u8>().add((*cmd).offset).cast::<ngx_int_t>() };
    if range.contains(&value) {
        NGX_CONF_OK
    } else {
        out_of_range.as_ptr().cast_mut()
    }
}

/// The module's `merge_loc_conf`: inheritance, then the TLS context of a
/// `wss://` pass, which needs the merged settings and the configuration.
///
/// # Safety
/// Called by nginx with two location configurations of this module.
pub unsafe extern "C" fn merge_loc_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the enclosing and the current level's conf.
    let (prev, conf) = unsafe { (&*prev.cast::<LocConf>(), &mut *conf.cast::<LocConf>()) };
    if conf.merge(prev).is_err() {
        return NGX_CONF_ERROR;
    }
    // [limit] every zone of the http block is known by now.
    // SAFETY: `cf` is the configuration being merged.
    if !unsafe { crate::limit::conf::check_zones(cf, conf) } {
        return NGX_CONF_ERROR;
    }
    if !conf.pass.as_ref().is_some_and(PassTarget::may_use_tls) {
        return NGX_CONF_OK;
    }
    let settings = TlsSettings {
        verify: conf.ssl_verify == 1,
        trusted_certificate: configured(&conf.ssl_trusted_certificate),
        certificate: configured(&conf.ssl_certificate),
        certificate_key: configured(&conf.ssl_certificate_key),
    };
    // SAFETY: `cf` is the configuration being loaded.
    match unsafe { ClientTls::create(cf, &settings) } {
        Ok(tls) => {
            conf.ssl = Some(tls);
            NGX_CONF_OK
        }
        Err(_) => NGX_CONF_ERROR,
    }
}

/// A string directive's value, `None` when it was not set.
pub fn configured(s: &ngx_str_t) -> Option<&[u8]> {
    (!s.data.is_null()).then(|| s.as_bytes())
}

/// A directive that makes the location's content handler: one per location.
///
/// # Safety
/// `cf` and `conf` as nginx passes them to a directive handler of this
/// module's location configuration.
unsafe fn content_directive(
    cf: *mut ngx_conf_t,
    conf: *mut c_void,
    mark: fn(&mut LocConf),
    handler: crate::ngx_io::ContentHandler,
) -> *mut c_char {
    // SAFETY: guaranteed by the caller.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    if conf.has_content() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    mark(conf);
    // SAFETY: `cf` is the configuration being parsed, inside a location block.
    if unsafe { set_content_handler(cf, handler) }.is_err() {
        return NGX_CONF_ERROR;
    }
    NGX_CONF_OK
}

/// `websocket_echo;`
unsafe extern "C" fn cmd_echo(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    unsafe { content_directive(cf, conf, |c| c.echo = true, crate::echo::handler) }
}

/// `websocket_status;`
unsafe extern "C" fn cmd_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    unsafe {
        content_directive(
            cf,
            conf,
            |c| c.status = true,
            crate::status::handler,
        )
    }
}

/// `websocket_pass URL;`
unsafe extern "C" fn cmd_pass(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    if conf.has_content() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf` is the configuration being parsed.
    let arg = unsafe { conf_args(cf) }.next().unwrap_or_default();
    if arg.contains(&b'$') {
        // SAFETY: as above.
        match unsafe { ComplexValue::compile(cf, arg) } {
            Ok(cv) => conf.pass = Some(PassTarget::Variable(cv)),
            Err(_) => return NGX_CONF_ERROR,
        }
    } else {
        let parsed = core::str::from_utf8(arg)
            .map_err(|_| UrlError::Scheme)
            .and_then(WsUrl::parse);
        let url = match parsed {
            Ok(url) => url,
            Err(e) => {
                // SAFETY: as above.
                unsafe {
                    conf_error(
                        cf,
                        &format!(
                            "invalid URL \"{}\" in \"websocket_pass\": {e}",
                            arg.escape_ascii()
                        ),
                    )
                };
                return NGX_CONF_ERROR;
            }
        };
        // SAFETY: as above.
        if unsafe { upstream_add(cf, &url.authority(), url.port_or_default()) }.is_err() {
            return NGX_CONF_ERROR;
        }
        conf.pass = Some(PassTarget::Static { url });
    }
    // SAFETY: `cf` is the configuration being parsed, inside a location block.
    if unsafe { set_content_handler(cf, crate::proxy::handler) }.is_err() {
        return NGX_CONF_ERROR;
    }
    NGX_CONF_OK
}

/// Headers the client handshake sets itself (and every `Sec-WebSocket-*`);
/// `websocket_pass_header` may not set them.
fn is_reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["host", "upgrade", "connection", "origin"].contains(&name.as_str())
        || name.starts_with("sec-websocket-")
}

/// `websocket_pass_header NAME VALUE;`
unsafe extern "C" fn cmd_pass_header(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    // SAFETY: `cf` is the configuration being parsed.
    let mut args = unsafe { conf_args(cf) };
    let (name, value) = (
        args.next().unwrap_or_default(),
        args.next().unwrap_or_default(),
    );
    let name = match core::str::from_utf8(name) {
        Ok(n) if is_token(n) && !is_reserved_header(n) => n,
        _ => {
            let msg = format!(
                "invalid header name \"{}\" in \"websocket_pass_header\" (Host and Origin \
                 have their own directives; the handshake headers are set by the module)",
                name.escape_ascii()
            );
            // SAFETY: as above.
            unsafe { conf_error(cf, &msg) };
            return NGX_CONF_ERROR;
        }
    };
    // SAFETY: as above.
    let Ok(value) = (unsafe { ComplexValue::compile(cf, value) }) else {
        return NGX_CONF_ERROR;
    };
    conf.pass_headers
        .get_or_insert_with(Vec::new)
        .push((name.to_owned(), value));
    NGX_CONF_OK
}

/// A directive whose one argument may contain variables, stored in the
/// `Option<ComplexValue>` at the command's offset (`websocket_pass_host`,
/// `websocket_pass_origin`, `websocket_keepalive_pool`).
unsafe extern "C" fn cmd_complex(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf; the command table
    // gives the offset of an `Option<ComplexValue>` field in it.
    let slot = unsafe {
        &mut *conf
            .cast::<u8>()
            .add((*cmd).offset)
            .cast::<Option<ComplexValue>>()
    };
    if slot.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf` is the configuration being parsed.
    let value = unsafe { conf_args(cf) }.next().unwrap_or_default();
    // SAFETY: as above.
    match unsafe { ComplexValue::compile(cf, value) } {
        Ok(cv) => {
            *slot = Some(cv);
            NGX_CONF_OK
        }
        Err(_) => NGX_CONF_ERROR,
    }
}

/// A time that may also be `off` (stored as 0), like `websocket_ping_interval`.
unsafe extern "C" fn cmd_msec_or_off(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: `cf` is the configuration being parsed.
    if unsafe { conf_args(cf) }.next() != Some(&b"off"[..]) {
        // SAFETY: the same arguments nginx gave us, for its own time slot.
        return unsafe { ngx_conf_set_msec_slot(cf, cmd, conf) };
    }
    // SAFETY: the command table gives the offset of an ngx_msec_t field.
    let slot = unsafe { &mut *conf.cast::<u8>().add((*cmd).offset).cast::<ngx_msec_t>() };
    if *slot != UNSET_MSEC {
        return c"is duplicate".as_ptr().cast_mut();
    }
    *slot = 0;
    NGX_CONF_OK
}

/// `websocket_protocols NAME ...;`
unsafe extern "C" fn cmd_protocols(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    if conf.protocols.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let mut names = Vec::new();
    // SAFETY: `cf` is the configuration being parsed.
    for arg in unsafe { conf_args(cf) } {
        match core::str::from_utf8(arg) {
            Ok(name) if is_token(name) => names.push(name.to_owned()),
            _ => {
                // SAFETY: as above.
                unsafe {
                    conf_error(
                        cf,
                        &format!(
                            "invalid subprotocol name \"{}\" in \"websocket_protocols\"",
                            arg.escape_ascii()
                        ),
                    )
                };
                return NGX_CONF_ERROR;
            }
        }
    }
    conf.protocols = Some(names);
    NGX_CONF_OK
}

/// `websocket_origins ORIGIN ...;`
unsafe extern "C" fn cmd_origins(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    if conf.origins.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf` is the configuration being parsed.
    let origins = unsafe { conf_args(cf) }.map(<[u8]>::to_vec).collect();
    conf.origins = Some(origins);
    NGX_CONF_OK
}

/// An HTTP token (RFC 7230 tchar), the syntax of a subprotocol name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_and_send_limits_follow_payload_len_unless_set() {
        let mut outer = LocConf {
            max_payload_len: 1 << 20,
            ..LocConf::default()
        };
        outer.merge(&LocConf::default()).unwrap();
        let mut inner = LocConf {
            max_recv_len: 100,
            ..LocConf::default()
        };
        inner.merge(&outer).unwrap();
        let l = inner.limits();
        assert_eq!((l.max_recv_len, l.max_send_len), (100, 1 << 20));
        assert_eq!(l.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(!l.send_masked);
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let mut conf = LocConf::default();
        conf.merge(&LocConf::default()).unwrap();
        assert_eq!(conf.limits().max_recv_len, DEFAULT_MAX_PAYLOAD_LEN as u64);
        assert!(conf.protocols.is_none() && conf.origins.is_none());
    }

    #[test]
    fn keepalive_and_tls_settings_inherit() {
        let mut outer = LocConf {
            keepalive: 4,
            keepalive_backlog: 2,
            ssl_verify: 1,
            ssl_server_name: ngx_str_t {
                len: 1,
                data: c"x".as_ptr().cast_mut().cast(),
            },
            ..LocConf::default()
        };
        outer.merge(&LocConf::default()).unwrap();
        let mut inner = LocConf::default();
        inner.merge(&outer).unwrap();
        let settings = inner.pool_settings().expect("pooling is on");
        assert_eq!(
            (settings.size, settings.idle_timeout, settings.backlog),
            (4, DEFAULT_TIMEOUT_MS, Some(2))
        );
        assert_eq!(
            (inner.ssl_verify, configured(&inner.ssl_server_name)),
            (1, Some(&b"x"[..]))
        );
        let mut off = LocConf::default();
        off.merge(&LocConf::default()).unwrap();
        assert!(off.pool_settings().is_none());
        assert_eq!(
            (off.ssl_verify, configured(&off.ssl_trusted_certificate)),
            (0, None)
        );
    }

    #[test]
    fn lists_inherit_only_when_unset() {
        let outer = LocConf {
            protocols: Some(vec!["chat".into()]),
            ..LocConf::default()
        };
        let mut inner = LocConf::default();
        inner.merge(&outer).unwrap();
        assert_eq!(inner.protocols.as_deref(), Some(&["chat".to_string()][..]));
        let mut own = LocConf {
            protocols: Some(vec!["x".into()]),
            ..LocConf::default()
        };
        own.merge(&outer).unwrap();
        assert_eq!(own.protocols.as_deref(), Some(&["x".to_string()][..]));
    }

    #[test]
    fn handshake_headers_are_reserved() {
        for name in [
            "Host",
            "upgrade",
            "Connection",
            "Origin",
            "Sec-WebSocket-Key",
            "sec-websocket-accept",
            "Sec-WebSocket-Extensions",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        assert!(!is_reserved_header("X-Real-IP") && !is_reserved_header("Cookie"));
    }

    #[test]
    fn subprotocol_names_are_tokens() {
        assert!(is_token("chat.v2"));
        assert!(!is_token("a b") && !is_token("") && !is_token("a,b"));
    }
}
