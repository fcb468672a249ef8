//! Read buffers shared by a worker's connections: a connection holds one
//! only while it has bytes to decode, so an idle connection costs none, and
//! a busy one takes a buffer from this list instead of allocating.

use core::cell::RefCell;

/// Size of a read buffer; frames larger than this stream through it.
pub const READ_BUFFER_SIZE: usize = 16 * 1024;
/// Free buffers kept per worker; more are freed.
const KEEP_FREE: usize = 256;

thread_local! {
    /// nginx runs each worker on one thread.
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed-or-reused buffer of `READ_BUFFER_SIZE` bytes.
pub fn take() -> Vec<u8> {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_BUFFER_SIZE])
}

/// Gives a buffer back for another connection.
pub fn give(buf: Vec<u8>) {
    if buf.len() != READ_BUFFER_SIZE {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP_FREE {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_only_full_size_ones_kept() {
        let a = take();
        assert_eq!(a.len(), READ_BUFFER_SIZE);
        let ptr = a.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer comes back");
        give(vec![0; 10]);
        let c = take();
        assert_eq!(c.len(), READ_BUFFER_SIZE);
    }
}
