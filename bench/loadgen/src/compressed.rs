//! The permessage-deflate client (`--deflate on`): yawc, which implements
//! RFC 7692 (tokio-tungstenite does not), on the same current-thread runtime
//! as the rest of the load generator.
//!
//! yawc compresses what we send and inflates what we receive, and hides the
//! RSV1 bit of received frames. So every connection's TCP stream goes through
//! a `Tap` that reads the frame headers going both ways: it counts the bytes
//! of data frames on the wire and how many messages had RSV1 set, which
//! `--expect-compressed yes|no` turns into a check of every message the
//! server sent (`uncompressed` / `compressed` errors) and the report into
//! bytes on the wire per message.
//!
//! The throughput and idle modes share their window, warm-up, measurement,
//! drain and hold logic with the tokio-tungstenite ones in loadgen.rs
//! (modes.rs); only connecting, messages and closing are yawc's.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use yawc::close::CloseCode;
use yawc::{CompressionLevel, DeflateOptions, Frame, OpCode, Options, WebSocket};

use crate::json::JsonPool;
use crate::modes::{self, Received};
use crate::{report, Errors, Shared};

type Ws = WebSocket<Tap>;

// ---------------------------------------------------------------- wire tap

/// One direction's data frames as seen on the wire (all connections).
#[derive(Default)]
pub struct Dir {
    /// data messages (first frames: text or binary)
    msgs: AtomicU64,
    /// of those, with RSV1 (compressed)
    compressed: AtomicU64,
    /// bytes of data frames, headers included (text, binary, continuation)
    bytes: AtomicU64,
}

impl Dir {
    fn json(&self) -> String {
        format!(
            "{{\"msgs\":{},\"compressed\":{},\"bytes\":{}}}",
            self.msgs.load(Relaxed),
            self.compressed.load(Relaxed),
            self.bytes.load(Relaxed)
        )
    }
}

#[derive(Default)]
pub struct Wire {
    /// client to server
    pub sent: Dir,
    /// server to client
    pub recv: Dir,
}

/// Follows the frame headers in one direction of a WebSocket connection,
/// after the HTTP handshake.
enum Scan {
    /// in the handshake: the last bytes seen, to find "\r\n\r\n"
    Http(u32),
    Header { buf: [u8; 14], have: usize },
    Payload(u64),
}

impl Scan {
    fn feed(&mut self, mut data: &[u8], dir: &Dir) {
        while !data.is_empty() {
            match self {
                Scan::Http(last) => {
                    let mut i = 0;
                    while i < data.len() {
                        *last = (*last << 8) | u32::from(data[i]);
                        i += 1;
                        if *last == 0x0d0a_0d0a {
                            *self = Scan::Header { buf: [0; 14], have: 0 };
                            break;
                        }
                    }
                    data = &data[i..];
                }
                Scan::Header { buf, have } => {
                    let need = |b: &[u8; 14], have: usize| -> usize {
                        if have < 2 {
                            return 2;
                        }
                        let ext = match b[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        2 + ext + if b[1] & 0x80 != 0 { 4 } else { 0 }
                    };
                    while *have < need(buf, *have) && !data.is_empty() {
                        buf[*have] = data[0];
                        *have += 1;
                        data = &data[1..];
                    }
                    let n = need(buf, *have);
                    if *have < n {
                        continue; // data is empty: wait for more
                    }
                    let len = match buf[1] & 0x7f {
                        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                        127 => u64::from_be_bytes(buf[2..10].try_into().unwrap()),
                        l => u64::from(l),
                    };
                    let opcode = buf[0] & 0x0f;
                    if opcode <= 2 {
                        dir.bytes.fetch_add(n as u64 + len, Relaxed);
                        if opcode != 0 {
                            dir.msgs.fetch_add(1, Relaxed);
                            if buf[0] & 0x40 != 0 {
                                dir.compressed.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    *self = if len == 0 {
                        Scan::Header { buf: [0; 14], have: 0 }
                    } else {
                        Scan::Payload(len)
                    };
                }
                Scan::Payload(left) => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data = &data[take as usize..];
                    if *left == 0 {
                        *self = Scan::Header { buf: [0; 14], have: 0 };
                    }
                }
            }
        }
    }
}

/// A TCP stream that shows what passes through it to two `Scan`s.
pub struct Tap {
    io: TcpStream,
    wire: Arc<Wire>,
    read: Scan,
    write: Scan,
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.read.feed(&buf.filled()[before..], &this.wire.recv);
        }
        r
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.write.feed(&buf[..n], &this.wire.sent);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let k = left.min(b.len());
                this.write.feed(&b[..k], &this.wire.sent);
                left -= k;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------- client

/// What the compressed modes need besides `Shared`.
pub struct Ctx {
    pub json: Option<JsonPool>,
    pub wire: Arc<Wire>,
    /// `--expect-compressed`: every message from the server must (not) have RSV1
    pub expect_compressed: Option<bool>,
}

impl Ctx {
    fn make(&self, sh: &Shared, seq: u64, salt: u64) -> Frame {
        match &self.json {
            Some(p) => Frame::text(p.make(seq, sh.now_ns(), salt)),
            None => Frame::binary(crate::make_payload(sh, seq)),
        }
    }

    fn check(&self, sh: &Shared, f: &Frame, expect: u64, salt: u64) -> Result<u64, bool> {
        let want = if self.json.is_some() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        if f.opcode() != want {
            return Err(false);
        }
        match &self.json {
            Some(p) => p.check(f.payload(), expect, salt),
            None => crate::check_message(sh, f.payload(), expect),
        }
    }

    /// The wire counters as JSON, and errors for messages whose RSV1 was
    /// not what `--expect-compressed` said.
    pub fn wire_json(&self, sh: &Shared) -> String {
        let r = &self.wire.recv;
        let (msgs, comp) = (r.msgs.load(Relaxed), r.compressed.load(Relaxed));
        let wrong = match self.expect_compressed {
            Some(true) => msgs - comp,
            Some(false) => comp,
            None => 0,
        };
        sh.errors.rsv1.set(wrong);
        format!(
            ",\"client\":\"yawc\",\"payload\":\"{}\",\"wire\":{{\"sent\":{},\"recv\":{}}}",
            if self.json.is_some() { "json" } else { "binary" },
            self.wire.sent.json(),
            r.json()
        )
    }
}

fn options(level: u32) -> Options {
    // The offer is "permessage-deflate; client_max_window_bits=15".
    let deflate = DeflateOptions {
        level: CompressionLevel::new(level),
        ..Default::default()
    };
    Options {
        compression: Some(deflate),
        ..Default::default()
    }
    .with_client_max_window_bits(15)
}

async fn connect_one(sh: &Shared, ctx: &Ctx) -> Result<Ws, String> {
    let stream = TcpStream::connect(sh.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let url: url::Url = sh.opts.url.parse().map_err(|e| format!("{e}"))?;
    let tap = Tap {
        io: stream,
        wire: ctx.wire.clone(),
        read: Scan::Http(0),
        write: Scan::Http(0),
    };
    WebSocket::handshake(url, tap, options(sh.opts.deflate_level))
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// Opens --connections connections.
async fn connect_all(sh: &Shared, ctx: &Ctx) -> Vec<Ws> {
    modes::connect_all(sh, sh.opts.connections, || connect_one(sh, ctx)).await
}

// ---------------------------------------------------------------- throughput

pub async fn throughput(sh: Rc<Shared>, ctx: Rc<Ctx>) -> String {
    let conns = connect_all(&sh, &ctx).await;
    let connected = conns.len();
    modes::run_all(&sh, conns, |i, ws| {
        let (sh, ctx) = (sh.clone(), ctx.clone());
        async move { run_connection(&sh, &ctx, ws, i as u64 * 97).await }
    })
    .await;
    let wire = ctx.wire_json(&sh);
    report(&sh, connected, &wire)
}

async fn run_connection(sh: &Shared, ctx: &Ctx, ws: Ws, salt: u64) {
    // yawc ends the stream on EOF and on any error alike: both count as
    // closed by the peer, never as `Received::Failed`.
    let receive = |f: Frame, expect| match f.opcode() {
        OpCode::Text | OpCode::Binary => Received::Echo(ctx.check(sh, &f, expect, salt)),
        OpCode::Close => Received::Closed,
        _ => Received::Other,
    };
    if let Some(mut ws) = modes::exchange(sh, ws, |seq| ctx.make(sh, seq, salt), receive).await {
        close_gracefully(sh, &mut ws).await;
    }
}

/// We send close, the server answers and closes TCP (yawc's stream ends).
async fn close_gracefully(sh: &Shared, ws: &mut Ws) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = tokio::time::timeout_at(deadline.into(), async {
        ws.send(Frame::close(CloseCode::Normal, b""))
            .await
            .map_err(|_| ())?;
        let mut answered = false;
        while let Some(f) = ws.next().await {
            answered |= f.opcode() == OpCode::Close;
        }
        if answered {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        Errors::inc(&sh.errors.close_handshake);
    }
}

// ---------------------------------------------------------------- idle

pub async fn idle(sh: Rc<Shared>, ctx: Rc<Ctx>) -> String {
    let mut conns = connect_all(&sh, &ctx).await;
    // One message echoed on every connection: with permessage-deflate, the
    // server makes its compression state on the first compressed message.
    let ok = modes::greet_all(&sh, &mut conns, |(i, ws)| {
        let (sh, ctx) = (sh.clone(), ctx.clone());
        async move {
            let salt = i as u64 * 97;
            if ws.send(ctx.make(&sh, 0, salt)).await.is_err() {
                Errors::inc(&sh.errors.io);
                return false;
            }
            loop {
                match ws.next().await {
                    Some(f) if matches!(f.opcode(), OpCode::Text | OpCode::Binary) => {
                        return match ctx.check(&sh, &f, 0, salt) {
                            Ok(_) => true,
                            Err(_) => {
                                Errors::inc(&sh.errors.payload);
                                false
                            }
                        };
                    }
                    Some(f) if f.opcode() == OpCode::Close => {
                        Errors::inc(&sh.errors.closed);
                        return false;
                    }
                    Some(_) => {}
                    None => {
                        Errors::inc(&sh.errors.io);
                        return false;
                    }
                }
            }
        }
    })
    .await;
    modes::hold_and_close(&sh, &mut conns, ok, || ctx.wire_json(&sh), |ws| close_gracefully(&sh, ws)).await
}
