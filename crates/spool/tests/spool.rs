//! Integration tests for millrace-spool.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Lines};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millrace_spool::{
    Envelope, MessageId, Recipient, Spool, SpoolError, SpoolOptions,
    SyncMethod,
};

fn opts() -> SpoolOptions {
    SpoolOptions { max_message_size: 1 << 20, initial_size: 4096 }
}

fn env(n: usize, tag: &str) -> Envelope {
    Envelope {
        sender: format!("sender-{tag}@example.org"),
        recipients: (0..n)
            .map(|i| Recipient {
                address: format!("r{i}@example.net"),
                notify: (i % 16) as u8,
                orcpt: (i % 2 == 0)
                    .then(|| format!("rfc822;r{i}@example.net")),
            })
            .collect(),
        ret_full: Some(true),
        envid: Some(format!("ENV-{tag}")),
        body_8bitmime: true,
        smtputf8: false,
        client_ip: "127.0.0.1".into(),
        helo: "client.example".into(),
        arrival_unix: 1_700_000_000,
        received: "Received: from client.example\r\n\tby us; now\r\n".into(),
        is_dsn: false,
    }
}

/// Deterministic body of `len` bytes for message `seed`.
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn commit(spool: &Spool, data: &[u8], e: &Envelope) -> MessageId {
    let mut m = spool.create(e.recipients.len()).unwrap();
    m.write_all(data).unwrap();
    spool.commit_sync(m, e).unwrap()
}

#[test]
fn round_trip_via_spare_and_advance() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let data = body(1, 10_000);
    let mut m = spool.create(3).unwrap();
    // Fill in odd-sized chunks the way a socket read would.
    for chunk in data.chunks(777) {
        let spare = m.spare(chunk.len()).unwrap();
        assert!(spare.len() >= chunk.len());
        spare[..chunk.len()].copy_from_slice(chunk);
        m.advance(chunk.len());
    }
    // Pipelined bytes past the end of DATA are cut off again.
    m.write_all(b"QUIT\r\n").unwrap();
    m.truncate(data.len());
    assert_eq!(m.written(), &data[..]);
    let e = env(3, "rt");
    let id = spool.commit_sync(m, &e).unwrap();
    let s = spool.open_message(id).unwrap();
    assert_eq!(s.id(), id);
    assert_eq!(s.body(), &data[..]);
    assert_eq!(s.envelope(), &e);
    assert!(!s.is_done(0) && !s.is_done(2) && !s.is_done(99));
    assert_eq!(spool.list().unwrap(), vec![id]);
}

#[test]
fn empty_body_and_envelope_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let m = spool.create(0).unwrap();
    let id = spool.commit_sync(m, &Envelope::default()).unwrap();
    let s = spool.open_message(id).unwrap();
    assert_eq!(s.body(), b"");
    assert_eq!(s.envelope(), &Envelope::default());
}

#[test]
fn abort_and_drop_remove_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let mut a = spool.create(1).unwrap();
    a.write_all(b"x").unwrap();
    let pa = spool.message_path(a.id());
    assert!(pa.exists());
    a.abort();
    assert!(!pa.exists());
    let b = spool.create(1).unwrap();
    let pb = spool.message_path(b.id());
    drop(b);
    assert!(!pb.exists());
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn too_many_recipients_for_reserved_slots() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let m = spool.create(1).unwrap();
    let path = spool.message_path(m.id());
    let r = spool.commit_sync(m, &env(2, "x"));
    assert!(matches!(
        r,
        Err(SpoolError::TooManyRecipients { reserved: 1, got: 2 })
    ));
    assert!(!path.exists());
}

#[test]
fn recovery_keeps_committed_removes_incomplete_reports_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (good, truncated, flipped, never);
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        good = commit(&spool, &body(10, 5000), &env(2, "good"));
        truncated = commit(&spool, &body(11, 5000), &env(2, "trunc"));
        flipped = commit(&spool, &body(12, 5000), &env(2, "flip"));
        // An Incoming that was never committed: keep a copy of its
        // file as it looked mid-DATA, under another valid id.
        let mut m = spool.create(2).unwrap();
        m.write_all(&body(13, 3000)).unwrap();
        never = MessageId::from_u128(m.id().as_u128() ^ (1 << 20));
        let never_path = spool.message_path(never);
        fs::create_dir_all(never_path.parent().unwrap()).unwrap();
        fs::copy(spool.message_path(m.id()), &never_path).unwrap();
        // The copy has the other id in its header; that does not
        // matter, it has no trailer.
        drop(m);

        // Cut inside the body: the record no longer fits the file.
        let p = spool.message_path(truncated);
        let len = fs::metadata(&p).unwrap().len();
        assert!(len > 4000);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4000)
            .unwrap();

        let p = spool.message_path(flipped);
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, 2000).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], 2000).unwrap();
        assert!(matches!(
            spool.open_message(flipped),
            Err(SpoolError::Corrupt(_))
        ));
        let mut list = vec![good, truncated, flipped, never];
        list.sort();
        assert_eq!(spool.list().unwrap(), list);
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.committed, vec![good]);
    assert_eq!(rec.removed_incomplete, 2);
    assert_eq!(rec.corrupt.len(), 1, "{:?}", rec.corrupt);
    assert_eq!(rec.corrupt[0].0, spool.message_path(flipped));
    assert!(rec.corrupt[0].1.contains("checksum"), "{:?}", rec.corrupt);
    assert!(dir.path().join("corrupt").join(flipped.to_string()).exists());
    assert_eq!(spool.list().unwrap(), vec![good]);
    assert_eq!(spool.open_message(good).unwrap().body(), &body(10, 5000)[..]);
    assert!(matches!(
        spool.open_message(never),
        Err(SpoolError::NotFound(id)) if id == never
    ));
    // A second scan finds nothing new.
    let again = spool.recover().unwrap();
    assert_eq!(again.committed, vec![good]);
    assert_eq!(again.removed_incomplete, 0);
    assert!(again.corrupt.is_empty());
}

#[test]
fn recovery_reports_stray_entries_without_dying() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let id = commit(&spool, b"hi\r\n", &env(1, "s"));
    let fan = spool.message_path(id).parent().unwrap().to_path_buf();
    fs::write(fan.join("notes.txt"), b"junk").unwrap();
    fs::write(dir.path().join("q").join("junk"), b"junk").unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.committed, vec![id]);
    assert_eq!(rec.corrupt.len(), 2, "{:?}", rec.corrupt);
    assert_eq!(spool.list().unwrap(), vec![id]);
}

#[test]
fn mark_done_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        id = commit(&spool, b"body\r\n", &env(20, "done"));
        spool.mark_done(id, &[0, 3, 4, 5, 19, 3]).unwrap();
        assert!(matches!(
            spool.mark_done(id, &[20]),
            Err(SpoolError::BadRecipient { index: 20, count: 20 })
        ));
        let missing = MessageId::from_u128(7);
        assert!(matches!(
            spool.mark_done(missing, &[0]),
            Err(SpoolError::NotFound(_))
        ));
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    assert_eq!(spool.recover().unwrap().committed, vec![id]);
    let s = spool.open_message(id).unwrap();
    let done: Vec<u32> = (0..25).filter(|&i| s.is_done(i)).collect();
    assert_eq!(done, vec![0, 3, 4, 5, 19]);
    assert_eq!(s.body(), b"body\r\n", "done map is outside the checksum");
}

#[test]
fn delete_removes_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let a = commit(&spool, b"a", &env(1, "a"));
    let b = commit(&spool, b"b", &env(1, "b"));
    spool.delete(a).unwrap();
    assert_eq!(spool.list().unwrap(), vec![b]);
    assert!(matches!(spool.delete(a), Err(SpoolError::NotFound(x)) if x == a));
    assert!(matches!(spool.open_message(a), Err(SpoolError::NotFound(_))));
    // A message opened before deletion stays readable.
    let s = spool.open_message(b).unwrap();
    spool.delete(b).unwrap();
    assert_eq!(s.body(), b"b");
}

#[test]
fn lock_prevents_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    assert!(matches!(
        Spool::open(dir.path(), opts()),
        Err(SpoolError::Locked)
    ));
    let clone = spool.clone();
    drop(spool);
    assert!(matches!(
        Spool::open(dir.path(), opts()),
        Err(SpoolError::Locked)
    ));
    drop(clone);
    Spool::open(dir.path(), opts()).unwrap();
}

#[test]
fn ten_megabyte_body_across_remaps() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolOptions { max_message_size: 16 << 20, initial_size: 4096 },
    )
    .unwrap();
    let data = body(99, 10 << 20);
    let mut m = spool.create(1).unwrap();
    let mut caps = HashSet::new();
    for chunk in data.chunks(65_536) {
        let before = m.written().len();
        let spare = m.spare(chunk.len()).unwrap();
        caps.insert(spare.len() + before);
        spare[..chunk.len()].copy_from_slice(chunk);
        m.advance(chunk.len());
    }
    assert!(caps.len() >= 5, "expected several remaps, saw {caps:?}");
    let id = spool.commit_sync(m, &env(1, "big")).unwrap();
    let path = spool.message_path(id);
    let s = spool.open_message(id).unwrap();
    assert!(s.body() == &data[..]);
    let file_len = fs::metadata(path).unwrap().len();
    assert!(file_len < data.len() as u64 + 1024, "trimmed to exact size");
}

#[test]
fn growth_past_limit_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolOptions { max_message_size: 100_000, initial_size: 4096 },
    )
    .unwrap();
    let limit = 100_000 + millrace_spool::GROWTH_SLACK as usize;
    let mut m = spool.create(1).unwrap();
    m.write_all(&vec![b'a'; limit - 10]).unwrap();
    assert!(m.spare(10).is_ok());
    assert!(matches!(m.spare(11), Err(SpoolError::TooLarge)));
    assert!(matches!(m.write_all(&[0; 11]), Err(SpoolError::TooLarge)));
    assert!(matches!(m.spare(usize::MAX), Err(SpoolError::TooLarge)));
    // Still usable: the caller discards the rest and aborts.
    assert_eq!(m.written().len(), limit - 10);
    m.write_all(&[b'b'; 10]).unwrap();
    m.advance(1000); // clamped, never past the mapping
    assert_eq!(m.written().len(), limit);
}

#[test]
fn concurrent_committers_all_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let threads = 8;
    let per = 40;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        let seed = t * 1000 + i;
                        let data = body(seed, 100 + (seed as usize % 3000));
                        let e = env(1 + (i as usize % 3), &seed.to_string());
                        (commit(&spool, &data, &e), seed)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(MessageId, u64)> =
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    drop(spool);
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    let ids: Vec<_> = all.iter().map(|x| x.0).collect();
    assert_eq!(rec.committed, ids);
    assert_eq!(rec.removed_incomplete, 0);
    for (id, seed) in all {
        let s = spool.open_message(id).unwrap();
        assert_eq!(s.body(), &body(seed, 100 + (seed as usize % 3000))[..]);
        assert_eq!(s.envelope().envid, Some(format!("ENV-{seed}")));
    }
}

#[test]
fn async_commit_callbacks_and_fdatasync_method() {
    let dir = tempfile::tempdir().unwrap();
    let spool =
        Spool::open_with(dir.path(), opts(), SyncMethod::FdatasyncEach)
            .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut expected = Vec::new();
    for i in 0..50u64 {
        let mut m = spool.create(1).unwrap();
        m.write_all(&body(i, 500)).unwrap();
        expected.push(m.id());
        let tx = tx.clone();
        spool.commit(
            m,
            &env(1, "a"),
            Box::new(move |r| tx.send((i, r.unwrap())).unwrap()),
        );
    }
    drop(tx);
    let mut got: Vec<_> = rx.iter().collect();
    assert_eq!(got.len(), 50);
    got.sort();
    for (i, id) in got {
        assert_eq!(id, expected[i as usize]);
        assert_eq!(spool.open_message(id).unwrap().body(), &body(i, 500)[..]);
    }
}

#[test]
fn callback_may_drop_last_spool_handle() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = spool.create(0).unwrap();
    let keep = spool.clone();
    spool.commit(
        m,
        &Envelope::default(),
        Box::new(move |r| {
            drop(keep);
            tx.send(r.is_ok()).unwrap();
        }),
    );
    drop(spool);
    assert!(rx.recv().unwrap());
    // The lock is released once the committer thread lets go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Spool::open(dir.path(), opts()) {
            Ok(_) => break,
            Err(SpoolError::Locked) if Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn ids_unique_and_time_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), opts()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let spool = Arc::clone(&spool);
            std::thread::spawn(move || {
                (0..200)
                    .map(|_| spool.create(0).unwrap().id())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: Vec<MessageId> =
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let set: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(set.len(), ids.len());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    for id in &ids {
        assert!(id.timestamp_micros() <= now.as_micros() as u64);
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), *id);
    }
    // An id made after the clock moved on sorts after an earlier one.
    let a = spool.create(0).unwrap().id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let b = loop {
        let b = spool.create(0).unwrap().id();
        if b.timestamp_micros() > a.timestamp_micros() {
            break b;
        }
        assert!(Instant::now() < deadline, "clock never advanced");
    };
    assert!(a < b);
}

const CHILD_ENV: &str = "MILLRACE_SPOOL_CRASH_CHILD";

fn child_body(i: u64) -> Vec<u8> {
    body(i, 200 + (i as usize * 7919) % 20_000)
}

/// Child half of `crash_safety`: commits forever from 3 threads and
/// prints each acknowledged id. Does nothing unless the env var is set.
#[test]
fn crash_safety_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let spool = Spool::open(Path::new(&dir), opts()).unwrap();
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    commit_forever(&spool, &stdout, |_, _| {});
}

/// Commits `child_body(i)` for ever from 3 threads, printing
/// `ACK <id> <i>` once each is acknowledged, then calling `after`.
fn commit_forever(
    spool: &Spool,
    stdout: &Arc<std::sync::Mutex<std::io::Stdout>>,
    after: impl Fn(MessageId, u64) + Clone + Send + 'static,
) {
    let handles: Vec<_> = (0..3u64)
        .map(|t| {
            let (spool, stdout, after) =
                (spool.clone(), Arc::clone(stdout), after.clone());
            std::thread::spawn(move || {
                for i in (t..).step_by(3) {
                    let id = commit(
                        &spool,
                        &child_body(i),
                        &env(1, &i.to_string()),
                    );
                    use std::io::Write;
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ACK {id} {i}").unwrap();
                    out.flush().unwrap();
                    drop(out);
                    after(id, i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Runs test `name` of this binary in a child process with `env` set to
/// `dir`; returns the child and its stdout lines.
fn spawn_child(
    name: &str,
    env: &str,
    dir: &Path,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn crash_safety() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines) =
        spawn_child("crash_safety_child", CHILD_ENV, dir.path());
    let mut acked: Vec<(MessageId, u64)> = Vec::new();
    let parse = |l: &str| -> Option<(MessageId, u64)> {
        let mut w = l.strip_prefix("ACK ")?.split(' ');
        Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
    };
    while acked.len() < 150 {
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(a) = parse(&line) {
            acked.push(a);
        }
    }
    child.kill().unwrap(); // SIGKILL
    for line in lines {
        if let Some(a) = parse(&line.unwrap()) {
            acked.push(a);
        }
    }
    child.wait().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    let committed: HashSet<_> = rec.committed.iter().copied().collect();
    for (id, i) in &acked {
        assert!(committed.contains(id), "acknowledged {id} lost");
        let s = spool.open_message(*id).unwrap();
        assert_eq!(s.body(), &child_body(*i)[..]);
        assert_eq!(s.envelope(), &env(1, &i.to_string()));
    }
    // Whatever else survived is complete too, and nothing partial is
    // left in the spool.
    for id in &rec.committed {
        spool.open_message(*id).unwrap();
    }
    assert_eq!(spool.list().unwrap(), rec.committed);
}

fn free_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("free")).map_or(0, |d| d.count())
}

#[test]
fn deleted_files_are_reused_and_never_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new);
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        old = commit(&spool, &body(1, 3000), &env(2, "old"));
        let old_path = spool.message_path(old);
        spool.delete(old).unwrap();
        assert!(!old_path.exists());
        assert_eq!(free_files(dir.path()), 1, "pooled, not unlinked");
        assert!(matches!(
            spool.open_message(old),
            Err(SpoolError::NotFound(_))
        ));
        // The next message takes the pooled file: a shorter body over
        // the old one, so stale bytes follow the new record.
        new = commit(&spool, &body(2, 100), &env(1, "new"));
        assert_eq!(free_files(dir.path()), 0, "taken from the pool");
        let s = spool.open_message(new).unwrap();
        assert_eq!(s.body(), &body(2, 100)[..]);
        assert_eq!(s.envelope(), &env(1, "new"));
        assert!(!s.is_done(0));
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.committed, vec![new]);
    assert_eq!(rec.removed_incomplete, 0);
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    let s = spool.open_message(new).unwrap();
    assert_eq!(s.body(), &body(2, 100)[..], "read back from the file");
    assert_eq!(s.envelope(), &env(1, "new"));
}

#[test]
fn reused_file_left_uncommitted_is_incomplete_not_the_old_message() {
    let dir = tempfile::tempdir().unwrap();
    let (old, leaked);
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        old = commit(&spool, &body(3, 2000), &env(1, "old"));
        spool.delete(old).unwrap();
        let mut m = spool.create(1).unwrap();
        m.write_all(b"half a body").unwrap();
        leaked = m.id();
        // As if the process died mid-DATA: the file stays under the
        // new name with the old record's bytes behind the new header.
        std::mem::forget(m);
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    assert!(rec.committed.is_empty(), "{:?}", rec.committed);
    assert_eq!(rec.removed_incomplete, 1);
    assert!(!spool.message_path(leaked).exists());
    assert!(matches!(spool.open_message(old), Err(SpoolError::NotFound(_))));
}

#[test]
fn stale_record_under_another_name_is_incomplete() {
    // A pooled file renamed for a new message whose header never reached
    // the disk still holds an old, valid record with the old id.
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let a = commit(&spool, b"a\r\n", &env(1, "a"));
    let other = MessageId::from_u128(a.as_u128() + 1);
    fs::copy(spool.message_path(a), spool.message_path(other)).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.committed, vec![a]);
    assert_eq!(rec.removed_incomplete, 1);
}

#[test]
fn pooled_files_survive_restart_and_aborts_return_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        let ids: Vec<_> = (0..5)
            .map(|i| commit(&spool, &body(i, 500), &env(1, "p")))
            .collect();
        for id in ids {
            spool.delete(id).unwrap();
        }
        let m = spool.create(3).unwrap();
        let p = spool.message_path(m.id());
        assert!(p.exists());
        assert_eq!(free_files(dir.path()), 4);
        m.abort();
        assert!(!p.exists());
        assert_eq!(free_files(dir.path()), 5);
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    assert!(spool.recover().unwrap().committed.is_empty());
    assert_eq!(free_files(dir.path()), 5, "adopted at open");
    let id = commit(&spool, &body(9, 700), &env(3, "after"));
    assert_eq!(free_files(dir.path()), 4);
    assert_eq!(spool.open_message(id).unwrap().body(), &body(9, 700)[..]);
}

#[test]
fn delete_while_still_read_unlinks_and_keeps_the_reader_valid() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let id = commit(&spool, &body(5, 1500), &env(1, "r"));
    let reader = spool.open_message(id).unwrap();
    spool.delete(id).unwrap();
    assert_eq!(free_files(dir.path()), 0, "not pooled while mapped");
    // A new message cannot be written over what the reader sees.
    let other = commit(&spool, &body(6, 1500), &env(1, "o"));
    assert_eq!(reader.body(), &body(5, 1500)[..]);
    assert_eq!(spool.open_message(other).unwrap().body(), &body(6, 1500)[..]);
}

#[test]
fn mark_done_on_a_recent_message_is_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let id = commit(&spool, b"x\r\n", &env(3, "d"));
    spool.mark_done(id, &[2]).unwrap();
    let s = spool.open_message(id).unwrap();
    assert_eq!(
        (0..3).map(|i| s.is_done(i)).collect::<Vec<_>>(),
        [false, false, true]
    );
}

#[test]
fn pooled_file_grows_for_many_recipients_and_a_large_body() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let small = commit(&spool, b"x\r\n", &env(1, "small"));
    spool.delete(small).unwrap();
    assert_eq!(free_files(dir.path()), 1);
    // 50,000 recipient slots put the body far past the pooled file's end,
    // and the body itself needs several more doublings.
    let e = env(50_000, "many");
    let data = body(77, 300_000);
    let id = commit(&spool, &data, &e);
    assert_eq!(free_files(dir.path()), 0, "the pooled file was taken");
    spool.mark_done(id, &[0, 49_999]).unwrap();
    let s = spool.open_message(id).unwrap();
    assert!(s.body() == &data[..]);
    assert_eq!(s.envelope(), &e);
    assert!(s.is_done(0) && s.is_done(49_999) && !s.is_done(1));
    drop(s);
    drop(spool);
    let spool = Spool::open(dir.path(), opts()).unwrap();
    assert_eq!(spool.recover().unwrap().committed, vec![id]);
    let s = spool.open_message(id).unwrap();
    assert!(s.body() == &data[..], "read back from the file");
    assert!(s.is_done(49_999) && !s.is_done(49_998));
}

/// Regression: `delete` took a hot message out of the hot set and only
/// then renamed its file into the pool, so an `open_message` in
/// between missed the hot set, opened the file by name and mapped it;
/// the file was then handed to the next message and written over while
/// that reader still held (and, after its checksum check, trusted) it.
#[test]
fn open_racing_delete_never_sees_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut rounds, mut cold) = (0, 0);
    while Instant::now() < deadline && cold < 20 {
        rounds += 1;
        let data = body(rounds, 2000);
        let id = commit(&spool, &data, &env(1, "race"));
        // The hot mapping's address tells a hot open from a cold one.
        let hot_ptr = spool.open_message(id).unwrap().body().as_ptr() as usize;
        let go = Arc::new(std::sync::Barrier::new(2));
        let reader = {
            let (spool, go) = (spool.clone(), Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                let mut kept = Vec::new();
                while let Ok(s) = spool.open_message(id) {
                    if s.body().as_ptr() as usize != hot_ptr {
                        kept.push(s);
                    }
                }
                kept
            })
        };
        go.wait();
        spool.delete(id).unwrap();
        let kept = reader.join().unwrap();
        // The next message reuses the file if it went to the pool.
        let next =
            commit(&spool, &body(rounds + 1_000_000, 2000), &env(1, "n"));
        for s in &kept {
            cold += 1;
            assert!(
                s.body() == &data[..],
                "round {rounds}: a reader of {id} sees another message"
            );
        }
        drop(kept);
        spool.delete(next).unwrap();
    }
    eprintln!("{rounds} rounds, {cold} cold opens during delete");
}

/// Regression: when the rename into `free/` failed (`EXDEV`, `ENOSPC`,
/// here `ENOTDIR`), `delete` returned the error and left the delivered
/// message in `q/`, to be delivered again after every restart, and a
/// dropped `Incoming` left its file behind.
#[test]
fn delete_unlinks_when_the_rename_into_the_pool_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let a = commit(&spool, &body(1, 300), &env(1, "a"));
    let b = commit(&spool, &body(2, 300), &env(1, "b"));
    spool.delete(b).unwrap();
    assert_eq!(free_files(dir.path()), 1);
    // `free/` becomes something no file can be renamed into.
    fs::remove_dir_all(dir.path().join("free")).unwrap();
    fs::write(dir.path().join("free"), b"not a directory").unwrap();
    spool.delete(a).unwrap();
    assert!(!spool.message_path(a).exists(), "delivered message left");
    assert!(matches!(spool.delete(a), Err(SpoolError::NotFound(_))));
    // The pooled file cannot be renamed out: a new file is made.
    let c = commit(&spool, &body(3, 300), &env(1, "c"));
    assert_eq!(spool.open_message(c).unwrap().body(), &body(3, 300)[..]);
    let m = spool.create(1).unwrap();
    let p = spool.message_path(m.id());
    drop(m);
    assert!(!p.exists(), "aborted message left");
    assert_eq!(spool.list().unwrap(), vec![c]);
}

const REUSE_CHILD_ENV: &str = "MILLRACE_SPOOL_REUSE_CRASH_CHILD";

/// Child half of `crash_safety_while_reusing_files`: commits from 3
/// threads, prints each acknowledged id, and deletes every other one
/// once acknowledged (so files cycle through the pool) from a reader
/// thread that also keeps opening them. Does nothing unless the env
/// var is set.
#[test]
fn crash_safety_while_reusing_files_child() {
    let Ok(dir) = std::env::var(REUSE_CHILD_ENV) else { return };
    let spool = Spool::open(Path::new(&dir), opts()).unwrap();
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let (tx, rx) = std::sync::mpsc::channel::<(MessageId, u64)>();
    let deleter = {
        let (spool, stdout) = (spool.clone(), Arc::clone(&stdout));
        std::thread::spawn(move || {
            for (id, i) in rx {
                let s = spool.open_message(id).unwrap();
                assert_eq!(s.body(), &child_body(i)[..]);
                drop(s);
                use std::io::Write;
                // Announced before it happens: a delete may or may not
                // survive the kill.
                writeln!(stdout.lock().unwrap(), "DEL {id}").unwrap();
                spool.delete(id).unwrap();
            }
        })
    };
    commit_forever(&spool, &stdout, move |id, i| {
        if i % 2 == 0 {
            tx.send((id, i)).unwrap();
        }
    });
    deleter.join().unwrap();
}

#[test]
fn crash_safety_while_reusing_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = spawn_child(
        "crash_safety_while_reusing_files_child",
        REUSE_CHILD_ENV,
        dir.path(),
    );
    let mut acked: Vec<(MessageId, u64)> = Vec::new();
    let mut deleted: HashSet<MessageId> = HashSet::new();
    let mut take = |l: &str, acked: &mut Vec<_>| {
        let mut w = l.split(' ');
        match (w.next(), w.next().and_then(|s| s.parse().ok())) {
            (Some("ACK"), Some(id)) => {
                let i = w.next().and_then(|s| s.parse().ok()).unwrap();
                acked.push((id, i));
            }
            (Some("DEL"), Some(id)) => {
                deleted.insert(id);
            }
            _ => {}
        }
    };
    while acked.len() < 300 {
        let line = lines.next().expect("child exited early").unwrap();
        take(&line, &mut acked);
    }
    child.kill().unwrap(); // SIGKILL
    for line in lines {
        take(&line.unwrap(), &mut acked);
    }
    child.wait().unwrap();
    assert!(deleted.len() >= 50, "only {} deleted", deleted.len());
    let spool = Spool::open(dir.path(), opts()).unwrap();
    let rec = spool.recover().unwrap();
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    let committed: HashSet<_> = rec.committed.iter().copied().collect();
    for (id, _) in &acked {
        assert!(
            committed.contains(id) || deleted.contains(id),
            "acknowledged {id} lost"
        );
    }
    // Whatever survived (kept, deleted too late, or committed but not
    // yet acknowledged) is its own message: envelope and body agree.
    for id in &rec.committed {
        let s = spool.open_message(*id).unwrap();
        let i: u64 =
            s.envelope().envid.as_deref().unwrap()[4..].parse().unwrap();
        assert_eq!(s.body(), &child_body(i)[..], "{id} holds another body");
        if let Some((_, j)) = acked.iter().find(|(a, _)| a == id) {
            assert_eq!(i, *j, "{id} holds another message");
        }
    }
    assert_eq!(spool.list().unwrap(), rec.committed);
}

#[test]
fn a_pooled_file_with_a_second_name_is_not_adopted() {
    // As if a crash left a rename half done: the same file both in free/
    // and as a message in q/. Reusing it would overwrite that message.
    let dir = tempfile::tempdir().unwrap();
    let (kept, free_path);
    {
        let spool = Spool::open(dir.path(), opts()).unwrap();
        let gone = commit(&spool, &body(1, 800), &env(1, "gone"));
        kept = commit(&spool, &body(2, 800), &env(1, "kept"));
        spool.delete(gone).unwrap();
        free_path = fs::read_dir(dir.path().join("free"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // Replace kept's file by the pooled one holding kept's record.
        fs::copy(spool.message_path(kept), &free_path).unwrap();
        fs::remove_file(spool.message_path(kept)).unwrap();
        fs::hard_link(&free_path, spool.message_path(kept)).unwrap();
    }
    let spool = Spool::open(dir.path(), opts()).unwrap();
    assert!(!free_path.exists(), "the second name was dropped");
    assert_eq!(free_files(dir.path()), 0, "not adopted");
    assert_eq!(spool.recover().unwrap().committed, vec![kept]);
    // A new message gets a new file; kept's stays as it is.
    let new = commit(&spool, &body(3, 800), &env(1, "new"));
    assert_eq!(spool.open_message(kept).unwrap().body(), &body(2, 800)[..]);
    assert_eq!(spool.open_message(new).unwrap().body(), &body(3, 800)[..]);
}
