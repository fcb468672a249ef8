//! A test-only nginx module (cargo feature `redis-probe`, never in the
//! module that ships) that puts the Redis client on an HTTP location, so
//! that nginx-tests can drive it on nginx's event loop before the channels
//! use it:
//!
//! ```nginx
//! location /redis  { websocket_redis_probe redis://127.0.0.1:6379/2; }
//! location /reader { websocket_redis_probe redis://127.0.0.1:6379/2 reader; }
//! ```
//!
//! `GET /redis?XADD&ch&*&d&hello` sends the command made of the
//! percent-decoded arguments on the worker's link of that location
//! (`reader`: a second link, for `XREAD BLOCK`), then answers 200 with the
//! reply rendered as JSON-ish text (bulk strings quoted, nil as `null`,
//! `+OK` and `-ERR ...` bare), 503 at once while the link is down, 502 when
//! the command failed (connection lost, timeout, bad reply).
//!
//! `websocket_redis_probe URL channels;` drives a [`RedisChannels`] of
//! zone `z` (history 3, history_time 60 s): `?publish&CH&DATA[&binary]`
//! answers the id, `?describe&CH` `MESSAGES LAST_ID`, `?delete&CH` (a
//! follower logs `CH ID deleted`),
//! `?history&CH&AFTER` one `ID b|t DATA` line per message, `?follow&CH&AFTER`
//! (`new`: from its newest), `?unfollow&CH`, `?log` what followed channels
//! delivered, one `CH ID b|t DATA` line each.
//!
//! `websocket_redis_probe URL stream;` drives a [`StreamReader`] of the
//! worker (a reader link and a command link of its own, `XREAD BLOCK 5000`,
//! `COUNT 2` so that a backlog takes several reads): `?watch&KEY&ID` follows
//! KEY after ID (`new`: after its newest entry), `?unwatch&KEY`, `?log`
//! answers every entry delivered so far, one `KEY ID FIELD=VALUE...` line
//! each.

use core::ffi::{c_char, c_void};
use core::ptr::{self, addr_of};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_http_request_t, ngx_int_t, ngx_module_t,
    ngx_pcalloc, NGX_CONF_TAKE12, NGX_DONE, NGX_ERROR, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MODULE,
};
use ngx::ngx_string;

use foreign_types::ForeignTypeRef;

use super::channels::{Event, History, RedisChannels};
use super::conn::{self, Link, Settings};
use super::resp::{StreamId, Value};
use super::streams::{self, StreamReader};
use crate::ngx_io::{conf_args, conf_error, run_posted_requests, set_content_handler, RequestRef};

/// A location's probe: its link's settings (leaked: test-only, one per
/// configuration load).
struct ProbeConf {
    settings: *const Settings,
    /// 0: commands, 1: `reader`, 2: `stream`.
    mode: usize,
}

thread_local! {
    /// The worker's links, one per probe location.
    static LINKS: RefCell<HashMap<usize, Link>> = RefCell::new(HashMap::new());
    /// The worker's stream readers, one per `stream` location.
    static READERS: RefCell<HashMap<usize, StreamReader>> = RefCell::new(HashMap::new());
    /// The worker's channel stores, one per `channels` location.
    static CHANNELS: RefCell<HashMap<usize, RedisChannels>> = RefCell::new(HashMap::new());
    /// What the channel stores delivered.
    static CHANNEL_LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// What the stream readers delivered.
    static DELIVERED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(create_loc_conf),
    merge_loc_conf: None,
};

static mut COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx_string!("websocket_redis_probe"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_TAKE12) as _,
        set: Some(cmd_probe),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_websocket_redis_probe_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as _,
    // SAFETY: nginx only reads the command table; it ends with a null command.
    commands: unsafe { addr_of!(COMMANDS[0]) as *mut _ },
    type_: NGX_HTTP_MODULE as _,
    ..ngx_module_t::default()
};

extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx's configuration pool; zeroed memory is "no probe".
    unsafe { ngx_pcalloc((*cf).pool, core::mem::size_of::<ProbeConf>()) }
}

unsafe extern "C" fn cmd_probe(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf and the directive's
    // arguments of the configuration being parsed.
    unsafe {
        let args: Vec<&[u8]> = conf_args(cf).collect();
        let fail = |msg: &str| {
            conf_error(cf, msg);
            ngx::core::NGX_CONF_ERROR as *mut c_char
        };
        let text = String::from_utf8_lossy(args[0]).into_owned();
        let url = match super::url::parse(&text) {
            Ok(url) => url,
            Err(e) => return fail(&e),
        };
        let mode =
            match args.get(1) {
                None => 0,
                Some(&b"reader") => 1,
                Some(&b"stream") => 2,
                Some(&b"channels") => 4,
                Some(_) => return fail(
                    "the second argument of websocket_redis_probe must be \"reader\", \"stream\" or \"channels\"",
                ),
            };
        let addrs = match conn::resolve(cf, &url) {
            Ok(addrs) => addrs,
            Err(e) => return fail(&e),
        };
        let mut settings = Settings::new(url.to_string(), addrs, url.db);
        // Short enough for the tests to see a timeout.
        settings.command_timeout_ms = 2000;
        let pc = conf.cast::<ProbeConf>();
        (*pc).settings = Box::into_raw(Box::new(settings));
        (*pc).mode = mode;
        if set_content_handler(cf, handler).is_err() {
            return fail("cannot set the content handler");
        }
        ptr::null_mut()
    }
}

fn decode(arg: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(arg.len());
    let mut i = 0;
    while i < arg.len() {
        match arg[i] {
            b'%' if i + 2 < arg.len() => match (hex(arg[i + 1]), hex(arg[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn render(v: &Value, out: &mut String) {
    match v {
        Value::Simple(s) => {
            out.push('+');
            out.push_str(&String::from_utf8_lossy(s));
        }
        Value::Error(s) => {
            out.push('-');
            out.push_str(&String::from_utf8_lossy(s));
        }
        Value::Integer(n) => out.push_str(&n.to_string()),
        Value::Bulk(b) => {
            out.push('"');
            for &c in b {
                match c {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(c as char);
                    }
                    0x20..=0x7e => out.push(c as char),
                    _ => out.push_str(&format!("\\x{c:02x}")),
                }
            }
            out.push('"');
        }
        Value::Nil => out.push_str("null"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, out);
            }
            out.push(']');
        }
    }
}

fn link_for(conf: &ProbeConf, mode: usize) -> Link {
    let key = conf.settings as usize * 8 + mode;
    LINKS.with(|links| {
        links
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                // SAFETY: leaked at configuration time, never freed.
                let settings = unsafe { (*conf.settings).clone() };
                Link::new(Rc::new(settings))
            })
            .clone()
    })
}

unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls the content handler with a live request; the
    // probe's location conf is in `loc_conf` at the module's index.
    let (req, conf) = unsafe {
        let module = &*addr_of!(ngx_http_websocket_redis_probe_module);
        let conf = &*(*(*r).loc_conf.add(module.ctx_index)).cast::<ProbeConf>();
        (RequestRef::from_raw(r), conf)
    };
    if conf.settings.is_null() {
        return NGX_ERROR as ngx_int_t;
    }
    let uri = req.unparsed_uri().to_vec();
    let query = uri.splitn(2, |&b| b == b'?').nth(1).unwrap_or(b"");
    let args: Vec<Vec<u8>> = query
        .split(|&b| b == b'&')
        .filter(|a| !a.is_empty())
        .map(decode)
        .collect();
    if args.is_empty() {
        req.set_status(400, None);
        return req.send_small_response(b"no command\n");
    }
    if conf.mode == 2 {
        return stream_request(req, conf, &args);
    }
    if conf.mode == 4 {
        return channels_request(req, conf, &args);
    }
    let link = link_for(conf, conf.mode);
    // SAFETY: as above; the settings live forever.
    let mut timeout = unsafe { (*conf.settings).command_timeout_ms };
    if args.len() > 2
        && args[0].eq_ignore_ascii_case(b"XREAD")
        && args[1].eq_ignore_ascii_case(b"BLOCK")
    {
        timeout += String::from_utf8_lossy(&args[2])
            .parse::<u64>()
            .unwrap_or(0);
    }
    let c = req.connection_ptr();
    let sent = link.command_with_timeout(&args, timeout, move |reply| {
        // SAFETY: the request was held until this finalizes it.
        let req = unsafe { RequestRef::from_raw(r) };
        let (status, body) = match reply {
            Ok(v) => {
                let mut s = String::new();
                render(&v, &mut s);
                s.push('\n');
                (200, s)
            }
            Err(e) => (502, format!("{e}\n")),
        };
        req.set_status(status, None);
        let rc = req.send_small_response(body.as_bytes());
        req.finalize_status(rc);
        // SAFETY: `c` is the request's client connection, in this worker.
        unsafe { run_posted_requests(c) };
    });
    match sent {
        Ok(()) => {
            req.hold();
            NGX_DONE as ngx_int_t
        }
        Err(e) => {
            req.set_status(503, None);
            req.send_small_response(format!("{e}\n").as_bytes())
        }
    }
}

fn reader_for(conf: &ProbeConf) -> StreamReader {
    let key = conf.settings as usize;
    READERS.with(|readers| {
        readers
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                StreamReader::new(
                    link_for(conf, 2),
                    link_for(conf, 3),
                    5000,
                    2,
                    |key, entries| {
                        DELIVERED.with(|log| {
                            let mut log = log.borrow_mut();
                            for e in entries {
                                let mut line = format!("{} {}", String::from_utf8_lossy(key), e.id);
                                for (f, v) in &e.fields {
                                    line.push_str(&format!(
                                        " {}={}",
                                        String::from_utf8_lossy(f),
                                        String::from_utf8_lossy(v)
                                    ));
                                }
                                log.push(line);
                            }
                        })
                    },
                )
            })
            .clone()
    })
}

fn stream_request(req: &mut RequestRef, conf: &ProbeConf, args: &[Vec<u8>]) -> ngx_int_t {
    let reader = reader_for(conf);
    let body = match args {
        [op] if op == b"log" => DELIVERED.with(|log| {
            let log = log.borrow();
            let mut text = log.join("\n");
            text.push('\n');
            text
        }),
        [op, key] if op == b"unwatch" => {
            reader.unwatch(key);
            String::from("ok\n")
        }
        [op, key, id] if op == b"watch" && id == b"new" => {
            let key = key.clone();
            let r = req.as_ptr();
            let c = req.connection_ptr();
            let sent = streams::newest_id(&link_for(conf, 3), &key.clone(), move |id| {
                // SAFETY: the request was held until this finalizes it.
                let req = unsafe { RequestRef::from_raw(r) };
                let body = match id {
                    Some(id) => {
                        reader.watch(&key, id);
                        format!("ok {id}\n")
                    }
                    None => String::from("failed\n"),
                };
                req.set_status(if id.is_some() { 200 } else { 502 }, None);
                let rc = req.send_small_response(body.as_bytes());
                req.finalize_status(rc);
                // SAFETY: `c` is the request's client connection, in this worker.
                unsafe { run_posted_requests(c) };
            });
            if sent.is_ok() {
                req.hold();
                return NGX_DONE as ngx_int_t;
            }
            req.set_status(503, None);
            return req.send_small_response(b"down\n");
        }
        [op, key, id] if op == b"watch" => match StreamId::parse(id) {
            Some(id) => {
                reader.watch(key, id);
                String::from("ok\n")
            }
            None => {
                req.set_status(400, None);
                return req.send_small_response(b"bad id\n");
            }
        },
        _ => {
            req.set_status(400, None);
            return req.send_small_response(b"watch&KEY&ID, unwatch&KEY or log\n");
        }
    };
    req.set_status(200, None);
    req.send_small_response(body.as_bytes())
}

/// Answers a held request later (once).
fn answer_later(req: &mut RequestRef) -> impl FnOnce(u32, String) + 'static {
    let r = req.as_ptr();
    let c = req.connection_ptr();
    move |status, body| {
        // SAFETY: the request was held until this finalizes it.
        let req = unsafe { RequestRef::from_raw(r) };
        req.set_status(status, None);
        let rc = req.send_small_response(body.as_bytes());
        req.finalize_status(rc);
        // SAFETY: `c` is the request's client connection, in this worker.
        unsafe { run_posted_requests(c) };
    }
}

fn channels_for(conf: &ProbeConf) -> RedisChannels {
    let key = conf.settings as usize;
    CHANNELS.with(|all| {
        all.borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let history = History {
                    count: 3,
                    time_ms: 60_000,
                };
                RedisChannels::new(
                    "z",
                    history,
                    link_for(conf, 4),
                    link_for(conf, 5),
                    5000,
                    |channel, ev| {
                        let line = match ev {
                            Event::Message(m) => format!(
                                "{} {} {} {}",
                                String::from_utf8_lossy(channel),
                                m.id,
                                if m.binary { "b" } else { "t" },
                                String::from_utf8_lossy(&m.data)
                            ),
                            Event::Deleted(id) => {
                                format!("{} {id} deleted", String::from_utf8_lossy(channel))
                            }
                        };
                        CHANNEL_LOG.with(|log| log.borrow_mut().push(line));
                    },
                )
            })
            .clone()
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn channels_request(req: &mut RequestRef, conf: &ProbeConf, args: &[Vec<u8>]) -> ngx_int_t {
    let store = channels_for(conf);
    let now = now_ms();
    let done = |req: &mut RequestRef, sent: Result<(), super::channels::Failed>| match sent {
        Ok(()) => {
            req.hold();
            NGX_DONE as ngx_int_t
        }
        Err(e) => {
            req.set_status(503, None);
            req.send_small_response(format!("{e}\n").as_bytes())
        }
    };
    let fail = |e: super::channels::Failed| (502, format!("{e}\n"));
    match args {
        [op, ch, data, rest @ ..] if op == b"publish" && rest.len() <= 1 => {
            let answer = answer_later(req);
            let binary = rest.first().is_some_and(|b| b == b"binary");
            let sent = store.publish(ch, data, binary, move |r| {
                let (status, body) = r.map_or_else(fail, |id| (201, format!("{id}\n")));
                answer(status, body)
            });
            done(req, sent)
        }
        [op, ch] if op == b"describe" => {
            let answer = answer_later(req);
            let sent = store.describe(ch, now, move |r| {
                let (status, body) = r.map_or_else(fail, |s| {
                    let last = s.last_id.map_or(String::from("-"), |id| id.to_string());
                    (200, format!("{} {last}\n", s.messages))
                });
                answer(status, body)
            });
            done(req, sent)
        }
        [op, ch] if op == b"delete" => {
            let answer = answer_later(req);
            let sent = store.delete(ch, move |r| {
                let (status, body) = r.map_or_else(fail, |_| (204, String::new()));
                answer(status, body)
            });
            done(req, sent)
        }
        [op, ch, after] if op == b"history" => {
            let Some(after) = StreamId::parse(after) else {
                req.set_status(400, None);
                return req.send_small_response(b"bad id\n");
            };
            let answer = answer_later(req);
            let sent = store.history_after(ch, after, now, move |r| {
                let (status, body) = r.map_or_else(fail, |messages| {
                    let lines: Vec<String> = messages
                        .iter()
                        .map(|m| {
                            format!(
                                "{} {} {}\n",
                                m.id,
                                if m.binary { "b" } else { "t" },
                                String::from_utf8_lossy(&m.data)
                            )
                        })
                        .collect();
                    (200, lines.concat())
                });
                answer(status, body)
            });
            done(req, sent)
        }
        [op, ch, after] if op == b"follow" && after == b"new" => {
            let answer = answer_later(req);
            let ch = ch.clone();
            let follower = store.clone();
            let sent = store.newest_id(&ch.clone(), move |id| match id {
                Some(id) => {
                    follower.follow(&ch, id);
                    answer(200, format!("ok {id}\n"))
                }
                None => answer(502, String::from("failed\n")),
            });
            done(req, sent)
        }
        [op, ch, after] if op == b"follow" => match StreamId::parse(after) {
            Some(id) => {
                store.follow(ch, id);
                req.set_status(200, None);
                req.send_small_response(b"ok\n")
            }
            None => {
                req.set_status(400, None);
                req.send_small_response(b"bad id\n")
            }
        },
        [op, ch] if op == b"unfollow" => {
            store.unfollow(ch);
            req.set_status(200, None);
            req.send_small_response(b"ok\n")
        }
        [op] if op == b"log" => {
            let mut text = CHANNEL_LOG.with(|log| log.borrow().join("\n"));
            text.push('\n');
            req.set_status(200, None);
            req.send_small_response(text.as_bytes())
        }
        _ => {
            req.set_status(400, None);
            req.send_small_response(
                b"publish, describe, delete, history, follow, unfollow or log\n",
            )
        }
    }
}
