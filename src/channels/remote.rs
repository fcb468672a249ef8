//! A worker's side of a zone with `redis=`: its subscribers per channel,
//! fed by the worker's reader of the channels' Redis streams.
//!
//! Each worker opens two links to the zone's Redis when it starts (one for
//! commands, one for `XREAD BLOCK`) and follows the streams of the channels
//! its subscribers are on ([`RedisChannels::follow`]): every server and
//! every worker reads the same streams, so every subscriber gets every
//! message once, in the stream's order. A channel's first subscriber in
//! the worker starts following it from its newest entry, or from the
//! moment that subscriber came if that is earlier (by this server's clock:
//! a publish that lands while the newest id is asked for, or while the
//! link is still down, is not lost); a resume asks for
//! the stored messages after its id (`XREVRANGE`, on the same command link
//! after that, so they reach at least where following starts), and the
//! subscriber's inbox holds live messages until they came.
//!
//! While Redis is unreachable the links reconnect with backoff; the reader
//! then reads on from the last ids it delivered, so subscribers miss
//! nothing Redis accepted. A subscriber that comes meanwhile (or before
//! the worker's first connection is up, just after a start or a reload) is
//! accepted and waits like the others: its channel's newest id and its
//! resume are asked for once the command link is up.

use core::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ngx::ffi::NGX_LOG_ERR;
use ngx::ngx_log_error;

use super::local::{self, deliver, End, Inbox, Shared};
use super::shm::{wall_ms, ChannelKey, Message};
use super::store::{Store, StoreError};
use crate::ngx_io::cycle_log;
use crate::redis::channels::{self as rc, Event, Failed, RedisChannels, Stored};
use crate::redis::conn::Link;
use crate::redis::resp::{ReplyError, StreamId};

/// How long one `XREAD` blocks (a change of channels unblocks it sooner).
const BLOCK_MS: u64 = 10_000;

/// The largest message a zone in Redis takes: its readers take no larger
/// bulk string from Redis.
pub const MAX_MESSAGE: usize = 16 << 20;

/// A channel this worker has subscribers of.
struct Followed {
    name: Vec<u8>,
    subscribers: Vec<Rc<RefCell<Inbox>>>,
    /// Its reader follows it (the newest id came).
    started: bool,
    /// Its newest id was asked for.
    asking: bool,
    /// Just before its first subscriber came: following starts no later.
    since: StreamId,
}

/// A resume waiting for the stored messages after its id.
#[derive(Clone)]
struct Resume {
    name: Vec<u8>,
    after: StreamId,
    inbox: Rc<RefCell<Inbox>>,
}

/// A zone's links and channels in this worker.
struct Worker {
    store: &'static Store,
    redis: RedisChannels,
    channels: HashMap<ChannelKey, Followed>,
    by_name: HashMap<Vec<u8>, ChannelKey>,
    /// Channels whose newest id is to be asked for once the link is up.
    unstarted: Vec<ChannelKey>,
    /// Resumes to ask Redis about once the command link is up.
    resumes: Vec<Resume>,
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
    redis.on_up(move || ask(at));
    WORKERS.with(|w| {
        w.borrow_mut().insert(
            at,
            Worker {
                store,
                redis,
                channels: HashMap::new(),
                by_name: HashMap::new(),
                unstarted: Vec::new(),
                resumes: Vec::new(),
            },
        )
    });
}

/// The zone's client in this worker (a clone: calls into it must not run
/// while [`WORKERS`] is borrowed).
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

/// Asks Redis, if the command link is up, for what the worker's channels
/// and resumes wait for: the newest id of each channel not followed yet,
/// the stored messages of each resume. What fails for the link is asked
/// again when it is back up.
fn ask(at: usize) {
    let Some((redis, starts, resumes)) = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let worker = w.get_mut(&at)?;
        if !worker.redis.is_up() {
            return None;
        }
        let mut starts = Vec::new();
        for key in core::mem::take(&mut worker.unstarted) {
            if let Some(f) = worker.channels.get_mut(&key) {
                if !f.started && !f.asking {
                    f.asking = true;
                    starts.push((key, f.name.clone()));
                }
            }
        }
        let resumes = core::mem::take(&mut worker.resumes);
        Some((worker.redis.clone(), starts, resumes))
    }) else {
        return;
    };
    for (key, name) in starts {
        let channel = name.clone();
        let asked = redis.newest_id(&name, move |id| match id {
            Some(id) => start_following(at, key, &channel, id),
            None => not_asking(at, key),
        });
        if asked.is_err() {
            not_asking(at, key);
        }
    }
    for resume in resumes {
        ask_stored(at, &redis, resume);
    }
}

/// The newest id of a channel did not come: asked again once the link is up.
fn not_asking(at: usize, key: ChannelKey) {
    WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let Some(worker) = w.get_mut(&at) else { return };
        if let Some(f) = worker.channels.get_mut(&key) {
            f.asking = false;
            worker.unstarted.push(key);
        }
    });
}

/// Asks for the stored messages a resume wants; they go to its inbox
/// before the live ones that waited.
fn ask_stored(at: usize, redis: &RedisChannels, resume: Resume) {
    if !resume.inbox.borrow().holding() {
        return;
    }
    let waiting = resume.clone();
    let asked = redis.history_after(&resume.name, resume.after, wall_ms(), move |stored| {
        let stored: Vec<Shared> = match stored {
            Ok(messages) => messages.into_iter().filter_map(shared).collect(),
            // The link failed (or Redis is loading its data, which drops
            // the link): again once it is back.
            Err(Failed::Redis(_)) => return wait_for_link(at, waiting),
            Err(Failed::Reply(ReplyError::Server(e))) if e.starts_with("LOADING") => {
                return wait_for_link(at, waiting)
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    cycle_log(),
                    "websocket: cannot read the history of channel \"{}\" for a resume: {e}",
                    waiting.name.escape_ascii()
                );
                Vec::new()
            }
        };
        let queued = waiting.inbox.borrow_mut().release(&stored);
        if let Some(store) = WORKERS.with(|w| w.borrow().get(&at).map(|w| w.store)) {
            store.zone().add_delivered(queued);
        }
    });
    if asked.is_err() {
        wait_for_link(at, resume);
    }
}

/// A resume is asked again once the command link is up.
fn wait_for_link(at: usize, resume: Resume) {
    WORKERS.with(|w| {
        if let Some(worker) = w.borrow_mut().get_mut(&at) {
            worker.resumes.push(resume);
        }
    });
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
    let s = store.begin()?;
    let (key, _, _) = s.subscribe(name, local::me())?;
    drop(s);
    let known = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let Some(worker) = w.get_mut(&at) else {
            return false;
        };
        let f = worker.channels.entry(key).or_insert_with(|| {
            worker.unstarted.push(key);
            Followed {
                name: name.to_vec(),
                subscribers: Vec::new(),
                started: false,
                asking: false,
                since: just_before(wall_ms()),
            }
        });
        f.subscribers.push(inbox.clone());
        worker.by_name.insert(name.to_vec(), key);
        if let Some(after) = resume {
            inbox.borrow_mut().hold();
            worker.resumes.push(Resume {
                name: name.to_vec(),
                after: StreamId::unpack(after),
                inbox: inbox.clone(),
            });
        }
        true
    });
    if !known {
        // No links in this process (not a worker).
        if let Ok(s) = store.begin() {
            s.unsubscribe(key, local::me());
        }
        return Err(StoreError::Unavailable);
    }
    ask(at);
    Ok(key)
}

/// The newest id of a channel came: the reader follows it from there,
/// unless its subscribers left meanwhile.
fn start_following(at: usize, key: ChannelKey, name: &[u8], from: StreamId) {
    let go = WORKERS.with(|w| {
        let mut w = w.borrow_mut();
        let f = w.get_mut(&at)?.channels.get_mut(&key)?;
        f.asking = false;
        if f.started || f.name != name {
            return None;
        }
        f.started = true;
        Some(from.min(f.since))
    });
    if let Some(from) = go {
        if let Some(redis) = redis_of(at) {
            redis.follow(name, from);
        }
    }
}

/// The id that every entry Redis adds from millisecond `ms` on follows.
fn just_before(ms: u64) -> StreamId {
    match ms.checked_sub(1) {
        Some(ms) => StreamId { ms, seq: u64::MAX },
        None => StreamId::ZERO,
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
            worker.resumes.retain(|r| !Rc::ptr_eq(&r.inbox, inbox));
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
    if data.len() > MAX_MESSAGE {
        return Err(format!("the message is larger than {MAX_MESSAGE} bytes"));
    }
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

#[cfg(test)]
mod tests {
    use crate::redis::resp::{Limits, StreamId};

    #[test]
    fn following_from_a_moment_takes_every_entry_of_that_millisecond() {
        let from = super::just_before(1_700_000_000_123);
        assert!(from < StreamId { ms: 1_700_000_000_123, seq: 0 });
        assert!(from > StreamId { ms: 1_700_000_000_122, seq: 99 });
        assert_eq!(super::just_before(0), StreamId::ZERO);
    }

    #[test]
    fn the_largest_message_is_the_largest_bulk_a_reader_takes() {
        assert_eq!(super::MAX_MESSAGE, Limits::default().max_bulk);
    }
}
