//! A worker's side of the channels: its subscribers per channel, each with
//! an inbox, and what it fetched from the zone so far.
//!
//! Delivering never touches a session: it appends to the session's inbox
//! and wakes the session (its [`Waker`]), so a publish from inside a
//! subscriber's own handler (`websocket_channel_publish on`) is safe. Each local channel
//! keeps a cursor (the last sequence number it fetched), and each inbox the
//! last one it was given, so every subscriber gets every message once, in
//! the channel's order.

use core::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::shm::{ChannelKey, Message};
use super::store::{Store, StoreError};
use super::{ipc, remote};
use crate::Waker;

/// A message as this worker's subscribers share it.
pub type Shared = Rc<Message>;

/// Why a subscriber must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The channel was deleted: close 1000.
    Deleted,
    /// Too much unsent data: close 1008.
    Overflow,
}

/// The session an inbox feeds: a subscriber's [`Waker`].
pub trait Reader {
    /// Runs the session's handler soon.
    fn wake(&self);
    /// Bytes the session queued and has not written yet.
    fn queued(&self) -> usize;
}

impl Reader for Waker {
    fn wake(&self) {
        Waker::wake(self);
    }

    fn queued(&self) -> usize {
        Waker::queued(self)
    }
}

/// What waits to be sent to one subscriber.
pub struct Inbox {
    pub queue: VecDeque<Shared>,
    /// Payload bytes in `queue`.
    pub bytes: usize,
    /// Unsent data above which the subscriber is closed with 1008.
    pub limit: usize,
    /// The last message given to it.
    pub last_seq: u64,
    pub end: Option<End>,
    /// The session, once it runs (see [`Inbox::attach`]).
    reader: Option<Box<dyn Reader>>,
    /// The session is closing (its worker exits, or it reached its
    /// `websocket_max_session_time`): it takes no new message.
    pub frozen: bool,
    /// A resume's stored messages are on their way (from Redis): live
    /// ones wait here until they came, see [`Inbox::release`].
    held: Option<Vec<Shared>>,
}

impl Inbox {
    /// An inbox for a session that is not running yet: what comes before
    /// it runs waits for its first step, which takes the inbox's messages
    /// and [`Inbox::attach`]es it.
    pub fn new(limit: usize) -> Rc<RefCell<Inbox>> {
        Rc::new(RefCell::new(Inbox {
            queue: VecDeque::new(),
            bytes: 0,
            limit,
            last_seq: 0,
            end: None,
            frozen: false,
            held: None,
            reader: None,
        }))
    }

    /// The session runs: it is woken when the inbox changes, and its own
    /// output counts towards the limit.
    pub fn attach(&mut self, reader: Box<dyn Reader>) {
        self.reader = Some(reader);
    }

    /// Whether the inbox is attached to its session.
    pub fn attached(&self) -> bool {
        self.reader.is_some()
    }

    /// Takes a message (once): whether it was queued, and whether the
    /// session must hear of the change.
    fn push(&mut self, m: &Shared) -> (bool, bool) {
        if let Some(held) = self.held.as_mut() {
            held.push(m.clone());
            return (false, false);
        }
        if m.seq <= self.last_seq || self.end.is_some() || self.frozen {
            return (false, false);
        }
        self.last_seq = m.seq;
        let ws_queued = self.reader.as_ref().map_or(0, |r| r.queued());
        if self.bytes + ws_queued + m.data.len() > self.limit {
            self.end = Some(End::Overflow);
            self.queue.clear();
            self.bytes = 0;
            return (false, true);
        }
        self.bytes += m.data.len();
        self.queue.push_back(m.clone());
        (true, true)
    }

    /// Live messages wait until [`Inbox::release`] gives the stored ones.
    pub fn hold(&mut self) {
        self.held = Some(Vec::new());
    }

    /// The stored messages a resume asked for came (oldest first): they
    /// are queued, then the live ones that waited, each once, in order.
    /// Returns how many were queued. Nothing happens to an inbox that no
    /// longer holds (its session left: it must not be woken).
    pub fn release(&mut self, stored: &[Shared]) -> u64 {
        let Some(held) = self.held.take() else {
            return 0;
        };
        let mut queued = 0;
        let mut changed = false;
        for m in stored.iter().chain(&held) {
            let (q, told) = self.push(m);
            queued += u64::from(q);
            changed |= told;
        }
        if changed {
            self.wake();
        }
        queued
    }

    /// Whether live messages wait for a resume's stored ones.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The session left its channel: a resume's answer must not touch it.
    pub fn unhold(&mut self) {
        self.held = None;
    }

    pub fn pop(&mut self) -> Option<Shared> {
        let m = self.queue.pop_front()?;
        self.bytes -= m.data.len();
        Some(m)
    }

    fn wake(&self) {
        if let Some(reader) = &self.reader {
            reader.wake();
        }
    }
}

struct LocalChannel {
    store: &'static Store,
    cursor: u64,
    generation: u64,
    subscribers: Vec<Rc<RefCell<Inbox>>>,
}

thread_local! {
    /// This worker's channels with subscribers, by their zone address.
    static CHANNELS: RefCell<HashMap<ChannelKey, LocalChannel>> = RefCell::new(HashMap::new());
}

/// This worker's index among the zone's workers.
pub fn me() -> usize {
    // SAFETY: a plain read of the worker's own index.
    unsafe { ngx::ffi::ngx_worker }
}

/// Hands fetched messages to the subscribers; counts the deliveries.
pub(super) fn deliver(
    store: &Store,
    subscribers: &[Rc<RefCell<Inbox>>],
    messages: &[Shared],
    end: Option<End>,
) {
    let mut delivered = 0;
    for inbox in subscribers {
        let mut inbox = inbox.borrow_mut();
        let mut changed = false;
        for m in messages {
            let (queued, told) = inbox.push(m);
            changed |= told;
            delivered += u64::from(queued);
        }
        if let Some(end) = end.filter(|_| inbox.end.is_none()) {
            inbox.end = Some(end);
            changed = true;
        }
        if changed {
            inbox.wake();
        }
    }
    store.zone().add_delivered(delivered);
}

/// Subscribes an inbox to channel `name`; with `resume`, the stored
/// messages after that sequence number are queued first. Returns the key
/// to unsubscribe with.
pub fn subscribe(
    store: &'static Store,
    name: &[u8],
    resume: Option<u64>,
    inbox: &Rc<RefCell<Inbox>>,
) -> Result<ChannelKey, StoreError> {
    // [redis] the zone's channels are in Redis.
    if store.redis().is_some() {
        return remote::subscribe(store, name, resume, inbox);
    }
    let me = me();
    let s = store.begin()?;
    let (key, last_seq, generation) = s.subscribe(name, me)?;
    CHANNELS.with(|channels| {
        let mut channels = channels.borrow_mut();
        // Messages the worker had not fetched yet go to the subscribers it
        // has, and this cursor is where the newcomer starts.
        let (fresh, cursor, generation) = match channels.get(&key) {
            Some(local) => {
                let (fresh, generation) = s.fetch(key, me, local.cursor);
                let cursor = fresh.last().map_or(local.cursor, |m| m.seq);
                (fresh, cursor, generation)
            }
            None => (Vec::new(), last_seq, generation),
        };
        let backlog = match resume {
            Some(after) => s.stored_between(key, after, cursor),
            None => Vec::new(),
        };
        drop(s);
        let fresh: Vec<Shared> = fresh.into_iter().map(Rc::new).collect();
        let backlog: Vec<Shared> = backlog.into_iter().map(Rc::new).collect();
        let local = channels.entry(key).or_insert_with(|| LocalChannel {
            store,
            cursor,
            generation,
            subscribers: Vec::new(),
        });
        local.cursor = cursor;
        let ended = (local.generation != generation).then_some(End::Deleted);
        deliver(store, &local.subscribers, &fresh, ended);
        if ended.is_some() {
            local.generation = generation;
        }
        {
            let mut mine = inbox.borrow_mut();
            let queued = backlog.iter().filter(|m| mine.push(m).0).count();
            store.zone().add_delivered(queued as u64);
            mine.last_seq = mine.last_seq.max(cursor);
        }
        local.subscribers.push(inbox.clone());
        Ok(key)
    })
}

/// Takes an inbox off its channel.
pub fn unsubscribe(key: ChannelKey, inbox: &Rc<RefCell<Inbox>>) {
    // [redis] a channel of a zone in Redis.
    if remote::unsubscribe(key, inbox) {
        return;
    }
    let Some(store) = CHANNELS.with(|channels| {
        let mut channels = channels.borrow_mut();
        let local = channels.get_mut(&key)?;
        local.subscribers.retain(|i| !Rc::ptr_eq(i, inbox));
        let store = local.store;
        if local.subscribers.is_empty() {
            channels.remove(&key);
        }
        Some(store)
    }) else {
        return;
    };
    if let Ok(s) = store.begin() {
        s.unsubscribe(key, me());
    }
}

/// Fetches what the channel got since this worker last looked, and hands
/// it to the worker's subscribers of it.
pub fn fetch(key: ChannelKey) {
    CHANNELS.with(|channels| {
        let mut channels = channels.borrow_mut();
        let Some(local) = channels.get_mut(&key) else {
            return;
        };
        let Ok(s) = local.store.begin() else { return };
        let (fresh, generation) = s.fetch(key, me(), local.cursor);
        drop(s);
        if let Some(m) = fresh.last() {
            local.cursor = m.seq;
        }
        let fresh: Vec<Shared> = fresh.into_iter().map(Rc::new).collect();
        let ended = (local.generation != generation).then_some(End::Deleted);
        local.generation = generation;
        deliver(local.store, &local.subscribers, &fresh, ended);
    });
}

/// Fetches every channel of `store` (or of every zone) this worker has
/// subscribers of: a wake was lost.
pub fn fetch_all(store: Option<&Store>) {
    let keys: Vec<ChannelKey> = CHANNELS.with(|channels| {
        channels
            .borrow()
            .iter()
            .filter(|(_, l)| store.is_none_or(|s| core::ptr::eq(s, l.store)))
            .map(|(k, _)| *k)
            .collect()
    });
    for key in keys {
        fetch(key);
    }
}

/// Tells the other workers named in `wake` that `key` has news.
pub fn wake(store: &Store, key: Option<ChannelKey>, wake: &[usize]) {
    for &w in wake {
        if !ipc::send(store.zone(), w, key.map_or(0, |k| k.0)) {
            store.zone().set_overflow(w);
        }
    }
}

/// Publishes one message (an HTTP publish, or a subscriber's own message
/// with `websocket_channel_publish on`) and delivers it: here at once,
/// elsewhere through a wake.
pub fn publish(
    store: &'static Store,
    target: Result<ChannelKey, &[u8]>,
    data: &[u8],
    binary: bool,
) -> Result<(u64, u64), StoreError> {
    let s = store.begin()?;
    let published = s.publish(target, data, binary, me())?;
    drop(s);
    wake(store, published.channel, &published.wake);
    if let Some(key) = published.channel {
        fetch(key);
    }
    Ok((published.seq, published.subscribers))
}

/// `DELETE`: every subscriber, on every worker, is closed with 1000.
pub fn delete(store: &'static Store, name: &[u8]) -> Result<(), StoreError> {
    let s = store.begin()?;
    let (others, mine) = s.delete(name, me());
    drop(s);
    // The channel may be gone already when no subscriber is left: the
    // other workers then look at every channel of the zone.
    wake(store, mine, &others);
    if let Some(key) = mine {
        fetch(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, len: usize) -> Shared {
        Rc::new(Message {
            seq,
            binary: false,
            data: vec![b'x'; len],
        })
    }

    #[test]
    fn an_inbox_takes_each_message_once_in_order() {
        let inbox = Inbox::new(1000);
        let mut i = inbox.borrow_mut();
        assert_eq!(i.push(&msg(3, 10)), (true, true));
        assert_eq!(i.push(&msg(3, 10)), (false, false));
        assert_eq!(i.push(&msg(2, 10)), (false, false));
        assert_eq!(i.push(&msg(5, 10)), (true, true));
        assert_eq!(i.bytes, 20);
        assert_eq!(i.pop().map(|m| m.seq), Some(3));
        assert_eq!(i.pop().map(|m| m.seq), Some(5));
        assert_eq!(i.bytes, 0);
        assert!(i.pop().is_none());
    }

    /// A session with 50 bytes of output queued.
    struct Queued50;

    impl Reader for Queued50 {
        fn wake(&self) {}

        fn queued(&self) -> usize {
            50
        }
    }

    #[test]
    fn past_its_limit_an_inbox_ends_with_overflow() {
        let inbox = Inbox::new(100);
        let mut i = inbox.borrow_mut();
        i.attach(Box::new(Queued50));
        assert_eq!(i.push(&msg(1, 40)), (true, true));
        assert_eq!(i.push(&msg(2, 40)), (false, true));
        assert_eq!(i.end, Some(End::Overflow));
        assert!(i.queue.is_empty());
        assert_eq!(i.push(&msg(3, 1)), (false, false));
    }

    #[test]
    fn a_held_inbox_queues_stored_then_live_once() {
        let inbox = Inbox::new(1000);
        let mut i = inbox.borrow_mut();
        i.hold();
        assert_eq!(i.push(&msg(5, 1)), (false, false));
        assert_eq!(i.push(&msg(6, 1)), (false, false));
        assert!(i.queue.is_empty());
        assert_eq!(i.release(&[msg(3, 1), msg(4, 1), msg(5, 1)]), 4);
        let seqs: Vec<u64> = core::iter::from_fn(|| i.pop()).map(|m| m.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
        assert_eq!(i.push(&msg(7, 1)), (true, true));
        // Nothing stored (Redis did not answer): the live ones.
        i.hold();
        assert_eq!(i.push(&msg(8, 1)), (false, false));
        assert_eq!(i.release(&[]), 1);
        // The session left before the answer: nothing queued.
        i.hold();
        i.unhold();
        assert_eq!(i.release(&[msg(9, 1)]), 0);
        assert_eq!(i.queue.len(), 2);
    }

    #[test]
    fn a_frozen_inbox_takes_nothing_new() {
        let inbox = Inbox::new(100);
        let mut i = inbox.borrow_mut();
        assert_eq!(i.push(&msg(1, 1)), (true, true));
        i.frozen = true;
        assert_eq!(i.push(&msg(2, 1)), (false, false));
        assert_eq!(i.queue.len(), 1);
    }
}
