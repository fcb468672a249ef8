//! Buffers shared by a worker's connections: a connection holds one only
//! while it has bytes to decode, a message to hand over or frames to write,
//! so an idle connection costs none, and a busy one takes a buffer from
//! these lists instead of allocating.

use core::cell::RefCell;
use std::thread::LocalKey;

/// Size of a read buffer; frames larger than this stream through it.
pub const READ_BUFFER_SIZE: usize = 16 * 1024;
/// Free buffers kept per worker, of each kind; more are freed.
const KEEP_FREE: usize = 256;
/// Message and write buffers up to this capacity are reused; larger ones
/// (a rare large message) are freed.
const KEEP_CAPACITY: usize = READ_BUFFER_SIZE;

type FreeList = LocalKey<RefCell<Vec<Vec<u8>>>>;

thread_local! {
    /// nginx runs each worker on one thread.
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn pop(list: &'static FreeList) -> Option<Vec<u8>> {
    list.with(|free| free.borrow_mut().pop())
}

fn keep(list: &'static FreeList, buf: Vec<u8>) {
    list.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP_FREE {
            free.push(buf);
        }
    });
}

/// A zeroed-or-reused buffer of `READ_BUFFER_SIZE` bytes.
pub fn take() -> Vec<u8> {
    pop(&FREE).unwrap_or_else(|| vec![0; READ_BUFFER_SIZE])
}

/// Gives a buffer back for another connection.
pub fn give(buf: Vec<u8>) {
    if buf.len() == READ_BUFFER_SIZE {
        keep(&FREE, buf);
    }
}

/// An empty buffer for a message or for output, with the capacity a
/// previous user left it.
pub fn take_scratch() -> Vec<u8> {
    pop(&SCRATCH).unwrap_or_default()
}

/// Gives a message or output buffer back; its contents are dropped.
pub fn give_scratch(mut buf: Vec<u8>) {
    if buf.capacity() != 0 && buf.capacity() <= KEEP_CAPACITY {
        buf.clear();
        keep(&SCRATCH, buf);
    }
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

    #[test]
    fn scratch_buffers_come_back_empty_and_large_ones_are_freed() {
        let mut a = take_scratch();
        a.extend_from_slice(b"frame bytes");
        let ptr = a.as_ptr();
        give_scratch(a);
        let b = take_scratch();
        assert_eq!(b.as_ptr(), ptr, "the buffer comes back");
        assert!(b.is_empty() && b.capacity() >= 11);
        give_scratch(Vec::with_capacity(KEEP_CAPACITY + 1));
        assert_eq!(take_scratch().capacity(), 0, "a large buffer is not kept");
    }
}
