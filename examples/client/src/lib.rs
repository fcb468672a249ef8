//! `websocket_copy ws://host:port/path;`: the seed's client example, on
//! ngx_http_websocket_module's public API only. Each HTTP request connects
//! to the location's WebSocket upstream, receives one frame, sends
//! `copy: <data>` back and answers the request with the frame's data;
//! `?keepalive=1` puts the connection into the keepalive pool instead of
//! closing it, and the response's `X-Upstream-Connection` says `reused` for
//! a pooled one (which sends `again` first: a pooled connection is one the
//! upstream greeted). For `wss://`: `trusted=<CA file>` (verify),
//! `server_name=<name>`, `cert=<file> key=<file>` (a client certificate).
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_conf_ctx_t, ngx_http_module_t, ngx_http_request_t,
    ngx_int_t, ngx_module_t, ngx_pcalloc, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_HTTP_LOC_CONF,
    NGX_HTTP_MODULE,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx_http_websocket_module::protocol::frame::OpCode;
use ngx_http_websocket_module::{
    connect, ClientContext, ClientError, ClientHandler, ClientNext, ClientOptions, ConnectOptions,
    Connected, RequestRef, TlsContext,
};

/// A location's configuration (zeroed by `create_loc_conf`): the
/// upstream's URI and the `wss://` options (empty: none).
struct LocConf {
    uri: ngx_str_t,
    /// `cert=`, `key=`, `server_name=`: the connect's `client_cert`,
    /// `client_priv_key`, `server_name`.
    cert: ngx_str_t,
    key: ngx_str_t,
    server_name: ngx_str_t,
    /// Made from `trusted=` (which turns `ssl_verify` on) for `wss://`.
    tls: Option<TlsContext>,
    verify: bool,
}

struct Copy {
    keepalive: bool,
    reused: bool,
}

impl ClientHandler for Copy {
    fn connected(
        &mut self,
        cx: &mut ClientContext<'_>,
        result: Result<Connected, ClientError>,
    ) -> ClientNext {
        match result {
            // Logged by the library; nginx answers with its error page.
            Err(e) => ClientNext::Finish(e.status()),
            Ok(how) => {
                self.reused = how == Connected::Reused;
                // A pooled connection was greeted before: ask for a frame.
                let asked = match cx.client() {
                    Some(wb) if self.reused => wb.send_text(b"again"),
                    _ => Ok(()),
                };
                if asked.is_err() {
                    return ClientNext::Finish(502);
                }
                self.step(cx)
            }
        }
    }

    fn step(&mut self, cx: &mut ClientContext<'_>) -> ClientNext {
        if cx.timed_out() {
            return ClientNext::Finish(504);
        }
        let Some(wb) = cx.client() else {
            return ClientNext::Finish(500);
        };
        // local data, typ, err = wb:recv_frame()
        let frame = loop {
            match wb.recv_frame() {
                Ok(None) => return ClientNext::Wait,
                Ok(Some(f)) if f.typ == OpCode::Ping => {
                    if wb.send_pong(&f.data).is_err() {
                        return ClientNext::Finish(502);
                    }
                }
                Ok(Some(f)) if f.typ == OpCode::Text || f.typ == OpCode::Binary => break f,
                Ok(Some(_)) | Err(_) => return ClientNext::Finish(502),
            }
        };
        // local bytes, err = wb:send_text("copy: " .. data)
        let copied = wb.send_text(&[&b"copy: "[..], &frame.data].concat());
        let ended = match self.keepalive {
            // local ok, err = wb:set_keepalive(10000, 4)
            true => wb.set_keepalive(10_000, 4).is_ok(),
            // local ok, err = wb:close()
            false => wb.close().is_ok(),
        };
        if copied.is_err() || !ended {
            return ClientNext::Finish(502);
        }
        let r = cx.request();
        r.set_status(200, None);
        r.set_content_type("text/plain");
        let how: &[u8] = if self.reused { b"reused" } else { b"new" };
        if r.add_header_out("X-Upstream-Connection", how).is_err() {
            return ClientNext::Finish(500);
        }
        // The library flushes, closes or pools, then finalizes with `rc`.
        ClientNext::Finish(
            r.send_small_response(&[&b"received: "[..], &frame.data, b"\n"].concat()),
        )
    }
}

/// The content handler of `websocket_copy`.
unsafe extern "C" fn copy_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let module = core::ptr::addr_of!(ngx_http_websocket_client_example_module);
    // SAFETY: nginx calls a content handler with a live request; our loc
    // conf was made by `create_loc_conf`.
    let (r, conf) = unsafe {
        let conf: *const LocConf = (*(*r).loc_conf.add((*module).ctx_index)).cast();
        (RequestRef::from_raw(r), &*conf)
    };
    let text = |s: &ngx_str_t| String::from_utf8_lossy(s.as_bytes()).into_owned();
    let bytes = |s: &ngx_str_t| (s.len > 0).then(|| s.as_bytes().to_vec());
    let keepalive = r.unparsed_uri().windows(11).any(|w| w == b"keepalive=1");
    let client = ClientOptions {
        timeout: 2_000,
        ..ClientOptions::default()
    };
    let opts = ConnectOptions {
        protocols: vec!["copy".into()],
        tls: conf.tls,
        ssl_verify: conf.verify,
        server_name: (conf.server_name.len > 0).then(|| text(&conf.server_name)),
        client_cert: bytes(&conf.cert),
        client_priv_key: bytes(&conf.key),
        ..ConnectOptions::default()
    };
    let handler = Copy {
        keepalive,
        reused: false,
    };
    // SAFETY: our own HTTP module; nothing else uses its request context.
    unsafe { connect(r, &*module, &text(&conf.uri), &client, opts, handler) }
}

/// `websocket_copy <uri> [trusted=<CA file>] [cert=<file> key=<file>]
/// [server_name=<name>];` makes the location copy a frame from `<uri>`.
unsafe extern "C" fn set_copy(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut core::ffi::c_void,
) -> *mut core::ffi::c_char {
    // SAFETY: nginx parses a location block: the core module's loc conf,
    // ours (`conf`) and the directive's arguments (in the conf pool, which
    // outlives every request) are there.
    unsafe {
        let conf = &mut *conf.cast::<LocConf>();
        let args = (*(*cf).args).elts as *const ngx_str_t;
        conf.uri = *args.add(1);
        let mut trusted = None;
        for i in 2..(*(*cf).args).nelts {
            let arg = *args.add(i);
            let arg = arg.as_bytes();
            let Some(eq) = arg.iter().position(|b| *b == b'=') else {
                return ngx::core::NGX_CONF_ERROR.cast();
            };
            let (name, value) = (&arg[..eq], &arg[eq + 1..]);
            let value = ngx_str_t {
                len: value.len(),
                data: value.as_ptr().cast_mut(),
            };
            match name {
                b"trusted" => trusted = Some(value),
                b"cert" => conf.cert = value,
                b"key" => conf.key = value,
                b"server_name" => conf.server_name = value,
                _ => return ngx::core::NGX_CONF_ERROR.cast(),
            }
        }
        if conf.uri.as_bytes().starts_with(b"wss://") {
            conf.verify = trusted.is_some();
            match TlsContext::new(cf, trusted.as_ref().map(|t| t.as_bytes())) {
                Ok(tls) => conf.tls = Some(tls),
                Err(_) => return ngx::core::NGX_CONF_ERROR.cast(),
            }
        }
        match NgxHttpCoreModule::location_conf_mut(&*cf) {
            Some(clcf) => clcf.handler = Some(copy_handler),
            None => return ngx::core::NGX_CONF_ERROR.cast(),
        }
    }
    core::ptr::null_mut()
}

static mut COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx::ngx_string!("websocket_copy"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set_copy),
        conf: core::mem::offset_of!(ngx_http_conf_ctx_t, loc_conf),
        offset: 0,
        post: core::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

/// An empty `LocConf` per location, in the configuration pool.
unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut core::ffi::c_void {
    // SAFETY: nginx calls this with the configuration being parsed.
    unsafe { ngx_pcalloc((*cf).pool, core::mem::size_of::<LocConf>()) }
}

#[rustfmt::skip]
static CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None, postconfiguration: None, create_main_conf: None, init_main_conf: None,
    create_srv_conf: None, merge_srv_conf: None, create_loc_conf: Some(create_loc_conf), merge_loc_conf: None,
};

ngx::ngx_modules!(ngx_http_websocket_client_example_module);

/// The module nginx loads.
#[allow(non_upper_case_globals)]
#[used]
pub static mut ngx_http_websocket_client_example_module: ngx_module_t = ngx_module_t {
    ctx: core::ptr::addr_of!(CTX) as _,
    // SAFETY: nginx only reads the command table.
    commands: unsafe { core::ptr::addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};
