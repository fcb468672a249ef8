//! Counters in a shared-memory zone, summed over all workers, served by
//! `websocket_status` in the Prometheus text format. Updated with atomic
//! adds per session event, never per byte; the zone survives a reload.

use core::ffi::c_void;
use core::fmt::Write;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t,
    ngx_str_t, NGX_ERROR, NGX_OK,
};

use crate::stats::Stats;

/// Which endpoint a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Echo = 0,
    Pass = 1,
    /// `websocket_subscribe` (channels).
    Subscribe = 2,
}

const KINDS: [(Kind, &str); 3] = [
    (Kind::Echo, "echo"),
    (Kind::Pass, "pass"),
    (Kind::Subscribe, "subscribe"),
];
/// Close codes counted one by one; others are summed under "other".
const FIRST_CODE: u16 = 1000;
const CODES: usize = 16;
const REJECT_STATUSES: [u16; 7] = [400, 403, 405, 426, 502, 503, 504];

#[repr(C)]
struct Counters {
    sessions_active: [AtomicU64; KINDS.len()],
    sessions_total: [AtomicU64; KINDS.len()],
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    closes: [AtomicU64; CODES + 1],
    rejects: [AtomicU64; REJECT_STATUSES.len()],
    upstream_connects: [AtomicU64; 2],
    sessions_draining: AtomicU64,
}

/// The zone's counters, set when nginx maps the zone (in the master, before
/// the workers fork, so the address holds in every worker).
static COUNTERS: AtomicPtr<Counters> = AtomicPtr::new(ptr::null_mut());

fn counters() -> Option<&'static Counters> {
    // SAFETY: set once the zone is mapped; shared memory lives as long as
    // the processes, and every field is atomic.
    unsafe { COUNTERS.load(Ordering::Relaxed).as_ref() }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Asks nginx for the zone (the module's `postconfiguration`).
///
/// # Safety
/// Called by nginx with the configuration being loaded.
pub unsafe extern "C" fn add_zone(cf: *mut ngx_conf_t) -> ngx_int_t {
    let mut name = ngx_str_t {
        len: ZONE_NAME.len(),
        data: ZONE_NAME.as_ptr().cast_mut(),
    };
    // nginx's smallest slab zone; the counters take a few hundred bytes.
    let size = 8 * 4096;
    // SAFETY: the tag is the module, as nginx's own modules do.
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            size,
            ptr::addr_of_mut!(crate::module::ngx_http_websocket_module).cast(),
        )
    };
    let Some(zone) = NonNull::new(zone) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: a zone nginx just registered; it calls `init` when mapping it.
    unsafe { (*zone.as_ptr()).init = Some(init_zone) };
    NGX_OK as ngx_int_t
}

const ZONE_NAME: &str = "websocket_metrics";

/// Maps the counters: kept from the previous cycle on reload, else carved
/// from the zone's slab pool and zeroed.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes its zone; `old` is this zone's data from the
    // previous cycle, or null.
    unsafe {
        let counters = if old.is_null() {
            let pool: *mut ngx_slab_pool_t = (*zone).shm.addr.cast();
            let p: *mut Counters = ngx_slab_alloc(pool, core::mem::size_of::<Counters>()).cast();
            if p.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            ptr::write_bytes(p, 0, 1);
            (*pool).data = p.cast();
            p
        } else {
            old.cast()
        };
        (*zone).data = counters.cast();
        COUNTERS.store(counters, Ordering::Relaxed);
    }
    NGX_OK as ngx_int_t
}

pub fn session_started(kind: Kind) {
    if let Some(c) = counters() {
        add(&c.sessions_active[kind as usize], 1);
        add(&c.sessions_total[kind as usize], 1);
    }
}

/// Adds what crossed the client leg since `reported`, and moves it on.
pub fn report_traffic(stats: &Stats, reported: &mut Stats) {
    if let Some(c) = counters() {
        add(&c.messages[0], stats.messages_in - reported.messages_in);
        add(&c.messages[1], stats.messages_out - reported.messages_out);
        add(&c.bytes[0], stats.bytes_in - reported.bytes_in);
        add(&c.bytes[1], stats.bytes_out - reported.bytes_out);
    }
    *reported = *stats;
}

pub fn session_ended(kind: Kind, close_code: Option<u16>) {
    let Some(c) = counters() else { return };
    c.sessions_active[kind as usize].fetch_sub(1, Ordering::Relaxed);
    if let Some(code) = close_code {
        let i = usize::from(code.wrapping_sub(FIRST_CODE)).min(CODES);
        add(&c.closes[i], 1);
    }
}

/// A session was told to close because its worker exits
/// (`websocket_shutdown_spread`): it drains until it ends.
pub fn draining_started() {
    if let Some(c) = counters() {
        add(&c.sessions_draining, 1);
    }
}

pub fn draining_ended() {
    if let Some(c) = counters() {
        c.sessions_draining.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn handshake_rejected(status: ngx_int_t) {
    let Some(c) = counters() else { return };
    if let Some(i) = REJECT_STATUSES
        .iter()
        .position(|s| *s as ngx_int_t == status)
    {
        add(&c.rejects[i], 1);
    }
}

pub fn upstream_connected(reused: bool) {
    if let Some(c) = counters() {
        add(&c.upstream_connects[usize::from(reused)], 1);
    }
}

/// The session metrics in the Prometheus text format (version 0.0.4);
/// `status` adds the zones' families.
pub fn render() -> String {
    let mut out = String::new();
    let Some(c) = counters() else { return out };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = match labels.is_empty() {
                    true => writeln!(out, "{name} {value}"),
                    false => writeln!(out, "{name}{{{labels}}} {value}"),
                };
            }
        };
    family(
        "nginx_websocket_sessions_active",
        "gauge",
        "WebSocket sessions open now.",
        &mut KINDS.iter().map(|(k, n)| {
            (
                format!("kind=\"{n}\""),
                get(&c.sessions_active[*k as usize]),
            )
        }),
    );
    family(
        "nginx_websocket_sessions_total",
        "counter",
        "WebSocket sessions upgraded.",
        &mut KINDS
            .iter()
            .map(|(k, n)| (format!("kind=\"{n}\""), get(&c.sessions_total[*k as usize]))),
    );
    family(
        "nginx_websocket_messages_total",
        "counter",
        "Data messages received from (in) and sent to (out) clients.",
        &mut ["in", "out"]
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("direction=\"{d}\""), get(&c.messages[i]))),
    );
    family(
        "nginx_websocket_bytes_total",
        "counter",
        "Payload bytes of those messages.",
        &mut ["in", "out"]
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("direction=\"{d}\""), get(&c.bytes[i]))),
    );
    family(
        "nginx_websocket_closes_total",
        "counter",
        "Sessions by the code of their first close frame (1005: a close without a code).",
        &mut (0..=CODES).filter(|i| get(&c.closes[*i]) > 0).map(|i| {
            let code = if i == CODES {
                "other".to_string()
            } else {
                (FIRST_CODE + i as u16).to_string()
            };
            (format!("code=\"{code}\""), get(&c.closes[i]))
        }),
    );
    family(
        "nginx_websocket_handshake_rejects_total",
        "counter",
        "Handshakes answered with an error status.",
        &mut REJECT_STATUSES
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("status=\"{s}\""), get(&c.rejects[i]))),
    );
    family(
        "nginx_websocket_upstream_connects_total",
        "counter",
        "websocket_pass upstream connections: new (reused=\"0\") or from the keepalive pool.",
        &mut (0..2).map(|i| (format!("reused=\"{i}\""), get(&c.upstream_connects[i]))),
    );
    family(
        "nginx_websocket_sessions_draining",
        "gauge",
        "Sessions of exiting workers waiting for their turn to close or closing.",
        &mut core::iter::once((String::new(), get(&c.sessions_draining))),
    );
    out
}
