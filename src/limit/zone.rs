//! The shared memory of a `websocket_limit_zone`: one bucket per key in a
//! red-black tree (by hash, then bytes), the keys also in a queue from the
//! most to the least recently used, nodes carved from nginx's slab
//! allocator under its mutex, as `ngx_http_limit_req_module` keeps them.
//! A zone that is full forgets its least recently used keys; only when
//! nothing is left to forget does a new key go unlimited, with a log line.
//!
//! The only module code that touches the zone's raw memory.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};

use nginx_sys::{
    ngx_queue_empty, ngx_queue_init, ngx_queue_insert_after, ngx_queue_remove, ngx_rbt_red,
    ngx_rbtree_delete, ngx_rbtree_init, ngx_rbtree_insert,
};
use ngx::ffi::{
    ngx_int_t, ngx_log_t, ngx_queue_t, ngx_rbtree_node_t, ngx_rbtree_t, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_alloc_locked, ngx_slab_free_locked,
    ngx_slab_pool_t, ngx_str_t, NGX_ERROR, NGX_LOG_EMERG, NGX_LOG_WARN, NGX_OK,
};
use ngx::ngx_log_error;

use super::bucket::{self, State, Verdict};
use crate::ngx_io::ComplexValue;

/// What a message past the limit does: an index into the zone's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delay = 0,
    Close = 1,
}

/// The tag of every limit zone: nginx keeps a zone across a reload when
/// its name, size and tag are the same.
static TAG: u8 = 0;

pub fn tag() -> *mut c_void {
    ptr::addr_of!(TAG).cast_mut().cast()
}

/// A zone as one configuration sees it (in its pool): set by
/// `websocket_limit_zone`; a `websocket_limit` naming a zone that nobody
/// defined finds the nginx zone without it.
#[repr(C)]
pub struct ZoneConf {
    pub key: ComplexValue,
    /// The key as written, to refuse a reload that changes it.
    pub key_source: ngx_str_t,
    /// Milli-messages per second.
    pub rate: u64,
    /// Set when nginx maps the zone.
    shared: *mut Shared,
    pool: *mut ngx_slab_pool_t,
}

impl ZoneConf {
    pub fn new(key: ComplexValue, key_source: ngx_str_t, rate: u64) -> Self {
        ZoneConf {
            key,
            key_source,
            rate,
            shared: ptr::null_mut(),
            pool: ptr::null_mut(),
        }
    }
}

/// The zone's header in shared memory.
#[repr(C)]
struct Shared {
    rbtree: ngx_rbtree_t,
    sentinel: ngx_rbtree_node_t,
    /// Most recently used first.
    lru: ngx_queue_t,
    /// Messages past the limit, by [`Action`]; summed over all workers.
    limited: [AtomicU64; 2],
}

/// One key's bucket; its bytes follow the struct.
#[repr(C)]
struct Node {
    /// First: the tree hands out pointers to it. `key` is the hash.
    rb: ngx_rbtree_node_t,
    lru: ngx_queue_t,
    excess: u64,
    last: u64,
    /// No message was admitted yet (the node was made by a check that
    /// did not take the message).
    fresh: bool,
    len: u16,
}

/// The key bytes of a node.
///
/// # Safety
/// `node` is a node of a zone, followed by its `len` key bytes.
unsafe fn node_key<'a>(node: *const Node) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::slice::from_raw_parts(
            node.cast::<u8>().add(size_of::<Node>()),
            usize::from((*node).len),
        )
    }
}

/// The node whose LRU link is `q`.
///
/// # Safety
/// `q` is the `lru` field of a node.
unsafe fn node_of(q: *mut ngx_queue_t) -> *mut Node {
    // SAFETY: guaranteed by the caller.
    unsafe { q.cast::<u8>().sub(offset_of!(Node, lru)).cast() }
}

/// Inserts by hash, then by key bytes (the order lookups follow).
unsafe extern "C" fn insert_value(
    mut temp: *mut ngx_rbtree_node_t,
    node: *mut ngx_rbtree_node_t,
    sentinel: *mut ngx_rbtree_node_t,
) {
    // SAFETY: nginx passes the tree's root, a new node and the sentinel;
    // every node in the tree is a `Node` with its key behind it.
    unsafe {
        loop {
            let left = match (*node).key.cmp(&(*temp).key) {
                core::cmp::Ordering::Less => true,
                core::cmp::Ordering::Greater => false,
                core::cmp::Ordering::Equal => {
                    node_key(node.cast::<Node>()) < node_key(temp.cast::<Node>())
                }
            };
            let next = if left {
                &mut (*temp).left
            } else {
                &mut (*temp).right
            };
            if *next == sentinel {
                *next = node;
                break;
            }
            temp = *next;
        }
        (*node).parent = temp;
        (*node).left = sentinel;
        (*node).right = sentinel;
        ngx_rbt_red(node);
    }
}

/// The zone's `init`: keeps the previous configuration's buckets when
/// nginx reuses the zone on reload, else sets up the tree in fresh memory.
///
/// # Safety
/// Called by nginx with a zone whose data is a [`ZoneConf`], and the
/// previous cycle's data for it (a `ZoneConf` too) or null.
pub unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old: *mut c_void) -> ngx_int_t {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let conf = &mut *(*zone).data.cast::<ZoneConf>();
        if let Some(old) = old.cast::<ZoneConf>().as_ref() {
            if old.key_source.as_bytes() != conf.key_source.as_bytes() {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    (*zone).shm.log,
                    "websocket_limit_zone \"{}\" uses the \"{}\" key while previously it used the \"{}\" key",
                    (*zone).shm.name,
                    conf.key_source,
                    old.key_source
                );
                return NGX_ERROR as ngx_int_t;
            }
            conf.shared = old.shared;
            conf.pool = old.pool;
            return NGX_OK as ngx_int_t;
        }
        let pool: *mut ngx_slab_pool_t = (*zone).shm.addr.cast();
        conf.pool = pool;
        let shared: *mut Shared = ngx_slab_alloc(pool, size_of::<Shared>()).cast();
        if shared.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::write_bytes(shared, 0, 1);
        ngx_rbtree_init(
            &mut (*shared).rbtree,
            &mut (*shared).sentinel,
            Some(insert_value),
        );
        ngx_queue_init(&mut (*shared).lru);
        (*pool).data = shared.cast();
        // A full zone is expected (it then forgets old keys): no [crit]
        // "ngx_slab_alloc() failed: no memory" for it.
        (*pool).set_log_nomem(0);
        conf.shared = shared;
    }
    NGX_OK as ngx_int_t
}

/// A configured zone, valid for the configuration's lifetime.
#[derive(Clone, Copy)]
pub struct Zone(NonNull<ngx_shm_zone_t>);

impl Zone {
    /// # Safety
    /// `zone` is an nginx zone with this module's [`tag`].
    pub unsafe fn from_ptr(zone: NonNull<ngx_shm_zone_t>) -> Self {
        Zone(zone)
    }

    fn raw(&self) -> &ngx_shm_zone_t {
        // SAFETY: nginx's zones live as long as their configuration.
        unsafe { self.0.as_ref() }
    }

    pub fn name(&self) -> &[u8] {
        self.raw().shm.name.as_bytes()
    }

    /// The zone's settings; `None` when no `websocket_limit_zone` defined it.
    pub fn conf(&self) -> Option<&ZoneConf> {
        // SAFETY: the data of a zone with our tag is a ZoneConf or null.
        unsafe { self.raw().data.cast::<ZoneConf>().as_ref() }
    }

    fn shared(&self) -> Option<(&ZoneConf, *mut Shared)> {
        let conf = self.conf()?;
        (!conf.shared.is_null()).then_some((conf, conf.shared))
    }

    /// Counts a message past the limit.
    pub fn count(&self, action: Action) {
        if let Some((_, shared)) = self.shared() {
            // SAFETY: mapped shared memory; the counters are atomic.
            unsafe { (*shared).limited[action as usize].fetch_add(1, Ordering::Relaxed) };
        }
    }

    /// Messages past the limit so far, by [`Action`].
    pub fn counts(&self) -> [u64; 2] {
        match self.shared() {
            // SAFETY: as in `count`.
            Some((_, shared)) => unsafe {
                [
                    (*shared).limited[0].load(Ordering::Relaxed),
                    (*shared).limited[1].load(Ordering::Relaxed),
                ]
            },
            None => [0, 0],
        }
    }

    /// The verdict on one more message for `key` now; with `take`, an
    /// admitted message is accounted. `None`: the zone cannot hold the key
    /// (logged), so the message is not limited by it.
    pub fn check(
        &self,
        key: &[u8],
        hash: usize,
        burst: u64,
        now: u64,
        take: bool,
        log: *mut ngx_log_t,
    ) -> Option<Verdict> {
        let (conf, shared) = self.shared()?;
        let pool = conf.pool;
        // SAFETY: the zone's mutex guards the tree, the queue and the
        // nodes; it is released on every path below.
        unsafe {
            ngx_shmtx_lock(&mut (*pool).mutex);
            let node = match lookup(shared, key, hash) {
                Some(node) => node,
                None => match create(shared, pool, key, hash, now, conf.rate) {
                    Some(node) => node,
                    None => {
                        ngx_shmtx_unlock(&mut (*pool).mutex);
                        ngx_log_error!(
                            NGX_LOG_WARN,
                            log,
                            "websocket_limit: zone \"{}\" cannot hold the key of this session, its messages are not limited by it",
                            self.raw().shm.name
                        );
                        return None;
                    }
                },
            };
            // The most recently used first.
            ngx_queue_remove(&mut (*node).lru);
            ngx_queue_insert_after(&mut (*shared).lru, &mut (*node).lru);
            let state = (!(*node).fresh).then_some(State {
                excess: (*node).excess,
                last: (*node).last,
            });
            let verdict = bucket::check(state, now, conf.rate, burst);
            if let (Verdict::Admit(s), true) = (verdict, take) {
                (*node).excess = s.excess;
                (*node).last = s.last;
                (*node).fresh = false;
            }
            ngx_shmtx_unlock(&mut (*pool).mutex);
            Some(verdict)
        }
    }
}

/// The node of `key`, if the zone has it.
///
/// # Safety
/// The zone's mutex is held.
unsafe fn lookup(shared: *mut Shared, key: &[u8], hash: usize) -> Option<*mut Node> {
    // SAFETY: guaranteed by the caller; every tree node is a `Node`.
    unsafe {
        let sentinel: *mut ngx_rbtree_node_t = &mut (*shared).sentinel;
        let mut node = (*shared).rbtree.root;
        while node != sentinel {
            let next = match hash.cmp(&(*node).key) {
                core::cmp::Ordering::Less => (*node).left,
                core::cmp::Ordering::Greater => (*node).right,
                core::cmp::Ordering::Equal => match key.cmp(node_key(node.cast::<Node>())) {
                    core::cmp::Ordering::Equal => return Some(node.cast()),
                    core::cmp::Ordering::Less => (*node).left,
                    core::cmp::Ordering::Greater => (*node).right,
                },
            };
            node = next;
        }
        None
    }
}

/// A new node for `key`: first expiring a couple of keys idle for a minute
/// with empty buckets, then, while the zone is full, forgetting the least
/// recently used keys one by one.
///
/// # Safety
/// The zone's mutex is held.
unsafe fn create(
    shared: *mut Shared,
    pool: *mut ngx_slab_pool_t,
    key: &[u8],
    hash: usize,
    now: u64,
    rate: u64,
) -> Option<*mut Node> {
    let len = u16::try_from(key.len()).ok()?;
    // SAFETY: guaranteed by the caller.
    unsafe {
        expire_idle(shared, pool, now, rate, 2);
        let size = size_of::<Node>() + key.len();
        let mut node: *mut Node = ngx_slab_alloc_locked(pool, size).cast();
        while node.is_null() {
            if !evict_oldest(shared, pool) {
                return None;
            }
            node = ngx_slab_alloc_locked(pool, size).cast();
        }
        ptr::write(
            node,
            Node {
                rb: core::mem::zeroed(),
                lru: core::mem::zeroed(),
                excess: 0,
                last: now,
                fresh: true,
                len,
            },
        );
        (*node).rb.key = hash;
        ptr::copy_nonoverlapping(
            key.as_ptr(),
            node.cast::<u8>().add(size_of::<Node>()),
            key.len(),
        );
        ngx_rbtree_insert(&mut (*shared).rbtree, &mut (*node).rb);
        ngx_queue_insert_after(&mut (*shared).lru, &mut (*node).lru);
        Some(node)
    }
}

/// Forgets up to `n` of the least recently used keys whose buckets have
/// drained, idle for a minute or more (as `ngx_http_limit_req_expire`).
///
/// # Safety
/// The zone's mutex is held.
unsafe fn expire_idle(
    shared: *mut Shared,
    pool: *mut ngx_slab_pool_t,
    now: u64,
    rate: u64,
    n: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        for _ in 0..n {
            if ngx_queue_empty(&(*shared).lru) {
                return;
            }
            let node = node_of((*shared).lru.prev);
            let idle = (now.wrapping_sub((*node).last) as i64).unsigned_abs();
            // Keys used within the last minute stay, and so do buckets
            // that have not drained yet.
            let drained = rate.saturating_mul(idle) / 1000;
            if idle < 60_000 || (!(*node).fresh && (*node).excess > drained) {
                return;
            }
            free_node(shared, pool, node);
        }
    }
}

/// Forgets the least recently used key; false when there is none.
///
/// # Safety
/// The zone's mutex is held.
unsafe fn evict_oldest(shared: *mut Shared, pool: *mut ngx_slab_pool_t) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if ngx_queue_empty(&(*shared).lru) {
            return false;
        }
        free_node(shared, pool, node_of((*shared).lru.prev));
        true
    }
}

/// # Safety
/// The zone's mutex is held; `node` is in the tree and the queue.
unsafe fn free_node(shared: *mut Shared, pool: *mut ngx_slab_pool_t, node: *mut Node) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        ngx_queue_remove(&mut (*node).lru);
        ngx_rbtree_delete(&mut (*shared).rbtree, &mut (*node).rb);
        ngx_slab_free_locked(pool, node.cast());
    }
}

/// FNV-1a over the key: the tree's order (ties are told by the bytes).
pub fn hash(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as usize
}
