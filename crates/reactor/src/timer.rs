//! The timer set of one reactor thread: ordered by deadline, with O(log n)
//! insert and cancel and memory proportional to the timers alive (a server
//! re-arming an idle timeout on every command must not pile up dead
//! entries). Sans-IO: `now` is an argument.

use std::collections::BTreeMap;
use std::time::Instant;

use mio::Token;

/// Identifies an armed timer (for [`Timers::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId {
    at: Instant,
    seq: u64,
}

/// Timers ordered by deadline; equal deadlines fire in arming order.
#[derive(Debug, Default)]
pub struct Timers {
    map: BTreeMap<TimerId, (Token, u64)>,
    seq: u64,
}

impl Timers {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms a timer firing at `at` with `token` and `data`.
    pub fn insert(&mut self, at: Instant, token: Token, data: u64) -> TimerId {
        self.seq += 1;
        let id = TimerId { at, seq: self.seq };
        self.map.insert(id, (token, data));
        id
    }

    /// Disarms a timer; a no-op if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) {
        self.map.remove(&id);
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(id, _)| id.at)
    }

    /// Moves every timer due at `now` into `out`, in deadline order.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(Token, u64)>) {
        while let Some(entry) = self.map.first_entry() {
            if entry.key().at > now {
                break;
            }
            out.push(entry.remove());
        }
    }

    /// Timers armed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fire_in_order_and_cancel() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::new();
        t.insert(ms(30), Token(3), 30);
        let b = t.insert(ms(20), Token(2), 20);
        t.insert(ms(10), Token(1), 10);
        t.insert(ms(10), Token(4), 11);
        assert_eq!(t.next_deadline(), Some(ms(10)));
        t.cancel(b);
        t.cancel(b);
        let mut out = Vec::new();
        t.expire(ms(5), &mut out);
        assert!(out.is_empty());
        t.expire(ms(25), &mut out);
        assert_eq!(out, vec![(Token(1), 10), (Token(4), 11)]);
        out.clear();
        t.expire(ms(100), &mut out);
        assert_eq!(out, vec![(Token(3), 30)]);
        assert!(t.is_empty());
    }

    #[test]
    fn rearming_does_not_accumulate() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let mut id = t.insert(t0, Token(0), 0);
        for i in 0..100_000u64 {
            t.cancel(id);
            id = t.insert(t0 + Duration::from_micros(i), Token(0), i);
        }
        assert_eq!(t.len(), 1);
        t.cancel(id);
        assert_eq!(t.len(), 0);
    }
}
