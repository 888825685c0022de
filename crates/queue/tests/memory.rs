//! Bytes per queued message, measured with a counting allocator: a
//! million single-recipient messages over 1,000 destinations, held
//! ready in the index (one connection per destination busy).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use millrace_queue::{
    Destination, Dispatcher, Events, Job, LoadedMessage, QueueConfig,
    QueueCore, QueueEvent, Router, Store,
};
use millrace_spool::{Envelope, MessageId, Recipient};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the
// caller's arguments unchanged, so its guarantees carry over; the
// counting is a relaxed atomic add with no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct NullStore;
impl Store for NullStore {
    type Error = std::io::Error;
    fn load(&self, _: MessageId) -> Result<LoadedMessage, Self::Error> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn mark_done(&self, _: MessageId, _: &[u32]) -> Result<(), Self::Error> {
        Ok(())
    }
    fn delete(&self, _: MessageId) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct ByDomain;
impl Router for ByDomain {
    fn destination(&self, domain: &str) -> Destination {
        Destination::new(&format!("mx:{domain}"))
    }
}

struct Drop_;
impl Dispatcher for Drop_ {
    fn dispatch(&self, _: Job) {}
}
impl Events for Drop_ {
    fn event(&self, _: QueueEvent) {}
}

#[test]
fn a_million_messages_fit() {
    const N: u128 = 1_000_000;
    const DOMAINS: u128 = 1000;
    let envs: Vec<Envelope> = (0..DOMAINS)
        .map(|d| Envelope {
            sender: "s@example.org".into(),
            recipients: vec![Recipient {
                address: format!("user@domain{d}.example"),
                ..Default::default()
            }],
            arrival_unix: 1_700_000_000,
            ..Default::default()
        })
        .collect();
    let cfg = QueueConfig {
        max_connections_per_destination: 1,
        ..QueueConfig::default()
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let rss_before = rss_bytes();
    let before = LIVE.load(Ordering::Relaxed);
    let mut core = QueueCore::new(
        cfg,
        Arc::new(NullStore),
        Arc::new(ByDomain),
        Arc::new(Drop_),
        Arc::new(Drop_),
    )
    .unwrap();
    for i in 0..N {
        let id = MessageId::from_u128((1u128 << 80) + i);
        core.enqueue(id, &envs[(i % DOMAINS) as usize], now);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let stats = core.stats();
    assert_eq!(stats.messages, N as usize);
    assert_eq!(stats.ready, (N - DOMAINS) as usize);
    assert_eq!(stats.in_flight, DOMAINS as usize);
    let per = (after - before) as f64 / N as f64;
    println!("queue index: {per:.0} bytes per queued message");
    assert!(per < 500.0, "{per} bytes per message");
    let rss = rss_bytes().saturating_sub(rss_before) as f64 / N as f64;
    println!("resident set growth: {rss:.0} bytes per queued message");
    // The first timer is the expiry: arrival + max_queue_lifetime.
    let lifetime = QueueConfig::default().max_queue_lifetime;
    assert_eq!(core.next_deadline(), Some(now + lifetime));
}

/// Resident set size from /proc/self/statm (0 where unavailable).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}
