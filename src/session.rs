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
use crate::config::Limits;
use crate::drain;
use crate::limit::{self, Admission, Limiter};
use crate::metrics;
use crate::ngx_io::{now_msec, ConnectionRef, Direction, Io};
use crate::protocol::close::build_close_payload;
use crate::protocol::decoder::{ControlFrame, DecodeEvent, Decoder, DecoderConfig};
use crate::protocol::deflate::{NegotiatedDeflate, RSV1};
use crate::protocol::frame::{encode_header, FrameHeader, OpCode, ParseConfig};
use crate::protocol::mask::apply_mask;
use crate::protocol::ProtocolError;
use crate::random::{self, EntropyError};

use foreign_types::ForeignTypeRef;

/// The payload of heartbeat pings (`websocket_ping_interval`), by which
/// their pongs are told from the peer's own.
const HEARTBEAT: &[u8] = b"ngx_http_websocket_module heartbeat";
/// The close code reported for a close frame without one (RFC 6455 §7.1.5).
const NO_STATUS: u16 = 1005;
/// Queued output above which the object stops reading from its peer,
/// unless told otherwise (`pause_reading_above`).
const WRITE_HIGH_WATER: usize = 64 * 1024;
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
        opcode: OpCode,
        data: Vec<u8>,
    },
    Ping(ControlFrame),
    Pong(ControlFrame),
    /// The peer's close frame: its code and reason, if it sent any.
    Close(Option<(u16, String)>),
}

/// The type of a frame, as the seed's `recv_frame` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl From<OpCode> for FrameType {
    fn from(op: OpCode) -> Self {
        match op {
            OpCode::Continuation => FrameType::Continuation,
            OpCode::Text => FrameType::Text,
            OpCode::Binary => FrameType::Binary,
            OpCode::Close => FrameType::Close,
            OpCode::Ping => FrameType::Ping,
            OpCode::Pong => FrameType::Pong,
        }
    }
}

impl FrameType {
    /// The seed's name: "continuation", "text", "binary", "close", "ping", "pong".
    pub fn as_str(self) -> &'static str {
        match self {
            FrameType::Continuation => "continuation",
            FrameType::Text => "text",
            FrameType::Binary => "binary",
            FrameType::Close => "close",
            FrameType::Ping => "ping",
            FrameType::Pong => "pong",
        }
    }
}

/// What [`WebSocket::recv_frame`] delivers: the seed's `data, typ, err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvFrame {
    /// The payload; for a close frame, its reason.
    pub data: Vec<u8>,
    pub typ: FrameType,
    /// The seed's `err == "again"`: more fragments of this message follow.
    pub again: bool,
    /// For a close frame with a status, the seed's `err == code`.
    pub close_code: Option<u16>,
}

/// A frame as [`WebSocket::recv_frame_in_place`] delivers it: like
/// [`RecvFrame`], with the payload borrowed from the object instead of
/// moved out of it.
pub struct FrameRef<'a> {
    pub typ: FrameType,
    pub again: bool,
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
    TooBig { len: usize, limit: u64 },
    /// A send after our close frame was queued.
    Closed,
    /// zlib failed to compress a message; nothing of it was queued.
    Compression,
    /// No masking key could be drawn; nothing was queued.
    Entropy(EntropyError),
    /// [limit] A data message past a `websocket_limit ... close`: close
    /// with 1008 and `limit::CLOSE_REASON`.
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

/// One WebSocket endpoint over an nginx connection.
pub struct WebSocket {
    conn: NonNull<ngx_connection_t>,
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
    /// permessage-deflate, when negotiated.
    compression: Option<Box<Compression>>,
    /// When bytes last arrived, and when an unanswered heartbeat ping went
    /// out (`websocket_ping_interval`).
    last_received: ngx_msec_t,
    ping_sent_at: Option<ngx_msec_t>,
    /// When the session reaches `websocket_max_session_time`.
    ends_at: Option<ngx_msec_t>,
    /// When the exiting worker's turn for this session comes
    /// (`websocket_shutdown_spread`).
    drains_at: Option<ngx_msec_t>,
    /// Counted in `nginx_websocket_sessions_draining` until dropped.
    draining: bool,
    stats: Stats,
    /// [limit] `websocket_limit` on the data messages received.
    limiter: Option<Box<Limiter>>,
}

/// What crossed this connection, for the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data messages received and sent, and their payload bytes.
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Of those messages, the ones that went compressed (permessage-deflate).
    pub compressed_in: u64,
    pub compressed_out: u64,
    /// Code of the first close frame, received or sent (1005 for one
    /// without a code).
    pub close_code: Option<u16>,
}

/// What a quiet peer gets when its read deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No heartbeats configured: it was idle for `websocket_timeout`.
    Idle,
    /// A heartbeat ping was queued.
    Pinged,
    /// It did not answer a ping within `websocket_ping_timeout`.
    Dead,
    /// Not quiet: the session is due to close (see [`WebSocket::take_due`]),
    /// or reading waited for a `websocket_limit` and may go on.
    Due,
}

/// Why a session is due to close with 1001 after the message under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// It lasted `websocket_max_session_time`.
    MaxSessionTime,
    /// The worker is exiting and the session's turn came.
    Drain,
}

/// Whether the worker's clock reached `at`.
fn reached(at: ngx_msec_t, now: ngx_msec_t) -> bool {
    (now.wrapping_sub(at) as isize) >= 0
}

/// Milliseconds from `now` to `at`, at least 1.
fn until(at: ngx_msec_t, now: ngx_msec_t) -> ngx_msec_t {
    if reached(at, now) {
        1
    } else {
        at.wrapping_sub(now)
    }
}

impl WebSocket {
    /// Wraps an upgraded connection. `pipelined` are bytes the peer sent
    /// right after its handshake.
    pub fn new(conn: &ConnectionRef, role: Role, limits: Limits, pipelined: &[u8]) -> Self {
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
            conn: NonNull::new(conn.as_ptr()).expect("a connection reference is never null"),
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
            compression: None,
            last_received: now_msec(),
            ping_sent_at: None,
            ends_at: limits
                .max_session_ms
                .filter(|_| role == Role::Server)
                .map(|ms| now_msec().wrapping_add(ms)),
            drains_at: None,
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
    pub fn drain(&mut self) {
        if !self.draining {
            self.draining = true;
            metrics::draining_started();
            let delay = drain::delay(self.limits.shutdown_spread_ms);
            self.drains_at = Some(now_msec().wrapping_add(delay));
        }
    }

    /// Whether the session became due to close since the last call (its
    /// age, or its turn while the worker exits): it then closes with 1001
    /// after the message under way. Reaching the age is logged at info.
    pub fn due_to_close(&mut self, log: *mut ngx_log_t) -> bool {
        let mut due = false;
        while let Some(reason) = self.take_due() {
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

    /// Whether the session became due to close since the last call
    /// (each reason is told once).
    fn take_due(&mut self) -> Option<Due> {
        let now = now_msec();
        if self.ends_at.is_some_and(|at| reached(at, now)) {
            self.ends_at = None;
            return Some(Due::MaxSessionTime);
        }
        if self.drains_at.is_some_and(|at| reached(at, now)) {
            self.drains_at = None;
            return Some(Due::Drain);
        }
        None
    }

    fn conn(&self) -> &ConnectionRef {
        // SAFETY: the session owning the object is dropped before its
        // connection is closed.
        unsafe { ConnectionRef::from_ptr(self.conn.as_ptr()) }
    }

    /// Turns permessage-deflate on as the handshake agreed; before anything
    /// was received or sent.
    pub fn enable_compression(&mut self, agreed: &NegotiatedDeflate, settings: DeflateSettings) {
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
    pub fn limit_messages(&mut self, limiter: Option<Box<Limiter>>) {
        self.limiter = limiter;
    }

    /// [limit] Whether the data message at the head of the read buffer may
    /// be decoded: `Ok(false)` while reading waits for the buckets; past a
    /// `close` limit, [`WsError::RateExceeded`]. Control frames before it
    /// were handled; nothing behind it is read until it is admitted.
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
                    self.last_received = now_msec();
                    self.ping_sent_at = None;
                }
                Ok(true)
            }
            Admission::Wait => Ok(false),
            Admission::Close => Err(WsError::RateExceeded),
        }
    }

    /// [limit] When reading may go on, while it waits for the buckets.
    fn limit_wait(&self) -> Option<ngx_msec_t> {
        self.limiter.as_ref().and_then(|l| l.waiting())
    }

    /// Whether the connection's read or write deadline passed (and clears it).
    pub fn take_timedout(&self, dir: Direction) -> bool {
        self.conn().take_timedout(dir)
    }

    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// The network timeout for reads and writes (`websocket_timeout`).
    pub fn set_timeout(&mut self, ms: ngx_msec_t) {
        self.limits.timeout_ms = ms;
    }

    /// Returns the next complete message or control frame, `Ok(None)` when
    /// it must wait for the socket (or for queued output to drain first).
    /// Fragments are reassembled; pings inside a fragmented message are
    /// returned as soon as they arrive.
    ///
    /// ```no_run
    /// # use ngx_http_websocket_module::session::{Received, WebSocket, WsError};
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
    /// # use ngx_http_websocket_module::session::{FrameType, WebSocket, WsError};
    /// # fn on_readable(wb: &mut WebSocket) -> Result<(), WsError> {
    /// // local data, typ, err = wb:recv_frame()
    /// while let Some(frame) = wb.recv_frame()? {
    ///     match frame.typ {
    ///         FrameType::Close => {
    ///             // typ == "close", err == code, data == reason
    ///             let code = frame.close_code.unwrap_or(1000);
    ///             return wb.send_close(Some(code), b"");
    ///         }
    ///         FrameType::Ping => wb.send_pong(&frame.data)?,
    ///         FrameType::Pong => {}
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
        match self.read_until(Unit::Frame)? {
            Some(Got::InPlace { header, range }) => Ok(Some(FrameRef {
                typ: FrameType::from(header.opcode),
                again: !header.fin,
                close_code: None,
                payload: Payload::Data(&self.rbuf[range]),
            })),
            Some(Got::Data { header, .. }) => {
                self.frame_in_message = true;
                Ok(Some(FrameRef {
                    typ: FrameType::from(header.opcode),
                    again: !header.fin,
                    close_code: None,
                    payload: Payload::Data(&self.message),
                }))
            }
            Some(Got::Control(frame)) => {
                self.note_control(&frame);
                Ok(Some(FrameRef {
                    typ: FrameType::from(frame.opcode),
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
            if self.rpos > 0 {
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
            if !self.conn().ready(Direction::Read) {
                self.release_idle_buffers();
                return Ok(None);
            }
            if self.rbuf.len() == self.rend {
                self.grow_read_buffer();
            }
            let conn = self.conn.as_ptr();
            // SAFETY: see `conn()`; the reference does not outlive this call.
            let io = unsafe { ConnectionRef::from_ptr(conn) }.recv(&mut self.rbuf[self.rend..]);
            match io {
                Io::Done(n) => {
                    self.rend += n;
                    // Anything from the peer shows it is alive.
                    self.last_received = now_msec();
                    self.ping_sent_at = None;
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

    /// Gets a read buffer when the connection holds none (it was idle).
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
                        None => self.message.extend_from_slice(chunk),
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

    pub fn send_text(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Text, data)
    }

    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Binary, data)
    }

    pub fn send_ping(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send_frame(true, OpCode::Ping, data)
    }

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
            self.queue_frame(fin, opcode, payload, mask);
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
    pub fn reusable(&self) -> bool {
        self.queued() == 0
            && self.rpos == self.rend
            && !self.decoder.in_message()
            && !self.sending_message
            && !self.close_sent
            && !self.close_received
    }

    /// Drops queued output and sends nothing more: the peer is gone, or
    /// stopped reading for so long that it is given up. Nothing may be
    /// written after it (as after a close frame): a TLS write waiting for
    /// its retry could only be retried with the dropped bytes.
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
    /// other; there the bound only guards against replies of its own.
    pub fn pause_reading_above(&mut self, queued: usize) {
        self.read_pause_above = queued;
    }

    /// Whether reading waits for queued output to drain.
    pub fn reading_paused(&self) -> bool {
        self.queued() > self.read_pause_above
    }

    /// The largest data frame payload this object sends.
    pub fn max_send_len(&self) -> u64 {
        self.limits.max_send_len
    }

    /// Whether reading stopped for queued output since the last call.
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
    pub fn flush(&mut self) -> Result<bool, WsError> {
        while self.wpos < self.wbuf.len() {
            match self.conn().send(&self.wbuf[self.wpos..]) {
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

    /// The read deadline passed: what to do about a quiet peer.
    pub fn on_read_timeout(&mut self) -> Quiet {
        let now = now_msec();
        // [limit] not quiet: reading waited for the buckets.
        if self.limit_wait().is_some() {
            return Quiet::Due;
        }
        if [self.ends_at, self.drains_at]
            .into_iter()
            .flatten()
            .any(|at| reached(at, now))
        {
            return Quiet::Due;
        }
        let Some(_) = self.limits.ping_interval_ms else {
            return Quiet::Idle;
        };
        if self.ping_sent_at.is_some() {
            return Quiet::Dead;
        }
        self.ping_sent_at = Some(now_msec());
        match self.send_ping(HEARTBEAT) {
            Ok(()) => Quiet::Pinged,
            Err(_) => Quiet::Idle,
        }
    }

    /// Milliseconds until the read deadline: the quiet peer's (see
    /// [`Self::quiet_deadline`]), or sooner when the session is due to close.
    fn read_deadline(&self) -> ngx_msec_t {
        let now = now_msec();
        // [limit] while reading waits for the buckets, the client is not
        // quiet: the wait ends first.
        let first = match self.limit_wait() {
            Some(at) => until(at, now),
            None => self.quiet_deadline(),
        };
        [self.ends_at, self.drains_at]
            .into_iter()
            .flatten()
            .map(|at| until(at, now))
            .fold(first, ngx_msec_t::min)
    }

    /// Milliseconds until a quiet peer is dealt with: the heartbeat's when
    /// `websocket_ping_interval` is set, else `websocket_timeout`.
    fn quiet_deadline(&self) -> ngx_msec_t {
        let Some(interval) = self.limits.ping_interval_ms else {
            return self.limits.timeout_ms;
        };
        let (since, wait) = match self.ping_sent_at {
            Some(sent) => (sent, self.limits.ping_timeout_ms),
            None => (self.last_received, interval),
        };
        let elapsed = now_msec().wrapping_sub(since);
        wait.saturating_sub(elapsed).max(1)
    }

    /// Waits until the connection takes bytes written outside this object
    /// (the rest of the 101 response): the write timer bounds the wait.
    pub fn await_writable(&self) -> Result<(), WsError> {
        let c = self.conn();
        c.handle_event(Direction::Write).map_err(|_| WsError::Io)?;
        c.add_timer(Direction::Write, self.limits.timeout_ms);
        Ok(())
    }

    /// Registers for the events the object now waits on, with
    /// `websocket_timeout` as the write deadline and [`Self::read_deadline`]
    /// for reads.
    pub fn arm(&self, want_read: bool) -> Result<(), WsError> {
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
