//! The permessage-deflate state of one connection: compression state is made
//! on the first compressed message, and a direction without context takeover
//! gives its state back to a per-worker list after every message, so that an
//! idle connection holds none.

use core::cell::RefCell;
use std::thread::LocalKey;

use crate::protocol::deflate::{Direction, MessageDeflater, MessageInflater, NegotiatedDeflate};
use crate::protocol::{ProtocolError, Utf8Validator};

/// Free states kept per worker and kind; more are freed.
const KEEP_FREE: usize = 32;

/// `websocket_deflate_level`, `_mem_level` and `_min_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateSettings {
    pub level: u32,
    pub mem_level: u8,
    pub min_length: usize,
}

thread_local! {
    /// Reset deflaters by (level, memory level, window bits); nginx runs a
    /// worker on one thread.
    static DEFLATERS: FreeList<(u32, u8, u8), MessageDeflater> =
        const { RefCell::new(Vec::new()) };
    /// Reset inflaters by window bits.
    static INFLATERS: FreeList<u8, MessageInflater> = const { RefCell::new(Vec::new()) };
}

/// One connection's compression, as negotiated for our end.
pub struct Compression {
    send: Direction,
    recv: Direction,
    settings: DeflateSettings,
    deflater: Option<Box<MessageDeflater>>,
    inflater: Option<Box<MessageInflater>>,
    /// Inflated bytes of the message being received.
    inflated: u64,
    /// UTF-8 of a compressed text message, checked as it inflates.
    utf8: Utf8Validator,
    /// The message being sent is compressed.
    sending_compressed: bool,
}

impl Compression {
    /// `server` says which end of the agreement we are.
    pub fn new(agreed: &NegotiatedDeflate, server: bool, settings: DeflateSettings) -> Self {
        Compression {
            send: agreed.sending(server),
            recv: agreed.receiving(server),
            settings,
            deflater: None,
            inflater: None,
            inflated: 0,
            utf8: Utf8Validator::new(),
            sending_compressed: false,
        }
    }

    /// Inflates a received chunk of a compressed message onto `out`. The
    /// message may inflate to at most `limit` bytes (0: no limit); text is
    /// checked to be UTF-8 as it inflates.
    pub fn inflate(
        &mut self,
        chunk: &[u8],
        text: bool,
        message_start: bool,
        message_end: bool,
        out: &mut Vec<u8>,
        limit: u64,
    ) -> Result<(), ProtocolError> {
        if message_start {
            self.inflated = 0;
            self.utf8 = Utf8Validator::new();
        }
        let recv = self.recv;
        let inflater = self.inflater.get_or_insert_with(|| {
            let reused = recv
                .no_context_takeover
                .then(|| take(&INFLATERS, recv.window_bits));
            reused.flatten().unwrap_or_else(|| {
                Box::new(MessageInflater::new(
                    recv.window_bits,
                    recv.no_context_takeover,
                ))
            })
        });
        let base = out.len();
        // `out` may grow by what the message has left of the limit.
        let remaining = match limit {
            0 => u64::MAX,
            _ => limit.saturating_sub(self.inflated),
        };
        let out_limit = base.saturating_add(usize::try_from(remaining).unwrap_or(usize::MAX));
        let inflated = inflater.inflate(chunk, message_end, out, out_limit);
        let grown = (out.len() - base) as u64;
        self.inflated += grown;
        if let Err(e) = inflated {
            return Err(match e {
                ProtocolError::MessageTooBig { .. } => ProtocolError::MessageTooBig {
                    len: self.inflated,
                    max: limit,
                },
                other => other,
            });
        }
        if text {
            self.utf8.feed(&out[base..])?;
            if message_end {
                self.utf8.finish()?;
            }
        }
        if message_end && recv.no_context_takeover {
            if let Some(inflater) = self.inflater.take() {
                give(&INFLATERS, recv.window_bits, inflater);
            }
        }
        Ok(())
    }

    /// Whether a message starting with this frame is sent compressed:
    /// fragmented messages always, whole ones from the minimum length on.
    pub fn start_message(&mut self, fin: bool, len: usize) -> bool {
        self.sending_compressed = !fin || len >= self.settings.min_length;
        self.sending_compressed
    }

    /// Whether the message being sent is compressed.
    pub fn sending_compressed(&self) -> bool {
        self.sending_compressed
    }

    /// Compresses one frame's payload of the message being sent onto `out`.
    /// False if zlib failed or had no memory.
    pub fn compress(&mut self, payload: &[u8], fin: bool, out: &mut Vec<u8>) -> bool {
        let (send, settings) = (self.send, self.settings);
        let key = (settings.level, settings.mem_level, send.window_bits);
        if self.deflater.is_none() {
            let reused = send.no_context_takeover.then(|| take(&DEFLATERS, key));
            self.deflater = reused.flatten().or_else(|| {
                MessageDeflater::new(
                    settings.level,
                    send.window_bits,
                    settings.mem_level,
                    send.no_context_takeover,
                )
                .map(Box::new)
            });
        }
        let Some(deflater) = self.deflater.as_mut() else {
            return false;
        };
        let ok = deflater.compress(payload, fin, out);
        if ok && fin && send.no_context_takeover {
            if let Some(deflater) = self.deflater.take() {
                give(&DEFLATERS, key, deflater);
            }
        }
        ok
    }
}

type FreeList<K, T> = RefCell<Vec<(K, Box<T>)>>;

fn take<K: PartialEq + 'static, T: 'static>(
    list: &'static LocalKey<FreeList<K, T>>,
    key: K,
) -> Option<Box<T>> {
    list.with(|free| {
        let mut free = free.borrow_mut();
        let i = free.iter().position(|(k, _)| *k == key)?;
        Some(free.swap_remove(i).1)
    })
}

/// Keeps a state that was reset at a message's end, for any connection.
fn give<K: 'static, T: 'static>(list: &'static LocalKey<FreeList<K, T>>, key: K, item: Box<T>) {
    list.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP_FREE {
            free.push((key, item));
        }
    });
}
