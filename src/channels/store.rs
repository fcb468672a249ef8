//! Where a zone's channels live: the boundary between the channel logic
//! (subscribers, the HTTP endpoint, wakes) and the storage.
//!
//! This build has one backend, the zone's shared memory ([`ShmZone`]),
//! which serves every worker of one nginx server. `redis=URL` (several
//! servers) is refused when the configuration loads, until the Redis
//! client (`src/redis/`, another branch) is here. How it plugs in:
//!
//! - a `Store::Redis` variant keeps the zone's shared memory as this
//!   server's copy of the channels: subscribers, inboxes, wakes and
//!   resume work on it unchanged;
//! - one worker per zone reads the channels' Redis streams (`XREAD BLOCK`
//!   on a connection of its event loop) and appends what arrives to the
//!   shared memory under the stream's ids (the sequence numbers become the
//!   Redis ids, so one order holds on every server), then wakes the
//!   workers with subscribers, exactly as a local publish does;
//! - a publish becomes `XADD ... MAXLEN ~ N` and completes when Redis
//!   answers: [`Session::publish`] then reports "accepted, id pending"
//!   instead of a sequence number, and the HTTP endpoint (which already
//!   answers from a callback once the body is read) sends its 201 from the
//!   reply, or 503 with [`StoreError::Unavailable`] while Redis is
//!   unreachable; a subscriber's own publish waits in its session the
//!   same way;
//! - the guarantees stay those of [`Session`]: one order per channel, ids a
//!   resume can name, the N newest kept.

use super::shm::{ChannelKey, Description, Full, Locked, Message, Published, ShmZone};

/// A zone's storage.
pub enum Store {
    /// Shared memory of this server (`websocket_channel_zone` without `redis=`).
    Shm(ShmZone),
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
            Store::Shm(z) => &z.name,
        }
    }

    pub fn zone(&self) -> &ShmZone {
        match self {
            Store::Shm(z) => z,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Store::Shm(z) => z.epoch(),
        }
    }

    pub fn begin(&self) -> Result<Session<'_>, StoreError> {
        match self {
            Store::Shm(z) => z.lock().map(Session::Shm).ok_or(StoreError::Unavailable),
        }
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
