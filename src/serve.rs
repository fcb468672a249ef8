//! [`serve`]: the library drives an upgraded session and calls a
//! [`Handler`]. The one generic set of `extern "C"` trampolines of the
//! crate's WebSocket servers (`websocket_echo` and `websocket_subscribe` are
//! [`Handler`]s too).

use core::any::Any;
use core::cell::Cell;
use core::ffi::CStr;
use core::ptr::NonNull;
use std::rc::Rc;

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_connection_t, ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_log_t, ngx_module_t,
    NGX_DONE, NGX_ERROR, NGX_LOG_INFO,
};
use ngx::ngx_log_error;

use crate::ngx_detach::{
    detach_session, detached_session, end_detached, serve_close_request, Detach, DetachedSession,
};
use crate::ngx_io::{
    request_of_client_event, run_posted_requests, CloseRequest, ConnectionRef, Direction, NgxError,
    RequestRef,
};
use crate::ngx_peer::{request_of, EventHandler};
use crate::protocol::close::{GOING_AWAY, INTERNAL, POLICY};
use crate::session::{Quiet, Stats, WebSocket, WsError};
use crate::upgrade::Upgraded;
use crate::variables::{LoggedSession, SessionCtx, SessionLog};
use crate::ws_client::{Ending, WsClient};

/// A WebSocket application: what a session does with what it receives.
///
/// The library reads, decodes and validates frames, flushes what the
/// handler queued, applies the timeouts, heartbeats and limits of the
/// [`ServerOptions`](crate::ServerOptions), and closes the connection; it
/// calls [`Handler::step`] whenever something may be there to handle.
pub trait Handler: 'static {
    /// Handles what arrived: call [`WebSocket::recv`] (or
    /// [`WebSocket::recv_frame`]) until it returns `Ok(None)`, and send with
    /// [`Context::ws`]. Also called after a [`Waker::wake`]
    /// ([`Context::origin`] says which).
    fn step(&mut self, cx: &mut Context<'_>) -> Next;

    /// The session is due to close (the worker is exiting, or it reached
    /// `max_session_time`): the library sends close 1001 once no message is
    /// being received (and a step did not return [`Next::Again`]). Called
    /// once, before the next [`Handler::step`].
    fn shut_down(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The session sent its close frame, whoever started the close (the
    /// handler, or the library: a timeout, a protocol error, a limit, the
    /// shutdown): no [`Handler::step`] follows. Called once; release here
    /// what would bring the session more work (a subscription, say). The
    /// library still writes what is queued and waits for the peer's close.
    fn closing(&mut self) {}

    /// The session ended (however it did), with what crossed it: called
    /// once for every handler that [`serve`] took, even when `serve` itself
    /// failed. Where a module accounts for its sessions: the library keeps
    /// no per-application counts (`websocket_echo` counts its sessions in
    /// the module's `nginx_websocket_*` metrics from here, by the close
    /// code in [`Stats::close_code`]).
    fn finish(&mut self, stats: &Stats) {
        let _ = stats;
    }
}

/// What a [`Handler::step`] asks for next.
#[derive(Debug)]
pub enum Next {
    /// Wait for the next event (everything received was handled).
    Wait,
    /// As [`Next::Wait`], but the handler holds more to send than it
    /// queued (it feeds its output in slices, to keep
    /// [`WebSocket::queued`] short): [`Handler::step`] runs again as soon
    /// as everything queued is written. A session due to close sends its
    /// 1001 only once a step returns something else, so what the handler
    /// held goes first.
    Again,
    /// Send a close frame with this code, then end the session once the
    /// peer answers (or the timeout passes).
    Close(u16),
    /// An operation failed: a protocol error is answered with its close code,
    /// a connection error ends the session at once.
    Fail(WsError),
    /// Drop the connection now, without a close frame.
    Abort,
}

impl From<WsError> for Next {
    fn from(e: WsError) -> Self {
        Next::Fail(e)
    }
}

/// Why [`Handler::step`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An event of the client connection (data, writable, a timer).
    Client,
    /// A [`Waker`] of the session was woken.
    Wake,
    /// An event of the session's upstream connection (a [`RelayHandler`]'s
    /// session; a [`Handler`] never gets it).
    Upstream,
}

/// What a [`Handler`] works with during one call.
pub struct Context<'a> {
    ws: &'a mut WebSocket,
    conn: &'a ConnectionRef,
    waker: &'a Waker,
    origin: Origin,
    shutting_down: bool,
}

impl Context<'_> {
    /// The session's WebSocket.
    pub fn ws(&mut self) -> &mut WebSocket {
        self.ws
    }

    /// The client connection.
    pub fn connection(&self) -> &ConnectionRef {
        self.conn
    }

    /// The connection's log, for `ngx_log_error!`.
    pub fn log(&self) -> *mut ngx_log_t {
        self.conn.log()
    }

    /// A handle by which other sessions or timers wake this session.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Why this call happens.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Whether the session is due to close (see [`Handler::shut_down`]).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }
}

/// Wakes a session from outside its own events: its [`Handler::step`] runs
/// on this event loop iteration with [`Origin::Wake`]. Waking a session that
/// ended does nothing. Not `Send`: a worker's sessions live on its thread.
#[derive(Clone)]
pub struct Waker(Rc<WakeState>);

struct WakeState {
    /// The session's connection while the session lives.
    conn: Cell<Option<NonNull<ngx_connection_t>>>,
    woken: Cell<bool>,
    /// What the session had queued at the end of its last event.
    queued: Cell<usize>,
}

impl Waker {
    fn new(conn: &ConnectionRef) -> Waker {
        Waker(Rc::new(WakeState {
            conn: Cell::new(NonNull::new(conn.as_ptr())),
            woken: Cell::new(false),
            queued: Cell::new(0),
        }))
    }

    /// Asks the session to run its handler soon.
    pub fn wake(&self) {
        if let Some(c) = self.0.conn.get() {
            self.0.woken.set(true);
            // SAFETY: the session clears `conn` when it ends, before its
            // connection closes: the connection is open.
            unsafe { ConnectionRef::from_ptr(c.as_ptr()) }.post(Direction::Read);
        }
    }

    /// Whether the session still runs.
    pub fn is_alive(&self) -> bool {
        self.0.conn.get().is_some()
    }

    /// Bytes the session has queued and not yet written, as its last event
    /// left them (0 once it ended): what a producer that feeds several
    /// sessions weighs to find one that does not keep up.
    pub fn queued(&self) -> usize {
        self.0.queued.get()
    }
}

/// A relay: a session with two legs, the upgraded client's [`WebSocket`]
/// and the upstream's [`WsClient`], that moves frames between them
/// (`websocket_pass` is one). A [`ClientHandler`](crate::ClientHandler)
/// starts it once its connect completed, with
/// [`ClientContext::upgrade`](crate::ClientContext::upgrade) and
/// [`Relaying::serve`](crate::Relaying::serve); it then runs on the same
/// trampolines as a [`Handler`]'s session, through both legs' events.
///
/// The library owns both legs, sends the rest of the 101 response before
/// any frame, registers for the events that [`RelayNext::Wait`] asks for,
/// follows the request when nginx's access log is done with it, and at the
/// end closes the upstream or (after [`WsClient::set_keepalive`]) pools it.
/// The handler moves the frames ([`WebSocket::recv_frame_in_place`],
/// [`WebSocket::send_frame`]), keeps what it queues in check with
/// [`WebSocket::queued`], and writes with [`RelayContext::flush`]; it
/// handles the legs' deadlines ([`WebSocket::take_timedout`]) and, to pool
/// the upstream, fences it ([`Fence`](crate::Fence)). [`Relay`](crate::Relay)
/// is the library's own, ready to use, and shows how.
pub trait RelayHandler: 'static {
    /// Moves what arrived on either leg (or [`RelayContext::origin`] says
    /// why else it runs), flushes, and says what to wait for.
    fn step(&mut self, cx: &mut RelayContext<'_>) -> RelayNext;

    /// The session ended (however it did), with what crossed the client
    /// leg: called once for every handler that
    /// [`Relaying::serve`](crate::Relaying::serve) took, as
    /// [`Handler::finish`] is.
    fn finish(&mut self, stats: &Stats) {
        let _ = stats;
    }
}

/// What a [`RelayHandler::step`] asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayNext {
    /// Wait for the next event of either leg: the library registers for
    /// the legs' events, with their write deadlines while output is queued,
    /// and their read deadlines (timeout, heartbeat) on the legs to read.
    /// A leg not read waits for its peer to drain (backpressure).
    Wait {
        /// Read the client leg.
        read_client: bool,
        /// Read the upstream leg.
        read_upstream: bool,
    },
    /// The session is over (both legs flushed what they had to say): the
    /// upstream is pooled or closed, the client connection closed,
    /// lingering while the client may still be sending (it did not send a
    /// close frame).
    Finish,
    /// End now, as a failure: nothing more is sent or waited for.
    Abort,
}

/// What a [`RelayHandler`] works with during one call: both legs.
pub struct RelayContext<'a> {
    client: &'a mut WebSocket,
    upstream: &'a mut WsClient,
    conn: &'a ConnectionRef,
    origin: Origin,
}

impl RelayContext<'_> {
    /// The client leg: the upgraded request's WebSocket.
    pub fn client(&mut self) -> &mut WebSocket {
        self.client
    }

    /// The upstream leg.
    pub fn upstream(&mut self) -> &mut WsClient {
        self.upstream
    }

    /// Both legs at once, to move frames from one to the other.
    pub fn legs(&mut self) -> (&mut WebSocket, &mut WsClient) {
        (self.client, self.upstream)
    }

    /// The client connection.
    pub fn connection(&self) -> &ConnectionRef {
        self.conn
    }

    /// The client connection's log, for `ngx_log_error!`.
    pub fn log(&self) -> *mut ngx_log_t {
        self.conn.log()
    }

    /// Which leg's event this call follows ([`Origin::Client`] or
    /// [`Origin::Upstream`]).
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Writes what both legs queued: `Ok(true)` once all of it is on the
    /// wire; an error is a leg's connection that failed.
    pub fn flush(&mut self) -> Result<bool, WsError> {
        match (self.client.flush(), self.upstream.flush()) {
            (Ok(c), Ok(u)) => Ok(c && u),
            _ => Err(WsError::Io),
        }
    }

    /// Whether the session became due to close since the last call: the
    /// worker is exiting, or the client leg reached its
    /// [`ServerOptions::max_session_time`](crate::ServerOptions::max_session_time)
    /// (logged at info). Close both legs (1001 is usual) after the
    /// messages under way.
    pub fn due_to_close(&mut self) -> bool {
        self.client.due_to_close(self.conn.log())
    }
}

/// A [`RelayHandler`]'s session: the library's part of the work around it.
pub(crate) struct RelaySession<H: RelayHandler> {
    /// Taken when the session ends (the upstream may go to its pool).
    legs: Option<(WebSocket, Box<WsClient>)>,
    handler: H,
    /// The client leg's counts, kept when the session ends.
    stats: Stats,
}

impl<H: RelayHandler> RelaySession<H> {
    pub(crate) fn new(client: WebSocket, upstream: Box<WsClient>, handler: H) -> Self {
        RelaySession {
            stats: client.stats(),
            legs: Some((client, upstream)),
            handler,
        }
    }
}

impl<H: RelayHandler> Drop for RelaySession<H> {
    fn drop(&mut self) {
        self.handler.finish(&self.stats);
    }
}

impl<H: RelayHandler> Drive for RelaySession<H> {
    fn run(&mut self, c: &ConnectionRef, request: Option<&mut RequestRef>, origin: Origin) -> End {
        let Some((client, upstream)) = self.legs.as_mut() else {
            return FINISH_ERROR;
        };
        // The rest of the 101 goes before any frame: the relay writes to
        // the socket itself and would overtake what nginx's filters hold.
        if let Some(r) = request.filter(|r| r.output_pending()) {
            if c.take_timedout(Direction::Write) {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    c.log(),
                    "websocket: client timed out while the 101 response was sent"
                );
                return FINISH_ERROR;
            }
            if r.flush_output().is_err() {
                return FINISH_ERROR;
            }
            if r.output_pending() {
                return match client.await_writable() {
                    Ok(()) => End::Wait,
                    Err(_) => FINISH_ERROR,
                };
            }
            c.del_timer(Direction::Write);
        }
        client.allow_direct_writes();
        upstream.allow_direct_writes();
        let mut cx = RelayContext {
            client,
            upstream,
            conn: c,
            origin,
        };
        let next = self.handler.step(&mut cx);
        self.stats = client.stats();
        let end = match next {
            RelayNext::Wait {
                read_client,
                read_upstream,
            } => match (client.arm(read_client), upstream.arm(read_upstream)) {
                (Ok(()), Ok(())) => return End::Wait,
                _ => FINISH_ERROR,
            },
            RelayNext::Finish => End::Finish {
                linger: !client.close_received(),
                error: false,
            },
            RelayNext::Abort => FINISH_ERROR,
        };
        // At its end the upstream goes to its pool when it was asked to.
        if let Some((_, upstream)) = self.legs.take() {
            if let Some(Ending::Keepalive {
                max_idle_timeout,
                pool_size,
            }) = upstream.ending()
            {
                if let Err(e) = upstream.into_pool(max_idle_timeout, pool_size) {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        c.log(),
                        "websocket: upstream connection closed: {e}"
                    );
                }
            }
        }
        end
    }

    fn drain(&mut self) {
        if let Some((client, _)) = self.legs.as_mut() {
            client.drain();
        }
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn detached(&mut self, c: *mut ngx_connection_t, handler: EventHandler) {
        if let Some((_, upstream)) = &self.legs {
            upstream.redirect_events(c.cast(), handler);
        }
    }

    fn writes_waiting(&self) -> bool {
        self.legs
            .as_ref()
            .is_none_or(|(_, upstream)| upstream.queued() > 0)
    }
}

/// What a served session does with a round of work: a [`Handler`]'s
/// session, or the relay of `websocket_pass`.
pub(crate) trait Drive: 'static {
    /// One round of work after an event; `request` while the request is
    /// attached (its 101 may still be on its way out).
    fn run(&mut self, c: &ConnectionRef, request: Option<&mut RequestRef>, origin: Origin) -> End;
    /// The worker is exiting: finish what is under way, then close.
    fn drain(&mut self);
    /// What crossed the client leg so far.
    fn stats(&self) -> Stats;
    /// The request was detached: the client connection `c` owns the
    /// session now, and an upstream connection's events go to `handler`
    /// with `c` as their data.
    fn detached(&mut self, c: *mut ngx_connection_t, handler: EventHandler) {
        let _ = (c, handler);
    }
    /// Whether output waits for the upstream connection (of a detached
    /// session, see [`Drive::detached`]): without it, and without a timer
    /// that fired, the upstream's write event has nothing to do. Epoll
    /// reports a connected socket writable with every read event.
    fn writes_waiting(&self) -> bool {
        true
    }
}

/// An upgraded session; the request owns it (as its module context) while
/// the access log still needs it, the connection after that (`access_log
/// off`).
pub(crate) struct Served {
    log: SessionLog,
    drive: Box<dyn Drive>,
    detach: Detach,
}

impl Served {
    /// A session that `drive` runs, logged in `log`.
    pub(crate) fn new(log: SessionLog, drive: Box<dyn Drive>, detach: Detach) -> Served {
        Served { log, drive, detach }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.log.update(self.drive.stats());
    }
}

impl DetachedSession for Served {
    fn detach(&mut self) -> &mut Detach {
        &mut self.detach
    }

    fn shut_down(&mut self) {
        self.drive.drain();
    }
}

impl LoggedSession for Served {
    fn session_log(&self) -> &SessionLog {
        &self.log
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A [`Handler`]'s session: the library's part of the work around it.
struct HandlerSession {
    ws: WebSocket,
    handler: Box<dyn Handler>,
    waker: Waker,
    /// Due to close: finish the message under way, then close 1001.
    shutting_down: bool,
    /// `shut_down` was told.
    told: bool,
    /// `closing` was told.
    closing_told: bool,
}

impl Drop for HandlerSession {
    fn drop(&mut self) {
        self.waker.0.conn.set(None);
        // See `Waker::queued`.
        self.waker.0.queued.set(0);
        self.handler.finish(&self.ws.stats());
    }
}

/// How a round of work ended.
pub(crate) enum End {
    Wait,
    Finish { linger: bool, error: bool },
}

/// Serves an upgraded request with `handler`: returns what the content
/// handler returns to nginx (`NGX_DONE`, or `NGX_ERROR` when the session
/// could not start). The first [`Handler::step`] runs from the event loop;
/// [`Handler::finish`] is called once the session ended, or at once when it
/// could not start.
///
/// Metrics: the sessions of this crate's own nginx module add their
/// traffic to its `nginx_websocket_*` metrics, and its directives count
/// their sessions by kind (`websocket_echo` from [`Handler::finish`]); the
/// kinds name those directives, so no label is offered to other
/// applications. A dependent built with `default-features = false` has no
/// metrics zone: it accounts for its sessions itself, from
/// [`Handler::finish`].
///
/// # Safety
/// `module` must be the calling module, an HTTP module loaded in this
/// cycle, whose request context slot (`ctx[module.ctx_index]`) nothing else
/// uses for this request: the session lives there.
pub unsafe fn serve<H: Handler>(
    upgraded: Upgraded<'_>,
    module: &'static ngx_module_t,
    handler: H,
) -> ngx_int_t {
    let (r, ws, subprotocol) = upgraded.into_parts();
    let c = r.connection();
    let drive = HandlerSession {
        ws,
        handler: Box::new(handler),
        waker: Waker::new(c),
        shutting_down: false,
        told: false,
        closing_told: false,
    };
    let served = Served::new(
        SessionLog::new(subprotocol),
        Box::new(drive),
        Detach::for_request(r),
    );
    let session: SessionCtx = Box::new(served);
    if r.set_owned_ctx(module, Box::new(session)).is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    r.hold();
    if start(r, c"serving WebSocket").is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    NGX_DONE as ngx_int_t
}

/// Runs the session in the request's context (a [`Served`]) from the next
/// event on: its events come to this module's trampolines.
pub(crate) fn start(r: &mut RequestRef, action: &'static CStr) -> Result<(), NgxError> {
    r.set_event_handlers(on_request_event, on_request_event);
    let c = r.connection();
    // Events come straight to the session (not through the request's
    // handlers), so that a worker that exits asks it to close gracefully.
    c.set_event_handler(on_connection_event);
    c.set_idle(true);
    c.set_log_action(action);
    c.tcp_nodelay()?;
    // Run the first step from the event loop, not from inside the content
    // phase, so every end of the session goes through one path (and the
    // request may be detached there, once nginx is done with it).
    c.post(Direction::Read);
    Ok(())
}

/// The session of a request that [`serve`] serves.
///
/// # Safety
/// Nothing else may reference the session while the result is used, and it
/// must not be used after the request is finalized.
unsafe fn served_of<'a>(r: &RequestRef) -> Option<&'a mut Served> {
    let mut ctx = r.owned_ctx::<SessionCtx>()?;
    // SAFETY: the request owns the session until it is freed; the
    // trampolines run from the event loop, one at a time, and nothing else
    // holds a reference to the session meanwhile.
    let ctx = unsafe { ctx.as_mut() };
    ctx.as_any_mut().downcast_mut::<Served>()
}

/// Event handler of a served connection that still has its request.
unsafe extern "C" fn on_connection_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is its request while it is upgraded.
    let (c, r) = unsafe { request_of_client_event(ev) };
    // SAFETY: as above.
    let r = unsafe { RequestRef::from_raw(r) };
    match r.connection().take_close_request() {
        CloseRequest::None => {}
        CloseRequest::Graceful => {
            // SAFETY: an event handler of the request, run alone from the event loop.
            if let Some(session) = unsafe { served_of(r) } {
                session.drive.drain();
            }
        }
        CloseRequest::Now => {
            ngx_log_error!(
                NGX_LOG_INFO,
                r.log(),
                "websocket: worker_shutdown_timeout expired, closing"
            );
            r.finalize(false, true);
            // SAFETY: `c` is the client connection; see run_posted_requests.
            unsafe { run_posted_requests(c) };
            return;
        }
    }
    // SAFETY: the pipelined bytes were taken, and this runs from the event
    // loop: nothing else uses the request or the session.
    let detached = unsafe { detach_session::<SessionCtx>(r, on_detached_event) };
    if let Some(session) = detached {
        if let Some(served) = session.as_any_mut().downcast_mut::<Served>() {
            served.drive.detached(c, on_detached_upstream_event);
        }
        // SAFETY: `c` lives on, now owning the session.
        run_detached(
            unsafe { ConnectionRef::from_ptr(c) },
            session,
            Origin::Client,
        );
        return;
    }
    run_attached(r, Origin::Client);
    // SAFETY: `c` is the client connection; see run_posted_requests.
    unsafe { run_posted_requests(c) };
}

/// Event handler of a served session's upstream connection while the
/// request is attached: its data is the request.
pub(crate) unsafe extern "C" fn on_upstream_event(ev: *mut ngx_event_t) {
    // SAFETY: the upstream connection was attached with the request as data.
    let r = unsafe { RequestRef::from_raw(request_of(ev)) };
    let c = r.connection_ptr();
    run_attached(r, Origin::Upstream);
    // SAFETY: `c` is the client connection; see run_posted_requests.
    unsafe { run_posted_requests(c) };
}

/// Event handler of a served session's upstream connection once the
/// request was detached: its data is the client connection.
unsafe extern "C" fn on_detached_upstream_event(ev: *mut ngx_event_t) {
    // SAFETY: `Drive::detached` redirected the upstream's events with the
    // client connection as data; its data is the session.
    let (c, session, idle_write) = unsafe {
        let upstream: *mut ngx_connection_t = (*ev).data.cast();
        let c: *mut ngx_connection_t = (*upstream).data.cast();
        (
            ConnectionRef::from_ptr(c),
            &mut *(*c).data.cast::<SessionCtx>(),
            (*ev).write() != 0 && (*ev).timedout() == 0,
        )
    };
    if idle_write {
        let waiting = session
            .as_any_mut()
            .downcast_mut::<Served>()
            .is_none_or(|served| served.drive.writes_waiting());
        if !waiting {
            return;
        }
    }
    run_detached(c, session, Origin::Upstream);
}

/// Read and write event handler of a served request.
unsafe extern "C" fn on_request_event(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls request event handlers with a live request.
    let r = unsafe { RequestRef::from_raw(r) };
    run_attached(r, Origin::Client);
}

fn run_attached(r: &mut RequestRef, origin: Origin) {
    // SAFETY: an event handler of the request, run alone from the event loop.
    let Some(session) = (unsafe { served_of(r) }) else {
        r.finalize(false, true);
        return;
    };
    // SAFETY: the request's connection outlives this event.
    let c = unsafe { ConnectionRef::from_ptr(r.connection_ptr()) };
    let end = session.drive.run(c, Some(r), origin);
    session.log.update(session.drive.stats());
    if let End::Finish { linger, error } = end {
        r.finalize(linger, error);
    }
}

/// Event handler of a served connection whose request was detached.
unsafe extern "C" fn on_detached_event(ev: *mut ngx_event_t) {
    // SAFETY: the connection's data is the session `on_connection_event`
    // leaked into it.
    let (c, session) = unsafe { detached_session::<SessionCtx>(ev) };
    // SAFETY: as above.
    if unsafe { serve_close_request(c, session) } {
        run_detached(c, session, Origin::Client);
    }
}

fn run_detached(c: &ConnectionRef, session: &mut SessionCtx, origin: Origin) {
    let Some(served) = session.as_any_mut().downcast_mut::<Served>() else {
        return;
    };
    let end = served.drive.run(c, None, origin);
    served.log.update(served.drive.stats());
    if let End::Finish { linger, .. } = end {
        // SAFETY: the connection owns the session, which is not used again.
        unsafe { end_detached(c, session, linger) };
    }
}

const FINISH_ERROR: End = End::Finish {
    linger: false,
    error: true,
};

impl Drive for HandlerSession {
    fn drain(&mut self) {
        self.ws.drain();
    }

    fn stats(&self) -> Stats {
        self.ws.stats()
    }

    fn run(&mut self, c: &ConnectionRef, request: Option<&mut RequestRef>, _: Origin) -> End {
        let end = self.round(c, request);
        // See `Waker::queued`.
        self.waker.0.queued.set(self.ws.queued());
        end
    }
}

impl HandlerSession {
    /// One round of work after an event.
    fn round(&mut self, c: &ConnectionRef, mut request: Option<&mut RequestRef>) -> End {
        let log = c.log();
        if c.take_timedout(Direction::Write) {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "websocket: client timed out while we were sending"
            );
            return FINISH_ERROR;
        }
        if c.take_timedout(Direction::Read) && !self.ws.close_sent() {
            let code = match self.ws.on_read_timeout() {
                Quiet::Pinged | Quiet::Due => None,
                Quiet::Idle => {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client idle for too long, closing with {GOING_AWAY}"
                    );
                    Some(GOING_AWAY)
                }
                Quiet::Dead => {
                    ngx_log_error!(
                        NGX_LOG_INFO,
                        log,
                        "websocket: client did not answer a ping in time, closing with {INTERNAL}"
                    );
                    Some(INTERNAL)
                }
            };
            if let Some(code) = code {
                let _ = self.ws.send_close(Some(code), b"");
            }
        }
        // After the read timeout: a deadline that passed is its to tell
        // from a quiet peer's.
        if self.ws.due_to_close(log) {
            self.shutting_down = true;
        }
        let woken = self.waker.0.woken.replace(false);
        loop {
            // Set when the step returned `Next::Again`: it runs again once
            // its output is written, and a due 1001 waits for it.
            let mut again = false;
            if !self.ws.close_sent() {
                match self.handle(c, woken) {
                    Ok(more) => again = more,
                    Err(end) => return end,
                }
                // Everything received is answered and what the handler held
                // is sent; a message still arriving is waited for
                // (worker_shutdown_timeout bounds it).
                if self.shutting_down && !again && !self.ws.close_sent() && !self.ws.in_message() {
                    let _ = self.ws.send_close(Some(GOING_AWAY), b"");
                }
            }
            // Tell the handler once that its close frame is queued.
            if self.ws.close_sent() && !self.closing_told {
                self.closing_told = true;
                self.handler.closing();
            }
            if let Some(r) = request.as_deref_mut().filter(|r| r.output_pending()) {
                if r.flush_output().is_err() {
                    return FINISH_ERROR;
                }
                if r.output_pending() {
                    return self.arm();
                }
            }
            // The whole 101 is out.
            self.ws.allow_direct_writes();
            match self.ws.flush() {
                // When we started the close the client may still be sending:
                // linger so that its data does not turn our close into a reset.
                Ok(true) if self.ws.close_sent() => {
                    return End::Finish {
                        linger: !self.ws.close_received(),
                        error: false,
                    }
                }
                // Reading paused for the output that just drained: resume now,
                // the socket will not signal again for data already there;
                // and the handler holds more to send.
                Ok(true) if self.ws.take_throttled() || again => continue,
                Ok(_) => return self.arm(),
                Err(_) => return FINISH_ERROR,
            }
        }
    }
}

impl HandlerSession {
    /// Calls the handler and does what it asks (`Ok(true)`: it holds more
    /// to send); stops at a close.
    fn handle(&mut self, c: &ConnectionRef, woken: bool) -> Result<bool, End> {
        let mut cx = Context {
            ws: &mut self.ws,
            conn: c,
            waker: &self.waker,
            origin: if woken { Origin::Wake } else { Origin::Client },
            shutting_down: self.shutting_down,
        };
        if self.shutting_down && !self.told {
            self.told = true;
            self.handler.shut_down(&mut cx);
        }
        let log = c.log();
        match self.handler.step(&mut cx) {
            Next::Wait => Ok(false),
            Next::Again => Ok(true),
            Next::Close(code) => self
                .ws
                .send_close(Some(code), b"")
                .map(|()| false)
                .map_err(|_| FINISH_ERROR),
            Next::Abort => Err(FINISH_ERROR),
            Next::Fail(WsError::Protocol(e)) => {
                let code = e.close_code();
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: client sent {e}, closing with {code}"
                );
                let _ = self.ws.send_close(Some(code), b"");
                Ok(false)
            }
            Next::Fail(WsError::Eof) => {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: client closed the connection without a close frame"
                );
                Err(End::Finish {
                    linger: false,
                    error: false,
                })
            }
            Next::Fail(e @ (WsError::TooBig { .. } | WsError::Compression)) => {
                let code = crate::protocol::close::TOO_BIG;
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: cannot send: {e}, closing with {code}"
                );
                let _ = self.ws.send_close(Some(code), b"");
                Ok(false)
            }
            Next::Fail(WsError::Closed) => Ok(false),
            // [limit] past a `websocket_limit ... close` (logged there).
            Next::Fail(WsError::RateExceeded) => {
                let _ = self
                    .ws
                    .send_close(Some(POLICY), crate::limit::CLOSE_REASON);
                Ok(false)
            }
            Next::Fail(_) => Err(FINISH_ERROR),
        }
    }

    fn arm(&self) -> End {
        match self.ws.arm(!self.ws.close_sent()) {
            Ok(()) => End::Wait,
            Err(_) => FINISH_ERROR,
        }
    }
}
