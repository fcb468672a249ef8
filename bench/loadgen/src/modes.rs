//! The parts of the throughput and idle modes that do not depend on the
//! client library, shared by the tokio-tungstenite client (loadgen.rs) and
//! the yawc client (compressed.rs): opening the connections, the measurement
//! window and the tasks around it, one connection's writer and reader, and
//! holding idle connections.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use crate::{record, spawn_cpu_sampler, Errors, Shared};

/// Opens `n` connections with `connect`, at most `connect_concurrency`
/// handshakes at a time; failures are counted and the first one is printed.
pub async fn connect_all<W, F, Fut>(sh: &Shared, n: usize, connect: F) -> Vec<W>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<W, String>>,
{
    let results: Vec<Result<W, String>> = futures_util::stream::iter(0..n)
        .map(|_| connect())
        .buffer_unordered(sh.opts.connect_concurrency)
        .collect()
        .await;
    let mut out = Vec::with_capacity(n);
    let mut first_err = None;
    for r in results {
        match r {
            Ok(ws) => out.push(ws),
            Err(e) => {
                Errors::inc(&sh.errors.connect);
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!(
            "loadgen: {} of {n} connections failed, first: {e}",
            n - out.len()
        );
    }
    out
}

/// Sets the measurement window (warm-up, then --duration), samples CPU use
/// over it, and runs `run(i, connection)` for every connection from the
/// common start, each under a hard deadline after the drain.
pub async fn run_all<W, F, Fut>(sh: &Rc<Shared>, conns: Vec<W>, run: F)
where
    F: Fn(usize, W) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let start = Instant::now() + Duration::from_millis(10);
    let mstart = start + Duration::from_secs_f64(sh.opts.warmup);
    sh.measure_start.set(mstart);
    sh.measure_end
        .set(mstart + Duration::from_secs_f64(sh.opts.duration));
    let sampler = spawn_cpu_sampler(sh);
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, ws) in conns.into_iter().enumerate() {
        let sh = sh.clone();
        let connection = run(i, ws);
        tasks.push(tokio::task::spawn_local(async move {
            sleep_until(start.into()).await;
            let hard_end = sh.measure_end.get()
                + Duration::from_secs_f64(sh.opts.drain_timeout)
                + Duration::from_secs(5);
            if tokio::time::timeout_at(hard_end.into(), connection)
                .await
                .is_err()
            {
                Errors::inc(&sh.errors.timeout);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if sh.opts.messages == 0 {
        let _ = sampler.await;
    }
}

/// What the reader of `exchange` got from the server.
pub enum Received {
    /// a data message, checked: its send timestamp, or Err(true) for the
    /// wrong sequence number and Err(false) for a wrong payload
    Echo(Result<u64, bool>),
    /// a close frame
    Closed,
    /// a read error
    Failed,
    /// anything else (control frames; errors already counted)
    Other,
}

/// One connection of the throughput mode: a writer keeping up to --window
/// messages (`make(seq)`) in flight, a reader checking what comes back
/// (`receive(item, expected seq)`) and recording round trips, until the end of
/// the measurement (or --messages) and then the drain of what is in flight.
/// Returns the connection when it ended cleanly, to be closed.
pub async fn exchange<S, M>(
    sh: &Shared,
    ws: S,
    make: impl Fn(u64) -> M,
    receive: impl Fn(<S as Stream>::Item, u64) -> Received,
) -> Option<S>
where
    S: Sink<M> + Stream + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let window = sh.opts.window;
    let limit = sh.opts.messages;
    let credits = Semaphore::new(window);
    let sent = Cell::new(0u64);
    let writer_busy = Cell::new(false);
    let failed = Cell::new(false);

    let writer = async {
        let mut seq = 0u64;
        'outer: loop {
            match credits.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
            writer_busy.set(true);
            let mut batch = 0;
            loop {
                if tx.feed(make(seq)).await.is_err() {
                    failed.set(true);
                    writer_busy.set(false);
                    break 'outer;
                }
                seq += 1;
                sent.set(seq);
                batch += 1;
                if (limit > 0 && seq >= limit) || batch >= 1024 {
                    break;
                }
                match credits.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
            if tx.flush().await.is_err() {
                failed.set(true);
                writer_busy.set(false);
                break;
            }
            writer_busy.set(false);
            if limit > 0 && seq >= limit {
                break;
            }
        }
        tx
    };

    let reader = async {
        let mut expect = 0u64;
        let mut in_window = 0u64;
        let mut gate_closed = false;
        let end = sh.measure_end.get();
        let drain_end = end + Duration::from_secs_f64(sh.opts.drain_timeout);
        let timer = sleep_until(end.into());
        tokio::pin!(timer);
        let mut clean = true;
        loop {
            let now = Instant::now();
            if !gate_closed && (now >= end || (limit > 0 && expect >= limit)) {
                gate_closed = true;
                credits.close();
                timer.as_mut().reset(drain_end.into());
            }
            if gate_closed && expect == sent.get() && !writer_busy.get() {
                break;
            }
            if failed.get() {
                Errors::inc(&sh.errors.io);
                clean = false;
                break;
            }
            tokio::select! {
                biased;
                m = rx.next() => match m.map(|m| receive(m, expect)) {
                    Some(Received::Echo(checked)) => {
                        match checked {
                            Ok(ts) => {
                                let before = sh.in_window.get();
                                record(sh, ts);
                                in_window += sh.in_window.get() - before;
                            }
                            Err(true) => Errors::inc(&sh.errors.order),
                            Err(false) => Errors::inc(&sh.errors.payload),
                        }
                        expect += 1;
                        if !gate_closed {
                            credits.add_permits(1);
                        }
                    }
                    Some(Received::Closed) | None => {
                        Errors::inc(&sh.errors.closed);
                        clean = false;
                        break;
                    }
                    Some(Received::Failed) => {
                        Errors::inc(&sh.errors.io);
                        clean = false;
                        break;
                    }
                    Some(Received::Other) => {}
                },
                _ = &mut timer => {
                    if gate_closed {
                        sh.errors.timeout.set(sh.errors.timeout.get() + sent.get() - expect);
                        clean = false;
                        break;
                    }
                }
            }
        }
        if in_window == 0 && limit == 0 {
            sh.silent_connections.set(sh.silent_connections.get() + 1);
        }
        credits.close();
        (rx, clean)
    };

    let (tx, (rx, clean)) = tokio::join!(writer, reader);
    if !clean {
        return None;
    }
    tx.reunite(rx).ok()
}

/// The idle mode's first step: `greet(i, connection)` (one message echoed)
/// on every connection, at most `connect_concurrency` at a time. Returns how
/// many succeeded.
pub async fn greet_all<'a, W, F, Fut>(sh: &Shared, conns: &'a mut [W], greet: F) -> usize
where
    F: FnMut((usize, &'a mut W)) -> Fut,
    Fut: Future<Output = bool>,
{
    futures_util::stream::iter(conns.iter_mut().enumerate())
        .map(greet)
        .buffer_unordered(sh.opts.connect_concurrency)
        .filter(|ok| futures_util::future::ready(*ok))
        .count()
        .await
}

/// The rest of the idle mode, once `open` connections have echoed a message:
/// prints the "ready" line, holds them --duration seconds, counts those still
/// open (a server that dropped idle sessions shows up as reads that end at
/// once), closes them with `close`, at most `connect_concurrency` at a time,
/// and returns the "done" line. `extra()` is appended to both lines.
pub async fn hold_and_close<'a, W, F, Fut>(
    sh: &Shared,
    conns: &'a mut [W],
    open: usize,
    extra: impl Fn() -> String,
    close: F,
) -> String
where
    W: Stream + Unpin,
    F: FnMut(&'a mut W) -> Fut,
    Fut: Future<Output = ()>,
{
    // extra() first: it may count errors (compressed.rs: RSV1)
    let ready_extra = extra();
    println!(
        "{{\"mode\":\"idle\",\"state\":\"ready\",\"connections\":{},\"open\":{open},\"errors\":{}{ready_extra}}}",
        sh.opts.connections,
        sh.errors.total()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs_f64(sh.opts.duration)).await;
    // One poll of each, without waiting: nothing to read (pending) means
    // still open. (tokio's timeout(0) waits for the timer's next 1 ms tick,
    // one connection after the other: 10 s for 10,000 connections.)
    let mut still_open = 0u64;
    for ws in conns.iter_mut() {
        if ws.next().now_or_never().is_none() {
            still_open += 1;
        }
    }
    futures_util::stream::iter(conns.iter_mut())
        .for_each_concurrent(sh.opts.connect_concurrency, close)
        .await;
    let done_extra = extra();
    format!(
        "{{\"mode\":\"idle\",\"state\":\"done\",\"connections\":{},\"open\":{open},\"still_open\":{still_open},\"errors\":{},\"error_detail\":{}{done_extra}}}",
        sh.opts.connections,
        sh.errors.total(),
        sh.errors.json()
    )
}
