//! A channel zone's data in Redis (`websocket_channel_zone ... redis=`):
//! how channels map onto streams, and the operations the channels' store
//! needs, on a worker's command link and stream reader.
//!
//! - A channel is the stream `websocket:{ZONE}:{CHANNEL}`; a message is an
//!   entry with the fields `d` (the payload) and `b` (`1` binary, `0` text);
//!   its id is the entry's id (`ms-seq`), one order per channel for every
//!   server.
//! - A publish is `XADD key MAXLEN ~ KEEP * d DATA b 0|1`: KEEP is the
//!   zone's `history`, but at least [`MIN_KEEP`], so that a reader that
//!   lags behind (or reconnects) still finds what it has not read; reads of
//!   the history take only the `history` newest, none older than
//!   `history_time` (by the id's milliseconds, Redis's clock).
//! - After each publish (and delete), `PEXPIRE key TTL` when the zone has
//!   no history or a `history_time` ([`History::ttl_ms`]): a channel nobody
//!   publishes to goes away, so channel names chosen by clients cannot grow
//!   Redis's memory; with `history` and no `history_time`, the `history`
//!   newest stay.
//! - Delivery: a worker follows the channels its subscribers are on with a
//!   [`StreamReader`] (one `XREAD BLOCK` for all of them), from the id each
//!   started at.
//! - Describe: `XREVRANGE key + - COUNT history` gives the stored count and
//!   the last id in one command.
//! - Delete must reach the subscribers of every server, and `DEL` would
//!   only make the stream vanish under their readers: a delete appends a
//!   tombstone (an entry with the field `e` = `deleted`), which every
//!   reader delivers as [`Event::Deleted`] (close the channel's
//!   subscribers with 1000), then trims the stream to it (`XTRIM key MINID
//!   id`). Whatever precedes the newest tombstone is not history.

use std::rc::Rc;

use super::conn::{Link, RedisError, Reply};
use super::resp::{self, Entry, StreamId, Value};
use super::streams::StreamReader;

/// Entries kept per stream at least, whatever `history` says.
pub const MIN_KEEP: usize = 1000;

/// A stream lives at least this long after its last publish (when it
/// expires at all), so that a reader that lags behind or reconnects still
/// finds what it has not read.
pub const MIN_TTL_MS: u64 = 60_000;

/// The stream of a channel of a zone.
pub fn stream_key(zone: &str, channel: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + zone.len() + channel.len());
    key.extend_from_slice(b"websocket:");
    key.extend_from_slice(zone.as_bytes());
    key.push(b':');
    key.extend_from_slice(channel);
    key
}

/// The command that publishes one message.
pub fn xadd_args(key: &[u8], data: &[u8], binary: bool, history: usize) -> Vec<Vec<u8>> {
    vec![
        b"XADD".to_vec(),
        key.to_vec(),
        b"MAXLEN".to_vec(),
        b"~".to_vec(),
        history.max(MIN_KEEP).to_string().into_bytes(),
        b"*".to_vec(),
        b"d".to_vec(),
        data.to_vec(),
        b"b".to_vec(),
        if binary { b"1".to_vec() } else { b"0".to_vec() },
    ]
}

/// One message of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: StreamId,
    pub binary: bool,
    pub data: Vec<u8>,
}

/// What an entry of a channel's stream means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    /// The channel was deleted (its subscribers are closed with 1000).
    Deleted(StreamId),
}

/// The event an entry holds; `None` for an entry that is not one of ours
/// (written by someone else into the key).
pub fn event(entry: &Entry) -> Option<Event> {
    if entry.field(b"e") == Some(b"deleted") {
        return Some(Event::Deleted(entry.id));
    }
    message(entry).map(Event::Message)
}

/// The tombstone a delete appends.
pub fn tombstone_args(key: &[u8], history: usize) -> Vec<Vec<u8>> {
    vec![
        b"XADD".to_vec(),
        key.to_vec(),
        b"MAXLEN".to_vec(),
        b"~".to_vec(),
        history.max(MIN_KEEP).to_string().into_bytes(),
        b"*".to_vec(),
        b"e".to_vec(),
        b"deleted".to_vec(),
    ]
}

/// The message an entry holds; `None` for a tombstone or an entry that is
/// not one of ours.
pub fn message(entry: &Entry) -> Option<Message> {
    if entry.field(b"e").is_some() {
        return None;
    }
    let data = entry.field(b"d")?;
    let binary = match entry.field(b"b") {
        Some(b"1") => true,
        Some(b"0") | None => false,
        Some(_) => return None,
    };
    Some(Message {
        id: entry.id,
        binary,
        data: data.to_vec(),
    })
}

/// How much history a zone keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Messages kept per channel (0: none).
    pub count: usize,
    /// None older than this (0: no limit).
    pub time_ms: u64,
}

impl History {
    /// How long a channel's stream lives after its last publish: without
    /// history, [`MIN_TTL_MS`]; with `history_time`, that (at least
    /// [`MIN_TTL_MS`]), after which nothing in it is history; `None` with
    /// `history` alone (the newest are kept).
    pub fn ttl_ms(&self) -> Option<u64> {
        match (self.count, self.time_ms) {
            (0, _) => Some(MIN_TTL_MS),
            (_, 0) => None,
            (_, t) => Some(t.max(MIN_TTL_MS)),
        }
    }

    /// Whether a message with this id is still history at `now_ms`.
    pub fn keeps(&self, id: StreamId, now_ms: u64) -> bool {
        self.count > 0 && (self.time_ms == 0 || id.ms.saturating_add(self.time_ms) >= now_ms)
    }

    /// Of `entries` (oldest first), the messages that are history now: the
    /// `count` newest after the newest tombstone, not older than `time_ms`.
    pub fn select(&self, entries: &[Entry], now_ms: u64) -> Vec<Message> {
        let since_delete = entries
            .iter()
            .rposition(|e| matches!(event(e), Some(Event::Deleted(_))))
            .map_or(0, |at| at + 1);
        let messages: Vec<Message> = entries[since_delete..].iter().filter_map(message).collect();
        let skip = messages.len().saturating_sub(self.count);
        messages
            .into_iter()
            .skip(skip)
            .filter(|m| self.keeps(m.id, now_ms))
            .collect()
    }
}

/// What `GET` on the publish endpoint reports of a channel's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Messages that are history now.
    pub messages: u64,
    /// The newest message's id since the last delete, also when it is no
    /// longer history.
    pub last_id: Option<StreamId>,
}

/// Reads an `XREVRANGE key + - COUNT n` reply (newest first).
pub fn stored(reply: &Value, history: History, now_ms: u64) -> Result<Stored, resp::ReplyError> {
    let mut entries = resp::entries(reply)?;
    let last_id = entries
        .iter()
        .map_while(|e| match event(e) {
            Some(Event::Deleted(_)) => None,
            other => Some(other),
        })
        .find_map(|ev| match ev {
            Some(Event::Message(m)) => Some(m.id),
            _ => None,
        });
    entries.reverse();
    Ok(Stored {
        messages: history.select(&entries, now_ms).len() as u64,
        last_id,
    })
}

/// A zone's channels in Redis, for one worker.
#[derive(Clone)]
pub struct RedisChannels {
    zone: Rc<str>,
    history: History,
    commands: Link,
    reader: StreamReader,
}

/// Why an operation failed: every case answers 503 to a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The link is down or the command got no reply.
    Redis(RedisError),
    /// Redis answered something else (an error reply, a wrong type).
    Reply(resp::ReplyError),
}

impl core::fmt::Display for Failed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failed::Redis(e) => e.fmt(f),
            Failed::Reply(e) => e.fmt(f),
        }
    }
}

fn checked<T>(
    reply: Reply,
    read: impl FnOnce(&Value) -> Result<T, resp::ReplyError>,
) -> Result<T, Failed> {
    let value = reply.map_err(Failed::Redis)?;
    read(&value).map_err(Failed::Reply)
}

impl RedisChannels {
    /// `commands` and `reader` are two links to the zone's Redis; the
    /// reader's XREADs block for `block_ms`; `on_event` gets each new
    /// message (and delete) of the channels followed, in order, once.
    pub fn new(
        zone: &str,
        history: History,
        commands: Link,
        reader: Link,
        block_ms: u64,
        on_event: impl Fn(&[u8], &Event) + 'static,
    ) -> RedisChannels {
        let prefix = stream_key(zone, b"");
        let reader = StreamReader::new(
            reader,
            commands.clone(),
            block_ms,
            256,
            move |key, entries| {
                let Some(channel) = key.strip_prefix(prefix.as_slice()) else {
                    return;
                };
                for ev in entries.iter().filter_map(event) {
                    on_event(channel, &ev);
                }
            },
        );
        RedisChannels {
            zone: Rc::from(zone),
            history,
            commands,
            reader,
        }
    }

    pub fn is_up(&self) -> bool {
        self.commands.is_up()
    }

    /// Runs `hook` each time the command link comes up (the first time, and
    /// after each outage).
    pub fn on_up(&self, hook: impl Fn() + 'static) {
        self.commands.on_state(move |up| {
            if up {
                hook()
            }
        });
    }

    fn key(&self, channel: &[u8]) -> Vec<u8> {
        stream_key(&self.zone, channel)
    }

    /// Publishes one message; `done` gets its id. `Err` at once while the
    /// link is down (a 503 without waiting).
    pub fn publish(
        &self,
        channel: &[u8],
        data: &[u8],
        binary: bool,
        done: impl FnOnce(Result<StreamId, Failed>) + 'static,
    ) -> Result<(), Failed> {
        let key = self.key(channel);
        let args = xadd_args(&key, data, binary, self.history.count);
        self.commands
            .command(&args, move |reply| done(checked(reply, resp::xadd_id)))
            .map_err(Failed::Redis)?;
        self.expire(&key);
        Ok(())
    }

    /// Pipelines the stream's `PEXPIRE` after a write, if it expires.
    fn expire(&self, key: &[u8]) {
        if let Some(ttl) = self.history.ttl_ms() {
            let ttl = ttl.to_string();
            let args: [&[u8]; 3] = [b"PEXPIRE", key, ttl.as_bytes()];
            // Its reply tells nothing a publisher needs; a failure here is
            // a failure of the link, which the publish's reply reports.
            let _ = self.commands.command(&args, |_| {});
        }
    }

    /// The stored messages of a channel and its last id.
    pub fn describe(
        &self,
        channel: &[u8],
        now_ms: u64,
        done: impl FnOnce(Result<Stored, Failed>) + 'static,
    ) -> Result<(), Failed> {
        let count = self.history.count.max(1).to_string();
        let key = self.key(channel);
        let args: [&[u8]; 6] = [b"XREVRANGE", &key, b"+", b"-", b"COUNT", count.as_bytes()];
        let history = self.history;
        self.commands
            .command(&args, move |reply| {
                done(checked(reply, |v| stored(v, history, now_ms)))
            })
            .map_err(Failed::Redis)
    }

    /// Deletes a channel on every server: appends the tombstone (`done`
    /// gets its id once Redis has it), then trims what precedes it.
    pub fn delete(
        &self,
        channel: &[u8],
        done: impl FnOnce(Result<StreamId, Failed>) + 'static,
    ) -> Result<(), Failed> {
        let key = self.key(channel);
        let commands = self.commands.clone();
        let args = tombstone_args(&key, self.history.count);
        self.commands
            .command(&args, move |reply| {
                let id = checked(reply, resp::xadd_id);
                if let Ok(id) = &id {
                    let minid = id.to_string();
                    let args: [&[u8]; 4] = [b"XTRIM", &key, b"MINID", minid.as_bytes()];
                    // Readers skip what precedes a tombstone anyway.
                    let _ = commands.command(&args, |_| {});
                }
                done(id)
            })
            .map_err(Failed::Redis)?;
        self.expire(&self.key(channel));
        Ok(())
    }

    /// The history after `after` (a resume), oldest first: the `history`
    /// newest messages, none older than `history_time`.
    pub fn history_after(
        &self,
        channel: &[u8],
        after: StreamId,
        now_ms: u64,
        done: impl FnOnce(Result<Vec<Message>, Failed>) + 'static,
    ) -> Result<(), Failed> {
        let key = self.key(channel);
        let from = format!("({after}");
        let count = self.history.count.max(1).to_string();
        // The newest first, so that COUNT keeps the right end.
        let args: [&[u8]; 6] = [
            b"XREVRANGE",
            &key,
            b"+",
            from.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ];
        let history = self.history;
        self.commands
            .command(&args, move |reply| {
                done(checked(reply, |v| {
                    let mut entries = resp::entries(v)?;
                    entries.reverse();
                    Ok(history.select(&entries, now_ms))
                }))
            })
            .map_err(Failed::Redis)
    }

    /// Delivers the channel's events after `after` to `on_event` from now
    /// on (the worker's first subscriber of the channel).
    pub fn follow(&self, channel: &[u8], after: StreamId) {
        self.reader.watch(&self.key(channel), after);
    }

    /// The worker's last subscriber of the channel left.
    pub fn unfollow(&self, channel: &[u8]) {
        self.reader.unwatch(&self.key(channel));
    }

    /// The newest id of a channel (`ZERO` when it has none), to follow it
    /// from now on.
    pub fn newest_id(
        &self,
        channel: &[u8],
        done: impl FnOnce(Option<StreamId>) + 'static,
    ) -> Result<(), Failed> {
        super::streams::newest_id(&self.commands, &self.key(channel), done).map_err(Failed::Redis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64, seq: u64, fields: &[(&str, &[u8])]) -> Entry {
        Entry {
            id: StreamId { ms, seq },
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn keys_and_publish_commands() {
        assert_eq!(stream_key("chat", b"room:1"), b"websocket:chat:room:1");
        assert_eq!(stream_key("chat", b""), b"websocket:chat:");
        let args = xadd_args(b"websocket:chat:r", b"hi\0", false, 100);
        let text: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(
            text,
            [
                &b"XADD"[..],
                b"websocket:chat:r",
                b"MAXLEN",
                b"~",
                b"1000",
                b"*",
                b"d",
                b"hi\0",
                b"b",
                b"0"
            ]
        );
        let args = xadd_args(b"k", b"", true, 5000);
        assert_eq!(args[4], b"5000");
        assert_eq!(args[9], b"1");
        let args = xadd_args(b"k", b"", true, 0);
        assert_eq!(args[4], b"1000");
    }

    #[test]
    fn entries_to_messages() {
        assert_eq!(
            message(&entry(5, 1, &[("d", b"x"), ("b", b"1")])),
            Some(Message {
                id: StreamId { ms: 5, seq: 1 },
                binary: true,
                data: b"x".to_vec()
            })
        );
        assert_eq!(
            message(&entry(5, 2, &[("b", b"0"), ("d", b"")])).map(|m| (m.binary, m.data)),
            Some((false, Vec::new()))
        );
        assert_eq!(
            message(&entry(5, 3, &[("d", b"x")])).map(|m| m.binary),
            Some(false)
        );
        assert_eq!(message(&entry(5, 4, &[("x", b"y")])), None);
        assert_eq!(message(&entry(5, 6, &[("e", b"deleted")])), None);
        assert_eq!(
            event(&entry(5, 6, &[("e", b"deleted")])),
            Some(Event::Deleted(StreamId { ms: 5, seq: 6 }))
        );
        assert!(matches!(
            event(&entry(5, 7, &[("d", b"x")])),
            Some(Event::Message(_))
        ));
        assert_eq!(event(&entry(5, 8, &[("e", b"other")])), None);
        let args = tombstone_args(b"k", 3);
        assert_eq!(args[4], b"1000");
        assert_eq!(&args[5..], [&b"*"[..], b"e", b"deleted"]);
        assert_eq!(message(&entry(5, 5, &[("d", b"x"), ("b", b"yes")])), None);
    }

    #[test]
    fn history_keeps_the_newest_within_its_time() {
        let entries: Vec<Entry> = (1..=5)
            .map(|i| entry(i * 1000, 0, &[("d", format!("m{i}").as_bytes())]))
            .collect();
        let data = |ms: &[Message]| -> Vec<String> {
            ms.iter()
                .map(|m| String::from_utf8_lossy(&m.data).into_owned())
                .collect()
        };
        let h = History {
            count: 3,
            time_ms: 0,
        };
        assert_eq!(data(&h.select(&entries, 99_000)), ["m3", "m4", "m5"]);
        let h = History {
            count: 10,
            time_ms: 2500,
        };
        // At 5.5 s: m3 (3 s) and younger.
        assert_eq!(data(&h.select(&entries, 5500)), ["m3", "m4", "m5"]);
        assert_eq!(data(&h.select(&entries, 7500)), ["m5"]);
        assert!(h.select(&entries, 8000).is_empty());
        let none = History {
            count: 0,
            time_ms: 0,
        };
        assert!(none.select(&entries, 0).is_empty());
        // A tombstone ends the history before it; count is of messages.
        let mut with_delete = entries.clone();
        with_delete.insert(3, entry(3500, 0, &[("e", b"deleted")]));
        let h = History {
            count: 5,
            time_ms: 0,
        };
        assert_eq!(data(&h.select(&with_delete, 9000)), ["m4", "m5"]);
        let h = History {
            count: 1,
            time_ms: 0,
        };
        assert_eq!(data(&h.select(&with_delete, 9000)), ["m5"]);
        with_delete.push(entry(6000, 0, &[("e", b"deleted")]));
        assert!(h.select(&with_delete, 9000).is_empty());
    }

    #[test]
    fn streams_expire_unless_history_keeps_them() {
        let h = |count, time_ms| History { count, time_ms };
        assert_eq!(h(0, 0).ttl_ms(), Some(MIN_TTL_MS));
        assert_eq!(h(0, 3_600_000).ttl_ms(), Some(MIN_TTL_MS));
        assert_eq!(h(100, 0).ttl_ms(), None);
        assert_eq!(h(100, 1000).ttl_ms(), Some(MIN_TTL_MS));
        assert_eq!(h(100, 600_000).ttl_ms(), Some(600_000));
    }

    #[test]
    fn describe_reads_newest_first() {
        let reply = Value::Array(
            [(3000u64, "c"), (2000, "b"), (1000, "a")]
                .iter()
                .map(|(ms, d)| {
                    Value::Array(vec![
                        Value::Bulk(format!("{ms}-0").into_bytes()),
                        Value::Array(vec![
                            Value::Bulk(b"d".to_vec()),
                            Value::Bulk(d.as_bytes().to_vec()),
                        ]),
                    ])
                })
                .collect(),
        );
        let h = History {
            count: 10,
            time_ms: 1500,
        };
        assert_eq!(
            stored(&reply, h, 3000),
            Ok(Stored {
                messages: 2,
                last_id: Some(StreamId { ms: 3000, seq: 0 })
            })
        );
        assert_eq!(
            stored(&reply, h, 10_000),
            Ok(Stored {
                messages: 0,
                last_id: Some(StreamId { ms: 3000, seq: 0 })
            })
        );
        assert_eq!(
            stored(&Value::Array(vec![]), h, 0),
            Ok(Stored {
                messages: 0,
                last_id: None
            })
        );
        assert!(stored(&Value::Error(b"WRONGTYPE x".to_vec()), h, 0).is_err());
        // Newest first: a tombstone, then older messages: nothing stored.
        let deleted = Value::Array(vec![
            Value::Array(vec![
                Value::Bulk(b"4000-0".to_vec()),
                Value::Array(vec![
                    Value::Bulk(b"e".to_vec()),
                    Value::Bulk(b"deleted".to_vec()),
                ]),
            ]),
            match &reply {
                Value::Array(items) => items[0].clone(),
                _ => unreachable!(),
            },
        ]);
        assert_eq!(
            stored(&deleted, h, 4000),
            Ok(Stored {
                messages: 0,
                last_id: None
            })
        );
    }
}
