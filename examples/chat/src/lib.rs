//! `websocket_chat;`: a chat room among one nginx worker's WebSocket sessions, on
//! ngx_http_websocket_module's public API only. Every member gets `<id>: <line>` of
//! each line sent; `/quit` closes with 1000; a silent member is closed (1001).
use std::{cell::RefCell, collections::VecDeque, rc::Rc};

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_http_request_t, ngx_int_t, ngx_module_t,
    ngx_uint_t, NGX_CONF_NOARGS, NGX_HTTP_LOC_CONF, NGX_HTTP_MODULE,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx_http_websocket_module::{
    serve, upgrade, Context, Handler, Next, Received, RequestRef, ServerOptions, Stats, Waker,
    WebSocket, WsError,
};

/// What a member has yet to get, and how to wake it when something comes.
type Inbox = Rc<RefCell<VecDeque<Vec<u8>>>>;

thread_local! {
    /// The room: a worker's sessions only (nginx runs a worker on one thread).
    static ROOM: RefCell<Vec<(u64, Inbox, Waker)>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: RefCell<u64> = const { RefCell::new(1) };
}

fn broadcast(line: Vec<u8>) {
    ROOM.with_borrow(|room| {
        for (_, inbox, waker) in room {
            inbox.borrow_mut().push_back(line.clone());
            waker.wake();
        }
    });
}

struct Chat {
    id: u64,
    inbox: Inbox,
    joined: bool,
}

impl Chat {
    fn pump(&mut self, ws: &mut WebSocket) -> Result<Next, WsError> {
        loop {
            while let Some(line) = self.inbox.borrow_mut().pop_front() {
                ws.send_text(&line)?;
            }
            let Some(got) = ws.recv()? else {
                return Ok(Next::Wait);
            };
            match got {
                Received::Message { data, .. } if data == b"/quit" => return Ok(Next::Close(1000)),
                Received::Message { data, .. } => {
                    broadcast([format!("{}: ", self.id).as_bytes(), &data].concat())
                }
                Received::Ping(p) => ws.send_pong(p.payload())?,
                Received::Pong(_) => {}
                Received::Close(close) => {
                    return Ok(Next::Close(close.map_or(1000, |(code, _)| code)))
                }
            }
        }
    }
}

impl Handler for Chat {
    fn step(&mut self, cx: &mut Context<'_>) -> Next {
        if !self.joined {
            self.joined = true;
            let (id, inbox, waker) = (self.id, self.inbox.clone(), cx.waker());
            ROOM.with_borrow_mut(|room| room.push((id, inbox, waker)));
            broadcast(format!("{id} joined").into_bytes());
        }
        self.pump(cx.ws()).unwrap_or_else(Next::Fail)
    }

    fn finish(&mut self, _stats: &Stats) {
        let id = self.id;
        ROOM.with_borrow_mut(|room| room.retain(|m| m.0 != id));
        if self.joined {
            broadcast(format!("{id} left").into_bytes());
        }
    }
}

/// The content handler of `websocket_chat`.
unsafe extern "C" fn chat_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls a content handler with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    let opts = ServerOptions {
        timeout: 5_000,
        protocols: vec!["chat".into()],
        ..ServerOptions::default()
    };
    let mut upgraded = match upgrade(r, &opts) {
        Ok(upgraded) => upgraded,
        Err(status) => return status,
    };
    let id = NEXT_ID.with_borrow_mut(|n| std::mem::replace(n, *n + 1));
    // Queued now, sent by the library once the session runs.
    let _ = upgraded.ws().send_text(format!("welcome {id}").as_bytes());
    let (inbox, joined) = (Rc::default(), false);
    let module = core::ptr::addr_of!(ngx_http_websocket_chat_module);
    // SAFETY: our own HTTP module; nothing else uses its request context.
    unsafe { serve(upgraded, &*module, Chat { id, inbox, joined }) }
}

/// `websocket_chat;` makes the location a chat room.
unsafe extern "C" fn set_chat(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut core::ffi::c_void,
) -> *mut core::ffi::c_char {
    // SAFETY: nginx parses a location block: the core module's loc conf is there.
    match NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        Some(clcf) => clcf.handler = Some(chat_handler),
        None => return ngx::core::NGX_CONF_ERROR.cast(),
    }
    core::ptr::null_mut()
}

static mut COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx::ngx_string!("websocket_chat"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(set_chat),
        conf: 0,
        offset: 0,
        post: core::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[rustfmt::skip]
static CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None, postconfiguration: None, create_main_conf: None, init_main_conf: None,
    create_srv_conf: None, merge_srv_conf: None, create_loc_conf: None, merge_loc_conf: None,
};

ngx::ngx_modules!(ngx_http_websocket_chat_module);

/// The module nginx loads.
#[allow(non_upper_case_globals)]
#[used]
pub static mut ngx_http_websocket_chat_module: ngx_module_t = ngx_module_t {
    ctx: core::ptr::addr_of!(CTX) as _,
    // SAFETY: nginx only reads the command table.
    commands: unsafe { core::ptr::addr_of_mut!(COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};
