//! Following Redis streams from a worker: what the channels' Redis store
//! needs for delivery.
//!
//! A [`StreamReader`] keeps, for each watched stream key, the id of the
//! last entry it delivered, and keeps one `XREAD COUNT n BLOCK ms STREAMS
//! key... id...` waiting on its reader link. Each reply's entries go to the
//! callback in stream order and move the ids on; then the next XREAD goes
//! out. When the set of keys changes while an XREAD blocks, the reader is
//! woken with `CLIENT UNBLOCK` (its id, sent from the command link) so that
//! the next XREAD names the new set. When the reader's connection is lost,
//! the next XREAD after the reconnect starts from the last ids delivered:
//! whatever Redis accepted meanwhile (and still holds) arrives then, once.
//! A reply too large for the link's limits (a backlog of big entries)
//! halves the XREAD's COUNT, down to one entry, until the reader has caught
//! up (a reply with fewer entries than asked for): so a backlog of entries
//! each within the limits is read, however large it is in all.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use super::conn::{Link, RedisError, Reply};
use super::resp::{self, Entry, RespError, StreamId};

/// Gets the entries of one stream, in order, each once.
pub type OnEntries = Rc<dyn Fn(&[u8], &[Entry])>;

struct State {
    reader: Link,
    commands: Link,
    block_ms: u64,
    /// Entries per XREAD: `max_count`, or less after a reply too large.
    count: usize,
    max_count: usize,
    /// Key → the id of the last entry delivered (or the id to read after).
    streams: BTreeMap<Vec<u8>, StreamId>,
    in_flight: bool,
    /// The keys changed while an XREAD was blocking; it was unblocked.
    unblocked: bool,
    /// Counts the XREADs sent, to tell whether an unblock came too early.
    generation: u64,
    on_entries: OnEntries,
}

/// Reads the watched streams on its own link; cloning shares it.
#[derive(Clone)]
pub struct StreamReader(Rc<RefCell<State>>);

impl StreamReader {
    /// `reader` must be a link of its own (it blocks); `commands` sends
    /// the `CLIENT UNBLOCK`s.
    pub fn new(
        reader: Link,
        commands: Link,
        block_ms: u64,
        count: usize,
        on_entries: impl Fn(&[u8], &[Entry]) + 'static,
    ) -> StreamReader {
        let me = StreamReader(Rc::new(RefCell::new(State {
            reader: reader.clone(),
            commands,
            block_ms,
            count: count.max(1),
            max_count: count.max(1),
            streams: BTreeMap::new(),
            in_flight: false,
            unblocked: false,
            generation: 0,
            on_entries: Rc::new(on_entries),
        })));
        let weak = Rc::downgrade(&me.0);
        reader.on_state(move |up| {
            if up {
                if let Some(state) = weak.upgrade() {
                    StreamReader(state).pump();
                }
            }
        });
        me.pump();
        me
    }

    /// Follows `key` from after `after` (entries with greater ids are
    /// delivered). Watching a key again moves its position.
    pub fn watch(&self, key: &[u8], after: StreamId) {
        self.0.borrow_mut().streams.insert(key.to_vec(), after);
        self.keys_changed();
    }

    /// Stops following `key`.
    pub fn unwatch(&self, key: &[u8]) {
        if self.0.borrow_mut().streams.remove(key).is_some() {
            self.keys_changed();
        }
    }

    fn keys_changed(&self) {
        let s = self.0.borrow();
        if !s.in_flight {
            drop(s);
            self.pump();
            return;
        }
        if s.unblocked {
            return;
        }
        drop(s);
        self.unblock(3);
    }

    /// Wakes the blocked XREAD: its reply (nil) starts the next one. An
    /// XREAD still on its way to Redis is not blocked yet (`:0`): then
    /// again, up to `tries` times.
    fn unblock(&self, tries: u32) {
        let mut s = self.0.borrow_mut();
        let Some(id) = s.reader.client_id() else {
            return;
        };
        let id = id.to_string();
        let generation = s.generation;
        let weak = Rc::downgrade(&self.0);
        s.unblocked = s
            .commands
            .command(&["CLIENT", "UNBLOCK", id.as_str()], move |reply| {
                let Some(state) = weak.upgrade() else {
                    return;
                };
                let me = StreamReader(state);
                let again = {
                    let s = me.0.borrow();
                    matches!(reply, Ok(resp::Value::Integer(0)))
                        && s.in_flight
                        && s.generation == generation
                        && tries > 1
                };
                if again {
                    me.unblock(tries - 1);
                }
            })
            .is_ok();
    }

    /// Sends the next XREAD if none is out and there is something to read.
    fn pump(&self) {
        let mut s = self.0.borrow_mut();
        if s.in_flight || s.streams.is_empty() || !s.reader.is_up() {
            return;
        }
        let block = s.block_ms.to_string();
        let count = s.count.to_string();
        let mut args: Vec<Vec<u8>> = vec![
            b"XREAD".to_vec(),
            b"COUNT".to_vec(),
            count.into_bytes(),
            b"BLOCK".to_vec(),
            block.into_bytes(),
            b"STREAMS".to_vec(),
        ];
        args.extend(s.streams.keys().cloned());
        args.extend(s.streams.values().map(|id| id.to_string().into_bytes()));
        let weak: Weak<RefCell<State>> = Rc::downgrade(&self.0);
        let timeout = s.block_ms + 5000;
        let sent = s.reader.command_with_timeout(&args, timeout, move |reply| {
            if let Some(state) = weak.upgrade() {
                StreamReader(state).replied(reply);
            }
        });
        s.in_flight = sent.is_ok();
        s.unblocked = false;
        s.generation += 1;
    }

    fn replied(&self, reply: Reply) {
        let (streams, on_entries) = {
            let mut s = self.0.borrow_mut();
            s.in_flight = false;
            s.unblocked = false;
            let value = match reply {
                Ok(value) => value,
                // The reply was too large: fewer entries from now on.
                Err(RedisError::Protocol(RespError::ReplyTooLarge)) => {
                    s.count = (s.count / 2).max(1);
                    return;
                }
                // The link went down: the next XREAD goes out once it is
                // back up (its state hook), from the same ids.
                Err(_) => return,
            };
            // The link goes down after it (see `conn`); reading resumes
            // when it is back up.
            if matches!(&value, resp::Value::Error(e) if e.starts_with(b"LOADING")) {
                return;
            }
            let streams = match resp::xread(&value) {
                Ok(streams) => streams,
                Err(e) => {
                    // Another XREAD now would get the same answer (a key
                    // holding something else than a stream): the next one
                    // waits for a change of keys or a reconnect.
                    ngx::ngx_log_error!(
                        ngx::ffi::NGX_LOG_ERR as usize,
                        crate::ngx_io::cycle_log(),
                        "websocket: redis XREAD of {} streams failed, reading stops until they change: {e}",
                        s.streams.len()
                    );
                    return;
                }
            };
            // Keep what is new for keys still watched, move the ids on.
            // No stream gave as many as asked for: caught up.
            if streams.iter().all(|(_, entries)| entries.len() < s.count) {
                s.count = s.max_count;
            }
            let mut fresh = Vec::new();
            for (key, entries) in streams {
                let Some(last) = s.streams.get_mut(&key) else {
                    continue;
                };
                let entries: Vec<Entry> = entries.into_iter().filter(|e| e.id > *last).collect();
                if let Some(newest) = entries.last() {
                    *last = newest.id;
                    fresh.push((key, entries));
                }
            }
            (fresh, Rc::clone(&s.on_entries))
        };
        for (key, entries) in &streams {
            on_entries(key, entries);
        }
        self.pump();
    }
}

/// Asks (on `link`) for the id of the newest entry of `key`: `ZERO` for
/// an empty or missing stream. A subscriber that wants only what comes
/// next watches from there.
pub fn newest_id(
    link: &Link,
    key: &[u8],
    done: impl FnOnce(Option<StreamId>) + 'static,
) -> Result<(), super::conn::RedisError> {
    link.command(
        &[&b"XREVRANGE"[..], key, b"+", b"-", b"COUNT", b"1"],
        move |reply| {
            let id = reply
                .ok()
                .and_then(|v| resp::entries(&v).ok())
                .map(|entries| entries.first().map_or(StreamId::ZERO, |e| e.id));
            done(id)
        },
    )
}
