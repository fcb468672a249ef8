//! Fan-out load generator: one channel, N WebSocket subscribers, messages
//! published over HTTP. Measures deliveries per second, publish-to-receive
//! latency and the server's memory per idle subscriber, for any server that
//! publishes with `POST <pub-url>` and delivers the body as one WebSocket
//! message (ngx_http_websocket_module's `websocket_publish` /
//! `websocket_subscribe`, nchan's `nchan_publisher` / `nchan_subscriber`).
//!
//! Every message starts with its sequence number and its send time (both
//! decimal, 10 and 16 digits), padded with `x` to --size bytes, so that any
//! frame type works. One single-threaded tokio runtime: publisher and
//! subscribers share one clock.
//!
//! Publishing:
//!   --rate R > 0   open loop, R messages per second
//!   --rate 0       closed loop: at most --window messages published and not
//!                  yet received by every subscriber (the highest rate the
//!                  server sustains without a backlog)
//!
//! Prints one JSON line: published, deliveries (in the measurement window),
//! deliveries per second, lost and duplicated deliveries, latency p50/p99 in
//! microseconds, and with --server-pid the server's RSS before the
//! subscribers connected and once they were all idle.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use ws_bench::{connect, number, options, resolve};

const USAGE: &str = "usage: fanout --sub-url ws://HOST:PORT/PATH --pub-url http://HOST:PORT/PATH
              [--subscribers N] [--size BYTES] [--rate R] [--window W]
              [--duration SECS] [--warmup SECS] [--connect-concurrency K]
              [--server-pid PID]";

/// Sequence number and send time: the message's first bytes.
const HEADER_LEN: usize = 26;

struct Opts {
    sub_url: String,
    pub_url: String,
    subscribers: usize,
    size: usize,
    rate: f64,
    window: u64,
    duration: f64,
    warmup: f64,
    connect_concurrency: usize,
    server_pid: Option<u32>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        sub_url: String::new(),
        pub_url: String::new(),
        subscribers: 1000,
        size: 100,
        rate: 0.0,
        window: 4,
        duration: 5.0,
        warmup: 1.0,
        connect_concurrency: 64,
        server_pid: None,
    };
    for kv in options(USAGE) {
        let (k, v) = kv?;
        match k.as_str() {
            "--sub-url" => o.sub_url = v,
            "--pub-url" => o.pub_url = v,
            "--subscribers" => o.subscribers = number(&k, &v)? as usize,
            "--size" => o.size = number(&k, &v)? as usize,
            "--rate" => o.rate = number(&k, &v)?,
            "--window" => o.window = number(&k, &v)?.max(1.0) as u64,
            "--duration" => o.duration = number(&k, &v)?,
            "--warmup" => o.warmup = number(&k, &v)?,
            "--connect-concurrency" => o.connect_concurrency = number(&k, &v)?.max(1.0) as usize,
            "--server-pid" => o.server_pid = Some(number(&k, &v)? as u32),
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    if o.sub_url.is_empty() || o.pub_url.is_empty() {
        return Err(USAGE.to_string());
    }
    if o.size < HEADER_LEN {
        return Err(format!("--size must be at least {HEADER_LEN}"));
    }
    Ok(o)
}

/// What the subscribers and the publisher share.
struct Run {
    origin: Instant,
    measure_start: Instant,
    measure_end: Instant,
    /// Per message: how many subscribers have received it.
    received: RefCell<Vec<u32>>,
    /// Messages received by every subscriber, counted from 0 in order of
    /// completion (the closed loop's credit).
    complete: Cell<u64>,
    deliveries: Cell<u64>,
    duplicates: Cell<u64>,
    out_of_order: Cell<u64>,
    subscribers: u32,
    latency: RefCell<Histogram<u64>>,
    wake_publisher: tokio::sync::Notify,
    errors: Cell<u64>,
}

impl Run {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn deliver(&self, seq: u64, sent_us: u64) {
        let now = Instant::now();
        let mut received = self.received.borrow_mut();
        let Some(count) = received.get_mut(seq as usize) else {
            self.errors.set(self.errors.get() + 1);
            return;
        };
        *count += 1;
        if *count > self.subscribers {
            self.duplicates.set(self.duplicates.get() + 1);
            return;
        }
        if *count == self.subscribers {
            self.complete.set(self.complete.get() + 1);
            self.wake_publisher.notify_one();
        }
        if now >= self.measure_start && now < self.measure_end {
            self.deliveries.set(self.deliveries.get() + 1);
            let lat = self.now_us().saturating_sub(sent_us).max(1);
            let _ = self.latency.borrow_mut().record(lat);
        }
    }
}

fn message(seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let mut m = format!("{seq:010}{sent_us:016}").into_bytes();
    m.resize(size, b'x');
    m
}

fn header(data: &[u8]) -> Option<(u64, u64)> {
    let h = std::str::from_utf8(data.get(..HEADER_LEN)?).ok()?;
    Some((h[..10].parse().ok()?, h[10..].parse().ok()?))
}

async fn subscriber(run: Rc<Run>, mut ws: ws_bench::Ws) {
    let mut last: Option<u64> = None;
    while let Some(frame) = ws.next().await {
        let data = match frame {
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match header(&data) {
            Some((seq, sent)) => {
                if last.is_some_and(|l| seq <= l) {
                    run.out_of_order.set(run.out_of_order.get() + 1);
                }
                last = Some(seq);
                run.deliver(seq, sent);
            }
            None => run.errors.set(run.errors.get() + 1),
        }
    }
}

/// An HTTP/1.1 keep-alive connection that POSTs messages.
struct Publisher {
    stream: TcpStream,
    head: String,
    buf: Vec<u8>,
}

impl Publisher {
    async fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// publish URLs: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = resolve(&format!("ws://{authority}/"))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let path = if path.is_empty() { "/" } else { path };
        let head = format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain\r\n");
        Ok(Publisher { stream, head, buf: Vec::new() })
    }

    /// Publishes `body`; Ok with the status code of the answer.
    async fn post(&mut self, body: &[u8]) -> Result<u16, String> {
        let mut req = format!("{}Content-Length: {}\r\n\r\n", self.head, body.len()).into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await.map_err(|e| e.to_string())?;
        let (status, header_end, body_len) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("answer without Content-Length")?;
                break (status, end + 4, len);
            }
            self.fill().await?;
        };
        while self.buf.len() < header_end + body_len {
            self.fill().await?;
        }
        self.buf.drain(..header_end + body_len);
        Ok(status)
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("publisher connection closed".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn publish(run: &Rc<Run>, o: &Opts) -> Result<(u64, u64), String> {
    let mut publisher = Publisher::new(&o.pub_url).await?;
    let end = run.measure_end;
    let mut seq = 0u64;
    let mut rejected = 0u64;
    let interval = (o.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / o.rate));
    let start = Instant::now();
    while Instant::now() < end {
        match interval {
            Some(iv) => tokio::time::sleep_until((start + iv.mul_f64(seq as f64)).into()).await,
            None => {
                while seq >= run.complete.get() + o.window {
                    let notified = run.wake_publisher.notified();
                    if tokio::time::timeout(Duration::from_secs(2), notified).await.is_err() {
                        return Err(format!(
                            "closed loop stalled: {seq} published, {} complete",
                            run.complete.get()
                        ));
                    }
                }
            }
        }
        run.received.borrow_mut().push(0);
        let body = message(seq, run.now_us(), o.size);
        let status = publisher.post(&body).await?;
        if !(200..300).contains(&status) {
            rejected += 1;
        }
        seq += 1;
    }
    Ok((seq, rejected))
}

async fn main_async(o: Opts) -> Result<String, String> {
    let addr: SocketAddr = resolve(&o.sub_url)?;
    let rss_before = o.server_pid.and_then(rss_kib);
    let config = WebSocketConfig::default();
    let conns: Vec<Result<ws_bench::Ws, String>> = futures_util::stream::iter(0..o.subscribers)
        .map(|_| connect(addr, &o.sub_url, config))
        .buffer_unordered(o.connect_concurrency)
        .collect()
        .await;
    let mut subs = Vec::with_capacity(conns.len());
    for c in conns {
        subs.push(c?);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_idle = o.server_pid.and_then(rss_kib);

    let origin = Instant::now();
    let measure_start = origin + Duration::from_secs_f64(o.warmup);
    let run = Rc::new(Run {
        origin,
        measure_start,
        measure_end: measure_start + Duration::from_secs_f64(o.duration),
        received: RefCell::new(Vec::new()),
        complete: Cell::new(0),
        deliveries: Cell::new(0),
        duplicates: Cell::new(0),
        out_of_order: Cell::new(0),
        subscribers: subs.len() as u32,
        latency: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        wake_publisher: tokio::sync::Notify::new(),
        errors: Cell::new(0),
    });
    let readers: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::task::spawn_local(subscriber(run.clone(), ws)))
        .collect();
    let (published, rejected) = publish(&run, &o).await?;
    // What is still under way gets two seconds to arrive.
    let drain_end = Instant::now() + Duration::from_secs(2);
    while run.complete.get() < published && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = (published - rejected) * run.subscribers as u64;
    let arrived: u64 = run.received.borrow().iter().map(|&c| c as u64).sum();
    for r in readers {
        r.abort();
    }
    let h = run.latency.borrow();
    let per_sub = match (rss_before, rss_idle) {
        (Some(a), Some(b)) if run.subscribers > 0 => {
            format!("{:.2}", (b.saturating_sub(a)) as f64 / run.subscribers as f64)
        }
        _ => "null".into(),
    };
    Ok(format!(
        concat!(
            "{{\"subscribers\":{},\"size\":{},\"rate\":{},\"window\":{},\"published\":{},",
            "\"rejected\":{},\"deliveries\":{},\"deliveries_per_s\":{:.0},\"lost\":{},",
            "\"duplicates\":{},\"out_of_order\":{},\"errors\":{},\"p50_us\":{},\"p99_us\":{},",
            "\"rss_kib_before\":{},\"rss_kib_idle\":{},\"kib_per_subscriber\":{}}}"
        ),
        run.subscribers,
        o.size,
        o.rate,
        o.window,
        published,
        rejected,
        run.deliveries.get(),
        run.deliveries.get() as f64 / o.duration,
        expected.saturating_sub(arrived.min(expected)),
        run.duplicates.get(),
        run.out_of_order.get(),
        run.errors.get(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        rss_before.map_or("null".into(), |v| v.to_string()),
        rss_idle.map_or("null".into(), |v| v.to_string()),
        per_sub,
    ))
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, main_async(o)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::exit(1);
        }
    }
}
