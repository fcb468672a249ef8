//! Shared pieces of the fuzz targets: the protocol crate, an
//! allocator that turns any oversized allocation into a crash, and helpers
//! that turn the fuzzer's bytes into configurations and split points.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

pub use ngx_websocket_protocol as protocol;

/// Largest single allocation a target may make. Inputs are at most a few KB
/// (`-max_len=4096`, plus the client_response target's 16 KB of padding), so
/// anything near this size was sized from a length field in the input: an
/// over-limit allocation the protocol code must never make.
pub const ALLOCATION_LIMIT: usize = 1 << 20;

/// The system allocator, aborting (a crash libFuzzer records) on any
/// allocation over [`ALLOCATION_LIMIT`]. Unlike `-malloc_limit_mb` it works
/// without a sanitizer runtime.
pub struct LimitedAlloc;

// SAFETY: forwards every call to `System` unchanged, or aborts.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAlloc = LimitedAlloc;

/// Set once an over-limit allocation is being reported, so that the report
/// itself may allocate.
static REPORTING: AtomicBool = AtomicBool::new(false);

fn check(size: usize) {
    // A panic's backtrace may allocate more: the crash is already reported.
    if size > ALLOCATION_LIMIT
        && !std::thread::panicking()
        && !REPORTING.swap(true, Ordering::SeqCst)
    {
        // libfuzzer-sys's panic hook prints this with a backtrace and aborts
        // before anything unwinds out of the allocator.
        panic!("over-limit allocation of {size} bytes (limit {ALLOCATION_LIMIT})");
    }
}

/// Reads configuration bytes off the front of a fuzz input; missing bytes read as 0.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.byte();
        }
        out
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// Splits `data` into chunks whose sizes cycle through `sizes`; a 0 gives an
/// empty chunk (a read that brought nothing new). No sizes: one chunk.
pub fn split<'d>(data: &'d [u8], sizes: &'d [u8]) -> impl Iterator<Item = &'d [u8]> + 'd {
    let all_zero = sizes.iter().all(|&s| s == 0);
    let mut pos = 0;
    let mut next = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        if all_zero {
            // One empty read if asked for, then everything.
            if !sizes.is_empty() && next == 0 {
                next = 1;
                return Some(&data[..0]);
            }
            done = true;
            return Some(data);
        }
        if pos == data.len() && next > 0 {
            return None;
        }
        let size = usize::from(sizes[next % sizes.len()]);
        next += 1;
        let end = (pos + size).min(data.len());
        let chunk = &data[pos..end];
        pos = end;
        Some(chunk)
    })
}

/// One-byte chunks.
pub fn bytewise(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(1)
}

/// The index of the first byte after which `bytes` can no longer be the
/// start of valid UTF-8, by `std::str::from_utf8` alone; `None` if every
/// prefix can still be completed.
pub fn first_invalid_utf8_byte(bytes: &[u8]) -> Option<usize> {
    let err = std::str::from_utf8(bytes).err()?;
    err.error_len()?;
    // The failing byte is within the (at most 4-byte) sequence at valid_up_to.
    let start = err.valid_up_to();
    (start..bytes.len()).find(|&i| {
        std::str::from_utf8(&bytes[start..=i])
            .err()
            .is_some_and(|e| e.error_len().is_some())
    })
}
