//! A worker's side of a zone with `redis=`: its subscribers per channel,
//! fed by the worker's reader of the channels' Redis streams.
//!
//! Each worker opens two links to the zone's Redis when it starts (one for
//! commands, one for `XREAD BLOCK`) and follows the streams of the channels
//! its subscribers are on ([`RedisChannels::follow`]): every server and
//! every worker reads the same streams, so every subscriber gets every
//! message once, in the stream's order. A channel's first subscriber in
//! the worker starts following it from its newest entry; a resume asks for
//! the stored messages after its id (`XREVRANGE`, on the same command link
//! after that, so they reach at least where following starts), and the
//! subscriber's inbox holds live messages until they came.
//!
//! While Redis is unreachable the links reconnect with backoff; the reader
//! then reads on from the last ids it delivered, so subscribers miss
//! nothing Redis accepted.

use core::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ngx::ffi::NGX_LOG_ERR;
use ngx::ngx_log_error;

use super::local::{self, deliver, End, Inbox, Shared};
use super::shm::{wall_ms, ChannelKey, Message};
use super::store::{Store, StoreError};
use crate::ngx_io::cycle_log;
use crate::redis::channels::{self as rc, Event, RedisChannels, Stored};
use crate::redis::conn::Link;
use crate::redis::resp::StreamId;

/// How long one `XREAD` blocks (a change of channels unblocks it sooner).
const BLOCK_MS: u64 = 10_000;

/// A channel this worker has subscribers of.
struct Followed {
    name: Vec<u8>,
    subscribers: Vec<Rc<RefCell<Inbox>>>,
    /// Its reader follows it (the newest id came).
    started: bool,
}

/// A zone's links and channels in this worker.
struct Worker {
    store: &'static Store,
    redis: RedisChannels,
    channels: HashMap<ChannelKey, Followed>,
    by_name: HashMap<Vec<u8>, ChannelKey>,
}

thread_local! {
    /// This worker's zones with `redis=`, by their store's address.
    static WORKERS: RefCell<HashMap<usize, Worker>> = RefCell::new(HashMap::new());
}

fn addr(store: &Store) -> usize {
    store as *const Store as usize
}

/// In a worker's `init_process`: its links to the zone's Redis.
pub fn start(store: &'static Store) {
    let Some(zone) = store.redis() else { return };
    let settings = Rc::new(zone.settings.clone());
    let commands = Link::new(settings.clone());
    let reader = Link::new(settings);
    let at = addr(store);
    let redis = RedisChannels::new(
        store.name(),
        zone.history,
        commands,
        reader,
        BLOCK_MS,
        move |channel, event| on_event(at, channel, event),
    );
    WORKERS.with(|w| {
        w.borrow_mut().insert(
            at,
            Worker {
                store,
                redis,
                channels: HashMap::new(),
                by_name: HashMap::new(),
            },
        )
    });
}

/// The zone's client in this worker (a clone: calls into it must not run
/// while [`WORKERS`] is borrowed, as a failing link answers at once).
fn redis_of(at: usize) -> Option<RedisChannels> {
    WORKERS.with(|w| w.borrow().get(&at).map(|w| w.redis.clone()))
}

fn shared(m: rc::Message) -> Option<Shared> {
    Some(Rc::new(Message {
        seq: m.id.pack()?,
        binary: m.binary,
        data: m.data,
    }))
}

/// The reader got a message (or a delete) of a channel it follows.
fn on_event(at: usize, channel: &[u8], event: &Event) {
    let Some((store, subscribers)) = WORKERS.with(|w| {
        let w = w.borrow();
        let worker = w.get(&at)?;
        let key = worker.by_name.get(channel)?;
        let f = worker.channels.get(key)?;
        Some((worker.store, f.subscribers.clone()))
    }) else {
        return;
    };
    match event {
        Event::Message(m) => {
            if let Some(m) = shared(m.clone()) {
                deliver(store, &subscribers, &[m], None);
            }
        }
        Event::Deleted(_) => deliver(store, &subscribers, &[], Some(End::Deleted)),
    }
}

/// Subscribes an inbox to channel `name` of a zone in Redis; with
/// `resume`, the stored messages after that id come first.
pub fn subscribe(
    store: &'static Store,
    name: &[u8],
    resume: Option<u64>,
    inbox: &Rc<RefCell<Inbox>>,
) -> Result<ChannelKey, StoreError> {
    let at = addr(store);
    let redis = redis_of(at).ok_or(StoreError::Unavailable)?;
    if !redis.is_up() {
        return Err(StoreError::Unavailable);
    }
    let s = store.begin()?;
    let (key, _, _) = s.subscribe(name, local::me())?;
    drop(s);
    let first = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let worker = w.get_mut(&at)?;
        let f = worker.channels.entry(key).or_insert_with(|| Followed {
            name: name.to_vec(),
            subscribers: Vec::new(),
            started: false,
        });
        f.subscribers.push(inbox.clone());
        let first = f.subscribers.len() == 1;
        worker.by_name.insert(name.to_vec(), key);
        Some(first)
    });
    if first == Some(true) {
        let channel = name.to_vec();
        let asked = redis.newest_id(name, move |id| {
            // Redis did not answer: from about now (its clock and ours).
            let from = id.unwrap_or(StreamId {
                ms: wall_ms(),
                seq: 0,
            });
            start_following(at, key, &channel, from);
        });
        if asked.is_err() {
            let now = StreamId {
                ms: wall_ms(),
                seq: 0,
            };
            start_following(at, key, name, now);
        }
    }
    if let Some(after) = resume {
        inbox.borrow_mut().hold();
        let waiting = inbox.clone();
        let asked = redis.history_after(name, StreamId::unpack(after), wall_ms(), move |stored| {
            let stored: Vec<Shared> = match stored {
                Ok(messages) => messages.into_iter().filter_map(shared).collect(),
                Err(e) => {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        cycle_log(),
                        "websocket: cannot read the history of a channel of zone \"{}\" for a resume: {e}",
                        store.name()
                    );
                    Vec::new()
                }
            };
            let queued = waiting.borrow_mut().release(&stored);
            store.zone().add_delivered(queued);
        });
        if asked.is_err() {
            inbox.borrow_mut().release(&[]);
        }
    }
    Ok(key)
}

/// The newest id of a channel came: the reader follows it from there,
/// unless its subscribers left meanwhile.
fn start_following(at: usize, key: ChannelKey, name: &[u8], from: StreamId) {
    let go = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let f = w.get_mut(&at)?.channels.get_mut(&key)?;
        if f.started || f.name != name {
            return None;
        }
        f.started = true;
        Some(())
    });
    if go.is_some() {
        if let Some(redis) = redis_of(at) {
            redis.follow(name, from);
        }
    }
}

/// Takes an inbox off its channel; false when the channel is not one of a
/// zone in Redis.
pub fn unsubscribe(key: ChannelKey, inbox: &Rc<RefCell<Inbox>>) -> bool {
    // A resume's answer still to come finds the inbox no longer holding.
    inbox.borrow_mut().unhold();
    let found = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        w.values_mut().find_map(|worker| {
            let f = worker.channels.get_mut(&key)?;
            f.subscribers.retain(|i| !Rc::ptr_eq(i, inbox));
            let mut unfollow = None;
            if f.subscribers.is_empty() {
                let f = worker.channels.remove(&key)?;
                worker.by_name.remove(&f.name);
                unfollow = f.started.then_some(f.name);
            }
            Some((worker.store, worker.redis.clone(), unfollow))
        })
    });
    let Some((store, redis, unfollow)) = found else {
        return false;
    };
    if let Some(name) = unfollow {
        redis.unfollow(&name);
    }
    if let Ok(s) = store.begin() {
        s.unsubscribe(key, local::me());
    }
    true
}

/// This server's subscribers of channel `name`.
fn subscribers(store: &Store, name: &[u8]) -> u64 {
    store
        .begin()
        .ok()
        .and_then(|s| s.describe(name))
        .map_or(0, |d| d.subscribers)
}

/// Publishes one message: `done` gets its id and this server's subscribers
/// of the channel once Redis has it. `Err` at once while Redis is
/// unreachable (`done` is not called then).
pub fn publish(
    store: &'static Store,
    name: &[u8],
    data: &[u8],
    binary: bool,
    done: impl FnOnce(Result<(StreamId, u64), String>) + 'static,
) -> Result<(), String> {
    let redis = redis_of(addr(store)).ok_or("no link to redis in this process")?;
    let channel = name.to_vec();
    redis
        .publish(name, data, binary, move |id| match id {
            Ok(id) => {
                store.zone().add_published(1);
                done(Ok((id, subscribers(store, &channel))))
            }
            Err(e) => done(Err(e.to_string())),
        })
        .map_err(|e| e.to_string())
}

/// `GET`: this server's subscribers, and what Redis stores; `None` for a
/// channel with neither (nor a last id).
pub fn describe(
    store: &'static Store,
    name: &[u8],
    done: impl FnOnce(Result<Option<(u64, Stored)>, String>) + 'static,
) -> Result<(), String> {
    let redis = redis_of(addr(store)).ok_or("no link to redis in this process")?;
    let channel = name.to_vec();
    redis
        .describe(name, wall_ms(), move |stored| match stored {
            Ok(stored) => {
                let n = subscribers(store, &channel);
                let known = n > 0 || stored.messages > 0 || stored.last_id.is_some();
                done(Ok(known.then_some((n, stored))))
            }
            Err(e) => done(Err(e.to_string())),
        })
        .map_err(|e| e.to_string())
}

/// `DELETE`: a tombstone in the channel's stream, which every server's
/// readers deliver as a close with 1000; `done` once Redis has it.
pub fn delete(
    store: &'static Store,
    name: &[u8],
    done: impl FnOnce(Result<(), String>) + 'static,
) -> Result<(), String> {
    let redis = redis_of(addr(store)).ok_or("no link to redis in this process")?;
    redis
        .delete(name, move |id| {
            done(id.map(|_| ()).map_err(|e| e.to_string()))
        })
        .map_err(|e| e.to_string())
}
