//! Waking another worker: each worker binds a non-blocking datagram socket
//! of its own (Linux's abstract namespace, named by its pid) in
//! `init_process`, registers it in its event loop, and writes its pid into
//! every zone under its worker number. A publish sends the channel's zone
//! address to the workers with subscribers of it, at the address the zone
//! names for them, so a wake reaches the worker now holding that number:
//! after a reload, the new one. A worker whose socket is full gets a flag
//! in the zone instead and looks at all its channels. No polling, no timer.

use core::cell::Cell;

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_get_connection, ngx_handle_read_event,
    sockaddr_un, NGX_OK,
};

use super::local;
use super::shm::ShmZone;

thread_local! {
    /// This worker's socket, once registered.
    static SOCKET: Cell<i32> = const { Cell::new(-1) };
}

extern "C" {
    // The C prototypes, with the socket address as the pointer it is.
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    #[link_name = "bind"]
    fn bind_un(fd: i32, addr: *const sockaddr_un, len: u32) -> i32;
    #[link_name = "sendto"]
    fn sendto_un(
        fd: i32,
        buf: *const core::ffi::c_void,
        n: usize,
        flags: i32,
        addr: *const sockaddr_un,
        len: u32,
    ) -> isize;
}

/// The abstract socket address of the worker with `pid`.
fn address(pid: u32) -> (sockaddr_un, u32) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sa: sockaddr_un = unsafe { core::mem::zeroed() };
    sa.sun_family = ngx::ffi::AF_UNIX as _;
    let name = format!("nginx-websocket-channels/{pid}");
    // sun_path[0] stays 0: the abstract namespace, nothing on disk.
    for (i, b) in name.bytes().enumerate() {
        sa.sun_path[i + 1] = b as _;
    }
    let len = core::mem::size_of::<ngx::ffi::sa_family_t>() + 1 + name.len();
    (sa, len as u32)
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno.
    unsafe { *ngx::ffi::__errno_location() }
}

/// Makes this worker's socket, registers it in the event loop and in
/// every zone.
///
/// # Safety
/// Called from `init_process` with the worker's cycle.
pub unsafe fn register(cycle: *mut ngx_cycle_t, zones: &[&ShmZone]) -> Result<(), &'static str> {
    // SAFETY: a plain read of the worker's pid.
    let pid = unsafe { ngx::ffi::ngx_pid } as u32;
    let ty = ngx::ffi::__socket_type_SOCK_DGRAM
        | ngx::ffi::__socket_type_SOCK_NONBLOCK
        | ngx::ffi::__socket_type_SOCK_CLOEXEC;
    // SAFETY: plain socket calls; the address outlives the call.
    let fd = unsafe { socket(ngx::ffi::AF_UNIX as i32, ty as i32, 0) };
    if fd < 0 {
        return Err("socket() failed");
    }
    let (sa, len) = address(pid);
    // SAFETY: as above.
    if unsafe { bind_un(fd, &sa, len) } != 0 {
        // SAFETY: our descriptor.
        unsafe { ngx::ffi::close(fd) };
        return Err("bind() of the wake socket failed");
    }
    // SAFETY: the worker's cycle; the connection and its events are
    // nginx's, owned by this worker until it exits.
    unsafe {
        let c = ngx_get_connection(fd, (*cycle).log);
        if c.is_null() {
            ngx::ffi::close(fd);
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
    SOCKET.with(|s| s.set(fd));
    let me = local::me();
    for zone in zones {
        let before = zone.wake_pid(me);
        // The process that had this number is gone without unsubscribing
        // (it crashed): its subscribers must not be counted, nor keep
        // messages for it, forever. (After a reload it still runs.)
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = before != 0
            && before != pid
            && unsafe { ngx::ffi::kill(before as i32, 0) } != 0
            && errno() == ngx::ffi::ESRCH as i32;
        if gone {
            if let Some(l) = zone.lock() {
                let n = l.reclaim(me);
                drop(l);
                if n > 0 {
                    ngx::ngx_log_error!(
                        ngx::ffi::NGX_LOG_NOTICE,
                        (*cycle).log,
                        "websocket channels: forgot {n} subscribers of the worker process {before}, which is gone"
                    );
                }
            }
        }
        zone.set_wake_pid(me, pid);
    }
    Ok(())
}

/// Wakes worker `worker` of `zone` about the channel at `key` (0: every
/// channel). False when the wake could not be sent because its socket is
/// full (a worker that is gone needs no wake).
pub fn send(zone: &ShmZone, worker: usize, key: usize) -> bool {
    let fd = SOCKET.with(Cell::get);
    let pid = zone.wake_pid(worker);
    if fd < 0 || pid == 0 {
        return true;
    }
    let (sa, len) = address(pid);
    let bytes = key.to_ne_bytes();
    // SAFETY: a datagram to a local address; non-blocking.
    let n = unsafe {
        sendto_un(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            ngx::ffi::MSG_DONTWAIT as i32,
            &sa,
            len,
        )
    };
    n == bytes.len() as isize || errno() != ngx::ffi::EAGAIN as i32
}

unsafe extern "C" fn on_wake(rev: *mut ngx_event_t) {
    // SAFETY: the read event of the connection `register` made.
    let fd = unsafe { (*(*rev).data.cast::<ngx_connection_t>()).fd };
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
        if n < 0 {
            break;
        }
        if n != buf.len() as isize {
            continue;
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
