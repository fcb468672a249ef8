//! Raw deflate on the system zlib with the memory level chosen: flate2 fixes
//! it at 8, whose hash table and block buffer alone take 128 KiB per
//! connection. The one place in the protocol code that calls C.

use core::ffi::{c_int, c_void};
use core::ptr;

use libz_sys::{
    deflate, deflateEnd, deflateInit2_, deflateReset, uInt, voidpf, z_stream, zlibVersion,
    Z_BUF_ERROR, Z_DEFAULT_STRATEGY, Z_DEFLATED, Z_OK, Z_SYNC_FLUSH,
};

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn free(p: *mut c_void);
}

/// zlib's allocator: plain malloc, as zlib's own default, which a null
/// `zalloc` would select but the binding's types do not allow.
unsafe extern "C" fn zalloc(_opaque: voidpf, items: uInt, size: uInt) -> voidpf {
    // SAFETY: malloc takes any size; zlib checks for null.
    unsafe { malloc(items as usize * size as usize) }
}

unsafe extern "C" fn zfree(_opaque: voidpf, p: voidpf) {
    // SAFETY: `p` came from `zalloc` (or is null).
    unsafe { free(p) }
}

/// A raw-deflate stream (no zlib header).
pub struct RawDeflate {
    /// Boxed: zlib's state points back at the stream, which must not move.
    strm: Box<z_stream>,
}

impl RawDeflate {
    /// `level` 1–9, `window_bits` 9–15, `mem_level` 1–9; `None` if zlib
    /// refuses them or has no memory.
    pub fn new(level: u32, window_bits: u8, mem_level: u8) -> Option<Self> {
        let mut strm = Box::new(z_stream {
            next_in: ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: ptr::null_mut(),
            state: ptr::null_mut(),
            zalloc,
            zfree,
            opaque: ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: a fresh stream with valid allocator functions; zlib checks
        // the parameters and the size of the structure it was given.
        let rc = unsafe {
            deflateInit2_(
                &mut *strm,
                level as c_int,
                Z_DEFLATED,
                -c_int::from(window_bits),
                c_int::from(mem_level),
                Z_DEFAULT_STRATEGY,
                zlibVersion(),
                core::mem::size_of::<z_stream>() as c_int,
            )
        };
        (rc == Z_OK).then_some(RawDeflate { strm })
    }

    /// Compresses all of `input` onto the end of `out` and sync-flushes, so
    /// that everything given so far can be inflated. False if zlib failed.
    pub fn compress_sync(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        let mut consumed = 0;
        loop {
            out.reserve(input.len() / 4 + 64);
            let spare = (out.capacity() - out.len()).min(uInt::MAX as usize);
            let rest = &input[consumed..];
            let offered = rest.len().min(uInt::MAX as usize);
            self.strm.next_in = rest.as_ptr().cast_mut();
            self.strm.avail_in = offered as uInt;
            // SAFETY: `spare` bytes past the length are allocated.
            self.strm.next_out = unsafe { out.as_mut_ptr().add(out.len()) };
            self.strm.avail_out = spare as uInt;
            // SAFETY: the stream was initialised; zlib reads `avail_in` bytes
            // of `input` and writes at most `avail_out` into `out`'s spare room.
            let rc = unsafe { deflate(&mut *self.strm, Z_SYNC_FLUSH) };
            let written = spare - self.strm.avail_out as usize;
            // SAFETY: zlib initialised the `written` bytes after the length.
            unsafe { out.set_len(out.len() + written) };
            consumed += offered - self.strm.avail_in as usize;
            // The input pointer must not outlive `input`.
            self.strm.next_in = ptr::null_mut();
            self.strm.next_out = ptr::null_mut();
            if rc != Z_OK && rc != Z_BUF_ERROR {
                return false;
            }
            // Room left over means the flush is complete.
            if consumed == input.len() && self.strm.avail_out != 0 {
                return true;
            }
        }
    }

    /// Forgets the history: the next message refers to nothing before it.
    pub fn reset(&mut self) {
        // SAFETY: the stream was initialised.
        unsafe { deflateReset(&mut *self.strm) };
    }
}

impl Drop for RawDeflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised and is ended once.
        unsafe { deflateEnd(&mut *self.strm) };
    }
}
