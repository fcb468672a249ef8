//! `websocket_publish ZONE CHANNEL;`: the HTTP endpoint of a channel.
//! `POST`/`PUT` publish the body as one message (201), `GET` describes
//! the channel (200, or 404), `DELETE` ends it (204).

use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    ngx_log_t, ngx_read_file, NGX_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR,
};
use ngx::http::HttpModuleLocationConf;
use ngx::ngx_log_error;

use super::store::{Store, StoreError};
use super::{json_string, local, remote, ChannelModule};
use crate::ngx_io::{run_posted_requests, RequestRef};
use foreign_types::ForeignTypeRef;

/// The content handler of `websocket_publish`.
///
/// # Safety
/// Called by nginx with a live request.
pub unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx hands a live request to its content handler.
    let req = unsafe { RequestRef::from_raw(r) };
    let Some((zone, channel)) = ChannelModule::location_conf(req).and_then(|c| c.publish) else {
        return NGX_ERROR as ngx_int_t;
    };
    let Ok(name) = channel.evaluate(req) else {
        return NGX_ERROR as ngx_int_t;
    };
    if name.is_empty() {
        return 400;
    }
    let store = zone.get();
    // [redis] the zone's channels are in Redis: answers come from its replies.
    if store.redis().is_some() {
        return redis_request(req, store, &name);
    }
    match req.method_name() {
        b"GET" | b"HEAD" => {
            let Ok(s) = store.begin() else { return 503 };
            let Some(d) = s.describe(&name) else {
                return 404;
            };
            drop(s);
            let last_id = match d.last_seq {
                0 => String::new(),
                seq => store.format_id(seq),
            };
            let body = format!(
                "{{\"subscribers\":{},\"messages\":{},\"last_id\":{}}}\n",
                d.subscribers,
                d.messages,
                json_string(&last_id)
            );
            respond_json(req, 200, &body)
        }
        b"DELETE" => match local::delete(store, &name) {
            Ok(()) => {
                req.set_status(204, None);
                req.send_small_response(b"")
            }
            Err(_) => 503,
        },
        b"POST" | b"PUT" => {
            // SAFETY: the request is live; nginx calls `body_read` once the
            // body is in, with the request held for it.
            let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            ngx::ffi::NGX_DONE as ngx_int_t
        }
        _ => 405,
    }
}

fn respond_json(req: &mut RequestRef, status: u32, body: &str) -> ngx_int_t {
    req.set_status(status, None);
    req.set_content_type("application/json");
    req.send_small_response(body.as_bytes())
}

/// Whether a `Content-Type` makes the message text.
fn is_text(content_type: &[u8]) -> bool {
    let ct = content_type.to_ascii_lowercase();
    let essence = ct.split(|b| *b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.starts_with(b"text/") || essence == b"application/json"
}

/// The request body, from memory or from its temporary file.
///
/// # Safety
/// `r` is a live request whose body was read.
unsafe fn body_bytes(r: *mut ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: guaranteed by the caller: the chain and its buffers are the
    // body nginx read.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return Some(out);
        }
        let mut cl = (*rb).bufs;
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 && (*b).file_pos < (*b).file_last {
                let len = ((*b).file_last - (*b).file_pos) as usize;
                let start = out.len();
                out.resize(start + len, 0);
                let n = ngx_read_file((*b).file, out[start..].as_mut_ptr(), len, (*b).file_pos);
                if n != len as isize {
                    return None;
                }
            } else if !(*b).pos.is_null() && (*b).last > (*b).pos {
                let len = (*b).last.offset_from((*b).pos) as usize;
                out.extend_from_slice(core::slice::from_raw_parts((*b).pos, len));
            }
            cl = (*cl).next;
        }
    }
    Some(out)
}

unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the body handler with the live request.
    let rc = unsafe { publish_body(r) };
    // SAFETY: as above; ends the reference the body read took.
    unsafe { ngx_http_finalize_request(r, rc) };
}

unsafe fn publish_body(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: a live request.
    let req = unsafe { RequestRef::from_raw(r) };
    let Some((zone, channel)) = ChannelModule::location_conf(req).and_then(|c| c.publish) else {
        return NGX_ERROR as ngx_int_t;
    };
    let Ok(name) = channel.evaluate(req) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the body was read.
    let Some(body) = (unsafe { body_bytes(r) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the parsed request headers.
    let content_type = unsafe {
        let ct = (*r).headers_in.content_type;
        if ct.is_null() {
            Vec::new()
        } else {
            (*ct).value.as_bytes().to_vec()
        }
    };
    let text = is_text(&content_type);
    if text && core::str::from_utf8(&body).is_err() {
        ngx_log_error!(
            NGX_LOG_ERR,
            req.log(),
            "websocket: a text message to publish is not valid UTF-8"
        );
        return 400;
    }
    let store = zone.get();
    // [redis] 201 once Redis has the message.
    if store.redis().is_some() {
        if body.len() > remote::MAX_MESSAGE {
            let why = format!("the message is larger than {} bytes", remote::MAX_MESSAGE);
            cannot_publish(req.log(), store, &name, &why);
            return 413;
        }
        let c = req.connection_ptr();
        let channel = name.clone();
        let sent = remote::publish(store, &name, &body, !text, move |published| {
            let rc = match published {
                Ok((id, subscribers)) => Answer::Json(201, created(&id.to_string(), subscribers)),
                Err(why) => {
                    // SAFETY: the request is held until `answer_later`.
                    let log = unsafe { log_of(r) };
                    Answer::Status(cannot_publish(log, store, &channel, &why))
                }
            };
            // SAFETY: the request was held until this finalizes it.
            unsafe { answer_later(r, c, rc) };
        });
        return match sent {
            Ok(()) => {
                req.hold();
                ngx::ffi::NGX_DONE as ngx_int_t
            }
            Err(why) => cannot_publish(req.log(), store, &name, &why),
        };
    }
    match local::publish(store, Err(&name), &body, !text) {
        Ok((seq, subscribers)) => {
            respond_json(req, 201, &created(&store.format_id(seq), subscribers))
        }
        Err(e) => {
            let why = match e {
                StoreError::Full => "the zone is full",
                StoreError::Unavailable => "the store is unavailable",
            };
            cannot_publish(req.log(), store, &name, why)
        }
    }
}

/// The log of a request held for a Redis reply.
///
/// # Safety
/// `r` is a live request.
unsafe fn log_of(r: *mut ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: guaranteed by the caller.
    unsafe { RequestRef::from_raw(r) }.log()
}

/// The body of a publish's 201.
fn created(id: &str, subscribers: u64) -> String {
    format!(
        "{{\"id\":{},\"subscribers\":{subscribers}}}\n",
        json_string(id)
    )
}

/// What a request held for a Redis reply gets.
enum Answer {
    Json(u32, String),
    /// 204.
    NoContent,
    /// An error page (or an error of nginx's).
    Status(ngx_int_t),
}

/// Logs a failed publish at [error]: 503.
fn cannot_publish(log: *mut ngx_log_t, store: &Store, name: &[u8], why: &str) -> ngx_int_t {
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "websocket: cannot publish to channel \"{}\" of zone \"{}\": {why}",
        name.escape_ascii(),
        store.name()
    );
    503
}

/// Answers a request held for a Redis reply, and ends it.
///
/// # Safety
/// `r` is a live request held by [`RequestRef::hold`]; `c` its connection.
unsafe fn answer_later(
    r: *mut ngx_http_request_t,
    c: *mut ngx::ffi::ngx_connection_t,
    answer: Answer,
) {
    // SAFETY: guaranteed by the caller.
    let req = unsafe { RequestRef::from_raw(r) };
    let rc = match answer {
        Answer::Json(status, body) => respond_json(req, status, &body),
        Answer::NoContent => {
            req.set_status(204, None);
            req.send_small_response(b"")
        }
        Answer::Status(rc) => rc,
    };
    req.finalize_status(rc);
    // SAFETY: `c` is the request's client connection, in this worker.
    unsafe { run_posted_requests(c) };
}

/// `GET`, `HEAD` and `DELETE` of a channel of a zone in Redis (a publish
/// goes through [`body_read`]).
fn redis_request(req: &mut RequestRef, store: &'static Store, name: &[u8]) -> ngx_int_t {
    let r = req.as_ptr();
    let c = req.connection_ptr();
    let channel = name.to_vec();
    let sent = match req.method_name() {
        b"GET" | b"HEAD" => remote::describe(store, name, move |described| {
            let answer = match described {
                Ok(Some((subscribers, stored))) => Answer::Json(
                    200,
                    format!(
                        "{{\"subscribers\":{subscribers},\"messages\":{},\"last_id\":{}}}\n",
                        stored.messages,
                        json_string(&stored.last_id.map(|id| id.to_string()).unwrap_or_default())
                    ),
                ),
                Ok(None) => Answer::Status(404),
                // SAFETY: the request is held until `answer_later`.
                Err(why) => Answer::Status(redis_failed(
                    unsafe { log_of(r) },
                    store,
                    &channel,
                    "describe",
                    &why,
                )),
            };
            // SAFETY: the request was held until this finalizes it.
            unsafe { answer_later(r, c, answer) };
        }),
        b"DELETE" => remote::delete(store, name, move |deleted| {
            let answer = match deleted {
                Ok(()) => Answer::NoContent,
                // SAFETY: the request is held until `answer_later`.
                Err(why) => Answer::Status(redis_failed(
                    unsafe { log_of(r) },
                    store,
                    &channel,
                    "delete",
                    &why,
                )),
            };
            // SAFETY: as above.
            unsafe { answer_later(r, c, answer) };
        }),
        b"POST" | b"PUT" => {
            // SAFETY: the request is live; nginx calls `body_read` once the
            // body is in, with the request held for it.
            let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            return ngx::ffi::NGX_DONE as ngx_int_t;
        }
        _ => return 405,
    };
    match sent {
        Ok(()) => {
            req.hold();
            ngx::ffi::NGX_DONE as ngx_int_t
        }
        Err(why) => redis_failed(req.log(), store, name, req_what(req), &why),
    }
}

fn req_what(req: &RequestRef) -> &'static str {
    if req.method_name() == b"DELETE" {
        "delete"
    } else {
        "describe"
    }
}

/// Logs a failed describe or delete at [error]: 503.
fn redis_failed(
    log: *mut ngx_log_t,
    store: &Store,
    name: &[u8],
    what: &str,
    why: &str,
) -> ngx_int_t {
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "websocket: cannot {what} channel \"{}\" of zone \"{}\": {why}",
        name.escape_ascii(),
        store.name()
    );
    503
}

#[cfg(test)]
mod tests {
    use super::is_text;

    #[test]
    fn text_types() {
        assert!(is_text(b"text/plain"));
        assert!(is_text(b"Text/HTML; charset=utf-8"));
        assert!(is_text(b"application/json"));
        assert!(is_text(b"application/json ; charset=utf-8"));
        assert!(!is_text(b"application/octet-stream"));
        assert!(!is_text(b""));
        assert!(!is_text(b"application/jsonx"));
    }
}
