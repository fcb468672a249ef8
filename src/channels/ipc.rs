//! Waking another worker: one non-blocking datagram socketpair per worker,
//! made in the master before the workers fork (`init_module`); each worker
//! registers its own end in its event loop (`init_process`). A publish
//! sends the channel's zone address to the workers with subscribers of it;
//! a worker whose socket is full gets a flag in the zone instead and looks
//! at all its channels. No polling, no timer.

use core::cell::RefCell;
use core::ffi::c_void;

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_get_connection, ngx_handle_read_event,
    ngx_pool_cleanup_add, NGX_OK,
};

use super::local;

/// (read end, write end) per worker.
type Pairs = Vec<(i32, i32)>;

thread_local! {
    /// The pairs of the current cycle (a worker inherits the master's).
    static PAIRS: RefCell<Pairs> = const { RefCell::new(Vec::new()) };
}

extern "C" {
    fn socketpair(domain: i32, ty: i32, protocol: i32, sv: *mut i32) -> i32;
}

/// Makes one pair per worker (in the master, for the cycle being loaded);
/// the cycle's pool closes them when the cycle goes.
///
/// # Safety
/// `cycle` is the cycle nginx is initialising.
pub unsafe fn create(cycle: *mut ngx_cycle_t, workers: usize) -> Result<(), &'static str> {
    let mut pairs = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut sv = [-1i32; 2];
        let ty = ngx::ffi::__socket_type_SOCK_DGRAM
            | ngx::ffi::__socket_type_SOCK_NONBLOCK
            | ngx::ffi::__socket_type_SOCK_CLOEXEC;
        // SAFETY: `sv` has room for the two descriptors.
        if unsafe { socketpair(ngx::ffi::AF_UNIX as i32, ty as i32, 0, sv.as_mut_ptr()) } != 0 {
            close_all(&pairs);
            return Err("socketpair() failed");
        }
        pairs.push((sv[0], sv[1]));
    }
    // SAFETY: the cycle's pool lives as long as the cycle.
    let cln = unsafe { ngx_pool_cleanup_add((*cycle).pool, 0) };
    if cln.is_null() {
        close_all(&pairs);
        return Err("ngx_pool_cleanup_add() failed");
    }
    let data = Box::into_raw(Box::new(pairs.clone()));
    // SAFETY: a fresh cleanup; `close_pairs` frees the box.
    unsafe {
        (*cln).data = data.cast();
        (*cln).handler = Some(close_pairs);
    }
    PAIRS.with(|p| *p.borrow_mut() = pairs);
    Ok(())
}

fn close_all(pairs: &Pairs) {
    for (r, w) in pairs {
        // SAFETY: descriptors this module opened.
        unsafe {
            ngx::ffi::close(*r);
            ngx::ffi::close(*w);
        }
    }
}

unsafe extern "C" fn close_pairs(data: *mut c_void) {
    // SAFETY: the box `create` leaked for this cleanup.
    let pairs = unsafe { Box::from_raw(data.cast::<Pairs>()) };
    close_all(&pairs);
}

/// Registers this worker's end in its event loop.
///
/// # Safety
/// Called from `init_process` with the worker's cycle.
pub unsafe fn register(cycle: *mut ngx_cycle_t) -> Result<(), &'static str> {
    let Some((fd, _)) = PAIRS.with(|p| p.borrow().get(local::me()).copied()) else {
        return Ok(());
    };
    // SAFETY: the worker's cycle; the connection and its events are
    // nginx's, owned by this worker until it exits.
    unsafe {
        let c = ngx_get_connection(fd, (*cycle).log);
        if c.is_null() {
            return Err("ngx_get_connection() failed");
        }
        let rev = (*c).read;
        // As nginx's own channel to the master: not a client connection
        // that an exiting worker waits for or reports as left open.
        (*rev).set_channel(1);
        (*rev).handler = Some(on_wake);
        (*rev).log = (*cycle).log;
        (*(*c).write).log = (*cycle).log;
        (*c).log = (*cycle).log;
        if ngx_handle_read_event(rev, 0) != NGX_OK as isize {
            return Err("ngx_handle_read_event() failed");
        }
    }
    Ok(())
}

/// Wakes worker `worker` about the channel at `key` (0: every channel).
/// False when the wake could not be sent (the socket is full).
pub fn send(worker: usize, key: usize) -> bool {
    let Some(fd) = PAIRS.with(|p| p.borrow().get(worker).map(|p| p.1)) else {
        return false;
    };
    let bytes = key.to_ne_bytes();
    // SAFETY: a datagram socket of this module; non-blocking.
    let n = unsafe {
        ngx::ffi::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            ngx::ffi::MSG_DONTWAIT as i32,
        )
    };
    n == bytes.len() as isize
}

unsafe extern "C" fn on_wake(rev: *mut ngx_event_t) {
    // SAFETY: the read event of the connection `register` made.
    let c: *mut ngx_connection_t = unsafe { (*rev).data.cast() };
    let fd = unsafe { (*c).fd };
    let mut keys = Vec::new();
    let mut all = false;
    loop {
        let mut buf = [0u8; core::mem::size_of::<usize>()];
        // SAFETY: reads one datagram into `buf`.
        let n = unsafe {
            ngx::ffi::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                ngx::ffi::MSG_DONTWAIT as i32,
            )
        };
        if n != buf.len() as isize {
            break;
        }
        match usize::from_ne_bytes(buf) {
            0 => all = true,
            key => {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
    }
    // SAFETY: as above; re-arms the (edge-triggered) event.
    unsafe {
        (*rev).set_ready(0);
        ngx_handle_read_event(rev, 0);
    }
    if all {
        local::fetch_all(None);
    } else {
        for key in keys {
            local::fetch(super::shm::ChannelKey(key));
        }
    }
    super::check_overflow();
}
