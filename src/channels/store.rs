//! Where a zone's channels live: the boundary between the channel logic
//! (subscribers, the HTTP endpoint, wakes) and the storage.
//!
//! - [`Store::Shm`]: the zone's shared memory ([`ShmZone`]) serves every
//!   worker of one nginx server; message ids are `EPOCH-SEQ`.
//! - [`Store::Redis`] (`redis=URL`): the channels live in Redis streams
//!   (`src/redis/channels.rs`), shared by every nginx server that names the
//!   same Redis; message ids are the streams' ids (`MS-SEQ`), packed into
//!   the `u64` a message carries ([`StreamId::pack`]), so that one order
//!   holds on every server. The zone's shared memory still counts this
//!   server's subscribers (describe, metrics). Each worker follows the
//!   channels its subscribers are on with one `XREAD BLOCK`
//!   (`super::remote`); a publish is an `XADD` that completes (201 with
//!   the id) when Redis answers, or 503 while Redis is unreachable.

use super::shm::{
    format_id, resume_after, ChannelKey, Description, Full, Locked, Message, Published, ShmZone,
};
use crate::redis::channels::History;
use crate::redis::conn::Settings;
use crate::redis::resp::StreamId;

/// A zone's storage.
pub enum Store {
    /// Shared memory of this server (`websocket_channel_zone` without `redis=`).
    Shm(ShmZone),
    /// `redis=`: the channels in Redis; the shared memory counts this
    /// server's subscribers.
    Redis(ShmZone, RedisZone),
}

/// How a zone reaches its Redis (each worker opens its own links).
pub struct RedisZone {
    pub settings: Settings,
    pub history: History,
}

/// Why a publish or a subscribe failed (503 for HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The zone is full even after dropping every stored message.
    Full,
    /// The backend is unreachable (Redis).
    Unavailable,
}

impl From<Full> for StoreError {
    fn from(_: Full) -> Self {
        StoreError::Full
    }
}

/// The store, locked for a series of operations that must see one state
/// (a subscribe and its resume, a fetch for every local subscriber).
pub enum Session<'a> {
    Shm(Locked<'a>),
}

impl Store {
    pub fn name(&self) -> &str {
        match self {
            Store::Shm(z) | Store::Redis(z, _) => &z.name,
        }
    }

    pub fn zone(&self) -> &ShmZone {
        match self {
            Store::Shm(z) | Store::Redis(z, _) => z,
        }
    }

    pub fn redis(&self) -> Option<&RedisZone> {
        match self {
            Store::Shm(_) => None,
            Store::Redis(_, r) => Some(r),
        }
    }

    /// The id clients see for a message's number.
    pub fn format_id(&self, seq: u64) -> String {
        match self {
            Store::Shm(z) => format_id(z.epoch(), seq),
            Store::Redis(..) => StreamId::unpack(seq).to_string(),
        }
    }

    /// The number after which a resume with `id` wants messages (`None`:
    /// no resume). With Redis, any stream id: what Redis still holds
    /// after it.
    pub fn resume_after(&self, id: &[u8]) -> Option<u64> {
        match self {
            Store::Shm(z) => resume_after(z.epoch(), id),
            Store::Redis(..) => StreamId::parse(id)?.pack(),
        }
    }

    /// The shared memory, locked (with Redis: for the subscriber counts).
    pub fn begin(&self) -> Result<Session<'_>, StoreError> {
        self.zone()
            .lock()
            .map(Session::Shm)
            .ok_or(StoreError::Unavailable)
    }
}

impl Session<'_> {
    pub fn publish(
        &self,
        target: Result<ChannelKey, &[u8]>,
        data: &[u8],
        binary: bool,
        me: usize,
    ) -> Result<Published, StoreError> {
        match self {
            Session::Shm(l) => Ok(l.publish(target, data, binary, me)?),
        }
    }

    pub fn subscribe(&self, name: &[u8], me: usize) -> Result<(ChannelKey, u64, u64), StoreError> {
        match self {
            Session::Shm(l) => Ok(l.subscribe(name, me)?),
        }
    }

    pub fn unsubscribe(&self, key: ChannelKey, me: usize) {
        match self {
            Session::Shm(l) => l.unsubscribe(key, me),
        }
    }

    pub fn fetch(&self, key: ChannelKey, me: usize, after: u64) -> (Vec<Message>, u64) {
        match self {
            Session::Shm(l) => l.fetch(key, me, after),
        }
    }

    pub fn stored_between(&self, key: ChannelKey, after: u64, upto: u64) -> Vec<Message> {
        match self {
            Session::Shm(l) => l.stored_between(key, after, upto),
        }
    }

    pub fn describe(&self, name: &[u8]) -> Option<Description> {
        match self {
            Session::Shm(l) => l.describe(name),
        }
    }

    pub fn delete(&self, name: &[u8], me: usize) -> (Vec<usize>, Option<ChannelKey>) {
        match self {
            Session::Shm(l) => l.delete(name, me),
        }
    }
}
