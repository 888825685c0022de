//! A sans-IO timer queue: an indexed binary min-heap over a slab.
//!
//! The queue never reads the clock and never sleeps: callers pass `now`
//! in and ask for [`TimerQueue::next_deadline`] to decide how long to
//! wait. Every live timer owns exactly one slab entry and one heap slot;
//! cancelling removes both at once (O(log n)), so a server that re-arms
//! an idle timeout on every command keeps the queue as small as the
//! number of timers actually pending. Nothing is deleted lazily.
//!
//! Timers with equal deadlines pop in the order they were inserted.

use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

/// Identifies one timer in a [`TimerQueue`].
///
/// An id stays unique for the life of its queue: cancelling a timer that
/// has already fired or been cancelled is a no-op, even if its slab slot
/// has since been reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    key: usize,
    seq: u64,
}

/// A point in a queue's insertion history; see [`TimerQueue::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

struct Entry<T> {
    at: Instant,
    seq: u64,
    /// Index of this entry in `TimerQueue::heap`.
    pos: usize,
    value: T,
}

/// A min-heap of deadlines carrying a value of type `T` each.
pub struct TimerQueue<T> {
    entries: Slab<Entry<T>>,
    /// Slab keys ordered as a binary heap by `(at, seq)`.
    heap: Vec<usize>,
    next_seq: u64,
}

impl<T> fmt::Debug for TimerQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerQueue")
            .field("len", &self.len())
            .field("next_deadline", &self.next_deadline())
            .finish()
    }
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self { entries: Slab::new(), heap: Vec::new(), next_seq: 0 }
    }

    /// Number of live (pending) timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Slots allocated: the high-water mark of live timers, never more.
    pub fn capacity(&self) -> usize {
        self.entries.capacity().max(self.heap.capacity())
    }

    /// Arms a timer for `at` (which may already be past).
    pub fn insert(&mut self, at: Instant, value: T) -> TimerId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pos = self.heap.len();
        let key = self.entries.insert(Entry { at, seq, pos, value });
        self.heap.push(key);
        self.sift_up(pos);
        TimerId { key, seq }
    }

    /// The value of a live timer, or `None` if it fired or was cancelled.
    pub fn get(&self, id: TimerId) -> Option<&T> {
        self.live(id).map(|e| &e.value)
    }

    /// Removes a live timer and returns its value; a no-op returning
    /// `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let pos = self.live(id)?.pos;
        Some(self.remove_at(pos).1)
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|&k| self.entries[k].at)
    }

    /// How long from `now` until the earliest deadline (zero if it is
    /// already due), or `None` when no timer is pending.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline().map(|at| at.saturating_duration_since(now))
    }

    /// Marks the current point in insertion history. Passing it to
    /// [`pop_expired`](Self::pop_expired) excludes timers inserted after
    /// this call, so a callback that re-arms a timer for a past instant
    /// cannot keep a firing loop going forever.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.next_seq)
    }

    /// Pops the earliest timer whose deadline is `<= now` and that was
    /// inserted before `epoch`. Returns `None` when the earliest timer is
    /// not yet due or is newer than `epoch` (it will then be due on the
    /// next call with a fresh epoch).
    pub fn pop_expired(
        &mut self,
        now: Instant,
        epoch: Epoch,
    ) -> Option<(TimerId, T)> {
        let &key = self.heap.first()?;
        let e = &self.entries[key];
        if e.at > now || e.seq >= epoch.0 {
            return None;
        }
        Some(self.remove_at(0))
    }

    fn live(&self, id: TimerId) -> Option<&Entry<T>> {
        self.entries.get(id.key).filter(|e| e.seq == id.seq)
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (ea, eb) =
            (&self.entries[self.heap[a]], &self.entries[self.heap[b]]);
        (ea.at, ea.seq) < (eb.at, eb.seq)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        let (ka, kb) = (self.heap[a], self.heap[b]);
        self.entries[ka].pos = a;
        self.entries[kb].pos = b;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.less(pos, parent) {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let (l, r) = (2 * pos + 1, 2 * pos + 2);
            let mut min = pos;
            if l < len && self.less(l, min) {
                min = l;
            }
            if r < len && self.less(r, min) {
                min = r;
            }
            if min == pos {
                break;
            }
            self.swap(pos, min);
            pos = min;
        }
    }

    fn remove_at(&mut self, pos: usize) -> (TimerId, T) {
        let last = self.heap.len() - 1;
        if pos != last {
            self.swap(pos, last);
        }
        let key = self.heap.pop().expect("heap holds pos");
        if pos < self.heap.len() {
            // The moved element may belong above or below `pos`.
            self.sift_down(pos);
            self.sift_up(pos);
        }
        let e = self.entries.remove(key);
        self.shrink_if_sparse();
        (TimerId { key, seq: e.seq }, e.value)
    }

    /// Gives memory back after a burst, so usage follows live timers.
    fn shrink_if_sparse(&mut self) {
        let cap = self.heap.capacity();
        if cap > 64 && self.heap.len() < cap / 4 {
            self.heap.shrink_to(cap / 2);
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = Slab::new();
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.entries.len(), self.heap.len());
        for (pos, &key) in self.heap.iter().enumerate() {
            assert_eq!(self.entries[key].pos, pos);
            if pos > 0 {
                assert!(!self.less(pos, (pos - 1) / 2), "heap order");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(q: &mut TimerQueue<u64>, now: Instant) -> Vec<u64> {
        let epoch = q.epoch();
        let mut out = Vec::new();
        while let Some((_, v)) = q.pop_expired(now, epoch) {
            q.check_invariants();
            out.push(v);
        }
        out
    }

    #[test]
    fn pops_in_deadline_order_then_insertion_order() {
        let now = t0();
        let mut q = TimerQueue::new();
        for (off, v) in [(30, 3), (10, 1), (20, 2), (10, 11), (0, 0)] {
            q.insert(now + ms(off), v);
            q.check_invariants();
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.next_deadline(), Some(now));
        assert_eq!(drain(&mut q, now + ms(15)), vec![0, 1, 11]);
        assert_eq!(q.timeout(now + ms(15)), Some(ms(5)));
        assert_eq!(drain(&mut q, now + ms(100)), vec![2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.timeout(now), None);
    }

    #[test]
    fn nothing_due_before_deadline() {
        let now = t0();
        let mut q = TimerQueue::new();
        q.insert(now + ms(10), 1);
        assert!(drain(&mut q, now + ms(9)).is_empty());
        assert_eq!(q.timeout(now + ms(9)), Some(ms(1)));
        assert_eq!(q.timeout(now + ms(11)), Some(Duration::ZERO));
        assert_eq!(drain(&mut q, now + ms(10)), vec![1]);
    }

    #[test]
    fn cancel_removes_and_is_idempotent() {
        let now = t0();
        let mut q = TimerQueue::new();
        let a = q.insert(now + ms(1), 1);
        let b = q.insert(now + ms(2), 2);
        let c = q.insert(now + ms(3), 3);
        assert_eq!(q.get(b), Some(&2));
        assert_eq!(q.cancel(b), Some(2));
        q.check_invariants();
        assert_eq!(q.cancel(b), None);
        assert_eq!(q.get(b), None);
        assert_eq!(drain(&mut q, now + ms(10)), vec![1, 3]);
        // Fired timers cancel as no-ops.
        assert_eq!(q.cancel(a), None);
        assert_eq!(q.cancel(c), None);
    }

    #[test]
    fn stale_id_does_not_cancel_reused_slot() {
        let now = t0();
        let mut q = TimerQueue::new();
        let old = q.insert(now, 1);
        assert_eq!(q.cancel(old), Some(1));
        let new = q.insert(now, 2);
        assert_eq!(old.key, new.key, "slot reused");
        assert_eq!(q.cancel(old), None);
        assert_eq!(q.get(new), Some(&2));
    }

    #[test]
    fn epoch_excludes_timers_inserted_while_firing() {
        let now = t0();
        let mut q = TimerQueue::new();
        q.insert(now, 1);
        let epoch = q.epoch();
        q.insert(now - ms(0), 2);
        assert_eq!(q.pop_expired(now, epoch).map(|x| x.1), Some(1));
        assert_eq!(q.pop_expired(now, epoch), None);
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q, now), vec![2]);
    }

    #[test]
    fn set_cancel_cycles_keep_queue_small() {
        let now = t0();
        let mut q = TimerQueue::new();
        let mut live = Vec::new();
        for i in 0..10 {
            live.push(q.insert(now + ms(1000 + i), i));
        }
        // A server re-arming ten idle timeouts on every command.
        for i in 0..100_000u64 {
            let slot = (i % 10) as usize;
            assert!(q.cancel(live[slot]).is_some());
            live[slot] = q.insert(now + ms(2000 + i), i);
        }
        assert_eq!(q.len(), 10);
        assert!(q.capacity() <= 16, "capacity {}", q.capacity());
        for id in live {
            q.cancel(id);
        }
        assert_eq!(q.len(), 0);
        assert!(q.is_empty());

        for i in 0..100_000u64 {
            let id = q.insert(now + ms(i), i);
            assert_eq!(q.cancel(id), Some(i));
        }
        assert_eq!(q.len(), 0);
        assert!(q.capacity() <= 16, "capacity {}", q.capacity());
    }

    #[test]
    fn burst_memory_is_returned() {
        let now = t0();
        let mut q = TimerQueue::new();
        let ids: Vec<_> =
            (0..10_000u64).map(|i| q.insert(now + ms(i), i)).collect();
        assert_eq!(q.len(), 10_000);
        for id in ids {
            q.cancel(id);
        }
        assert_eq!(q.len(), 0);
        assert!(q.capacity() <= 128, "capacity {}", q.capacity());
    }

    #[test]
    fn random_operations_match_a_sorted_model() {
        // A small deterministic LCG; no external randomness needed.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let now = t0();
        let mut q = TimerQueue::new();
        let mut model: Vec<(u64, u64, TimerId)> = Vec::new();
        let mut clock = 0u64;
        for v in 0..20_000u64 {
            match next() % 4 {
                0 | 1 => {
                    let at = clock + next() % 50;
                    let id = q.insert(now + ms(at), v);
                    model.push((at, v, id));
                }
                2 if !model.is_empty() => {
                    let i = (next() as usize) % model.len();
                    let (_, val, id) = model.swap_remove(i);
                    assert_eq!(q.cancel(id), Some(val));
                }
                _ => {
                    clock += next() % 10;
                    let got = drain(&mut q, now + ms(clock));
                    let mut due: Vec<_> = model
                        .iter()
                        .filter(|m| m.0 <= clock)
                        .map(|m| (m.0, m.1))
                        .collect();
                    due.sort();
                    model.retain(|m| m.0 > clock);
                    let want: Vec<u64> = due.iter().map(|d| d.1).collect();
                    assert_eq!(got, want);
                }
            }
            assert_eq!(q.len(), model.len());
        }
        q.check_invariants();
    }
}
