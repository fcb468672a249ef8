//! The channels of a `websocket_channel_zone` in nginx shared memory: an
//! rbtree of channels, each with its stored messages in publish order, in
//! a slab pool locked with the pool's own mutex, as nginx's limit_req and
//! limit_conn zones are. The zone is mapped in the master before the
//! workers fork and kept across reloads, so its pointers hold in every
//! process and channels and history survive a reload.
//!
//! Every function taking a [`Locked`] runs with the zone's mutex held.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ngx::ffi::{
    ngx_int_t, ngx_rbtree_delete, ngx_rbtree_insert, ngx_rbtree_node_t, ngx_rbtree_t,
    ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_free_locked,
    ngx_slab_pool_t, ngx_str_node_t, ngx_str_rbtree_insert_value, ngx_str_rbtree_lookup, ngx_str_t,
    NGX_ERROR, NGX_OK,
};

/// Workers a zone tells apart (`ngx_worker` below this).
pub const MAX_WORKERS: usize = 64;

/// The zone's root, at the start of its slab pool's data.
#[repr(C)]
struct Header {
    tree: ngx_rbtree_t,
    sentinel: ngx_rbtree_node_t,
    /// Seconds of the wall clock when the zone was made: the first half of
    /// every message id, so ids from before a restart never match.
    epoch: u64,
    /// The last sequence number given to a message (zone-wide).
    seq: u64,
    /// Every stored message in publish order, oldest first: a full zone
    /// drops from here.
    oldest: *mut Msg,
    newest: *mut Msg,
    published: AtomicU64,
    delivered: AtomicU64,
    subscribers: AtomicU64,
    /// A wake for the worker was lost (its socket was full): it must look
    /// at every channel it has subscribers of.
    overflow: [AtomicU32; MAX_WORKERS],
    /// The pid of the process holding each worker number, whose wake
    /// socket is named by it (see `ipc`).
    wake_pid: [AtomicU32; MAX_WORKERS],
}

#[repr(C)]
struct Channel {
    /// First: the rbtree node, keyed by the name's hash; `str` is the name.
    sn: ngx_str_node_t,
    /// Stored messages of the channel, oldest first.
    first: *mut Msg,
    last: *mut Msg,
    count: u32,
    subscribers: u32,
    last_seq: u64,
    /// Bumped by a DELETE: subscribers from before it are closed.
    generation: u64,
    /// Workers told about a publish that have not fetched since (bits).
    pending: u64,
    /// Subscribers per worker.
    counts: [u32; MAX_WORKERS],
}

#[repr(C)]
struct Msg {
    /// Next in the channel.
    next: *mut Msg,
    /// Neighbours in the zone's publish order.
    gprev: *mut Msg,
    gnext: *mut Msg,
    channel: *mut Channel,
    seq: u64,
    /// Wall clock, milliseconds.
    time_ms: u64,
    /// Workers with subscribers that have not fetched it yet (bits): it is
    /// kept for them whatever the history settings.
    unread: u64,
    len: usize,
    binary: bool,
}

/// A message as a worker copies it out of the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    pub binary: bool,
    pub data: Vec<u8>,
}

/// A channel as `GET` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub subscribers: u64,
    pub messages: u64,
    pub last_seq: u64,
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub subscribers: u64,
    /// The channel (it has subscribers, so it lives on after the unlock).
    pub channel: Option<ChannelKey>,
    /// Other workers to wake.
    pub wake: Vec<usize>,
}

/// The zone has no room, even after dropping every stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A channel's address in the zone: the same in every worker. Valid while
/// the holder counts as one of its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelKey(pub usize);

/// A zone as a worker sees it.
pub struct ShmZone {
    zone: NonNull<ngx_shm_zone_t>,
    pub name: String,
    pub history: u32,
    /// 0: no age limit.
    pub history_time_ms: u64,
}

/// The zone's mutex, held.
pub struct Locked<'a> {
    zone: &'a ShmZone,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: locked by `ShmZone::lock`, in this process.
        unsafe { ngx_shmtx_unlock(&mut (*self.zone.pool()).mutex) }
    }
}

/// nginx's cached wall clock, milliseconds.
pub fn wall_ms() -> u64 {
    // SAFETY: a plain read of the worker's time cache.
    unsafe {
        let t = &*ngx::ffi::ngx_cached_time;
        t.sec as u64 * 1000 + t.msec as u64
    }
}

fn hash(name: &[u8]) -> u32 {
    // FNV-1a: the rbtree resolves collisions by comparing names.
    name.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The id clients see: `EPOCH-SEQ`.
pub fn format_id(epoch: u64, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// The sequence number after which a resuming subscriber wants messages:
/// an id of this zone's epoch gives its number; an id from an earlier
/// epoch (before a restart) wants everything stored; anything else is no
/// resume at all.
pub fn resume_after(epoch: u64, id: &[u8]) -> Option<u64> {
    let id = core::str::from_utf8(id).ok()?;
    let (e, s) = id.split_once('-')?;
    let (e, s): (u64, u64) = (e.parse().ok()?, s.parse().ok()?);
    match e.cmp(&epoch) {
        core::cmp::Ordering::Equal => Some(s),
        core::cmp::Ordering::Less => Some(0),
        core::cmp::Ordering::Greater => None,
    }
}

impl ShmZone {
    /// # Safety
    /// `zone` is a shared memory zone whose `init` is [`init_zone`].
    pub unsafe fn new(
        zone: NonNull<ngx_shm_zone_t>,
        name: String,
        history: u32,
        history_time_ms: u64,
    ) -> Self {
        ShmZone {
            zone,
            name,
            history,
            history_time_ms,
        }
    }

    fn pool(&self) -> *mut ngx_slab_pool_t {
        // SAFETY: the zone lives as long as the cycle; its memory is a slab pool.
        unsafe { (*self.zone.as_ptr()).shm.addr.cast() }
    }

    fn header(&self) -> Option<&Header> {
        // SAFETY: `data` is the header once the zone is mapped (init_zone).
        unsafe { (*self.zone.as_ptr()).data.cast::<Header>().as_ref() }
    }

    pub fn epoch(&self) -> u64 {
        self.header().map_or(0, |h| h.epoch)
    }

    pub fn counters(&self) -> (u64, u64, u64) {
        self.header().map_or((0, 0, 0), |h| {
            (
                h.published.load(Ordering::Relaxed),
                h.delivered.load(Ordering::Relaxed),
                h.subscribers.load(Ordering::Relaxed),
            )
        })
    }

    /// A publish through Redis (the zone's own publishes count themselves).
    pub fn add_published(&self, n: u64) {
        if let Some(h) = self.header() {
            h.published.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_delivered(&self, n: u64) {
        if let Some(h) = self.header() {
            h.delivered.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets and returns the previous "wake lost" flag of `worker`.
    pub fn set_overflow(&self, worker: usize) {
        if let Some(h) = self.header() {
            h.overflow[worker % MAX_WORKERS].store(1, Ordering::Relaxed);
        }
    }

    pub fn take_overflow(&self, worker: usize) -> bool {
        self.header()
            .is_some_and(|h| h.overflow[worker % MAX_WORKERS].swap(0, Ordering::Relaxed) != 0)
    }

    pub fn set_wake_pid(&self, worker: usize, pid: u32) {
        if let Some(h) = self.header() {
            h.wake_pid[worker % MAX_WORKERS].store(pid, Ordering::Relaxed);
        }
    }

    pub fn wake_pid(&self, worker: usize) -> u32 {
        self.header().map_or(0, |h| {
            h.wake_pid[worker % MAX_WORKERS].load(Ordering::Relaxed)
        })
    }

    pub fn lock(&self) -> Option<Locked<'_>> {
        self.header()?;
        // SAFETY: the pool's mutex, made by nginx when it mapped the zone.
        unsafe { ngx_shmtx_lock(&mut (*self.pool()).mutex) };
        Some(Locked { zone: self })
    }
}

impl Locked<'_> {
    fn h(&self) -> *mut Header {
        // SAFETY: mapped (checked by `lock`).
        unsafe { (*self.zone.zone.as_ptr()).data.cast() }
    }

    fn alloc(&self, size: usize) -> *mut c_void {
        // SAFETY: the mutex is held.
        unsafe { ngx_slab_alloc_locked(self.zone.pool(), size) }
    }

    fn free(&self, p: *mut c_void) {
        // SAFETY: `p` came from `alloc`; the mutex is held.
        unsafe { ngx_slab_free_locked(self.zone.pool(), p) }
    }

    /// Allocates, dropping the zone's oldest messages while it is full.
    fn alloc_dropping(&self, size: usize, keep: *mut Channel) -> Option<*mut c_void> {
        loop {
            let p = self.alloc(size);
            if !p.is_null() {
                return Some(p);
            }
            // SAFETY: the header is mapped and locked.
            let oldest = unsafe { (*self.h()).oldest };
            if oldest.is_null() {
                return None;
            }
            // SAFETY: a stored message.
            let ch = unsafe { (*oldest).channel };
            self.drop_first(ch);
            if ch != keep {
                self.free_if_unused(ch);
            }
        }
    }

    fn find(&self, name: &[u8]) -> *mut Channel {
        let mut s = ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        };
        // SAFETY: the tree is initialised; lookup only reads.
        unsafe { ngx_str_rbtree_lookup(&mut (*self.h()).tree, &mut s, hash(name)).cast() }
    }

    fn find_or_create(&self, name: &[u8]) -> Result<*mut Channel, Full> {
        let ch = self.find(name);
        if !ch.is_null() {
            return Ok(ch);
        }
        let size = core::mem::size_of::<Channel>() + name.len();
        let p: *mut Channel = self
            .alloc_dropping(size, ptr::null_mut())
            .ok_or(Full)?
            .cast();
        // SAFETY: `size` fresh bytes; the name is stored right after the
        // channel; the tree is locked.
        unsafe {
            ptr::write_bytes(p.cast::<u8>(), 0, core::mem::size_of::<Channel>());
            let name_at = p.cast::<u8>().add(core::mem::size_of::<Channel>());
            ptr::copy_nonoverlapping(name.as_ptr(), name_at, name.len());
            (*p).sn.str_ = ngx_str_t {
                len: name.len(),
                data: name_at,
            };
            (*p).sn.node.key = hash(name) as _;
            ngx_rbtree_insert(&mut (*self.h()).tree, &mut (*p).sn.node);
        }
        Ok(p)
    }

    /// Frees a channel with no subscriber and no stored message.
    fn free_if_unused(&self, ch: *mut Channel) -> bool {
        // SAFETY: a live channel of the locked tree.
        unsafe {
            if (*ch).subscribers > 0 || !(*ch).first.is_null() {
                return false;
            }
            ngx_rbtree_delete(&mut (*self.h()).tree, &mut (*ch).sn.node);
        }
        self.free(ch.cast());
        true
    }

    /// Unlinks and frees the channel's oldest message.
    fn drop_first(&self, ch: *mut Channel) {
        // SAFETY: a live channel and its messages, locked.
        unsafe {
            let m = (*ch).first;
            if m.is_null() {
                return;
            }
            (*ch).first = (*m).next;
            if (*ch).first.is_null() {
                (*ch).last = ptr::null_mut();
            }
            (*ch).count -= 1;
            let h = self.h();
            match (*m).gprev.is_null() {
                true => (*h).oldest = (*m).gnext,
                false => (*(*m).gprev).gnext = (*m).gnext,
            }
            match (*m).gnext.is_null() {
                true => (*h).newest = (*m).gprev,
                false => (*(*m).gnext).gprev = (*m).gprev,
            }
            self.free(m.cast());
        }
    }

    /// Drops the messages the history no longer keeps (and nobody still
    /// has to fetch); frees the channel when nothing is left of it.
    /// Returns false when the channel was freed.
    fn trim(&self, ch: *mut Channel, now_ms: u64) -> bool {
        let (history, age) = (self.zone.history, self.zone.history_time_ms);
        // SAFETY: a live channel, locked.
        unsafe {
            while let Some(m) = (*ch).first.as_ref() {
                let over =
                    (*ch).count > history || (age > 0 && now_ms.saturating_sub(m.time_ms) > age);
                if !over || m.unread != 0 {
                    break;
                }
                self.drop_first(ch);
            }
        }
        !self.free_if_unused(ch)
    }

    /// Expires a few of the zone's oldest messages past `history_time`, as
    /// limit_req expires its oldest nodes on each request.
    fn expire(&self, now_ms: u64) {
        let age = self.zone.history_time_ms;
        if age == 0 {
            return;
        }
        for _ in 0..3 {
            // SAFETY: locked; a stored message and its channel.
            unsafe {
                let m = (*self.h()).oldest;
                if m.is_null()
                    || now_ms.saturating_sub((*m).time_ms) <= age
                    || (*m).unread != 0
                    || (*(*m).channel).first != m
                {
                    return;
                }
                let ch = (*m).channel;
                self.drop_first(ch);
                self.free_if_unused(ch);
            }
        }
    }

    fn worker_bits(ch: *const Channel) -> u64 {
        // SAFETY: a live channel, locked.
        let counts = unsafe { &(*ch).counts };
        counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .fold(0, |bits, (w, _)| bits | 1 << w)
    }

    /// Publishes to the channel named `name` (or, from a subscriber, to the
    /// channel it holds). `me` is the publishing worker: it delivers to its
    /// own subscribers itself.
    pub fn publish(
        &self,
        target: Result<ChannelKey, &[u8]>,
        data: &[u8],
        binary: bool,
        me: usize,
    ) -> Result<Published, Full> {
        let now = wall_ms();
        self.expire(now);
        let ch = match target {
            Ok(key) => key.0 as *mut Channel,
            Err(name) => {
                let ch = self.find(name);
                // Nobody to deliver to and nothing to keep: only a number.
                if (ch.is_null() || unsafe { (*ch).subscribers } == 0) && self.zone.history == 0 {
                    // SAFETY: locked.
                    let seq = unsafe {
                        (*self.h()).seq += 1;
                        (*self.h()).published.fetch_add(1, Ordering::Relaxed);
                        (*self.h()).seq
                    };
                    if let Some(ch) = NonNull::new(ch) {
                        // SAFETY: a live channel, locked.
                        unsafe { (*ch.as_ptr()).last_seq = seq };
                    }
                    return Ok(Published {
                        seq,
                        subscribers: 0,
                        channel: None,
                        wake: Vec::new(),
                    });
                }
                self.find_or_create(name)?
            }
        };
        let size = core::mem::size_of::<Msg>() + data.len();
        let Some(m) = self.alloc_dropping(size, ch) else {
            self.free_if_unused(ch);
            return Err(Full);
        };
        let m: *mut Msg = m.cast();
        let bits = Self::worker_bits(ch);
        // SAFETY: fresh memory for the message and its payload; the
        // channel and the zone's lists are locked.
        unsafe {
            let h = self.h();
            (*h).seq += 1;
            let seq = (*h).seq;
            m.write(Msg {
                next: ptr::null_mut(),
                gprev: (*h).newest,
                gnext: ptr::null_mut(),
                channel: ch,
                seq,
                time_ms: now,
                unread: bits,
                len: data.len(),
                binary,
            });
            ptr::copy_nonoverlapping(data.as_ptr(), m.add(1).cast::<u8>(), data.len());
            match (*h).newest.is_null() {
                true => (*h).oldest = m,
                false => (*(*h).newest).gnext = m,
            }
            (*h).newest = m;
            match (*ch).last.is_null() {
                true => (*ch).first = m,
                false => (*(*ch).last).next = m,
            }
            (*ch).last = m;
            (*ch).count += 1;
            (*ch).last_seq = seq;
            (*h).published.fetch_add(1, Ordering::Relaxed);
            let subscribers = u64::from((*ch).subscribers);
            let mut wake = Vec::new();
            for w in 0..MAX_WORKERS {
                let bit = 1u64 << w;
                if bits & bit != 0 && w != me && (*ch).pending & bit == 0 {
                    (*ch).pending |= bit;
                    wake.push(w);
                }
            }
            let alive = self.trim(ch, now);
            Ok(Published {
                seq,
                subscribers,
                channel: (alive && subscribers > 0).then_some(ChannelKey(ch as usize)),
                wake,
            })
        }
    }

    /// Copies the channel's messages after `after` for worker `me`, which
    /// no longer needs them kept; also returns the channel's generation.
    pub fn fetch(&self, key: ChannelKey, me: usize, after: u64) -> (Vec<Message>, u64) {
        let ch = key.0 as *mut Channel;
        let bit = 1u64 << (me % MAX_WORKERS);
        let mut out = Vec::new();
        // SAFETY: the caller counts among the subscribers: the channel lives.
        unsafe {
            (*ch).pending &= !bit;
            let mut m = (*ch).first;
            while let Some(msg) = m.as_mut() {
                if msg.seq > after {
                    out.push(copy(msg));
                }
                msg.unread &= !bit;
                m = msg.next;
            }
            let generation = (*ch).generation;
            self.trim(ch, wall_ms());
            (out, generation)
        }
    }

    /// Stored messages after `after`, up to `upto` (a resume).
    pub fn stored_between(&self, key: ChannelKey, after: u64, upto: u64) -> Vec<Message> {
        let mut out = Vec::new();
        // SAFETY: as in `fetch`.
        unsafe {
            let mut m = (*(key.0 as *mut Channel)).first;
            while let Some(msg) = m.as_ref() {
                if msg.seq > after && msg.seq <= upto {
                    out.push(copy(msg));
                }
                m = msg.next;
            }
        }
        out
    }

    /// Counts a subscriber of worker `me`; the channel is made if needed.
    /// Returns the key, its last sequence number and its generation.
    pub fn subscribe(&self, name: &[u8], me: usize) -> Result<(ChannelKey, u64, u64), Full> {
        let ch = self.find_or_create(name)?;
        // SAFETY: a live channel, locked.
        unsafe {
            (*ch).subscribers += 1;
            (*ch).counts[me % MAX_WORKERS] += 1;
            // The worker fetches from here on: a wake that went to a
            // process gone since (a reload, a crash) must not keep it from
            // being woken again.
            (*ch).pending &= !(1u64 << (me % MAX_WORKERS));
            (*self.h()).subscribers.fetch_add(1, Ordering::Relaxed);
            Ok((ChannelKey(ch as usize), (*ch).last_seq, (*ch).generation))
        }
    }

    /// A subscriber of worker `me` went away.
    pub fn unsubscribe(&self, key: ChannelKey, me: usize) {
        let ch = key.0 as *mut Channel;
        let w = me % MAX_WORKERS;
        // SAFETY: the caller was counted: the channel lives until this.
        unsafe {
            (*ch).subscribers -= 1;
            (*ch).counts[w] -= 1;
            (*self.h()).subscribers.fetch_sub(1, Ordering::Relaxed);
            if (*ch).counts[w] == 0 {
                let bit = 1u64 << w;
                (*ch).pending &= !bit;
                let mut m = (*ch).first;
                while let Some(msg) = m.as_mut() {
                    msg.unread &= !bit;
                    m = msg.next;
                }
            }
        }
        self.trim(ch, wall_ms());
    }

    /// Forgets the subscribers counted for worker number `worker` by a
    /// process that died without unsubscribing them (a crash): the worker
    /// that takes the number over calls it.
    pub fn reclaim(&self, worker: usize) -> u64 {
        let w = worker % MAX_WORKERS;
        let mut channels = Vec::new();
        // SAFETY: the tree is locked; its nodes are channels (their first field).
        unsafe {
            let sentinel = (*self.h()).tree.sentinel;
            let mut stack = vec![(*self.h()).tree.root];
            while let Some(node) = stack.pop() {
                if node == sentinel {
                    continue;
                }
                channels.push(node.cast::<Channel>());
                stack.push((*node).left);
                stack.push((*node).right);
            }
        }
        let mut forgotten = 0;
        for ch in channels {
            // SAFETY: a live channel of the locked tree.
            unsafe {
                let n = (*ch).counts[w];
                if n == 0 {
                    continue;
                }
                forgotten += u64::from(n);
                (*ch).counts[w] = 0;
                (*ch).subscribers -= n;
                (*self.h())
                    .subscribers
                    .fetch_sub(u64::from(n), Ordering::Relaxed);
                let bit = 1u64 << w;
                (*ch).pending &= !bit;
                let mut m = (*ch).first;
                while let Some(msg) = m.as_mut() {
                    msg.unread &= !bit;
                    m = msg.next;
                }
            }
            self.trim(ch, wall_ms());
        }
        forgotten
    }

    /// `GET`: `None` for a channel that has neither subscribers nor
    /// stored messages.
    pub fn describe(&self, name: &[u8]) -> Option<Description> {
        let ch = self.find(name);
        if ch.is_null() || !self.trim(ch, wall_ms()) {
            return None;
        }
        // SAFETY: a live channel, locked.
        unsafe {
            Some(Description {
                subscribers: u64::from((*ch).subscribers),
                messages: u64::from((*ch).count),
                last_seq: (*ch).last_seq,
            })
        }
    }

    /// `DELETE`: drops the stored messages; the subscribers' workers are
    /// returned to be told (each closes its subscribers with 1000).
    pub fn delete(&self, name: &[u8], me: usize) -> (Vec<usize>, Option<ChannelKey>) {
        let ch = self.find(name);
        if ch.is_null() {
            return (Vec::new(), None);
        }
        // SAFETY: a live channel, locked.
        unsafe {
            while !(*ch).first.is_null() {
                self.drop_first(ch);
            }
            (*ch).generation += 1;
            let bits = Self::worker_bits(ch);
            let wake = (0..MAX_WORKERS)
                .filter(|w| bits & (1 << w) != 0 && *w != me)
                .collect();
            (*ch).pending |= bits & !(1 << (me % MAX_WORKERS));
            if self.free_if_unused(ch) {
                return (wake, None);
            }
            (wake, Some(ChannelKey(ch as usize)))
        }
    }
}

/// Copies a stored message out of the zone.
///
/// # Safety
/// `m` is a stored message, locked.
unsafe fn copy(m: &Msg) -> Message {
    // SAFETY: the payload follows the message header.
    let data = unsafe {
        core::slice::from_raw_parts((m as *const Msg).add(1).cast::<u8>(), m.len).to_vec()
    };
    Message {
        seq: m.seq,
        binary: m.binary,
        data,
    }
}

/// Maps the zone: the previous cycle's header on reload (channels and
/// history live on), else a new header carved from the slab pool.
///
/// # Safety
/// Called by nginx with the zone and the previous cycle's data, or null.
pub unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: as nginx calls it; the pool is the zone's memory, fresh or
    // kept, mapped in this process.
    unsafe {
        if !old.is_null() {
            (*zone).data = old;
            return NGX_OK as ngx_int_t;
        }
        let pool: *mut ngx_slab_pool_t = (*zone).shm.addr.cast();
        // A full zone is a normal state here (it drops its oldest messages),
        // not one for nginx's "no memory" alert.
        (*pool).set_log_nomem(0);
        if (*zone).shm.exists != 0 {
            (*zone).data = (*pool).data;
            return NGX_OK as ngx_int_t;
        }
        let h: *mut Header = ngx_slab_alloc_locked(pool, core::mem::size_of::<Header>()).cast();
        if h.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::write_bytes(h, 0, 1);
        let sentinel = ptr::addr_of_mut!((*h).sentinel);
        (*sentinel).color = 0;
        (*h).tree.root = sentinel;
        (*h).tree.sentinel = sentinel;
        (*h).tree.insert = Some(ngx_str_rbtree_insert_value);
        (*h).epoch = wall_ms() / 1000;
        (*pool).data = h.cast();
        (*zone).data = h.cast();
    }
    NGX_OK as ngx_int_t
}

#[cfg(test)]
mod tests {
    use super::{format_id, resume_after};

    #[test]
    fn ids_parse_back_and_other_epochs_want_everything() {
        assert_eq!(format_id(1700000000, 42), "1700000000-42");
        assert_eq!(resume_after(1700000000, b"1700000000-42"), Some(42));
        assert_eq!(resume_after(1700000000, b"1600000000-42"), Some(0));
        assert_eq!(resume_after(1700000000, b"1800000000-42"), None);
        assert_eq!(resume_after(1700000000, b""), None);
        assert_eq!(resume_after(1700000000, b"x-1"), None);
        assert_eq!(resume_after(1700000000, b"1700000000-"), None);
    }
}
