//! Soak client for ngx_http_websocket_module (bench/soak.sh, `make soak`).
//!
//! Holds N long WebSocket sessions for a duration, half on an echo URL and
//! half on a pass URL, each sending one message every --interval seconds
//! (the sessions' phases spread evenly over the interval), plus a churn of
//! short sessions. Every echoed message is checked: it must be the next
//! sequence number of its session (nothing lost, duplicated or reordered),
//! with the same type (text or binary) and content. Sizes cycle through
//! 16 B .. 32 KiB; every 10th message of a session is preceded by a ping,
//! whose pong is counted.
//!
//! Short sessions (--churn per second, alternately echo and pass): connect,
//! 1-3 messages checked the same way, then, in turn: a clean close
//! handshake; TCP dropped without a close frame; TCP dropped in the middle
//! of a frame; a close handshake started while a message is still echoed.
//!
//! On a single-threaded tokio runtime. Prints a progress line on stderr
//! every --status seconds, {"state":"ready",...} on stdout once the long
//! sessions are open, and one result line on stdout at the end; exits 1 when
//! anything was lost, reordered, corrupted or refused.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use ws_bench::{connect, number, options, resolve, Ws};

const USAGE: &str = "usage: soak --echo-url ws://HOST:PORT/PATH --pass-url ws://HOST:PORT/PATH
            [--connections N] [--interval SECS] [--duration SECS] [--churn PER_SEC]
            [--connect-concurrency K] [--drain SECS] [--status SECS]";

/// Message sizes, cycled per session (the echo's and the relay's buffers
/// see small, medium and large messages alike; all under the default
/// websocket_max_payload_len of 65535).
const SIZES: [usize; 6] = [16, 125, 126, 1500, 9000, 32768];

#[derive(Clone)]
struct Opts {
    echo: String,
    pass: String,
    connections: usize,
    interval: f64,
    duration: f64,
    churn: f64,
    connect_concurrency: usize,
    drain: f64,
    status: f64,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        echo: String::new(),
        pass: String::new(),
        connections: 100,
        interval: 5.0,
        duration: 60.0,
        churn: 10.0,
        connect_concurrency: 64,
        drain: 30.0,
        status: 10.0,
    };
    for pair in options(USAGE) {
        let (key, val) = pair?;
        let key = key.as_str();
        let num = |v: &str| number(key, v);
        match key {
            "--echo-url" => o.echo = val,
            "--pass-url" => o.pass = val,
            "--connections" => o.connections = num(&val)? as usize,
            "--interval" => o.interval = num(&val)?,
            "--duration" => o.duration = num(&val)?,
            "--churn" => o.churn = num(&val)?,
            "--connect-concurrency" => o.connect_concurrency = (num(&val)? as usize).max(1),
            "--drain" => o.drain = num(&val)?,
            "--status" => o.status = num(&val)?,
            _ => return Err(format!("unknown option {key}\n{USAGE}")),
        }
    }
    if o.echo.is_empty() || o.pass.is_empty() {
        return Err(format!("--echo-url and --pass-url are required\n{USAGE}"));
    }
    if o.interval <= 0.0 || o.status <= 0.0 {
        return Err("--interval and --status must be positive".into());
    }
    Ok(o)
}

/// Counters; one thread, so Cells.
#[derive(Default)]
struct Stats {
    long_open: Cell<u64>,
    long_connect_failed: Cell<u64>,
    /// long sessions that ended before the end (closed by the peer, I/O error)
    long_dropped: Cell<u64>,
    sent: Cell<u64>,
    received: Cell<u64>,
    /// messages never echoed (counted at the end of a session)
    lost: Cell<u64>,
    /// an echo with another sequence number than the next one expected
    order: Cell<u64>,
    /// right sequence number, wrong type, length or content
    payload: Cell<u64>,
    pings: Cell<u64>,
    pongs: Cell<u64>,
    close_failed: Cell<u64>,
    churn_started: Cell<u64>,
    churn_ok: Cell<u64>,
    churn_failed: Cell<u64>,
    /// churn ticks skipped because too many short sessions were under way
    churn_skipped: Cell<u64>,
    first_error: std::cell::RefCell<Option<String>>,
}

fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Stats {
    fn error(&self, c: &Cell<u64>, what: String) {
        inc(c);
        let mut e = self.first_error.borrow_mut();
        if e.is_none() {
            *e = Some(what);
        }
    }
    /// Everything that went wrong; `pongs_due`: pings without a pong count
    /// (only at the end: while sessions run, pongs are on their way).
    fn failures(&self, pongs_due: bool) -> u64 {
        let missing_pongs = if pongs_due { self.pings.get().saturating_sub(self.pongs.get()) } else { 0 };
        self.long_connect_failed.get()
            + self.long_dropped.get()
            + self.lost.get()
            + self.order.get()
            + self.payload.get()
            + self.close_failed.get()
            + self.churn_failed.get()
            + missing_pongs
    }
    fn json(&self, connections: usize, elapsed: f64, end: bool) -> String {
        format!(
            "{{\"t\":{elapsed:.1},\"connections\":{connections},\"long_open\":{},\"long_connect_failed\":{},\"long_dropped\":{},\"sent\":{},\"received\":{},\"lost\":{},\"order\":{},\"payload\":{},\"pings\":{},\"pongs\":{},\"close_failed\":{},\"churn_started\":{},\"churn_ok\":{},\"churn_failed\":{},\"churn_skipped\":{},\"failures\":{},\"first_error\":{}}}",
            self.long_open.get(),
            self.long_connect_failed.get(),
            self.long_dropped.get(),
            self.sent.get(),
            self.received.get(),
            self.lost.get(),
            self.order.get(),
            self.payload.get(),
            self.pings.get(),
            self.pongs.get(),
            self.close_failed.get(),
            self.churn_started.get(),
            self.churn_ok.get(),
            self.churn_failed.get(),
            self.churn_skipped.get(),
            self.failures(end),
            match &*self.first_error.borrow() {
                Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "'")),
                None => "null".into(),
            }
        )
    }
}

struct Shared {
    opts: Opts,
    echo: SocketAddr,
    pass: SocketAddr,
    config: WebSocketConfig,
    stats: Stats,
    t0: Instant,
}

/// The message `seq` of session `id`: text (ASCII) on even sequence
/// numbers, binary on odd ones; the content is a function of (id, seq), so
/// the reader can rebuild what it must get back.
fn message(id: u64, seq: u64) -> Message {
    let size = SIZES[((id + seq) % SIZES.len() as u64) as usize];
    let head = format!("{id}:{seq}:");
    let mut v = Vec::with_capacity(size.max(head.len()));
    v.extend_from_slice(head.as_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(if seq.is_multiple_of(2) { b'a' + (x % 26) as u8 } else { x as u8 });
    }
    if seq.is_multiple_of(2) {
        Message::Text(String::from_utf8(v).unwrap().into())
    } else {
        Message::Binary(Bytes::from(v))
    }
}

/// Which sequence number an echo claims to be (from its "id:seq:" head).
fn claimed_seq(data: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(data.get(..data.len().min(40))?).ok().or_else(|| {
        let end = data.iter().take(40).position(|b| !b.is_ascii())?;
        std::str::from_utf8(&data[..end]).ok()
    })?;
    let mut parts = s.splitn(3, ':');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Checks an echo against message `expect`; Err(what went wrong).
fn check(st: &Stats, id: u64, expect: u64, got: &Message) -> Result<(), String> {
    let want = message(id, expect);
    let (gd, wd): (&[u8], &[u8]) = match (got, &want) {
        (Message::Text(g), Message::Text(w)) => (g.as_bytes(), w.as_bytes()),
        (Message::Binary(g), Message::Binary(w)) => (g, w),
        (Message::Text(g), _) => (g.as_bytes(), &[]),
        (Message::Binary(g), _) => (g, &[]),
        _ => (&[], &[]),
    };
    if gd == wd {
        return Ok(());
    }
    match claimed_seq(gd) {
        Some(s) if s != expect => {
            st.error(&st.order, format!("session {id}: expected message {expect}, got {s}"));
            Err("order".into())
        }
        _ => {
            st.error(&st.payload, format!("session {id}: message {expect} came back altered ({} bytes, want {})", gd.len(), wd.len()));
            Err("payload".into())
        }
    }
}

async fn connect_to(sh: &Shared, pass: bool) -> Result<Ws, String> {
    let (addr, url) = if pass { (sh.pass, &sh.opts.pass) } else { (sh.echo, &sh.opts.echo) };
    connect(addr, url, sh.config).await
}

/// Close handshake: close 1000, wait for the server's close and its TCP
/// close.
async fn close(ws: &mut Ws) -> Result<(), String> {
    let r = timeout(Duration::from_secs(10), async {
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
            .await
            .map_err(|e| format!("sending close: {e}"))?;
        loop {
            match ws.next().await {
                None => return Ok(()),
                Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(()),
                Some(Err(e)) => return Err(format!("after close: {e}")),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| Err("no close from the server within 10 s".into()))
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let (echo, pass) = match (resolve(&opts.echo), resolve(&opts.pass)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(16384)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let sh = Rc::new(Shared { opts, echo, pass, config, stats: Stats::default(), t0: Instant::now() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let ok = local.block_on(&rt, run(sh));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(sh: Rc<Shared>) -> bool {
    let n = sh.opts.connections;
    // Open the long sessions, connect_concurrency at a time.
    let conns: Vec<(u64, Option<Ws>)> = futures_util::stream::iter(0..n as u64)
        .map(|id| {
            let sh = sh.clone();
            async move {
                match connect_to(&sh, id % 2 == 1).await {
                    Ok(ws) => {
                        inc(&sh.stats.long_open);
                        (id, Some(ws))
                    }
                    Err(e) => {
                        sh.stats.error(&sh.stats.long_connect_failed, format!("session {id}: {e}"));
                        (id, None)
                    }
                }
            }
        })
        .buffer_unordered(sh.opts.connect_concurrency)
        .collect()
        .await;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(sh.opts.duration);
    println!(
        "{{\"state\":\"ready\",\"connections\":{n},\"open\":{},\"connect_seconds\":{:.1}}}",
        sh.stats.long_open.get(),
        sh.t0.elapsed().as_secs_f64()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let status = {
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            let every = Duration::from_secs_f64(sh.opts.status);
            let mut next = Instant::now() + every;
            loop {
                sleep_until(next.into()).await;
                next += every;
                eprintln!("{}", sh.stats.json(sh.opts.connections, sh.t0.elapsed().as_secs_f64(), false));
            }
        })
    };

    let mut tasks = Vec::with_capacity(n);
    for (id, ws) in conns {
        let Some(ws) = ws else { continue };
        let sh = sh.clone();
        let phase = Duration::from_secs_f64(sh.opts.interval * id as f64 / n as f64);
        tasks.push(tokio::task::spawn_local(async move {
            long_session(&sh, id, ws, start + phase, end).await;
        }));
    }
    let churn = {
        let sh = sh.clone();
        tokio::task::spawn_local(async move { churn(sh, end).await })
    };
    for t in tasks {
        let _ = t.await;
    }
    let _ = churn.await;
    status.abort();
    let st = &sh.stats;
    let line = st.json(sh.opts.connections, sh.t0.elapsed().as_secs_f64(), true);
    let ok = st.failures(true) == 0;
    println!("{{\"state\":\"done\",\"ok\":{ok},{}", &line[1..]);
    ok
}

async fn long_session(sh: &Shared, id: u64, ws: Ws, first: Instant, end: Instant) {
    let st = &sh.stats;
    let (mut tx, mut rx) = ws.split();
    let interval = Duration::from_secs_f64(sh.opts.interval);
    let sent = Cell::new(0u64);
    let writing_done = Cell::new(false);
    let done = Notify::new();
    let broken = Cell::new(false);

    let writer = async {
        let mut at = first;
        while at < end && !broken.get() {
            sleep_until(at.into()).await;
            if broken.get() {
                break;
            }
            let seq = sent.get();
            if seq % 10 == 9 {
                if tx.feed(Message::Ping(Bytes::from(format!("{id}:{seq}")))).await.is_err() {
                    break;
                }
                inc(&st.pings);
            }
            if tx.send(message(id, seq)).await.is_err() {
                break;
            }
            sent.set(seq + 1);
            inc(&st.sent);
            at += interval;
        }
        writing_done.set(true);
        done.notify_one();
        tx
    };

    let reader = async {
        let mut expect = 0u64;
        let mut drain_until: Option<Instant> = None;
        loop {
            if writing_done.get() {
                if expect >= sent.get() {
                    return (rx, expect, true);
                }
                let d = *drain_until
                    .get_or_insert_with(|| Instant::now() + Duration::from_secs_f64(sh.opts.drain));
                if Instant::now() >= d {
                    return (rx, expect, false);
                }
            }
            let m = if let Some(d) = drain_until {
                match timeout_at(d.into(), rx.next()).await {
                    Err(_) => return (rx, expect, false),
                    Ok(m) => m,
                }
            } else {
                tokio::select! {
                    m = rx.next() => m,
                    _ = done.notified() => continue,
                }
            };
            match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    inc(&st.received);
                    if check(st, id, expect, &m).is_err() {
                        broken.set(true);
                        return (rx, expect, false);
                    }
                    expect += 1;
                }
                Some(Ok(Message::Pong(_))) => inc(&st.pongs),
                Some(Ok(Message::Close(c))) => {
                    st.error(&st.long_dropped, format!("session {id} ({}): server closed: {c:?}", kind(id)));
                    broken.set(true);
                    return (rx, expect, false);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    st.error(&st.long_dropped, format!("session {id} ({}): {e}", kind(id)));
                    broken.set(true);
                    return (rx, expect, false);
                }
                None => {
                    st.error(&st.long_dropped, format!("session {id} ({}): connection closed", kind(id)));
                    broken.set(true);
                    return (rx, expect, false);
                }
            }
        }
    };

    let (tx, (rx, received, clean)) = tokio::join!(writer, reader);
    if !clean {
        let missing = sent.get().saturating_sub(received);
        st.lost.set(st.lost.get() + missing);
        if !broken.get() {
            st.error(&st.lost, format!("session {id} ({}): {missing} messages not echoed within {} s", kind(id), sh.opts.drain));
            st.lost.set(st.lost.get() - 1);
        }
        st.long_open.set(st.long_open.get() - 1);
        return;
    }
    let mut ws = match tx.reunite(rx) {
        Ok(ws) => ws,
        Err(_) => return,
    };
    if let Err(e) = close(&mut ws).await {
        st.error(&st.close_failed, format!("session {id} ({}): {e}", kind(id)));
    }
    st.long_open.set(st.long_open.get() - 1);
}

fn kind(id: u64) -> &'static str {
    if id % 2 == 1 { "pass" } else { "echo" }
}

async fn churn(sh: Rc<Shared>, end: Instant) {
    if sh.opts.churn <= 0.0 {
        return;
    }
    let gap = Duration::from_secs_f64(1.0 / sh.opts.churn);
    // At most 256 short sessions at a time: a server that slows down gets
    // skipped ticks (counted), not an ever-growing crowd.
    let in_flight = Rc::new(Cell::new(0usize));
    let mut at = Instant::now();
    let mut n = 0u64;
    let mut tasks = Vec::new();
    while at < end {
        sleep_until(at.into()).await;
        at += gap;
        if in_flight.get() >= 256 {
            inc(&sh.stats.churn_skipped);
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let in_flight = in_flight.clone();
        // Short sessions have ids above the long ones.
        let id = sh.opts.connections as u64 + n;
        n += 1;
        inc(&sh.stats.churn_started);
        let sh = sh.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let r = timeout(Duration::from_secs(30), short_session(&sh, id)).await;
            match r {
                Ok(Ok(())) => inc(&sh.stats.churn_ok),
                Ok(Err(e)) => sh.stats.error(&sh.stats.churn_failed, format!("short session {id} ({}): {e}", kind(id))),
                Err(_) => sh.stats.error(&sh.stats.churn_failed, format!("short session {id} ({}): stuck for 30 s", kind(id))),
            }
            in_flight.set(in_flight.get() - 1);
        }));
        if tasks.len() > 1024 {
            tasks.retain(|t| !t.is_finished());
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn short_session(sh: &Shared, id: u64) -> Result<(), String> {
    let mut ws = connect_to(sh, id % 2 == 1).await?;
    let messages = 1 + id % 3;
    let ending = (id / 2) % 4;
    for seq in 0..messages {
        ws.send(message(id, seq)).await.map_err(|e| format!("send: {e}"))?;
        if ending == 3 && seq + 1 == messages {
            // close while the last message is still on its way back: the
            // echo must come before the server's close
            break;
        }
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    check(&sh.stats, id, seq, &m)?;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed by the server".into()),
            }
        }
    }
    match ending {
        0 => close(&mut ws).await,
        1 => {
            // TCP closed without a close frame
            let mut s = ws.into_inner();
            let _ = s.shutdown().await;
            Ok(())
        }
        2 => {
            // TCP closed in the middle of a frame: a masked 1000-byte binary
            // frame header and 10 bytes of it
            let mut s = ws.into_inner();
            let mut partial = vec![0x82u8, 0xFE, 0x03, 0xE8, 1, 2, 3, 4];
            partial.extend_from_slice(&[0u8; 10]);
            let _ = s.write_all(&partial).await;
            sleep(Duration::from_millis(50)).await;
            Ok(())
        }
        _ => {
            ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
                .await
                .map_err(|e| format!("sending close: {e}"))?;
            let mut echoed = false;
            loop {
                match ws.next().await {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        check(&sh.stats, id, messages - 1, &m)?;
                        echoed = true;
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => break,
                    Some(Err(e)) => return Err(format!("after close: {e}")),
                }
            }
            if echoed { Ok(()) } else { Err("the message sent before the close was not echoed".into()) }
        }
    }
}
