//! Thin wrappers around nginx's request, connection, event and configuration
//! objects. This is the only module that dereferences nginx pointers; every
//! `unsafe` block states why it holds.

use core::ptr::{self, NonNull};
use core::slice;

use core::cell::UnsafeCell;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    iovec, ngx_buf_t, ngx_chain_t, ngx_conf_log_error, ngx_conf_t, ngx_connection_t,
    ngx_create_temp_buf, ngx_del_timer, ngx_event_t, ngx_handle_read_event, ngx_handle_write_event,
    ngx_http_finalize_request, ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header,
    ngx_http_send_special, ngx_int_t, ngx_iovec_t, ngx_list_part_t, ngx_list_push, ngx_log_t,
    ngx_msec_t, ngx_str_t, ngx_table_elt_t, ngx_tcp_nodelay, ngx_writev, SSL_ctrl,
    SSL_set_quiet_shutdown, NGX_AGAIN,
    NGX_DONE, NGX_ERROR, NGX_HTTP_FLUSH, NGX_HTTP_LAST, NGX_LOG_EMERG, NGX_OK, SSL_CTRL_MODE,
    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER,
};
use ngx::http::{HttpModuleConfExt, HttpModuleLocationConf, NgxHttpCoreModule};

/// An nginx call that failed (its name); nginx has usually logged the cause
/// already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgxError(pub &'static str);

impl core::fmt::Display for NgxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} failed", self.0)
    }
}

impl std::error::Error for NgxError {}

/// Signature of an nginx content handler.
pub type ContentHandler = unsafe extern "C" fn(*mut ngx_http_request_t) -> ngx_int_t;
/// Signature of a request's read/write event handler.
pub type RequestEventHandler = unsafe extern "C" fn(*mut ngx_http_request_t);

// ---------------------------------------------------------------- configuration

/// The arguments of the directive being parsed, without the directive name.
///
/// # Safety
/// `cf` must be the configuration nginx is parsing, inside a directive handler.
pub unsafe fn conf_args<'a>(cf: *mut ngx_conf_t) -> impl Iterator<Item = &'a [u8]> {
    // SAFETY: during a directive handler `cf->args` is an array of ngx_str_t
    // whose first element is the directive name.
    let args: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    args.iter().skip(1).map(|s| s.as_bytes())
}

/// Logs a configuration error with the file and line nginx is at.
///
/// # Safety
/// `cf` must be the configuration nginx is parsing.
pub unsafe fn conf_error(cf: *mut ngx_conf_t, msg: &str) {
    // SAFETY: "%*s" consumes exactly a length and a pointer to that many bytes.
    unsafe {
        ngx_conf_log_error(
            NGX_LOG_EMERG as _,
            cf,
            0,
            c"%*s".as_ptr(),
            msg.len(),
            msg.as_ptr(),
        );
    }
}

/// Installs `handler` as the content handler of the location being parsed.
///
/// # Safety
/// `cf` must be the configuration nginx is parsing, inside a location block.
pub unsafe fn set_content_handler(
    cf: *mut ngx_conf_t,
    handler: ContentHandler,
) -> Result<(), NgxError> {
    // SAFETY: inside a location the core module's loc conf exists and is ours to set.
    let clcf = NgxHttpCoreModule::location_conf_mut(unsafe { &*cf })
        .ok_or(NgxError("ngx_http_conf_get_module_loc_conf"))?;
    clcf.handler = Some(handler);
    Ok(())
}

// ---------------------------------------------------------------- connection

/// A borrowed nginx connection (`ngx_connection_t`).
///
/// The struct is wrapped in `UnsafeCell`: nginx and this module change it
/// while shared references to it exist, and the compiler must not assume
/// otherwise (an opaque zero-sized stand-in would let it drop our writes).
#[repr(transparent)]
pub struct ConnectionRef(UnsafeCell<ngx_connection_t>);

// SAFETY: `ConnectionRef` is an opaque stand-in for `ngx_connection_t`.
unsafe impl ForeignTypeRef for ConnectionRef {
    type CType = ngx_connection_t;
}

/// Outcome of one non-blocking socket operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// This many bytes moved.
    Done(usize),
    /// The socket is not ready; wait for the next event.
    Again,
    /// The peer closed its side (reads only).
    Eof,
    /// A socket error; nginx has logged it.
    Error,
}

impl Io {
    /// What nginx's send and recv functions return: bytes, `NGX_AGAIN` or
    /// `NGX_ERROR` (a recv's 0, the peer's close, is the caller's to tell).
    fn from_nginx(n: isize) -> Io {
        match n {
            n if n >= 0 => Io::Done(n as usize),
            n if n == NGX_AGAIN as isize => Io::Again,
            _ => Io::Error,
        }
    }
}

/// What nginx asks of a connection when the worker exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    None,
    /// Finish what was received, then close.
    Graceful,
    /// `worker_shutdown_timeout` expired: close at once.
    Now,
}

/// Which of a connection's two events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The read event.
    Read,
    /// The write event.
    Write,
}

impl ConnectionRef {
    fn raw(&self) -> &ngx_connection_t {
        // SAFETY: a ConnectionRef is only made from a live connection pointer.
        unsafe { &*self.as_ptr() }
    }

    fn event(&self, dir: Direction) -> *mut ngx_event_t {
        match dir {
            Direction::Read => self.raw().read,
            Direction::Write => self.raw().write,
        }
    }

    /// The connection's log, for `ngx_log_error!`.
    pub fn log(&self) -> *mut ngx_log_t {
        self.raw().log
    }

    /// The socket's file descriptor.
    pub fn fd(&self) -> i32 {
        self.raw().fd
    }

    /// Reads into `buf` with the connection's own `recv` (plain or TLS).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Io {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        unsafe { self.recv_raw(buf.as_mut_ptr(), buf.len()) }
    }

    /// Reads at most `max` bytes onto the end of `buf` (its length grows by
    /// what came), with the connection's own `recv`.
    pub(crate) fn recv_onto(&self, buf: &mut Vec<u8>, max: usize) -> Io {
        buf.reserve(max);
        let spare = &mut buf.spare_capacity_mut()[..max];
        // SAFETY: `spare` is valid for `max` bytes of writes.
        let io = unsafe { self.recv_raw(spare.as_mut_ptr().cast(), max) };
        if let Io::Done(n) = io {
            let len = buf.len() + n;
            // SAFETY: recv initialised the `n` bytes after the old length.
            unsafe { buf.set_len(len) };
        }
        io
    }

    /// # Safety
    /// `buf` is valid for `len` bytes of writes (it may be uninitialised:
    /// recv only writes, and says how many bytes it wrote).
    unsafe fn recv_raw(&self, buf: *mut u8, len: usize) -> Io {
        let recv = self
            .raw()
            .recv
            .expect("nginx sets c->recv on every connection");
        // SAFETY: the caller's contract.
        match unsafe { recv(self.as_ptr(), buf, len) } {
            0 => Io::Eof,
            n => Io::from_nginx(n),
        }
    }

    /// Writes from `buf` with the connection's own `send` (plain or TLS).
    ///
    /// After [`Io::Again`] the next send must start with the same bytes and
    /// be no shorter: over TLS, OpenSSL has taken part of them into a record
    /// it finishes first (the bytes may have moved in memory meanwhile).
    pub(crate) fn send(&self, buf: &[u8]) -> Io {
        let send = self
            .raw()
            .send
            .expect("nginx sets c->send on every connection");
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads; nginx's send
        // functions do not write through the pointer.
        let n = unsafe { send(self.as_ptr(), buf.as_ptr().cast_mut(), buf.len()) };
        let io = Io::from_nginx(n);
        self.note_tls_write(io);
        io
    }

    /// Writes `head` then `body` in one system call, on a plain connection;
    /// `None` over TLS (whose records need the bytes in one buffer: use
    /// [`send`](Self::send)). A partial write is `Io::Done` with fewer
    /// bytes than both hold.
    pub(crate) fn send_pair(&self, head: &[u8], body: &[u8]) -> Option<Io> {
        if !self.raw().ssl.is_null() {
            return None;
        }
        let mut iovs = [
            iovec {
                iov_base: head.as_ptr().cast_mut().cast(),
                iov_len: head.len(),
            },
            iovec {
                iov_base: body.as_ptr().cast_mut().cast(),
                iov_len: body.len(),
            },
        ];
        let mut vec = ngx_iovec_t {
            iovs: iovs.as_mut_ptr(),
            count: iovs.len() as _,
            size: head.len() + body.len(),
            nalloc: iovs.len() as _,
        };
        // SAFETY: a live plain connection; both slices are valid for reads
        // for their lengths during the call, and writev(2) only reads them.
        Some(Io::from_nginx(unsafe { ngx_writev(self.as_ptr(), &mut vec) }))
    }

    /// Prepares a TLS connection for the retry of a write that could not
    /// finish. OpenSSL wants it with the same buffer: nginx keeps its own in
    /// place (`c->ssl->buf`), ours grow and are compacted while the retry
    /// waits, so the SSL object is told that the bytes may move. And
    /// close_notify cannot follow an unfinished record (SSL_shutdown() fails
    /// with "bad write retry"): until the write completes, the connection's
    /// TLS shutdown is quiet, as nginx makes it for a connection closed with
    /// output still buffered.
    fn note_tls_write(&self, io: Io) {
        let tls = self.raw().ssl;
        if tls.is_null() {
            return;
        }
        // SAFETY: a TLS connection's SSL object lives as long as the
        // connection; both calls only set flags on it.
        unsafe {
            let ssl = (*tls).connection;
            match io {
                Io::Again => {
                    SSL_ctrl(
                        ssl,
                        SSL_CTRL_MODE as _,
                        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER as _,
                        ptr::null_mut(),
                    );
                    SSL_set_quiet_shutdown(ssl, 1);
                }
                Io::Done(_) => SSL_set_quiet_shutdown(ssl, 0),
                Io::Eof | Io::Error => {}
            }
        }
    }

    pub(crate) fn ready(&self, dir: Direction) -> bool {
        // SAFETY: both events of a live connection are valid.
        unsafe { (*self.event(dir)).ready() != 0 }
    }

    /// Returns whether the event's timer fired, and clears the flag.
    pub(crate) fn take_timedout(&self, dir: Direction) -> bool {
        let ev = self.event(dir);
        // SAFETY: both events of a live connection are valid and only touched
        // from this worker's thread.
        unsafe {
            let fired = (*ev).timedout() != 0;
            (*ev).set_timedout(0);
            fired
        }
    }

    /// (Re)arms the event's timer; nginx skips the rbtree update when the
    /// deadline moves by less than its lazy delay.
    pub(crate) fn add_timer(&self, dir: Direction, ms: ngx_msec_t) {
        // SAFETY: the event belongs to a live connection of this worker.
        unsafe { ngx::ffi::ngx_add_timer(self.event(dir), ms) }
    }

    pub(crate) fn del_timer(&self, dir: Direction) {
        let ev = self.event(dir);
        // SAFETY: as above; the timer is only deleted when set.
        unsafe {
            if (*ev).timer_set() != 0 {
                ngx_del_timer(ev);
            }
        }
    }

    /// Registers interest in the event with nginx's event loop.
    pub(crate) fn handle_event(&self, dir: Direction) -> Result<(), NgxError> {
        // SAFETY: the event belongs to a live connection of this worker.
        let rc = unsafe {
            match dir {
                Direction::Read => ngx_handle_read_event(self.event(dir), 0),
                Direction::Write => ngx_handle_write_event(self.event(dir), 0),
            }
        };
        if rc == NGX_OK as ngx_int_t {
            Ok(())
        } else {
            Err(NgxError("ngx_handle_event"))
        }
    }

    /// Whether the peer has closed its side, without consuming anything it
    /// sent (as nginx's `ngx_http_test_reading` checks).
    pub(crate) fn peer_closed(&self) -> bool {
        let rev = self.event(Direction::Read);
        // SAFETY: the read event of a live connection; a one-byte peek into
        // a local buffer.
        unsafe {
            if (*rev).pending_eof() != 0 || (*rev).eof() != 0 {
                return true;
            }
            let mut byte = 0u8;
            let n = ngx::ffi::recv(
                self.fd(),
                core::ptr::addr_of_mut!(byte).cast(),
                1,
                ngx::ffi::MSG_PEEK as i32,
            );
            n == 0 || (n < 0 && ngx::ffi::ngx_socket_errno() != ngx::ffi::NGX_EAGAIN as i32)
        }
    }

    /// Marks the connection idle, so that when the worker starts exiting
    /// nginx calls its read handler with `close` set (see
    /// [`ConnectionRef::take_close_request`]).
    pub(crate) fn set_idle(&self, idle: bool) {
        // SAFETY: a live connection of this worker.
        unsafe { ngx_connection_t::set_idle_raw(self.as_ptr(), idle as u32) }
    }

    /// What nginx asked of the connection (the worker is exiting); clears
    /// the request and the idle mark so it is asked once. A graceful request
    /// also makes the next read really read: data may be in the socket that
    /// the event loop has not reported yet.
    pub(crate) fn take_close_request(&self) -> CloseRequest {
        let c = self.as_ptr();
        // SAFETY: a live connection of this worker with its read event.
        unsafe {
            if ngx_connection_t::close_raw(c) == 0 {
                return CloseRequest::None;
            }
            ngx_connection_t::set_close_raw(c, 0);
            ngx_connection_t::set_idle_raw(c, 0);
            // worker_shutdown_timeout expired: nginx sets `error` too.
            if ngx_connection_t::error_raw(c) != 0 {
                return CloseRequest::Now;
            }
            let rev = (*c).read;
            (*rev).set_ready(1);
            (*rev).available = -1;
            CloseRequest::Graceful
        }
    }

    /// Makes the next read really read the socket: data may be there that
    /// the event loop has not reported yet, or that it reported to a handler
    /// that did not read it.
    pub(crate) fn assume_readable(&self) {
        let rev = self.event(Direction::Read);
        // SAFETY: the read event of a live connection of this worker.
        unsafe {
            (*rev).set_ready(1);
            (*rev).available = -1;
        }
    }

    /// Handles both events of the connection with `handler` directly,
    /// instead of through the request's handlers.
    pub(crate) fn set_event_handler(&self, handler: unsafe extern "C" fn(*mut ngx::ffi::ngx_event_t)) {
        // SAFETY: a live connection with both events.
        unsafe {
            (*self.raw().read).handler = Some(handler);
            (*self.raw().write).handler = Some(handler);
        }
    }

    /// Queues the event to run on this loop iteration's posted-events pass.
    pub(crate) fn post(&self, dir: Direction) {
        // SAFETY: the event belongs to a live connection of this worker and
        // the posted-events queue is the worker's own.
        unsafe {
            ngx::ffi::ngx_post_event(
                self.event(dir),
                core::ptr::addr_of_mut!(ngx::ffi::ngx_posted_events),
            )
        }
    }

    pub(crate) fn tcp_nodelay(&self) -> Result<(), NgxError> {
        // SAFETY: the connection is live.
        if unsafe { ngx_tcp_nodelay(self.as_ptr()) } == NGX_OK as ngx_int_t {
            Ok(())
        } else {
            Err(NgxError("ngx_tcp_nodelay"))
        }
    }

    /// Sets the phrase nginx appends to the connection's log lines
    /// ("while ..."): [`serve`](crate::serve()) sets "serving WebSocket",
    /// a handler may name what it does instead.
    pub fn set_log_action(&self, action: &'static core::ffi::CStr) {
        // SAFETY: the log belongs to the connection; `action` lives forever.
        unsafe { (*self.log()).action = action.as_ptr().cast_mut() }
    }
}

// ---------------------------------------------------------------- request

/// A borrowed nginx HTTP request (`ngx_http_request_t`).
///
/// Wrapped in `UnsafeCell` for the same reason as [`ConnectionRef`].
#[repr(transparent)]
pub struct RequestRef(UnsafeCell<ngx_http_request_t>);

// SAFETY: `RequestRef` is an opaque stand-in for `ngx_http_request_t`.
unsafe impl ForeignTypeRef for RequestRef {
    type CType = ngx_http_request_t;
}

impl RequestRef {
    /// # Safety
    /// `r` must be a live request of this worker.
    pub unsafe fn from_raw<'a>(r: *mut ngx_http_request_t) -> &'a mut RequestRef {
        // SAFETY: guaranteed by the caller.
        unsafe { RequestRef::from_ptr_mut(r) }
    }

    fn raw(&self) -> &ngx_http_request_t {
        // SAFETY: a RequestRef is only made from a live request pointer.
        unsafe { &*self.as_ptr() }
    }

    fn raw_mut(&mut self) -> &mut ngx_http_request_t {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { &mut *self.as_ptr() }
    }

    /// The client connection the request came on.
    pub fn connection(&self) -> &ConnectionRef {
        // SAFETY: a request's connection outlives the request.
        unsafe { ConnectionRef::from_ptr(self.raw().connection) }
    }

    /// The request's log, for `ngx_log_error!`.
    pub fn log(&self) -> *mut ngx_log_t {
        self.connection().log()
    }

    /// Whether this is the main request, not a subrequest.
    pub fn is_main(&self) -> bool {
        ptr::eq(self.raw().main, self.as_ptr())
    }

    /// Whether the request is one HTTP/2 stream of a connection: its
    /// `connection` is then a stand-in that shares the real socket.
    pub(crate) fn is_http2_stream(&self) -> bool {
        !self.raw().stream.is_null()
    }

    /// The request method, as sent (`GET`).
    pub fn method_name(&self) -> &[u8] {
        self.raw().method_name.as_bytes()
    }

    pub(crate) fn http_version(&self) -> u32 {
        self.raw().http_version as u32
    }

    /// Whether the request announces a body (Content-Length > 0 or chunked).
    pub(crate) fn has_body(&self) -> bool {
        let h = &self.raw().headers_in;
        h.content_length_n > 0 || h.chunked() != 0
    }

    /// All request headers in arrival order, names as sent.
    pub fn headers_in(&self) -> Vec<(&[u8], &[u8])> {
        let mut out = Vec::new();
        let mut part: *const ngx_list_part_t = &self.raw().headers_in.headers.part;
        while !part.is_null() {
            // SAFETY: every part of an ngx_list_t of headers holds `nelts`
            // initialised ngx_table_elt_t and links to the next part or null.
            unsafe {
                let elts: &[ngx_table_elt_t] = if (*part).nelts == 0 {
                    &[]
                } else {
                    slice::from_raw_parts((*part).elts.cast(), (*part).nelts)
                };
                for h in elts.iter().filter(|h| h.hash != 0) {
                    out.push((h.key.as_bytes(), h.value.as_bytes()));
                }
                part = (*part).next;
            }
        }
        out
    }

    /// The request's bytes that arrived after its header (a client may send
    /// frames right behind the handshake); they are consumed.
    pub(crate) fn take_pipelined(&mut self) -> Vec<u8> {
        let b: *mut ngx_buf_t = self.raw().header_in;
        if b.is_null() {
            return Vec::new();
        }
        // SAFETY: `header_in` is the request's header buffer; [pos, last) is
        // data nginx has read but not parsed.
        unsafe {
            let len = (*b).last.offset_from((*b).pos) as usize;
            let data = slice::from_raw_parts((*b).pos, len).to_vec();
            (*b).pos = (*b).last;
            data
        }
    }

    /// Sets the response status (and, optionally, the whole status line).
    pub fn set_status(&mut self, status: u32, line: Option<&'static str>) {
        let r = self.raw_mut();
        r.headers_out.status = status as _;
        if let Some(line) = line {
            r.headers_out.status_line = ngx_str_t {
                len: line.len(),
                data: line.as_ptr().cast_mut(),
            };
        }
    }

    /// Adds a response header; the strings are copied into the request pool.
    pub fn add_header_out(&mut self, key: &str, value: &[u8]) -> Result<(), NgxError> {
        let r = self.raw_mut();
        // SAFETY: headers_out.headers is an initialised list of ngx_table_elt_t;
        // every field nginx reads is set below.
        unsafe {
            let h: *mut ngx_table_elt_t = ngx_list_push(&mut r.headers_out.headers).cast();
            if h.is_null() {
                return Err(NgxError("ngx_list_push"));
            }
            (*h).hash = 1;
            // 1.23.0 chains headers of the same name through `next`.
            #[cfg(nginx1_23_0)]
            {
                (*h).next = ptr::null_mut();
            }
            (*h).key =
                ngx_str_t::from_bytes(r.pool, key.as_bytes()).ok_or(NgxError("ngx_pnalloc"))?;
            (*h).value = ngx_str_t::from_bytes(r.pool, value).ok_or(NgxError("ngx_pnalloc"))?;
            (*h).lowcase_key = ptr::null_mut();
        }
        Ok(())
    }

    /// Sets the response's `Content-Length`.
    pub fn set_content_length(&mut self, n: usize) {
        self.raw_mut().headers_out.content_length_n = n as _;
    }

    /// Sets the response's `Content-Type`.
    pub fn set_content_type(&mut self, value: &'static str) {
        let r = self.raw_mut();
        r.headers_out.content_type = ngx_str_t {
            len: value.len(),
            data: value.as_ptr().cast_mut(),
        };
        r.headers_out.content_type_len = value.len();
    }

    /// Sends the response header and flushes it to the socket (buffered by
    /// nginx if the socket is not writable).
    pub(crate) fn send_header_flush(&mut self) -> Result<(), NgxError> {
        let r = self.as_ptr();
        // SAFETY: the request is live and its header not sent yet.
        unsafe {
            let rc = ngx_http_send_header(r);
            if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
                return Err(NgxError("ngx_http_send_header"));
            }
            if ngx_http_send_special(r, NGX_HTTP_FLUSH as _) == NGX_ERROR as ngx_int_t {
                return Err(NgxError("ngx_http_send_special"));
            }
        }
        Ok(())
    }

    /// Sends a complete small response (header and body) and returns the code
    /// the content handler must return.
    pub fn send_small_response(&mut self, body: &[u8]) -> ngx_int_t {
        self.set_content_length(body.len());
        let r = self.as_ptr();
        // SAFETY: the request is live; the buffer is allocated from its pool and
        // filled before the chain is handed to the output filters.
        unsafe {
            let rc = ngx_http_send_header(r);
            if rc == NGX_ERROR as ngx_int_t
                || rc > NGX_OK as ngx_int_t
                || self.raw().header_only() != 0
            {
                return rc;
            }
            if body.is_empty() {
                // A buffer without bytes that is not a special one is
                // nginx's "zero size buf" alert: only the end of the response.
                return ngx_http_send_special(r, NGX_HTTP_LAST as _);
            }
            let b = ngx_create_temp_buf((*r).pool, body.len());
            if b.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
            (*b).last = (*b).last.add(body.len());
            (*b).set_last_buf(1);
            (*b).set_last_in_chain(1);
            let mut out = ngx_chain_t {
                buf: b,
                next: ptr::null_mut(),
            };
            ngx_http_output_filter(r, &mut out)
        }
    }

    /// Whether response bytes are still held by nginx's output filters.
    pub(crate) fn output_pending(&self) -> bool {
        !self.raw().out.is_null() || self.connection().raw().buffered() != 0
    }

    /// Pushes response bytes held by nginx's output filters to the socket.
    pub(crate) fn flush_output(&mut self) -> Result<(), NgxError> {
        // SAFETY: the request is live; a null chain only flushes what is held.
        let rc = unsafe { ngx_http_output_filter(self.as_ptr(), ptr::null_mut()) };
        if rc == NGX_ERROR as ngx_int_t {
            Err(NgxError("ngx_http_output_filter"))
        } else {
            Ok(())
        }
    }

    /// Keeps the request alive after the content handler returns NGX_DONE;
    /// balanced by one [`RequestRef::finalize`].
    pub(crate) fn hold(&mut self) {
        // SAFETY: the main request is live; nginx counts references this way.
        unsafe {
            let main = self.raw().main;
            (*main).set_count((*main).count() + 1);
        }
    }

    pub(crate) fn set_event_handlers(&mut self, read: RequestEventHandler, write: RequestEventHandler) {
        let r = self.raw_mut();
        r.read_event_handler = Some(read);
        r.write_event_handler = Some(write);
        r.set_keepalive(0);
    }

    /// The client connection, to run posted requests on after the request
    /// itself may be gone (see [`run_posted_requests`]).
    pub(crate) fn connection_ptr(&self) -> *mut ngx_connection_t {
        self.raw().connection
    }

    /// Ends the request with an HTTP status (or NGX_ERROR) instead of a
    /// WebSocket session: nginx sends its error page. Same rules as
    /// [`RequestRef::finalize`] about what may be touched afterwards.
    pub(crate) fn finalize_status(&mut self, rc: ngx_int_t) {
        // SAFETY: the request is live and held.
        unsafe { ngx_http_finalize_request(self.as_ptr(), rc) }
    }

    /// The request URI as the client sent it (path and query).
    pub fn unparsed_uri(&self) -> &[u8] {
        self.raw().unparsed_uri.as_bytes()
    }

    /// Ends a request held by [`RequestRef::hold`]. `linger` half-closes the
    /// socket and drains the peer for `lingering_timeout` instead of closing
    /// at once, so a close frame we just sent is not lost to a TCP reset.
    /// The request and everything in its pool may be freed here: the caller
    /// must not touch them afterwards.
    pub(crate) fn finalize(&mut self, linger: bool, error: bool) {
        self.connection().del_timer(Direction::Read);
        self.connection().del_timer(Direction::Write);
        let r = self.as_ptr();
        // SAFETY: the request is live and held; nginx drops our reference.
        unsafe {
            (*r).set_lingering_close(linger as u32);
            let rc = if error { NGX_ERROR } else { NGX_DONE };
            ngx_http_finalize_request(r, rc as ngx_int_t);
        }
    }
}

impl HttpModuleConfExt for RequestRef {
    unsafe fn http_location_conf_unchecked<T>(
        &self,
        module: &ngx::ffi::ngx_module_t,
    ) -> Option<NonNull<T>> {
        // SAFETY: `loc_conf` has one slot per HTTP module, indexed by ctx_index.
        NonNull::new(unsafe { *self.raw().loc_conf.add(module.ctx_index) }.cast())
    }

    unsafe fn http_server_conf_unchecked<T>(
        &self,
        module: &ngx::ffi::ngx_module_t,
    ) -> Option<NonNull<T>> {
        // SAFETY: `srv_conf` has one slot per HTTP module, indexed by ctx_index.
        NonNull::new(unsafe { *self.raw().srv_conf.add(module.ctx_index) }.cast())
    }
}

/// The request of a client connection's event, and the connection.
///
/// # Safety
/// `ev` must be an event of a client connection that carries an HTTP
/// request (`c->data`).
pub unsafe fn request_of_client_event(
    ev: *mut ngx::ffi::ngx_event_t,
) -> (*mut ngx_connection_t, *mut ngx_http_request_t) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let c: *mut ngx_connection_t = (*ev).data.cast();
        (c, (*c).data.cast())
    }
}

/// Runs subrequests and terminations that nginx posted while an event of
/// another connection (an upstream's) was handled. Safe after the request
/// was freed: nginx checks `c->destroyed`, and connections are never freed.
///
/// # Safety
/// `c` must be a client connection of this worker.
pub unsafe fn run_posted_requests(c: *mut ngx_connection_t) {
    // SAFETY: guaranteed by the caller.
    unsafe { ngx::ffi::ngx_http_run_posted_requests(c) }
}

// ---------------------------------------------------------------- config values

/// A directive value that may contain variables (`ngx_http_complex_value_t`),
/// compiled once at configuration time and evaluated per request.
#[derive(Clone, Copy)]
pub struct ComplexValue(NonNull<ngx::ffi::ngx_http_complex_value_t>);

impl ComplexValue {
    /// Compiles `value` in the configuration pool.
    ///
    /// # Safety
    /// `cf` must be the configuration nginx is parsing.
    pub unsafe fn compile(cf: *mut ngx_conf_t, value: &[u8]) -> Result<Self, NgxError> {
        // SAFETY: the pool outlives the configuration; the compile structure
        // is zeroed as nginx's C modules do before filling it.
        unsafe {
            let pool = (*cf).pool;
            let cv: *mut ngx::ffi::ngx_http_complex_value_t = ngx::ffi::ngx_pcalloc(
                pool,
                core::mem::size_of::<ngx::ffi::ngx_http_complex_value_t>(),
            )
            .cast();
            let cv = NonNull::new(cv).ok_or(NgxError("ngx_pcalloc"))?;
            let mut source = ngx_str_t::from_bytes(pool, value).ok_or(NgxError("ngx_pnalloc"))?;
            let mut ccv: ngx::ffi::ngx_http_compile_complex_value_t = core::mem::zeroed();
            ccv.cf = cf;
            ccv.value = &mut source;
            ccv.complex_value = cv.as_ptr();
            if ngx::ffi::ngx_http_compile_complex_value(&mut ccv) != NGX_OK as ngx_int_t {
                return Err(NgxError("ngx_http_compile_complex_value"));
            }
            Ok(ComplexValue(cv))
        }
    }

    /// Evaluates the value for `r`.
    pub(crate) fn evaluate(&self, r: &RequestRef) -> Result<Vec<u8>, NgxError> {
        let mut out = ngx_str_t::empty();
        // SAFETY: the compiled value lives in the configuration pool; the
        // result is allocated in the request pool and copied out at once.
        let rc = unsafe { ngx::ffi::ngx_http_complex_value(r.as_ptr(), self.0.as_ptr(), &mut out) };
        if rc != NGX_OK as ngx_int_t {
            return Err(NgxError("ngx_http_complex_value"));
        }
        Ok(out.as_bytes().to_vec())
    }
}

/// The `upstream {}` block named `authority` (`host` or `host:port`), or the
/// implicit one nginx creates for it (resolved when the configuration is
/// loaded), exactly as `proxy_pass` finds it.
///
/// # Safety
/// `cf` must be the configuration nginx is parsing.
pub unsafe fn upstream_add(
    cf: *mut ngx_conf_t,
    authority: &str,
    default_port: u16,
) -> Result<NonNull<ngx::ffi::ngx_http_upstream_srv_conf_t>, NgxError> {
    // SAFETY: the URL string is copied into the configuration pool, which
    // the upstream configuration keeps pointing to.
    unsafe {
        let mut u: ngx::ffi::ngx_url_t = core::mem::zeroed();
        u.url = ngx_str_t::from_bytes((*cf).pool, authority.as_bytes())
            .ok_or(NgxError("ngx_pnalloc"))?;
        u.default_port = default_port;
        u.set_no_resolve(1);
        let uscf = ngx::ffi::ngx_http_upstream_add(cf, &mut u, 0);
        NonNull::new(uscf).ok_or(NgxError("ngx_http_upstream_add"))
    }
}

/// The cycle's log, for connections that no request owns (pooled ones).
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: the current cycle and its log live as long as the worker.
    unsafe { (*ngx::ffi::ngx_cycle).log }
}

/// Posts a client connection's write event, so that its request handler
/// runs on this loop iteration (to wake a session waiting for a pool).
///
/// # Safety
/// `c` must be an open connection of this worker.
pub unsafe fn post_write_event(c: NonNull<ngx_connection_t>) {
    // SAFETY: guaranteed by the caller.
    unsafe { ConnectionRef::from_ptr(c.as_ptr()) }.post(Direction::Write);
}

/// nginx's cached current time in milliseconds.
#[cfg(not(test))]
pub fn now_msec() -> ngx_msec_t {
    // SAFETY: a plain read of the worker's time cache.
    unsafe { ngx::ffi::ngx_current_msec }
}

/// Unit tests run without nginx: its clock stands still at 0.
#[cfg(test)]
pub fn now_msec() -> ngx_msec_t {
    0
}
