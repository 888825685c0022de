//! Keeping spool files and their mappings between messages.
//!
//! Creating, growing, trimming and unlinking a file per message costs
//! far more than the message itself on ext4 (inode allocation, block
//! allocation and, on a file system mounted with `discard`, a
//! synchronous discard per freed extent), and every `munmap` of a
//! mapping other threads may have touched costs a TLB shootdown. So the
//! spool keeps two small sets:
//!
//! - the **pool**: freed message files, still open and mapped, parked
//!   under `<dir>/free/`. A new message renames one into `q/` instead of
//!   creating a file; deleting a message renames it back instead of
//!   unlinking it. The old record stays in the file: nothing scans
//!   `free/`, and a file renamed for a new message whose header never
//!   reached the disk carries an id that differs from its name, which
//!   recovery treats as incomplete. A rename is a few microseconds;
//!   create + fallocate + trim + unlink measured about 200 µs here.
//! - the **hot set**: recently committed messages, kept mapped (the
//!   mapping the body was received into) so that delivery reads them
//!   without opening, reading or mapping anything. Oldest first out
//!   when full; a message that left it is read from its file as usual
//!   and is never pooled.
//!
//! Both sets are bounded (files, bytes, entries), so descriptors and
//! mappings stay bounded however large the queue grows.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use memmap2::MmapMut;

use crate::MessageId;
use crate::envelope::Envelope;
use crate::format::{HEADER_LEN, Header};

/// Most files kept in the pool.
pub(crate) const POOL_FILES: usize = 512;
/// Most bytes of files kept in the pool.
pub(crate) const POOL_BYTES: u64 = 64 << 20;
/// Files larger than this are trimmed at commit and never reused.
pub(crate) const REUSE_MAX_FILE: usize = 1 << 20;
/// Most committed messages kept mapped.
pub(crate) const HOT_MAX: usize = 2048;
/// Most bytes the hot set may hold (mapped files plus envelopes).
pub(crate) const HOT_BYTES: usize = 256 << 20;

/// Locks, ignoring poisoning (the data stays consistent: every critical
/// section is a plain container operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A spool file with a writable mapping of all of it.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) file: File,
    pub(crate) map: MmapMut,
}

/// A free file in the pool, at `<dir>/free/<name as 16 hex digits>`.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) mapped: Mapped,
    pub(crate) name: u64,
}

/// The free files.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Slot>,
    bytes: u64,
}

impl Pool {
    /// Whether a file of `size` bytes may join.
    pub(crate) fn has_room(&self, size: usize) -> bool {
        size <= REUSE_MAX_FILE
            && self.free.len() < POOL_FILES
            && self.bytes + size as u64 <= POOL_BYTES
    }

    pub(crate) fn push(&mut self, slot: Slot) {
        self.bytes += slot.mapped.map.len() as u64;
        self.free.push(slot);
    }

    /// The most recently freed file (its pages are the likeliest to be
    /// in memory).
    pub(crate) fn pop(&mut self) -> Option<Slot> {
        let slot = self.free.pop()?;
        self.bytes -= slot.mapped.map.len() as u64;
        Some(slot)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }
}

/// A committed message kept mapped.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) id: MessageId,
    pub(crate) mapped: Mapped,
    pub(crate) header: Header,
    pub(crate) crc: u32,
    pub(crate) env: Envelope,
    /// Mirror of the file's done map, updated by `mark_done`.
    pub(crate) done: Mutex<Vec<u8>>,
}

impl Held {
    /// What keeping it costs: the mapped file and the decoded envelope
    /// (roughly).
    pub(crate) fn cost(&self) -> usize {
        let env = &self.env;
        let rcpts: usize = env
            .recipients
            .iter()
            .map(|r| {
                64 + r.address.len() + r.orcpt.as_ref().map_or(0, String::len)
            })
            .sum();
        self.mapped.map.len() + env.sender.len() + env.received.len() + rcpts
    }

    /// Bytes `from..from + len` of the mapping. Never a slice over the
    /// whole mapping: `mark_done` writes the done map (after the header,
    /// before the body) with `pwrite` while readers hold slices, so no
    /// reference may cover those bytes.
    fn range(&self, from: u64, len: u64) -> &[u8] {
        let (from, len) = (from as usize, len as usize);
        let end = from.saturating_add(len).min(self.mapped.map.len());
        let from = from.min(end);
        // SAFETY: `from..end` lies within the mapping (clamped above),
        // which lives as long as `self`. Those bytes are the header or
        // the body and envelope of a committed message: nothing writes
        // them while the message is held (the file is reused only once
        // this `Held` is owned by one owner again, and `mark_done` writes
        // only the done map, which callers never ask for).
        unsafe {
            std::slice::from_raw_parts(
                self.mapped.map.as_ptr().add(from),
                end - from,
            )
        }
    }

    /// The header as stored.
    pub(crate) fn header_bytes(&self) -> &[u8; HEADER_LEN] {
        self.range(0, HEADER_LEN as u64).try_into().unwrap_or(&[0; HEADER_LEN])
    }

    /// The body, wire form.
    pub(crate) fn body(&self) -> &[u8] {
        self.range(self.header.body_off, self.header.body_len)
    }

    /// The encoded envelope.
    pub(crate) fn env_bytes(&self) -> &[u8] {
        self.range(
            self.header.body_off + self.header.body_len,
            self.header.env_len,
        )
    }
}

/// Recently committed messages, oldest first out.
#[derive(Debug)]
pub(crate) struct Hot {
    cap: usize,
    max_bytes: usize,
    /// Sum of the members' [`Held::cost`].
    bytes: usize,
    by_id: HashMap<MessageId, Arc<Held>>,
    /// Insertion order; may name ids already removed.
    order: VecDeque<MessageId>,
}

impl Hot {
    /// Holds at most `cap` messages costing at most `max_bytes` in all.
    pub(crate) fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            cap,
            max_bytes,
            bytes: 0,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Adds `held`; returns what had to leave to make room (drop it
    /// outside the lock: dropping unmaps).
    pub(crate) fn insert(&mut self, held: Arc<Held>) -> Vec<Arc<Held>> {
        let mut out = Vec::new();
        let cost = held.cost();
        while !self.by_id.is_empty()
            && (self.by_id.len() >= self.cap.max(1)
                || self.bytes + cost > self.max_bytes)
        {
            match self.order.pop_front() {
                Some(old) => out.extend(self.remove(old)),
                None => break,
            }
        }
        if self.order.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
        self.order.push_back(held.id);
        self.bytes += cost;
        if let Some(old) = self.by_id.insert(held.id, held) {
            self.bytes -= old.cost();
            out.push(old);
        }
        out
    }

    pub(crate) fn get(&self, id: MessageId) -> Option<Arc<Held>> {
        self.by_id.get(&id).cloned()
    }

    /// The entry itself (to look at its reference count).
    pub(crate) fn get_ref(&self, id: MessageId) -> Option<&Arc<Held>> {
        self.by_id.get(&id)
    }

    pub(crate) fn remove(&mut self, id: MessageId) -> Option<Arc<Held>> {
        let held = self.by_id.remove(&id)?;
        self.bytes -= held.cost();
        Some(held)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(file: &File, id: u128) -> Arc<Held> {
        Arc::new(Held {
            id: MessageId::from_u128(id),
            mapped: Mapped {
                file: file.try_clone().unwrap(),
                map: MmapMut::map_anon(4096).unwrap(),
            },
            header: Header {
                slots: 0,
                id,
                body_off: 64,
                body_len: 0,
                env_len: 0,
            },
            crc: 0,
            env: Envelope::default(),
            done: Mutex::new(Vec::new()),
        })
    }

    #[test]
    fn hot_set_is_bounded_and_evicts_oldest() {
        let f = tempfile::tempfile().unwrap();
        let cap = 50;
        let mut hot = Hot::new(cap, usize::MAX);
        for i in 0..cap as u128 {
            assert!(hot.insert(held(&f, i)).is_empty());
        }
        // Removing some leaves stale ids in the order queue.
        assert!(hot.remove(MessageId::from_u128(0)).is_some());
        let out = hot.insert(held(&f, 10_000));
        assert!(out.is_empty(), "room after a removal");
        let out = hot.insert(held(&f, 10_001));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, MessageId::from_u128(1), "oldest live one");
        assert_eq!(hot.len(), cap);
        assert!(hot.get(MessageId::from_u128(1)).is_none());
        assert!(hot.get(MessageId::from_u128(10_001)).is_some());
        // Churn keeps the order queue from growing without bound.
        for i in 20_000..30_000u128 {
            hot.insert(held(&f, i));
            hot.remove(MessageId::from_u128(i));
        }
        assert!(hot.order.len() <= 2 * hot.by_id.len() + 65);
    }

    #[test]
    fn held_ranges_are_clamped_to_the_mapping() {
        let f = tempfile::tempfile().unwrap();
        let mut map = MmapMut::map_anon(4096).unwrap();
        map[..6].copy_from_slice(b"header");
        map[100..104].copy_from_slice(b"body");
        map[104..107].copy_from_slice(b"env");
        let h = Held {
            id: MessageId::from_u128(1),
            mapped: Mapped { file: f, map },
            header: Header {
                slots: 0,
                id: 1,
                body_off: 100,
                body_len: 4,
                env_len: 3,
            },
            crc: 0,
            env: Envelope::default(),
            done: Mutex::new(Vec::new()),
        };
        assert_eq!(&h.header_bytes()[..6], b"header");
        assert_eq!(h.body(), b"body");
        assert_eq!(h.env_bytes(), b"env");
        assert_eq!(h.range(4090, 100).len(), 6, "clamped at the end");
        assert!(h.range(5000, 10).is_empty());
        assert!(h.range(u64::MAX, u64::MAX).is_empty());
    }

    #[test]
    fn hot_set_is_bounded_in_bytes_too() {
        let f = tempfile::tempfile().unwrap();
        let one = held(&f, 0).cost();
        let mut hot = Hot::new(100, 3 * one);
        for i in 0..3 {
            assert!(hot.insert(held(&f, i)).is_empty());
        }
        let out = hot.insert(held(&f, 3));
        assert_eq!(out.len(), 1, "the fourth pushes the oldest out");
        assert_eq!(out[0].id, MessageId::from_u128(0));
        assert_eq!(hot.bytes, 3 * one);
        assert!(hot.remove(MessageId::from_u128(2)).is_some());
        assert_eq!(hot.bytes, 2 * one);
        // One member always fits, whatever it costs.
        let mut tiny = Hot::new(100, 1);
        assert!(tiny.insert(held(&f, 7)).is_empty());
        assert_eq!(tiny.insert(held(&f, 8)).len(), 1);
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn pool_bounds_files_and_bytes() {
        let f = tempfile::tempfile().unwrap();
        let mut pool = Pool::default();
        assert!(!pool.has_room(REUSE_MAX_FILE + 1));
        for name in 0..POOL_FILES as u64 {
            assert!(pool.has_room(4096));
            let h = Arc::try_unwrap(held(&f, u128::from(name))).unwrap();
            pool.push(Slot { mapped: h.mapped, name });
        }
        assert!(!pool.has_room(4096), "count bound");
        assert_eq!(pool.len(), POOL_FILES);
        assert_eq!(pool.pop().unwrap().name, POOL_FILES as u64 - 1);
        assert_eq!(pool.bytes, 4096 * (POOL_FILES as u64 - 1));
        assert!(Pool { free: Vec::new(), bytes: POOL_BYTES }.has_room(0));
        assert!(!Pool { free: Vec::new(), bytes: POOL_BYTES }.has_room(1));
    }
}
