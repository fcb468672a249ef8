//! `websocket_status`: the session metrics and every zone's families in
//! one Prometheus text page. Kept apart from `metrics` so that the zones,
//! which count into `metrics`, are not named by it.

use ngx::ffi::ngx_int_t;

/// The content handler of `websocket_status`.
///
/// # Safety
/// Called by nginx with a live request.
pub unsafe extern "C" fn handler(r: *mut ngx::ffi::ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx hands a live request to its content handler.
    let r = unsafe { crate::ngx_io::RequestRef::from_raw(r) };
    if !matches!(r.method_name(), b"GET" | b"HEAD") {
        return 405;
    }
    let mut body = crate::metrics::render();
    // [limit] each zone keeps its own counters.
    crate::limit::render_metrics(&mut body);
    // Channels: the zones' own counters, in their shared memory.
    crate::channels::render_metrics(&mut body);
    r.set_status(200, None);
    r.set_content_type("text/plain; version=0.0.4");
    r.send_small_response(body.as_bytes())
}
