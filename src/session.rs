//! The WebSocket object over an nginx connection: the seed's `wb`
//! operations (`send_*`, `recv`), driven by nginx's events, never blocking.
//!
//! Reads go through a fixed buffer and the streaming [`Decoder`], which
//! unmasks and validates payloads in place; data messages are assembled in
//! one reusable buffer. Writes are queued in one buffer, flushed in order on
//! write events, and while too much is queued the object stops reading, so a
//! slow peer slows its sender instead of growing memory.

use core::fmt;
use core::ptr::NonNull;

use ngx::ffi::{ngx_connection_t, ngx_log_t, ngx_msec_t, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::buffers::{self, READ_BUFFER_SIZE};
use crate::compression::{Compression, DeflateSettings};
use crate::drain;
use crate::limit::Limiter;
#[cfg(not(test))]
use crate::limit::{self, Admission};
use crate::metrics;
use crate::ngx_io::{now_msec, ConnectionRef, Direction, Io};
use crate::protocol::close::build_close_payload;
use crate::protocol::decoder::{ControlFrame, DecodeEvent, Decoder, DecoderConfig};
use crate::protocol::deflate::{NegotiatedDeflate, RSV1};
use crate::protocol::frame::{encode_header, FrameHeader, OpCode, ParseConfig};
use crate::protocol::mask::apply_mask;
use crate::protocol::ProtocolError;
use crate::random::{self, EntropyError};
pub use crate::clock::Quiet;
use crate::clock::{Clock, Due};
pub use crate::stats::{Limits, Stats};

use foreign_types::ForeignTypeRef;

/// The payload of heartbeat pings (`websocket_ping_interval`), by which
/// their pongs are told from the peer's own.
const HEARTBEAT: &[u8] = b"ngx_http_websocket_module heartbeat";
/// The close code reported for a close frame without one (RFC 6455 §7.1.5).
const NO_STATUS: u16 = 1005;
/// Queued output above which the object stops reading from its peer,
/// unless told otherwise (`pause_reading_above`).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// The most a message buffer grows by ahead of the bytes for a frame's
/// announced length: a peer that announces large frames and trickles them
/// gets no more memory set aside than this per connection.
const EAGER_RESERVE: u64 = 1 << 20;
/// A frame payload from this size on is written straight from the caller's
/// bytes when nothing is queued before it (one system call either way; a
/// smaller one is copied, so that frames sent together go out together).
const DIRECT_WRITE_MIN: usize = 32 * 1024;
/// The rest of a frame's payload from this size on is read straight into
/// the message (a smaller rest comes through the read buffer with what
/// follows it, in one system call).
const DIRECT_READ_MIN: u64 = 16 * 1024;
/// Which end of the connection this object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones (unless `send_masked`).
    Server,
    /// Receives unmasked frames, sends masked ones (unless `send_masked` is
    /// off, which only `websocket_pass_send_unmasked` does).
    Client,
}

/// What [`WebSocket::recv`] delivers.
#[derive(Debug)]
pub enum Received {
    /// A complete text or binary message. Hand `data` back with
    /// [`WebSocket::recycle`] to reuse its allocation.
    Message {
        /// [`OpCode::Text`] or [`OpCode::Binary`].
        opcode: OpCode,
        /// The whole message, unmasked and (for text) valid UTF-8.
        data: Vec<u8>,
    },
    /// A ping; the library does not answer it (the handler does, with
    /// [`WebSocket::send_pong`]).
    Ping(ControlFrame),
    /// A pong.
    Pong(ControlFrame),
    /// The peer's close frame: its code and reason, if it sent any.
    Close(Option<(u16, String)>),
}

/// What [`WebSocket::recv_frame`] delivers: the seed's `data, typ, err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvFrame {
    /// The payload; for a close frame, its reason.
    pub data: Vec<u8>,
    /// The seed's `typ`: continuation, text, binary, close, ping or pong.
    pub typ: OpCode,
    /// The seed's `err == "again"`: more fragments of this message follow.
    pub again: bool,
    /// For a close frame with a status, the seed's `err == code`.
    pub close_code: Option<u16>,
}

/// A frame as [`WebSocket::recv_frame_in_place`] delivers it: like
/// [`RecvFrame`], with the payload borrowed from the object instead of
/// moved out of it.
pub struct FrameRef<'a> {
    /// As [`RecvFrame::typ`].
    pub typ: OpCode,
    /// As [`RecvFrame::again`].
    pub again: bool,
    /// As [`RecvFrame::close_code`].
    pub close_code: Option<u16>,
    payload: Payload<'a>,
}

enum Payload<'a> {
    /// A data frame: in the read buffer when it arrived whole, else in the
    /// message buffer (it came in parts, or was inflated).
    Data(&'a [u8]),
    Control(ControlFrame),
}

impl FrameRef<'_> {
    /// The payload; for a close frame, its reason.
    pub fn data(&self) -> &[u8] {
        match &self.payload {
            Payload::Data(data) => data,
            Payload::Control(frame) if frame.opcode == OpCode::Close => frame
                .close()
                .map_or(&[][..], |(_, reason)| reason.as_bytes()),
            Payload::Control(frame) => frame.payload(),
        }
    }
}

/// How much data [`WebSocket::read_until`] collects before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// A frame, left in the read buffer when it is there whole.
    Frame,
    Message,
}

/// What [`WebSocket::read_until`] found.
enum Got {
    /// `self.message` holds the unit; `opcode` is the message's type and
    /// `header` the last frame's.
    Data {
        opcode: OpCode,
        header: FrameHeader,
    },
    /// A whole frame at `self.rbuf[range]` (only for `Unit::Frame`).
    InPlace {
        header: FrameHeader,
        range: core::ops::Range<usize>,
    },
    Control(ControlFrame),
}

/// Why an operation failed.
#[derive(Debug)]
pub enum WsError {
    /// The peer broke RFC 6455; answer with a close frame carrying
    /// [`ProtocolError::close_code`].
    Protocol(ProtocolError),
    /// The peer closed the TCP connection without a close handshake.
    Eof,
    /// A socket error, already logged by nginx.
    Io,
    /// A send larger than `max_send_len`; nothing was queued.
    TooBig {
        /// The payload's length.
        len: usize,
        /// `max_send_len`.
        limit: u64,
    },
    /// A send after our close frame was queued.
    Closed,
    /// zlib failed to compress a message; nothing of it was queued.
    Compression,
    /// No masking key could be drawn; nothing was queued.
    Entropy(EntropyError),
    /// A data message past a `websocket_limit ... close`: the session
    /// closes with 1008 and the reason "message rate exceeded".
    RateExceeded,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Protocol(e) => write!(f, "protocol error: {e}"),
            WsError::Eof => f.write_str("peer closed the connection without a close frame"),
            WsError::Io => f.write_str("connection error"),
            WsError::TooBig { len, limit } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the send limit of {limit} bytes"
                )
            }
            WsError::Closed => f.write_str("connection is closing"),
            WsError::Compression => f.write_str("compressing a message failed"),
            WsError::Entropy(e) => write!(f, "no masking key: {e}"),
            WsError::RateExceeded => f.write_str("message rate exceeded"),
        }
    }
}

impl std::error::Error for WsError {}

impl From<EntropyError> for WsError {
    fn from(e: EntropyError) -> Self {
        WsError::Entropy(e)
    }
}

impl From<ProtocolError> for WsError {
    fn from(e: ProtocolError) -> Self {
        WsError::Protocol(e)
    }
}

/// One WebSocket endpoint over an nginx connection: the seed's `wb` object.
///
/// Only the library makes one ([`upgrade`](crate::upgrade)), over the
/// connection it keeps open until the object is dropped. Code outside the
/// crate only ever holds `&mut` to one object at a time (its own session's,
/// through [`Upgraded::ws`](crate::Upgraded::ws) or
/// [`Context::ws`](crate::Context::ws)), so it cannot swap objects between
/// connections.
pub struct WebSocket {
    conn: NonNull<ngx_connection_t>,
    /// Unit tests: the socket the object reads and writes instead.
    #[cfg(test)]
    fake: std::rc::Rc<core::cell::RefCell<tests::Socket>>,
    role: Role,
    decoder: Decoder,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    message: Vec<u8>,
    /// `message` holds a frame `recv_frame_in_place` delivered: cleared on
    /// the next call.
    frame_in_message: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    limits: Limits,
    close_sent: bool,
    close_received: bool,
    /// Reading stopped because too much output was queued; once it drains,
    /// the caller must read again (an edge-triggered event will not repeat).
    throttled: bool,
    /// Queued output above which reading stops.
    read_pause_above: usize,
    /// A fragmented message is being sent (its last frame not yet queued).
    sending_message: bool,
    /// Nothing but our frames goes to the socket any more (the whole 101 is
    /// out): a large frame may be written before it is queued.
    direct_writes: bool,
    /// permessage-deflate, when negotiated.
    compression: Option<Box<Compression>>,
    /// The heartbeat and session-age timers.
    clock: Clock,
    /// Counted in `nginx_websocket_sessions_draining` until dropped.
    draining: bool,
    stats: Stats,
    /// [limit] `websocket_limit` on the data messages received.
    limiter: Option<Box<Limiter>>,
}

impl WebSocket {
    /// Wraps an upgraded connection. `pipelined` are bytes the peer sent
    /// right after its handshake.
    ///
    /// # Safety
    /// The object keeps a pointer to `conn` beyond the borrow: `conn` must
    /// stay open (not closed or reused by nginx) until the object is
    /// dropped, and the object must be used on this worker's thread only.
    pub(crate) unsafe fn new(conn: &ConnectionRef, role: Role, limits: Limits, pipelined: &[u8]) -> Self {
        let conn = NonNull::new(conn.as_ptr()).expect("a connection reference is never null");
        Self::over(conn, role, limits, pipelined)
    }

    /// The object over `conn` (see [`WebSocket::new`]).
    fn over(conn: NonNull<ngx_connection_t>, role: Role, limits: Limits, pipelined: &[u8]) -> Self {
        let decoder = Decoder::new(decoder_config(role, &limits));
        let mut rbuf = if pipelined.is_empty() {
            Vec::new()
        } else if pipelined.len() <= READ_BUFFER_SIZE {
            buffers::take()
        } else {
            vec![0; pipelined.len()]
        };
        rbuf[..pipelined.len()].copy_from_slice(pipelined);
        WebSocket {
            conn,
            #[cfg(test)]
            fake: Default::default(),
            role,
            decoder,
            rbuf,
            rpos: 0,
            rend: pipelined.len(),
            message: Vec::new(),
            frame_in_message: false,
            wbuf: Vec::new(),
            wpos: 0,
            limits,
            close_sent: false,
            close_received: false,
            throttled: false,
            read_pause_above: WRITE_HIGH_WATER,
            sending_message: false,
            direct_writes: false,
            compression: None,
            clock: Clock::new(now_msec(), limits, role == Role::Server),
            draining: false,
            stats: Stats::default(),
            limiter: None,
        }
        .counted()
    }

    /// A client-facing session counts among the worker's live sessions
    /// (see `drain`).
    fn counted(self) -> Self {
        if self.role == Role::Server {
            drain::session_began();
        }
        self
    }

    /// The worker is exiting: the session is due to close once its turn
    /// in `websocket_shutdown_spread` comes (at once without a spread).
    pub(crate) fn drain(&mut self) {
        if !self.draining {
            self.draining = true;
            metrics::draining_started();
            let delay = drain::delay(self.limits.shutdown_spread_ms);
            self.clock.drain(now_msec(), delay);
        }
    }

    /// Whether the session became due to close since the last call (its
    /// age, or its turn while the worker exits): it then closes with 1001
    /// after the message under way. Reaching the age is logged at info.
    pub(crate) fn due_to_close(&mut self, log: *mut ngx_log_t) -> bool {
        let mut due = false;
        while let Some(reason) = self.clock.take_due(now_msec()) {
            if reason == Due::MaxSessionTime {
                ngx_log_error!(
                    NGX_LOG_INFO,
                    log,
                    "websocket: session reached websocket_max_session_time, closing"
                );
            }
            due = true;
        }
        due
    }

    fn conn(&self) -> &ConnectionRef {
        // SAFETY: the session owning the object is dropped before its
        // connection is closed.
        unsafe { ConnectionRef::from_ptr(self.conn.as_ptr()) }
    }

    /// Whether the socket may have bytes to read.
    #[cfg(not(test))]
    fn io_ready(&self) -> bool {
        self.conn().ready(Direction::Read)
    }

    /// Reads what the socket has into the free end of the read buffer.
    #[cfg(not(test))]
    fn io_recv(&mut self) -> Io {
        let conn = self.conn.as_ptr();
        // SAFETY: see `conn()`; the reference does not outlive this call.
        unsafe { ConnectionRef::from_ptr(conn) }.recv(&mut self.rbuf[self.rend..])
    }

    /// Writes queued bytes from the first unwritten one.
    #[cfg(not(test))]
    fn io_send(&self) -> Io {
        self.conn().send(&self.wbuf[self.wpos..])
    }

    /// Reads at most `max` bytes onto the end of the message.
    #[cfg(not(test))]
    fn io_recv_onto_message(&mut self, max: usize) -> Io {
        let conn = self.conn.as_ptr();
        // SAFETY: see `conn()`; the reference does not outlive this call.
        unsafe { ConnectionRef::from_ptr(conn) }.recv_onto(&mut self.message, max)
    }

    #[cfg(test)]
    fn io_recv_onto_message(&mut self, max: usize) -> Io {
        let len = self.message.len();
        self.message.resize(len + max, 0);
        let io = self.fake.clone().borrow_mut().recv(&mut self.message[len..]);
        let got = match io {
            Io::Done(n) => n,
            _ => 0,
        };
        self.message.truncate(len + got);
        io
    }

    /// Writes a frame's header and payload together, on a plain connection.
    #[cfg(not(test))]
    fn io_send_pair(&self, head: &[u8], body: &[u8]) -> Option<Io> {
        self.conn().send_pair(head, body)
    }

    #[cfg(test)]
    fn io_send_pair(&self, head: &[u8], body: &[u8]) -> Option<Io> {
        Some(self.fake.borrow_mut().send(&[head, body].concat()))
    }

    #[cfg(test)]
    fn io_ready(&self) -> bool {
        self.fake.borrow().ready()
    }

    #[cfg(test)]
    fn io_recv(&mut self) -> Io {
        let fake = self.fake.clone();
        let io = fake.borrow_mut().recv(&mut self.rbuf[self.rend..]);
        io
    }

    #[cfg(test)]
    fn io_send(&self) -> Io {
        self.fake.borrow_mut().send(&self.wbuf[self.wpos..])
    }

    /// Turns permessage-deflate on as the handshake agreed; before anything
    /// was received or sent.
    pub(crate) fn enable_compression(&mut self, agreed: &NegotiatedDeflate, settings: DeflateSettings) {
        let role = self.role;
        self.decoder = Decoder::new(DecoderConfig {
            compression: true,
            ..decoder_config(role, &self.limits)
        });
        let server = role == Role::Server;
        self.compression = Some(Box::new(Compression::new(agreed, server, settings)));
    }

    /// [limit] Applies `websocket_limit` to the data messages received:
    /// each waits for its zones at its first frame (see `admit_message`).
    pub(crate) fn limit_messages(&mut self, limiter: Option<Box<Limiter>>) {
        self.limiter = limiter;
    }

    /// [limit] Whether the data message at the head of the read buffer may
    /// be decoded: `Ok(false)` while reading waits for the buckets; past a
    /// `close` limit, [`WsError::RateExceeded`]. Control frames before it
    /// were handled; nothing behind it is read until it is admitted.
    #[cfg(not(test))]
    fn admit_message(&mut self) -> Result<bool, WsError> {
        if self.limiter.is_none()
            || !self.decoder.between_messages()
            || !limit::starts_data_message(&self.rbuf[self.rpos..self.rend])
        {
            return Ok(true);
        }
        let log = self.conn().log();
        let Some(limiter) = self.limiter.as_mut() else {
            return Ok(true);
        };
        let waited = limiter.waiting().is_some();
        match limiter.admit(now_msec(), log) {
            Admission::Admit => {
                if waited {
                    // The client was not quiet, it was waited for.
                    self.clock.received(now_msec());
                }
                Ok(true)
            }
            Admission::Wait => Ok(false),
            Admission::Close => Err(WsError::RateExceeded),
        }
    }

    /// Unit tests run without nginx, and without limit zones.
    #[cfg(test)]
    fn admit_message(&mut self) -> Result<bool, WsError> {
        Ok(true)
    }

    /// [limit] When reading may go on, while it waits for the buckets.
    fn limit_wait(&self) -> Option<ngx_msec_t> {
        self.limiter.as_ref().and_then(|l| l.waiting())
    }

    /// Whether the connection's read or write deadline passed since the
    /// last call (and clears it). The library arms the deadlines (see
    /// [`RelayNext::Wait`](crate::RelayNext::Wait)): a write deadline that
    /// passed is a peer that took nothing for the `timeout` while output
    /// was queued (give it up: [`WebSocket::discard_output`]); a read
    /// deadline, a quiet peer (ask [`WebSocket::on_read_timeout`] what it
    /// gets). A [`Handler`](crate::Handler)'s session has it done by the
    /// library; a [`RelayHandler`](crate::RelayHandler) checks both legs at
    /// the start of each [`step`](crate::RelayHandler::step).
    pub fn take_timedout(&self, dir: Direction) -> bool {
        self.conn().take_timedout(dir)
    }

    /// Whether our close frame was queued (nothing more can be sent).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether the peer's close frame arrived.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// The network timeout for reads and writes (`websocket_timeout`).
    pub fn set_timeout(&mut self, ms: ngx_msec_t) {
        self.limits.timeout_ms = ms;
        self.clock.set_timeout(ms);
    }

    /// Returns the next complete message or control frame, `Ok(None)` when
    /// it must wait for the socket (or for queued output to drain first).
    /// Fragments are reassembled; pings inside a fragmented message are
    /// returned as soon as they arrive.
    ///
    /// ```no_run
    /// # use ngx_http_websocket_module::{Received, WebSocket, WsError};
    /// # fn on_readable(wb: &mut WebSocket) -> Result<(), WsError> {
    /// while let Some(received) = wb.recv()? {
    ///     match received {
    ///         Received::Message { opcode, data } => {
    ///             wb.send_frame(true, opcode, &data)?;
    ///             wb.recycle(data);
    ///         }
    ///         Received::Ping(ping) => wb.send_pong(ping.payload())?,
    ///         Received::Pong(_) => {}
    ///         Received::Close(_) => return wb.send_close(Some(1000), b""),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recv(&mut self) -> Result<Option<Received>, WsError> {
        match self.read_until(Unit::Message)? {
            Some(Got::Data { opcode, .. }) => {
                let data = core::mem::take(&mut self.message);
                Ok(Some(Received::Message { opcode, data }))
            }
            Some(Got::Control(frame)) => Ok(Some(self.control(frame))),
            Some(Got::InPlace { .. }) => unreachable!("only frames are left in place"),
            None => Ok(None),
        }
    }

    /// The seed's `wb:recv_frame()`: one frame at a time, fragments not
    /// reassembled. A fragment that more frames follow is flagged `again`;
    /// a close frame carries its code and, as data, its reason.
    ///
    /// ```no_run
    /// # use ngx_http_websocket_module::{protocol::OpCode, WebSocket, WsError};
    /// # fn on_readable(wb: &mut WebSocket) -> Result<(), WsError> {
    /// // local data, typ, err = wb:recv_frame()
    /// while let Some(frame) = wb.recv_frame()? {
    ///     match frame.typ {
    ///         OpCode::Close => {
    ///             // typ == "close", err == code, data == reason
    ///             let code = frame.close_code.unwrap_or(1000);
    ///             return wb.send_close(Some(code), b"");
    ///         }
    ///         OpCode::Ping => wb.send_pong(&frame.data)?,
    ///         OpCode::Pong => {}
    ///         // err == "again": more fragments of this message follow
    ///         _ if frame.again => {}
    ///         _ => wb.send_text(&frame.data)?,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recv_frame(&mut self) -> Result<Option<RecvFrame>, WsError> {
        Ok(self.recv_frame_in_place()?.map(|frame| RecvFrame {
            data: frame.data().to_vec(),
            typ: frame.typ,
            again: frame.again,
            close_code: frame.close_code,
        }))
    }

    /// [`WebSocket::recv_frame`] with the payload lent instead of copied
    /// out: a frame that arrived whole is not copied at all. For relaying;
    /// the frame must be dropped before the object is used again.
    pub fn recv_frame_in_place(&mut self) -> Result<Option<FrameRef<'_>>, WsError> {
        if core::mem::take(&mut self.frame_in_message) {
            self.message.clear();
        }
        // A relay asks for the next frame until there is none, and both legs
        // after an event on one: mostly nothing is buffered nor readable.
        if self.drained() {
            self.release_idle_buffers();
            return Ok(None);
        }
        match self.read_until(Unit::Frame)? {
            Some(Got::InPlace { header, range }) => Ok(Some(FrameRef {
                typ: header.opcode,
                again: !header.fin,
                close_code: None,
                payload: Payload::Data(&self.rbuf[range]),
            })),
            Some(Got::Data { header, .. }) => {
                self.frame_in_message = true;
                Ok(Some(FrameRef {
                    typ: header.opcode,
                    again: !header.fin,
                    close_code: None,
                    payload: Payload::Data(&self.message),
                }))
            }
            Some(Got::Control(frame)) => {
                self.note_control(&frame);
                Ok(Some(FrameRef {
                    typ: frame.opcode,
                    again: false,
                    close_code: frame.close().map(|(code, _)| code),
                    payload: Payload::Control(frame),
                }))
            }
            None => Ok(None),
        }
    }

    fn control(&mut self, frame: ControlFrame) -> Received {
        self.note_control(&frame);
        match frame.opcode {
            OpCode::Ping => Received::Ping(frame),
            OpCode::Pong => Received::Pong(frame),
            _ => Received::Close(
                frame
                    .close()
                    .map(|(code, reason)| (code, reason.to_owned())),
            ),
        }
    }

    /// A close frame ends the peer's side.
    fn note_control(&mut self, frame: &ControlFrame) {
        if frame.opcode == OpCode::Close {
            self.close_received = true;
            let code = frame.close().map_or(NO_STATUS, |(code, _)| code);
            self.stats.close_code.get_or_insert(code);
        }
    }

    /// Reads and decodes until a whole `unit` of data sits in `self.message`
    /// or a control frame arrives.
    fn read_until(&mut self, unit: Unit) -> Result<Option<Got>, WsError> {
        loop {
            if let Some(got) = self.decode_buffered(unit)? {
                return Ok(Some(got));
            }
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            } else if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            // [limit] the client waits for the buckets: TCP backpressure.
            if self.limit_wait().is_some() {
                return Ok(None);
            }
            if self.reading_paused() {
                self.throttled = true;
                return Ok(None);
            }
            // nginx keeps `ready` exact (a short read or EAGAIN clears it,
            // the next epoll event sets it): when it is clear there is
            // nothing to read, and no buffer to take for finding that out.
            if !self.io_ready() {
                self.release_idle_buffers();
                return Ok(None);
            }
            // The rest of a large frame's payload: straight into the
            // message, not through the read buffer.
            let left = self.decoder.plain_payload_left();
            if left >= DIRECT_READ_MIN {
                let want = left.min(EAGER_RESERVE) as usize;
                match self.io_recv_onto_message(want) {
                    Io::Done(n) => {
                        self.clock.received(now_msec());
                        if let Some(got) = self.take_direct_payload(n, unit)? {
                            return Ok(Some(got));
                        }
                        continue;
                    }
                    Io::Again => {
                        self.release_idle_buffers();
                        return Ok(None);
                    }
                    Io::Eof => return Err(WsError::Eof),
                    Io::Error => return Err(WsError::Io),
                }
            }
            if self.rbuf.len() == self.rend {
                self.grow_read_buffer();
            }
            let io = self.io_recv();
            match io {
                Io::Done(n) => {
                    self.rend += n;
                    // Anything from the peer shows it is alive.
                    self.clock.received(now_msec());
                }
                Io::Again => {
                    self.release_idle_buffers();
                    return Ok(None);
                }
                Io::Eof => return Err(WsError::Eof),
                Io::Error => return Err(WsError::Io),
            }
        }
    }

    /// The last `n` bytes of the message were read into it (payload of the
    /// frame under way): unmasked and checked there, as the decoder does in
    /// the read buffer.
    fn take_direct_payload(&mut self, n: usize, unit: Unit) -> Result<Option<Got>, WsError> {
        let start = self.message.len() - n;
        let (used, event) = self.decoder.decode(&mut self.message[start..])?;
        let DecodeEvent::Data {
            opcode,
            frame_header,
            frame_end,
            message_end,
            ..
        } = event
        else {
            unreachable!("inside a data frame the decoder reports data");
        };
        debug_assert_eq!(used, n, "no more than the frame's payload was read");
        if let Some(limiter) = self.limiter.as_mut() {
            limiter.consumed();
        }
        self.stats.bytes_in += n as u64;
        self.stats.messages_in += u64::from(message_end);
        let done = match unit {
            Unit::Message => message_end,
            Unit::Frame => frame_end,
        };
        Ok(done.then_some(Got::Data {
            opcode,
            header: frame_header,
        }))
    }

    /// `read_until` would find nothing and only release the idle buffers:
    /// no bytes buffered, reading waiting for neither the buckets nor
    /// queued output, the socket not ready.
    #[inline]
    fn drained(&self) -> bool {
        self.rpos == self.rend
            && self.limit_wait().is_none()
            && !self.reading_paused()
            && !self.io_ready()
    }

    /// Gets a read buffer when the connection holds none (it was idle).
    /// Not inlined: the worker's buffer list would be looked up at every
    /// `read_until`, which mostly needs none.
    #[inline(never)]
    fn grow_read_buffer(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = buffers::take();
        }
    }

    /// An idle connection holds no read buffer: it goes back to the worker's
    /// list once every byte in it was decoded; so does an empty message
    /// buffer.
    fn release_idle_buffers(&mut self) {
        if self.rpos == self.rend && !self.rbuf.is_empty() {
            buffers::give(core::mem::take(&mut self.rbuf));
            self.rpos = 0;
            self.rend = 0;
        }
        if self.message.is_empty() && self.message.capacity() > 0 {
            buffers::give_scratch(core::mem::take(&mut self.message));
        }
    }

    fn decode_buffered(&mut self, unit: Unit) -> Result<Option<Got>, WsError> {
        let base = self.rbuf.as_ptr() as usize;
        while self.rpos < self.rend {
            // [limit] a data message waits for its zones at its first frame.
            if !self.admit_message()? {
                break;
            }
            let (n, event) = self.decoder.decode(&mut self.rbuf[self.rpos..self.rend])?;
            self.rpos += n;
            if let Some(limiter) = self.limiter.as_mut().filter(|_| n > 0) {
                limiter.consumed();
            }
            match event {
                DecodeEvent::NeedMore => {
                    if n == 0 {
                        break;
                    }
                }
                DecodeEvent::Data {
                    opcode,
                    frame_header,
                    message_start,
                    chunk,
                    compressed,
                    frame_end,
                    message_end,
                } => {
                    if message_start {
                        self.message.clear();
                    }
                    // A whole frame in the read buffer stays there.
                    if unit == Unit::Frame && frame_end && !compressed && self.message.is_empty() {
                        let start = chunk.as_ptr() as usize - base;
                        self.stats.bytes_in += chunk.len() as u64;
                        self.stats.messages_in += u64::from(message_end);
                        return Ok(Some(Got::InPlace {
                            header: frame_header,
                            range: start..start + chunk.len(),
                        }));
                    }
                    if self.message.capacity() == 0 {
                        self.message = buffers::take_scratch();
                    }
                    let before = self.message.len();
                    match self.compression.as_mut().filter(|_| compressed) {
                        Some(compression) => compression.inflate(
                            chunk,
                            opcode == OpCode::Text,
                            message_start,
                            message_end,
                            &mut self.message,
                            self.limits.max_recv_len,
                        )?,
                        None => {
                            // Room for the rest of the frame at once, not
                            // by doubling (each step copies what came).
                            let left = self.decoder.frame_left().min(EAGER_RESERVE);
                            self.message.reserve(chunk.len() + left as usize);
                            self.message.extend_from_slice(chunk);
                        }
                    }
                    self.stats.bytes_in += (self.message.len() - before) as u64;
                    if message_end {
                        self.stats.messages_in += 1;
                        self.stats.compressed_in += u64::from(compressed);
                    }
                    let done = match unit {
                        Unit::Message => message_end,
                        Unit::Frame => frame_end,
                    };
                    if done {
                        return Ok(Some(Got::Data {
                            opcode,
                            header: frame_header,
                        }));
                    }
                }
                // The answer to our own heartbeat is ours, not the caller's
                // (a relay must not pass it on).
                DecodeEvent::Control(frame)
                    if frame.opcode == OpCode::Pong && frame.payload() == HEARTBEAT => {}
                DecodeEvent::Control(frame) => return Ok(Some(Got::Control(frame))),
            }
        }
        Ok(None)
    }

    /// Gives a message buffer back for reuse (by any connection of the
    /// worker: an idle connection holds none); very large ones are freed.
    pub fn recycle(&mut self, data: Vec<u8>) {
        buffers::give_scratch(data);
    }

    /// Queues a text message of one frame (`data` must be UTF-8 for the
    /// peer to accept it).
    pub fn send_text(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Text, data)
    }

    /// Queues a binary message of one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Binary, data)
    }

    /// Queues a ping (at most 125 bytes of payload).
    pub fn send_ping(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Ping, data)
    }

    /// Queues a pong (at most 125 bytes of payload).
    pub fn send_pong(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Pong, data)
    }

    /// Queues a close frame; no further frames may be sent after it.
    pub fn send_close(&mut self, code: Option<u16>, reason: &[u8]) -> Result<(), WsError> {
        let payload = match code {
            Some(code) => build_close_payload(code, reason),
            None => Vec::new(),
        };
        self.send_frame(true, OpCode::Close, &payload)
    }

    /// Queues one frame. Over `max_send_len` (or over 125 bytes for a
    /// control frame) it fails and queues nothing.
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<(), WsError> {
        if self.close_sent {
            return Err(WsError::Closed);
        }
        let limit = if opcode.is_control() {
            125
        } else {
            self.limits.max_send_len
        };
        if payload.len() as u64 > limit {
            return Err(WsError::TooBig {
                len: payload.len(),
                limit,
            });
        }
        let mask = match self.limits.send_masked {
            true => Some(random::mask()?),
            false => None,
        };
        // A message is compressed or not as a whole, decided on its first frame.
        let compressed = match self.compression.as_mut() {
            Some(_) if opcode.is_control() => false,
            Some(c) if opcode == OpCode::Continuation => c.sending_compressed(),
            Some(c) => c.start_message(fin, payload.len()),
            None => false,
        };
        if compressed {
            let rsv = if opcode == OpCode::Continuation {
                0
            } else {
                RSV1
            };
            self.queue_compressed_frame(fin, rsv, opcode, payload, mask)?;
            self.stats.compressed_out += u64::from(rsv != 0);
        } else {
            self.write_or_queue_frame(fin, opcode, payload, mask);
        }
        if opcode == OpCode::Close {
            self.close_sent = true;
            let code = match payload {
                [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                _ => NO_STATUS,
            };
            self.stats.close_code.get_or_insert(code);
        } else if !opcode.is_control() {
            self.sending_message = !fin;
            self.stats.bytes_out += payload.len() as u64;
            if fin {
                self.stats.messages_out += 1;
            }
        }
        Ok(())
    }

    /// A large unmasked frame goes out from `payload` itself once nothing
    /// is queued before it; only what the socket does not take is queued.
    fn write_or_queue_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) {
        // What is queued goes first: if the socket takes it all now, the
        // frame can follow it directly.
        if self.direct_writes
            && mask.is_none()
            && payload.len() >= DIRECT_WRITE_MIN
            && (self.queued() == 0 || matches!(self.flush(), Ok(true)))
        {
            let header = encode_header(fin, 0, opcode, payload.len() as u64, None);
            let head = header.as_slice();
            // Over TLS, or when the socket takes nothing now (or failed, which
            // the flush reports), the frame is queued whole.
            if let Some(Io::Done(n)) = self.io_send_pair(head, payload) {
                if n < head.len() + payload.len() {
                    self.take_output_buffer();
                    if n < head.len() {
                        self.wbuf.extend_from_slice(&head[n..]);
                    }
                    self.wbuf.extend_from_slice(&payload[n.saturating_sub(head.len())..]);
                }
                return;
            }
        }
        self.queue_frame(fin, opcode, payload, mask);
    }

    /// From now on nothing but this object writes to the socket (nginx's
    /// filters hold none of the 101 any more): large frames may be written
    /// straight away instead of queued first.
    pub(crate) fn allow_direct_writes(&mut self) {
        self.direct_writes = true;
    }

    /// Queues a frame as it is, masked if `mask`.
    fn queue_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
        let header = encode_header(fin, 0, opcode, payload.len() as u64, mask);
        self.take_output_buffer();
        self.wbuf.extend_from_slice(header.as_slice());
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut self.wbuf[start..], mask, 0);
        }
    }

    /// Queues a frame with its payload compressed: compressed in place
    /// behind the queue, then the header (whose length depends on it) is
    /// rotated in front. On failure nothing is queued.
    fn queue_compressed_frame(
        &mut self,
        fin: bool,
        rsv: u8,
        opcode: OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) -> Result<(), WsError> {
        self.take_output_buffer();
        let start = self.wbuf.len();
        let compression = self.compression.as_mut().ok_or(WsError::Compression)?;
        if !compression.compress(payload, fin, &mut self.wbuf) {
            self.wbuf.truncate(start);
            return Err(WsError::Compression);
        }
        let len = (self.wbuf.len() - start) as u64;
        let header = encode_header(fin, rsv, opcode, len, mask);
        let header = header.as_slice();
        self.wbuf.extend_from_slice(header);
        self.wbuf[start..].rotate_right(header.len());
        if let Some(mask) = mask {
            apply_mask(&mut self.wbuf[start + header.len()..], mask, 0);
        }
        Ok(())
    }

    /// An output queue that drained gave its buffer back: take one again.
    fn take_output_buffer(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = buffers::take_scratch();
        }
    }

    /// What crossed the connection so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether a message is partly received.
    pub fn in_message(&self) -> bool {
        self.decoder.in_message() || !self.message.is_empty()
    }

    /// Whether the connection could serve another session as it is: nothing
    /// queued or buffered, no message half sent or half received, no close.
    /// A relay checks it on the upstream leg before it fences the leg for
    /// its keepalive pool (see [`Fence`](crate::Fence)).
    pub fn reusable(&self) -> bool {
        self.queued() == 0
            && self.rpos == self.rend
            && !self.decoder.in_message()
            && !self.sending_message
            && !self.close_sent
            && !self.close_received
    }

    /// Drops queued output and sends nothing more: the peer is gone, or
    /// stopped reading for so long that it is given up. Nothing can be
    /// sent after it (sends fail with [`WsError::Closed`], as after a close
    /// frame): a TLS write waiting for its retry could only be retried with
    /// the dropped bytes.
    pub fn discard_output(&mut self) {
        self.wbuf.clear();
        self.wpos = 0;
        self.close_sent = true;
    }

    /// Reading stops while more than `queued` bytes of output wait
    /// (64 KiB unless set): right where what the peer sends makes the
    /// output (an echo), so a peer that does not read cannot make us queue
    /// its answers. A relay leg's output comes from the other leg instead,
    /// and pausing its reading for it would make the legs wait on each
    /// other; there the bound only guards against replies of its own: a
    /// [`RelayHandler`](crate::RelayHandler) raises it on both legs before
    /// its first move (to its own high-water mark, plus one frame, plus
    /// room for closes and heartbeat pings), and bounds what it queues
    /// towards a leg itself with [`WebSocket::queued`].
    pub fn pause_reading_above(&mut self, queued: usize) {
        self.read_pause_above = queued;
    }

    /// Whether reading waits for queued output to drain (more than
    /// [`WebSocket::pause_reading_above`]'s bound is queued): frames are not
    /// read, and the read deadline is not armed, until it drained.
    pub fn reading_paused(&self) -> bool {
        self.queued() > self.read_pause_above
    }

    /// The largest data frame payload this object sends.
    pub fn max_send_len(&self) -> u64 {
        self.limits.max_send_len
    }

    /// Whether a receive stopped for queued output (see
    /// [`WebSocket::reading_paused`]) since the last call (and clears it).
    /// After output drained, go on receiving at once: the socket does not
    /// signal again for bytes that are already there.
    pub fn take_throttled(&mut self) -> bool {
        core::mem::take(&mut self.throttled)
    }

    /// Bytes queued but not yet written.
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes queued frames; `Ok(true)` once everything is on the wire.
    /// A write that must wait is retried from the same first byte with at
    /// least as many bytes, as [`ConnectionRef::send`] requires.
    pub(crate) fn flush(&mut self) -> Result<bool, WsError> {
        if self.wbuf.capacity() == 0 {
            return Ok(true);
        }
        while self.wpos < self.wbuf.len() {
            match self.io_send() {
                Io::Done(n) => self.wpos += n,
                Io::Again => {
                    // Drop what was written once it is at least half of the
                    // buffer: a queue that never drains completely (a busy
                    // session, a slow reader) must not keep everything that
                    // ever passed through it.
                    if self.wpos >= self.queued() {
                        self.wbuf.drain(..self.wpos);
                        self.wpos = 0;
                    }
                    return Ok(false);
                }
                Io::Eof | Io::Error => return Err(WsError::Io),
            }
        }
        self.wpos = 0;
        buffers::give_scratch(core::mem::take(&mut self.wbuf));
        Ok(true)
    }

    /// The read deadline passed ([`WebSocket::take_timedout`] with
    /// [`Direction::Read`]): what the quiet peer gets. With a
    /// `ping_interval` a heartbeat ping is queued here
    /// ([`Quiet::Pinged`]: wait on); [`Quiet::Idle`] and [`Quiet::Dead`]
    /// ask for a close (1001 and 1011 are usual); [`Quiet::Due`]: the peer
    /// was not quiet (the session is due to close, see
    /// [`RelayContext::due_to_close`](crate::RelayContext::due_to_close)),
    /// go on.
    pub fn on_read_timeout(&mut self) -> Quiet {
        // [limit] not quiet: reading waited for the buckets.
        if self.limit_wait().is_some() {
            return Quiet::Due;
        }
        match self.clock.on_read_timeout(now_msec()) {
            Quiet::Pinged => match self.send_ping(HEARTBEAT) {
                Ok(()) => Quiet::Pinged,
                Err(_) => Quiet::Idle,
            },
            quiet => quiet,
        }
    }

    /// Milliseconds until the read deadline (see [`Clock::read_deadline`]).
    fn read_deadline(&self) -> ngx_msec_t {
        let now = now_msec();
        // [limit] while reading waits for the buckets, the client is not
        // quiet: the wait ends first.
        match self.limit_wait() {
            Some(at) => self.clock.read_deadline_waiting(now, at),
            None => self.clock.read_deadline(now),
        }
    }

    /// Waits until the connection takes bytes written outside this object
    /// (the rest of the 101 response): the write timer bounds the wait.
    pub(crate) fn await_writable(&self) -> Result<(), WsError> {
        let c = self.conn();
        c.handle_event(Direction::Write).map_err(|_| WsError::Io)?;
        c.add_timer(Direction::Write, self.limits.timeout_ms);
        Ok(())
    }

    /// Registers for the events the object now waits on, with
    /// `websocket_timeout` as the write deadline and [`Self::read_deadline`]
    /// for reads.
    pub(crate) fn arm(&self, want_read: bool) -> Result<(), WsError> {
        let c = self.conn();
        let timeout = self.limits.timeout_ms;
        c.handle_event(Direction::Read).map_err(|_| WsError::Io)?;
        c.handle_event(Direction::Write).map_err(|_| WsError::Io)?;
        if self.queued() > 0 {
            c.add_timer(Direction::Write, timeout);
        } else {
            c.del_timer(Direction::Write);
        }
        // While reading waits for queued output to drain, the write timer
        // alone bounds the wait: the peer is slow, not idle.
        if want_read && !self.reading_paused() {
            c.add_timer(Direction::Read, self.read_deadline());
        } else {
            c.del_timer(Direction::Read);
        }
        Ok(())
    }
}

impl Drop for WebSocket {
    fn drop(&mut self) {
        if self.role == Role::Server {
            drain::session_ended();
        }
        if self.draining {
            metrics::draining_ended();
        }
        buffers::give(core::mem::take(&mut self.rbuf));
        buffers::give_scratch(core::mem::take(&mut self.message));
        buffers::give_scratch(core::mem::take(&mut self.wbuf));
    }
}

/// The decoder rules for frames that `role` receives.
fn decoder_config(role: Role, limits: &Limits) -> DecoderConfig {
    let parse = match role {
        Role::Server => ParseConfig::server(limits.max_recv_len),
        Role::Client => ParseConfig::client(limits.max_recv_len),
    };
    DecoderConfig {
        parse,
        max_message_len: limits.max_recv_len,
        compression: false,
    }
}

#[cfg(test)]
mod tests {
    //! The object's state without nginx: bytes in through a fake socket,
    //! decoded, validated and delivered; sends queued, limited, closed and
    //! flushed through partial writes; reading paused for queued output.
    use std::collections::VecDeque;

    use super::*;
    use crate::protocol::build_frame;
    use crate::protocol::close::NORMAL;

    /// A socket: what the peer sent, and room for what we write.
    #[derive(Default)]
    pub struct Socket {
        input: VecDeque<u8>,
        eof: bool,
        output: Vec<u8>,
        /// Bytes a write may still take; `None`: any.
        room: Option<usize>,
    }

    impl Socket {
        pub fn ready(&self) -> bool {
            !self.input.is_empty() || self.eof
        }

        pub fn recv(&mut self, buf: &mut [u8]) -> Io {
            if self.input.is_empty() {
                return if self.eof { Io::Eof } else { Io::Again };
            }
            let n = buf.len().min(self.input.len());
            for (b, x) in buf.iter_mut().zip(self.input.drain(..n)) {
                *b = x;
            }
            Io::Done(n)
        }

        pub fn send(&mut self, buf: &[u8]) -> Io {
            let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                return Io::Again;
            }
            self.output.extend_from_slice(&buf[..n]);
            if let Some(room) = &mut self.room {
                *room -= n;
            }
            Io::Done(n)
        }
    }

    fn limits(max: u64) -> Limits {
        Limits {
            max_recv_len: max,
            max_send_len: max,
            send_masked: false,
            timeout_ms: 60_000,
            ping_interval_ms: None,
            ping_timeout_ms: 30_000,
            max_session_ms: None,
            shutdown_spread_ms: 0,
        }
    }

    /// A server-side object whose peer sent `input` (then `eof`).
    fn server(input: &[u8], eof: bool) -> WebSocket {
        let ws = WebSocket::over(NonNull::dangling(), Role::Server, limits(100), &[]);
        ws.fake.borrow_mut().input.extend(input);
        ws.fake.borrow_mut().eof = eof;
        ws
    }

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        build_frame(fin, op, payload, KEY)
    }

    /// What `recv` delivered, as text.
    fn delivered(ws: &mut WebSocket) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match ws.recv() {
                Ok(Some(Received::Message { opcode, data })) => {
                    out.push(format!("{opcode:?} {}", String::from_utf8_lossy(&data)))
                }
                Ok(Some(Received::Ping(p))) => {
                    out.push(format!("ping {}", String::from_utf8_lossy(p.payload())))
                }
                Ok(Some(Received::Pong(_))) => out.push("pong".into()),
                Ok(Some(Received::Close(c))) => out.push(format!("close {c:?}")),
                Ok(None) => return out,
                Err(WsError::Protocol(e)) => {
                    out.push(format!("error {}", e.close_code()));
                    return out;
                }
                Err(e) => {
                    out.push(format!("{e}"));
                    return out;
                }
            }
        }
    }

    #[test]
    fn receiving() {
        let text = |s: &str| masked(true, OpCode::Text, s.as_bytes());
        let table: Vec<(&str, Vec<u8>, bool, Vec<&str>)> = vec![
            ("one text message", text("hello"), false, vec!["Text hello"]),
            (
                "two messages in one read",
                [text("a"), masked(true, OpCode::Binary, b"b")].concat(),
                false,
                vec!["Text a", "Binary b"],
            ),
            (
                "fragments reassembled, a ping inside answered first",
                [
                    masked(false, OpCode::Text, b"hel"),
                    masked(true, OpCode::Ping, b"p"),
                    masked(true, OpCode::Continuation, b"lo"),
                ]
                .concat(),
                false,
                vec!["ping p", "Text hello"],
            ),
            (
                "a close with code and reason",
                masked(true, OpCode::Close, &build_close_payload(NORMAL, b"bye")),
                false,
                vec!["close Some((1000, \"bye\"))"],
            ),
            (
                "an unmasked frame from a client",
                build_frame(true, OpCode::Text, b"x", None),
                false,
                vec!["error 1002"],
            ),
            (
                "a frame over max_recv_len",
                masked(true, OpCode::Binary, &[0; 101]),
                false,
                vec!["error 1009"],
            ),
            (
                "invalid UTF-8 across fragments",
                [
                    masked(false, OpCode::Text, &[0xe2, 0x82]),
                    masked(true, OpCode::Continuation, &[0x28]),
                ]
                .concat(),
                false,
                vec!["error 1007"],
            ),
            (
                "a half frame waits",
                text("hello")[..4].to_vec(),
                false,
                vec![],
            ),
            (
                "the peer goes away",
                text("x"),
                true,
                vec!["Text x", "peer closed the connection without a close frame"],
            ),
        ];
        for (name, input, eof, want) in table {
            let mut ws = server(&input, eof);
            assert_eq!(delivered(&mut ws), want, "{name}");
        }
    }

    #[test]
    fn stats_and_close_state() {
        let input = [
            masked(true, OpCode::Text, b"abc"),
            masked(true, OpCode::Close, &build_close_payload(4000, b"")),
        ]
        .concat();
        let mut ws = server(&input, false);
        assert_eq!(delivered(&mut ws).len(), 2);
        assert!(ws.close_received());
        assert!(!ws.close_sent());
        ws.send_text(b"hello").unwrap();
        ws.send_close(Some(NORMAL), b"").unwrap();
        assert!(ws.close_sent());
        assert!(matches!(ws.send_text(b"late"), Err(WsError::Closed)));
        let stats = ws.stats();
        assert_eq!((stats.messages_in, stats.bytes_in), (1, 3));
        assert_eq!((stats.messages_out, stats.bytes_out), (1, 5));
        assert_eq!(stats.close_code, Some(4000), "the first close frame's code");
    }

    #[test]
    fn sending() {
        let mut ws = server(&[], false);
        // Over the limit: refused, nothing queued (the seed's rule).
        assert!(matches!(
            ws.send_binary(&[0; 101]),
            Err(WsError::TooBig { len: 101, limit: 100 })
        ));
        assert!(matches!(ws.send_ping(&[0; 126]), Err(WsError::TooBig { .. })));
        assert_eq!(ws.queued(), 0);
        ws.send_text(b"hi").unwrap();
        ws.send_frame(false, OpCode::Binary, b"a").unwrap();
        ws.send_frame(true, OpCode::Continuation, b"b").unwrap();
        ws.send_pong(b"p").unwrap();
        let want = [
            build_frame(true, OpCode::Text, b"hi", None),
            build_frame(false, OpCode::Binary, b"a", None),
            build_frame(true, OpCode::Continuation, b"b", None),
            build_frame(true, OpCode::Pong, b"p", None),
        ]
        .concat();
        assert_eq!(ws.queued(), want.len());
        // Partial writes: the rest waits and goes out in order.
        ws.fake.borrow_mut().room = Some(3);
        assert!(!ws.flush().unwrap());
        assert_eq!(ws.queued(), want.len() - 3);
        ws.fake.borrow_mut().room = None;
        assert!(ws.flush().unwrap());
        assert_eq!(ws.queued(), 0);
        assert_eq!(ws.fake.borrow().output, want, "server frames go out unmasked");
    }

    #[test]
    fn the_rest_of_a_large_frame_is_read_into_the_message() {
        // Text whose characters straddle every read's edge, then a byte
        // that is not UTF-8 in a part read straight into the message.
        let text: Vec<u8> = "é€".repeat(40_000).into_bytes();
        let mut bad = text.clone();
        let end = bad.len() - 1;
        bad[end] = 0xff;
        let frames = [
            masked(false, OpCode::Text, &text),
            masked(true, OpCode::Continuation, b"!"),
            masked(true, OpCode::Binary, &text[..DIRECT_READ_MIN as usize + 1]),
            masked(true, OpCode::Text, &bad),
        ];
        let mut ws = WebSocket::over(NonNull::dangling(), Role::Server, limits(1 << 20), &[]);
        ws.fake.borrow_mut().input.extend(frames.concat());
        let mut whole = text.clone();
        whole.push(b'!');
        let Ok(Some(Received::Message { opcode: OpCode::Text, data })) = ws.recv() else {
            panic!("the fragmented text arrives")
        };
        assert!(data == whole, "intact across the direct reads");
        let Ok(Some(Received::Message { opcode: OpCode::Binary, data })) = ws.recv() else {
            panic!("the binary message arrives")
        };
        assert_eq!(data, &text[..DIRECT_READ_MIN as usize + 1]);
        assert_eq!(ws.stats().messages_in, 2);
        assert_eq!(ws.stats().bytes_in, (whole.len() + data.len()) as u64);
        assert!(matches!(ws.recv(), Err(WsError::Protocol(e)) if e.close_code() == 1007));
    }

    #[test]
    fn large_frames_are_written_before_they_are_queued() {
        let big = |byte: u8| vec![byte; DIRECT_WRITE_MIN];
        let mut ws = WebSocket::over(NonNull::dangling(), Role::Server, limits(1 << 20), &[]);
        // Not before the 101 is out: queued whole.
        ws.send_binary(&big(1)).unwrap();
        assert_eq!(ws.queued(), DIRECT_WRITE_MIN + 4);
        assert!(ws.flush().unwrap());
        ws.allow_direct_writes();
        let mut want = build_frame(true, OpCode::Binary, &big(1), None);
        // (room, frame): taken whole; cut in the header; cut in the
        // payload; nothing taken; behind a queued frame (kept in order).
        let cases: [(Option<usize>, u8); 4] =
            [(None, 2), (Some(1), 3), (Some(100), 4), (Some(0), 5)];
        for (room, byte) in cases {
            ws.fake.borrow_mut().room = room;
            let frame = build_frame(true, OpCode::Binary, &big(byte), None);
            let taken = room.unwrap_or(frame.len());
            ws.send_binary(&big(byte)).unwrap();
            assert_eq!(ws.queued(), frame.len() - taken, "room {room:?}");
            want.extend_from_slice(&frame);
            // The next one goes behind what is queued.
            ws.send_text(b"small").unwrap();
            let queued = ws.queued();
            ws.send_binary(&big(byte)).unwrap();
            if room.is_none() {
                assert_eq!(ws.queued(), 0, "what was queued went first, then the frame directly");
            } else {
                assert_eq!(ws.queued(), queued + frame.len(), "queued behind what the socket did not take");
            }
            want.extend_from_slice(&build_frame(true, OpCode::Text, b"small", None));
            want.extend_from_slice(&frame);
            ws.fake.borrow_mut().room = None;
            assert!(ws.flush().unwrap());
        }
        assert_eq!(ws.fake.borrow().output, want);
    }

    #[test]
    fn reading_pauses_for_queued_output() {
        let mut ws = server(&masked(true, OpCode::Text, b"1"), false);
        ws.pause_reading_above(4);
        ws.fake.borrow_mut().room = Some(0);
        let Ok(Some(Received::Message { data, .. })) = ws.recv() else {
            panic!("the first message is read")
        };
        // The next one is in the socket, not yet read.
        let next = masked(true, OpCode::Text, b"2");
        ws.fake.borrow_mut().input.extend(next);
        ws.send_text(&data).unwrap();
        ws.send_text(&data).unwrap();
        assert!(ws.reading_paused());
        assert!(matches!(ws.recv(), Ok(None)), "paused with a message waiting");
        assert!(ws.take_throttled());
        ws.fake.borrow_mut().room = None;
        assert!(ws.flush().unwrap());
        assert!(matches!(ws.recv(), Ok(Some(Received::Message { .. }))));
    }

    #[test]
    fn recv_frame_reports_fragments() {
        let input = [
            masked(false, OpCode::Text, b"ab"),
            masked(true, OpCode::Continuation, b"c"),
        ]
        .concat();
        let mut ws = server(&input, false);
        let f = ws.recv_frame().unwrap().unwrap();
        assert_eq!((f.typ, f.again, f.data.as_slice()), (OpCode::Text, true, &b"ab"[..]));
        let f = ws.recv_frame().unwrap().unwrap();
        assert_eq!(
            (f.typ, f.again, f.data.as_slice()),
            (OpCode::Continuation, false, &b"c"[..])
        );
        assert!(ws.recv_frame().unwrap().is_none());
    }
}
