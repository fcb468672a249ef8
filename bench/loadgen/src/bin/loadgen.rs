//! WebSocket load generator for the ngx_http_websocket_module benchmarks.
//!
//! Built on tokio-tungstenite (an independent, well-known client: masked
//! client frames, its own codec), on a single-threaded tokio runtime so that
//! it uses one core. Every run prints exactly one JSON line on stdout (the
//! idle mode prints a "ready" line first).
//!
//! Modes:
//!   throughput (default)  N connections, each keeping W binary messages of S
//!                         bytes in flight; every message carries a sequence
//!                         number and a send timestamp, the echo is checked
//!                         for order, length and content, and the round trip
//!                         goes into a latency histogram. W = 1 is ping-pong.
//!   sessions              N concurrent loops of: connect, one S-byte message,
//!                         wait for its echo, close handshake. Sessions/s.
//!   idle                  open N connections, exchange one message on each,
//!                         print {"state":"ready",...}, hold them --duration
//!                         seconds, then close them.
//!   --serve-trivial ADDR  not a load generator: a trivial WebSocket echo
//!                         server (no validation, unmask and send back) used
//!                         to measure the load generator's own ceiling.
//!
//! `--deflate on` runs the throughput and idle modes with a second client,
//! yawc, offering permessage-deflate (compressed.rs); `--payload json` sends
//! JSON-like text messages instead of binary filler (json.rs), and
//! `--expect-compressed yes|no` checks the RSV1 bit of every message the
//! server sends.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use ws_bench::{connect, number, options, resolve, Ws};

#[path = "../trivial.rs"]
mod trivial;

#[path = "../json.rs"]
mod json;

#[path = "../compressed.rs"]
mod compressed;

#[path = "../modes.rs"]
mod modes;

use modes::Received;

const USAGE: &str = "usage: loadgen [--mode throughput|sessions|idle] --url ws://HOST:PORT/PATH
               [--connections N] [--size BYTES] [--window W] [--duration SECS]
               [--warmup SECS] [--connect-concurrency K] [--drain-timeout SECS]
               [--read-buffer BYTES] [--messages M] [--server-pid PID]
               [--deflate on|off] [--deflate-level 1-9] [--payload binary|json]
               [--expect-compressed yes|no]
       loadgen --serve-trivial HOST:PORT";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Throughput,
    Sessions,
    Idle,
}

#[derive(Clone, Debug)]
struct Opts {
    mode: Mode,
    url: String,
    connections: usize,
    size: usize,
    window: usize,
    duration: f64,
    warmup: f64,
    connect_concurrency: usize,
    drain_timeout: f64,
    read_buffer: usize,
    /// throughput mode: stop each connection after M messages (0 = no limit)
    messages: u64,
    /// the server process, whose CPU use over the measurement is reported
    server_pid: Option<u32>,
    /// the yawc client, offering permessage-deflate (throughput and idle modes)
    deflate: bool,
    /// JSON-like text messages (with --deflate on)
    json: bool,
    /// the zlib level the client compresses with (with --deflate on)
    deflate_level: u32,
    /// every message from the server must (not) be compressed (with --deflate on)
    expect_compressed: Option<bool>,
}

fn parse_args() -> Result<Option<Opts>, String> {
    let mut o = Opts {
        mode: Mode::Throughput,
        url: String::new(),
        connections: 1,
        size: 16,
        window: 1,
        duration: 3.0,
        warmup: 1.0,
        connect_concurrency: 64,
        drain_timeout: 10.0,
        read_buffer: 0,
        messages: 0,
        server_pid: None,
        deflate: false,
        json: false,
        deflate_level: 1,
        expect_compressed: None,
    };
    for pair in options(USAGE) {
        let (key, val) = pair?;
        let key = key.as_str();
        let num = |v: &str| number(key, v);
        match key {
            "--serve-trivial" => {
                trivial::serve(&val);
                return Ok(None);
            }
            "--mode" => {
                o.mode = match val.as_str() {
                    "throughput" => Mode::Throughput,
                    "sessions" => Mode::Sessions,
                    "idle" => Mode::Idle,
                    _ => return Err(format!("unknown mode {val}")),
                }
            }
            "--url" => o.url = val,
            "--connections" | "-c" => o.connections = num(&val)? as usize,
            "--size" | "-s" => o.size = parse_size(&val)?,
            "--window" | "-w" => o.window = num(&val)? as usize,
            "--duration" | "-d" => o.duration = num(&val)?,
            "--warmup" => o.warmup = num(&val)?,
            "--connect-concurrency" => o.connect_concurrency = num(&val)? as usize,
            "--drain-timeout" => o.drain_timeout = num(&val)?,
            "--read-buffer" => o.read_buffer = parse_size(&val)?,
            "--messages" => o.messages = num(&val)? as u64,
            "--server-pid" => o.server_pid = Some(num(&val)? as u32),
            "--deflate" => o.deflate = on_off(key, &val)?,
            "--payload" => {
                o.json = match val.as_str() {
                    "json" => true,
                    "binary" => false,
                    _ => return Err(format!("--payload: binary or json, not {val}")),
                }
            }
            "--expect-compressed" => o.expect_compressed = Some(on_off(key, &val)?),
            "--deflate-level" => o.deflate_level = (num(&val)? as u32).clamp(1, 9),
            _ => return Err(format!("unknown option {key}\n{USAGE}")),
        }
    }
    if o.url.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    if o.size < 16 {
        return Err("--size must be at least 16 (sequence number + timestamp)".into());
    }
    if (o.json || o.expect_compressed.is_some()) && !o.deflate {
        return Err("--payload json and --expect-compressed need --deflate on".into());
    }
    if o.deflate && o.mode == Mode::Sessions {
        return Err("--deflate on: throughput and idle modes only".into());
    }
    o.connections = o.connections.max(1);
    o.window = o.window.max(1);
    o.connect_concurrency = o.connect_concurrency.max(1);
    Ok(Some(o))
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" => Ok(true),
        "off" | "no" => Ok(false),
        _ => Err(format!("{key}: on/yes or off/no, not {v}")),
    }
}

fn parse_size(v: &str) -> Result<usize, String> {
    let v = v.trim();
    let (n, mul) = match v.chars().last() {
        Some('k') | Some('K') => (&v[..v.len() - 1], 1024),
        Some('m') | Some('M') => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    n.parse::<usize>()
        .map(|n| n * mul)
        .map_err(|_| format!("bad size {v}"))
}

#[derive(Default)]
struct Errors {
    connect: Cell<u64>,
    io: Cell<u64>,
    closed: Cell<u64>,
    order: Cell<u64>,
    payload: Cell<u64>,
    timeout: Cell<u64>,
    close_handshake: Cell<u64>,
    /// --expect-compressed: messages from the server with the wrong RSV1
    rsv1: Cell<u64>,
}

impl Errors {
    fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    fn total(&self) -> u64 {
        self.connect.get()
            + self.io.get()
            + self.closed.get()
            + self.order.get()
            + self.payload.get()
            + self.timeout.get()
            + self.close_handshake.get()
            + self.rsv1.get()
    }
    fn json(&self) -> String {
        format!(
            "{{\"connect\":{},\"io\":{},\"closed_by_peer\":{},\"order\":{},\"payload\":{},\"timeout\":{},\"close_handshake\":{},\"rsv1\":{}}}",
            self.connect.get(),
            self.io.get(),
            self.closed.get(),
            self.order.get(),
            self.payload.get(),
            self.timeout.get(),
            self.close_handshake.get(),
            self.rsv1.get()
        )
    }
}

/// Everything the connection tasks share (one thread, so Cells).
struct Shared {
    opts: Opts,
    addr: SocketAddr,
    config: WebSocketConfig,
    /// time origin of the timestamps carried in messages
    t0: Instant,
    measure_start: Cell<Instant>,
    measure_end: Cell<Instant>,
    /// messages (or sessions) completed inside the measurement window
    in_window: Cell<u64>,
    /// all messages echoed, warmup and drain included
    total: Cell<u64>,
    /// connections that completed nothing inside the window
    silent_connections: Cell<u64>,
    hist: RefCell<Histogram<u64>>,
    errors: Errors,
    /// filler for message bodies
    filler: Bytes,
    /// CPU use over the measurement window, as JSON
    cpu: RefCell<String>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
    fn in_measurement(&self, t: Instant) -> bool {
        t >= self.measure_start.get() && t < self.measure_end.get()
    }
}

fn main() {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let addr = match resolve(&opts.url) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let mut config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    if opts.read_buffer > 0 {
        config = config.read_buffer_size(opts.read_buffer);
    } else if opts.mode == Mode::Idle {
        config = config.read_buffer_size(4096);
    } else {
        // tungstenite zero-fills the free part of its read buffer before
        // every read(); its 128 KiB default made the load generator its own
        // bottleneck. 16 KiB, or 64 KiB for large messages (fewer reads).
        config = config.read_buffer_size(if opts.size >= 65536 { 65536 } else { 16384 });
    }
    let t0 = Instant::now();
    let filler: Vec<u8> = (0..opts.size).map(|i| (i * 31 % 251) as u8).collect();
    let sh = Rc::new(Shared {
        opts: opts.clone(),
        addr,
        config,
        t0,
        measure_start: Cell::new(t0),
        measure_end: Cell::new(t0),
        in_window: Cell::new(0),
        total: Cell::new(0),
        silent_connections: Cell::new(0),
        hist: RefCell::new(Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()),
        errors: Errors::default(),
        filler: Bytes::from(filler),
        cpu: RefCell::new("null".into()),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let ctx = if opts.deflate {
        let json = match opts.json.then(|| json::JsonPool::new(opts.size)).transpose() {
            Ok(j) => j,
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(2);
            }
        };
        Some(Rc::new(compressed::Ctx {
            json,
            wire: Default::default(),
            expect_compressed: opts.expect_compressed,
        }))
    } else {
        None
    };
    let line = local.block_on(&rt, async move {
        match (opts.mode, ctx) {
            (Mode::Throughput, Some(ctx)) => compressed::throughput(sh, ctx).await,
            (Mode::Idle, Some(ctx)) => compressed::idle(sh, ctx).await,
            (Mode::Throughput, None) => throughput(sh).await,
            (Mode::Sessions, _) => sessions(sh).await,
            (Mode::Idle, None) => idle(sh).await,
        }
    });
    println!("{line}");
}

/// Opens --connections connections.
async fn connect_all(sh: &Shared) -> Vec<Ws> {
    modes::connect_all(sh, sh.opts.connections, || connect_one(sh)).await
}

async fn connect_one(sh: &Shared) -> Result<Ws, String> {
    connect(sh.addr, &sh.opts.url, sh.config).await
}

fn make_message(sh: &Shared, seq: u64) -> Message {
    Message::Binary(make_payload(sh, seq))
}

/// `size` bytes: sequence number, send time, filler, sequence number.
fn make_payload(sh: &Shared, seq: u64) -> Bytes {
    let size = sh.opts.size;
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(seq);
    b.put_u64_le(sh.now_ns());
    if size >= 24 {
        b.extend_from_slice(&sh.filler[16..size - 8]);
        b.put_u64_le(seq);
    } else {
        b.extend_from_slice(&sh.filler[16..size]);
    }
    b.freeze()
}

/// Checks an echoed message; returns its send timestamp.
fn check_message(sh: &Shared, data: &[u8], expect: u64) -> Result<u64, bool> {
    let size = sh.opts.size;
    if data.len() != size {
        return Err(false);
    }
    let seq = u64::from_le_bytes(data[0..8].try_into().unwrap());
    if seq != expect {
        return Err(true);
    }
    if size >= 24 {
        let tail = u64::from_le_bytes(data[size - 8..].try_into().unwrap());
        if tail != seq || data[16..size - 8] != sh.filler[16..size - 8] && size <= 4096 {
            return Err(false);
        }
    }
    Ok(u64::from_le_bytes(data[8..16].try_into().unwrap()))
}

fn record(sh: &Shared, sent_ns: u64) {
    let now = Instant::now();
    sh.total.set(sh.total.get() + 1);
    if sh.in_measurement(now) {
        sh.in_window.set(sh.in_window.get() + 1);
        let lat = sh.now_ns().saturating_sub(sent_ns).max(1);
        let _ = sh.hist.borrow_mut().record(lat);
    }
}

fn pct_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 1000.0 * 10.0).round() / 10.0
}

fn report(sh: &Shared, connected: usize, extra: &str) -> String {
    let secs = sh.opts.duration;
    let n = sh.in_window.get();
    let rate = n as f64 / secs;
    let mbps = rate * sh.opts.size as f64 / 1e6;
    let h = sh.hist.borrow();
    let mode = match sh.opts.mode {
        Mode::Throughput => "throughput",
        Mode::Sessions => "sessions",
        Mode::Idle => "idle",
    };
    format!(
        "{{\"mode\":\"{mode}\",\"cpu\":{},\"url\":\"{}\",\"connections\":{},\"connected\":{connected},\"size\":{},\"window\":{},\"duration\":{},\"warmup\":{},\"count\":{n},\"total\":{},\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.2},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"silent_connections\":{},\"errors\":{},\"error_detail\":{}{extra}}}",
        sh.cpu.borrow(),
        sh.opts.url,
        sh.opts.connections,
        sh.opts.size,
        sh.opts.window,
        sh.opts.duration,
        sh.opts.warmup,
        sh.total.get(),
        rate,
        mbps,
        pct_us(&h, 0.5),
        pct_us(&h, 0.99),
        pct_us(&h, 0.999),
        pct_us(&h, 1.0),
        sh.silent_connections.get(),
        sh.errors.total(),
        sh.errors.json()
    )
}

// ---------------------------------------------------------------- CPU use

struct CpuSample {
    at: Instant,
    own: u64,
    server: Option<u64>,
    /// user + nice + system of all CPUs
    busy: u64,
    steal: u64,
    /// per CPU: (all ticks, idle + iowait ticks)
    per_cpu: Vec<(u64, u64)>,
}

/// utime + stime of a process, in clock ticks
fn proc_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn cpu_sample(server_pid: Option<u32>) -> CpuSample {
    let (mut busy, mut steal) = (0, 0);
    let mut per_cpu = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/proc/stat") {
        for line in s.lines().take_while(|l| l.starts_with("cpu")) {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() < 8 {
                continue;
            }
            if line.starts_with("cpu ") {
                busy = f[0] + f[1] + f[2];
                steal = f[7];
            } else {
                per_cpu.push((f[..8].iter().sum(), f[3] + f[4]));
            }
        }
    }
    CpuSample {
        at: Instant::now(),
        own: proc_ticks("self").unwrap_or(0),
        server: server_pid.and_then(|p| proc_ticks(&p.to_string())),
        busy,
        steal,
        per_cpu,
    }
}

/// Samples CPU use at the start and the end of the measurement window: our
/// own, the server's (--server-pid) and everything else's, in cores.
fn spawn_cpu_sampler(sh: &Rc<Shared>) -> tokio::task::JoinHandle<()> {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        sleep_until(sh.measure_start.get().into()).await;
        let a = cpu_sample(sh.opts.server_pid);
        sleep_until(sh.measure_end.get().into()).await;
        let b = cpu_sample(sh.opts.server_pid);
        let hz = 100.0; // USER_HZ on Linux
        let secs = (b.at - a.at).as_secs_f64().max(1e-3);
        let cores = |t: u64| t as f64 / hz / secs;
        let own = cores(b.own - a.own);
        let server = match (a.server, b.server) {
            (Some(x), Some(y)) => Some(cores(y - x)),
            _ => None,
        };
        let other = (cores(b.busy - a.busy) - own - server.unwrap_or(0.0)).max(0.0);
        // share of each CPU not idle (softirq included: loopback TCP is
        // processed there, and it is work done for the process on that CPU)
        let busy_cpus: Vec<String> = a
            .per_cpu
            .iter()
            .zip(b.per_cpu.iter())
            .map(|(x, y)| {
                let all = (y.0 - x.0).max(1) as f64;
                format!("{:.2}", 1.0 - (y.1 - x.1) as f64 / all)
            })
            .collect();
        *sh.cpu.borrow_mut() = format!(
            "{{\"loadgen\":{own:.2},\"server\":{},\"other\":{other:.2},\"steal\":{:.2},\"busy\":[{}]}}",
            server.map(|s| format!("{s:.2}")).unwrap_or_else(|| "null".into()),
            cores(b.steal - a.steal),
            busy_cpus.join(",")
        );
    })
}

// ---------------------------------------------------------------- throughput

async fn throughput(sh: Rc<Shared>) -> String {
    let conns = connect_all(&sh).await;
    let connected = conns.len();
    modes::run_all(&sh, conns, |_, ws| {
        let sh = sh.clone();
        async move { run_connection(&sh, ws).await }
    })
    .await;
    report(&sh, connected, "")
}

async fn run_connection(sh: &Shared, ws: Ws) {
    let receive = |m, expect| match m {
        Ok(Message::Binary(data)) => Received::Echo(check_message(sh, &data, expect)),
        Ok(Message::Text(_)) => {
            Errors::inc(&sh.errors.payload);
            Received::Other
        }
        Ok(Message::Close(_)) => Received::Closed,
        Ok(_) => Received::Other,
        Err(_) => Received::Failed,
    };
    if let Some(mut ws) = modes::exchange(sh, ws, |seq| make_message(sh, seq), receive).await {
        // Closing handshake: we send close, the server answers and closes TCP.
        close_gracefully(sh, &mut ws).await;
    }
}

async fn close_gracefully(sh: &Shared, ws: &mut Ws) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = tokio::time::timeout_at(deadline.into(), async {
        ws.close(None).await.map_err(|_| ())?;
        loop {
            match ws.next().await {
                None => break Ok(()),
                Some(Err(_)) => break Err(()),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        Errors::inc(&sh.errors.close_handshake);
        return;
    }
    // Let the server close the TCP connection first (TIME_WAIT on its side,
    // not on our ephemeral ports).
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.get_mut().read(&mut buf)).await;
}

// ---------------------------------------------------------------- sessions

async fn sessions(sh: Rc<Shared>) -> String {
    let start = Instant::now();
    let mstart = start + Duration::from_secs_f64(sh.opts.warmup);
    sh.measure_start.set(mstart);
    sh.measure_end.set(mstart + Duration::from_secs_f64(sh.opts.duration));
    let sampler = spawn_cpu_sampler(&sh);
    let mut tasks = Vec::new();
    for _ in 0..sh.opts.connections {
        let sh = sh.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut seq = 0u64;
            while Instant::now() < sh.measure_end.get() {
                let t = sh.now_ns();
                let r = tokio::time::timeout(Duration::from_secs(10), one_session(&sh, seq)).await;
                match r {
                    Ok(Ok(())) => record(&sh, t),
                    Ok(Err(())) => {}
                    Err(_) => Errors::inc(&sh.errors.timeout),
                }
                seq += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = sampler.await;
    report(&sh, sh.opts.connections, "")
}

async fn one_session(sh: &Shared, seq: u64) -> Result<(), ()> {
    let mut ws = match connect_one(sh).await {
        Ok(ws) => ws,
        Err(_) => {
            Errors::inc(&sh.errors.connect);
            return Err(());
        }
    };
    if ws.send(make_message(sh, seq)).await.is_err() {
        Errors::inc(&sh.errors.io);
        return Err(());
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                if let Err(order) = check_message(sh, &data, seq) {
                    Errors::inc(if order { &sh.errors.order } else { &sh.errors.payload });
                    return Err(());
                }
                break;
            }
            Some(Ok(Message::Close(_))) | None => {
                Errors::inc(&sh.errors.closed);
                return Err(());
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                Errors::inc(&sh.errors.io);
                return Err(());
            }
        }
    }
    let before = sh.errors.close_handshake.get();
    close_gracefully(sh, &mut ws).await;
    if sh.errors.close_handshake.get() != before {
        return Err(());
    }
    Ok(())
}

// ---------------------------------------------------------------- idle

async fn idle(sh: Rc<Shared>) -> String {
    let mut conns = connect_all(&sh).await;
    // One round trip on every connection, so that each session (and, for a
    // proxy, its upstream leg) is fully established and has used its buffers.
    let ok = modes::greet_all(&sh, &mut conns, |(i, ws)| {
        let sh = sh.clone();
        async move {
            if ws.send(make_message(&sh, i as u64)).await.is_err() {
                Errors::inc(&sh.errors.io);
                return false;
            }
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(d))) => {
                        return check_message(&sh, &d, i as u64).is_ok();
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        Errors::inc(&sh.errors.io);
                        return false;
                    }
                }
            }
        }
    })
    .await;
    modes::hold_and_close(&sh, &mut conns, ok, String::new, |ws| close_gracefully(&sh, ws)).await
}
