//! The `ngx_module_t` that nginx loads, and its HTTP module context.

use core::ptr::addr_of;

use ngx::ffi::{ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, NGX_HTTP_MODULE, NGX_OK};
use ngx::http::{HttpModule, HttpModuleLocationConf};

use crate::config::{merge_loc_conf, LocConf, COMMANDS};

/// Marker type that ties the location configuration to the module.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by nginx while loading the
        // configuration, never while a request runs.
        unsafe { &*addr_of!(ngx_http_websocket_module) }
    }
}

// SAFETY: `LocConf` is the type `create_loc_conf` allocates for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(crate::variables::add_variables),
    postconfiguration: Some(crate::metrics::add_zone),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
};

// Unit-test executables link this crate without nginx around it: they must
// not keep the module (and through it every nginx symbol) alive.
#[cfg(all(feature = "export-modules", not(test)))]
mod exported {
    //! What `ngx::ngx_modules!` exports, by hand: its counting macro in
    //! 0.5.1 does not take two modules. The channel module (issue 18)
    //! ships in the same shared object; with the cargo feature
    //! `redis-probe` (tests only, src/redis/probe.rs) a third module.
    use core::ffi::c_char;
    use core::ptr::{addr_of, null};

    use crate::channels::ngx_http_websocket_channel_module;
    use ngx::ffi::ngx_module_t;

    use super::ngx_http_websocket_module;

    const N: usize = if cfg!(feature = "redis-probe") { 4 } else { 3 };

    #[no_mangle]
    #[allow(non_upper_case_globals)]
    pub static mut ngx_modules: [*const ngx_module_t; N] = [
        addr_of!(ngx_http_websocket_module),
        addr_of!(ngx_http_websocket_channel_module),
        #[cfg(feature = "redis-probe")]
        addr_of!(crate::redis::probe::ngx_http_websocket_redis_probe_module),
        null(),
    ];

    #[no_mangle]
    #[allow(non_upper_case_globals)]
    pub static mut ngx_module_names: [*const c_char; N] = [
        c"ngx_http_websocket_module".as_ptr(),
        c"ngx_http_websocket_channel_module".as_ptr(),
        #[cfg(feature = "redis-probe")]
        c"ngx_http_websocket_redis_probe_module".as_ptr(),
        null(),
    ];

    #[no_mangle]
    #[allow(non_upper_case_globals)]
    pub static mut ngx_module_order: [*const c_char; 1] = [null()];
}

// Only the module's own builds keep it: a crate that depends on this one as
// a library (`default-features = false`) gets neither the static nor, through
// it, the directives, and exports no symbol of ours.
#[cfg_attr(all(feature = "export-modules", not(test)), used)]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_websocket_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as _,
    // SAFETY: nginx reads the command table through this pointer and never
    // writes it; the array ends with a null command.
    commands: unsafe { addr_of!(COMMANDS[0]) as *mut _ },
    type_: NGX_HTTP_MODULE as _,
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// Runs in each worker after the fork.
extern "C" fn init_process(_cycle: *mut ngx_cycle_t) -> ngx_int_t {
    crate::random::forget_drawn();
    NGX_OK as ngx_int_t
}
