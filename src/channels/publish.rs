//! `websocket_publish ZONE CHANNEL;`: the HTTP endpoint of a channel.
//! `POST`/`PUT` publish the body as one message (201), `GET` describes
//! the channel (200, or 404), `DELETE` ends it (204).

use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    ngx_read_file, NGX_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_ERR,
};
use ngx::http::HttpModuleLocationConf;
use ngx::ngx_log_error;

use super::local;
use super::shm::format_id;
use super::store::StoreError;
use super::{json_string, ChannelModule};
use crate::ngx_io::RequestRef;

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
    match req.method_name() {
        b"GET" | b"HEAD" => {
            let Ok(s) = store.begin() else { return 503 };
            let Some(d) = s.describe(&name) else {
                return 404;
            };
            drop(s);
            let last_id = match d.last_seq {
                0 => String::new(),
                seq => format_id(store.epoch(), seq),
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
    match local::publish(store, Err(&name), &body, !text) {
        Ok((seq, subscribers)) => {
            let body = format!(
                "{{\"id\":{},\"subscribers\":{subscribers}}}\n",
                json_string(&format_id(store.epoch(), seq))
            );
            respond_json(req, 201, &body)
        }
        Err(e) => {
            let why = match e {
                StoreError::Full => "the zone is full",
                StoreError::Unavailable => "the store is unavailable",
            };
            ngx_log_error!(
                NGX_LOG_ERR,
                req.log(),
                "websocket: cannot publish to channel \"{}\" of zone \"{}\": {why}",
                name.escape_ascii(),
                store.name()
            );
            503
        }
    }
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
