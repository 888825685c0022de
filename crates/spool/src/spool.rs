//! The spool directory: create, commit (group fsync), open, recover.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::envelope::{self, Envelope};
use crate::error::io_err;
use crate::format::{
    self, HEADER_LEN, Header, MAX_SLOTS, TRAILER_LEN, Trailer, body_offset,
};
use crate::sys;
use crate::{MessageId, SpoolError};

/// Bytes a message may grow past `max_message_size` before `spare`
/// refuses: room for one more read and for pipelined commands after
/// the end of DATA.
pub const GROWTH_SLACK: u64 = 256 * 1024;

/// Most commits served by one sync step.
const MAX_BATCH: usize = 4096;

/// Spool tuning.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Bytes of body (wire form); growth beyond this plus
    /// [`GROWTH_SLACK`] is refused with [`SpoolError::TooLarge`].
    pub max_message_size: u64,
    /// Size of the first body mapping; doubles as needed.
    pub initial_size: usize,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self { max_message_size: 35_882_577, initial_size: 64 * 1024 }
    }
}

/// How the committer thread makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `fdatasync` each file of the batch in turn.
    FdatasyncEach,
    /// One `syncfs(2)` on the spool's file system per batch: a single
    /// journal commit makes every file of the batch (data, inode and
    /// directory entry) durable at once. The default: measured about 3x
    /// the messages/s of `WritebackFirst` with 20 committers on ext4
    /// (see `benches/commit.rs`). It also flushes other dirty data on
    /// the same file system, so give the spool a file system of its
    /// own on a busy machine.
    #[default]
    Syncfs,
    /// Start writeback of every file (`sync_file_range`), then
    /// `fdatasync` each, so the data I/O of the batch is in flight
    /// together. The default: measured about 2x faster than
    /// `FdatasyncEach` with 20 committers and 1 KiB bodies on ext4
    /// (see `benches/commit.rs`).
    WritebackFirst,
}

/// What [`Spool::recover`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Every committed message, sorted by id (arrival).
    pub committed: Vec<MessageId>,
    /// Incomplete files (never acknowledged) that were deleted.
    pub removed_incomplete: usize,
    /// Unreadable or corrupt entries, with the reason. Corrupt message
    /// files are moved to `<dir>/corrupt/`; other entries are left.
    pub corrupt: Vec<(PathBuf, String)>,
}

/// A durable, mmap'd message spool. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    shared: Arc<Shared>,
    opts: SpoolOptions,
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    _lock: File,
}

/// State shared with the committer thread (which must not hold
/// `Inner`, or the spool could never be dropped).
#[derive(Debug)]
struct Shared {
    q: PathBuf,
    /// Whether each fan-out directory's own entry in `q` is durable.
    fan_durable: [AtomicBool; 256],
    method: SyncMethod,
    /// The `q` directory, open: the handle `syncfs` is called on.
    root_dir: File,
}

impl Shared {
    fn fan_dir(&self, fan: u8) -> PathBuf {
        self.q.join(format!("{fan:02X}"))
    }
}

type Done = Box<dyn FnOnce(Result<MessageId, SpoolError>) + Send>;

struct Job {
    id: MessageId,
    path: PathBuf,
    file: Option<File>,
    result: Result<(), SpoolError>,
    done: Done,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // The last handle may be dropped by a `done` callback on
            // the committer thread itself; it then exits on its own.
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", path))
}

impl Spool {
    /// Opens (creating) the spool directory, takes the lock file
    /// `<dir>/lock` and starts the group-commit thread.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Self, SpoolError> {
        Self::open_with(dir, opts, SyncMethod::default())
    }

    /// [`Spool::open`] with an explicit sync method (for benchmarks).
    pub fn open_with(
        dir: &Path,
        opts: SpoolOptions,
        method: SyncMethod,
    ) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        if !sys::try_lock_exclusive(&lock)
            .map_err(io_err("flock", &lock_path))?
        {
            return Err(SpoolError::Locked);
        }
        let q = dir.join("q");
        match fs::create_dir(&q) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &q)(e)),
        }
        let root_dir = File::open(&q).map_err(io_err("open", &q))?;
        let shared = Shared {
            q: q.clone(),
            fan_durable: std::array::from_fn(|_| AtomicBool::new(false)),
            method,
            root_dir,
        };
        // Fan-out directories present now become durable with the
        // fsync of `q` below.
        for entry in fs::read_dir(&q).map_err(io_err("read", &q))? {
            let entry = entry.map_err(io_err("read", &q))?;
            if let Some(fan) = parse_fan(&entry.file_name()) {
                shared.fan_durable[usize::from(fan)]
                    .store(true, Ordering::Relaxed);
            }
        }
        sync_dir(&q)?;
        sync_dir(dir)?;
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("millrace-spool-commit".into())
            .spawn(move || committer(&thread_shared, &rx))
            .map_err(io_err("spawn committer", dir))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                shared,
                opts,
                tx: Some(tx),
                thread: Some(thread),
                _lock: lock,
            }),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the file of message `id` lives.
    pub fn message_path(&self, id: MessageId) -> PathBuf {
        self.inner.shared.fan_dir(id.fan()).join(id.to_string())
    }

    /// A new message file with room for `recipients` recipients,
    /// mmap'd for writing the body.
    pub fn create(&self, recipients: usize) -> Result<Incoming, SpoolError> {
        if recipients > MAX_SLOTS {
            return Err(SpoolError::TooManyRecipients {
                reserved: MAX_SLOTS,
                got: recipients,
            });
        }
        let slots = recipients as u32;
        let body_off = body_offset(slots);
        let mut attempt = 0;
        let (id, path, file) = loop {
            let id = MessageId::generate();
            let fan_dir = self.inner.shared.fan_dir(id.fan());
            let path = fan_dir.join(id.to_string());
            let open = || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
            };
            let res = match open() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir(&fan_dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        }
                        Err(e) => return Err(io_err("create", &fan_dir)(e)),
                    }
                    open()
                }
                r => r,
            };
            match res {
                Ok(f) => break (id, path, f),
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && attempt < 16 =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        };
        let header = Header { slots, id: id.as_u128(), body_off }.encode();
        let limit = usize::try_from(
            self.inner.opts.max_message_size.saturating_add(GROWTH_SLACK),
        )
        .unwrap_or(usize::MAX);
        let mut msg = Incoming {
            id,
            path,
            file: Some(file),
            map: None,
            header,
            slots,
            body_off,
            len: 0,
            limit,
        };
        msg.file_ref()?
            .write_all_at(&header, 0)
            .map_err(io_err("write", &msg.path))?;
        msg.grow(self.inner.opts.initial_size.clamp(4096, limit.max(4096)))?;
        Ok(msg)
    }

    /// Group commit: writes the envelope and trailer, makes the file and
    /// its directory entry durable, then calls `done` on the committer
    /// thread. Every message finished in the same window shares one
    /// sync step. On error the file is removed and `done` gets the
    /// error.
    pub fn commit(
        &self,
        msg: Incoming,
        env: &Envelope,
        done: Box<dyn FnOnce(Result<MessageId, SpoolError>) + Send>,
    ) {
        let mut msg = msg;
        let id = msg.id;
        let path = msg.path.clone();
        let (file, result) = match msg.finish(env) {
            Ok(f) => (Some(f), Ok(())),
            Err(e) => (None, Err(e)),
        };
        // On error `msg` still owns the file and unlinks it here.
        drop(msg);
        let job = Job { id, path, file, result, done };
        let Some(tx) = &self.inner.tx else {
            fail(job, SpoolError::Closed);
            return;
        };
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            fail(job, SpoolError::Closed);
        }
    }

    /// Commits and waits for the result.
    pub fn commit_sync(
        &self,
        msg: Incoming,
        env: &Envelope,
    ) -> Result<MessageId, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commit(
            msg,
            env,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(SpoolError::Closed))
    }

    /// Opens a committed message (mmap, checksum validated).
    pub fn open_message(
        &self,
        id: MessageId,
    ) -> Result<StoredMessage, SpoolError> {
        match load(&self.message_path(id), id) {
            Ok(m) => Ok(m),
            Err(Bad::NotFound) => Err(SpoolError::NotFound(id)),
            Err(Bad::Incomplete(why)) => {
                Err(SpoolError::Corrupt(format!("{id}: incomplete: {why}")))
            }
            Err(Bad::Corrupt(why)) => {
                Err(SpoolError::Corrupt(format!("{id}: {why}")))
            }
            Err(Bad::Io(e)) => Err(e),
        }
    }

    /// Durably records that these recipient indices are final.
    pub fn mark_done(
        &self,
        id: MessageId,
        rcpts: &[u32],
    ) -> Result<(), SpoolError> {
        let path = self.message_path(id);
        let file = match OpenOptions::new().read(true).write(true).open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut hb = [0; HEADER_LEN];
        file.read_exact_at(&mut hb, 0).map_err(io_err("read", &path))?;
        let h = Header::decode(&hb)
            .map_err(|why| SpoolError::Corrupt(format!("{id}: {why}")))?;
        if h.id != id.as_u128() {
            return Err(SpoolError::Corrupt(format!("{id}: id mismatch")));
        }
        let mut idx: Vec<u32> = rcpts.to_vec();
        idx.sort_unstable();
        idx.dedup();
        if let Some(&bad) = idx.iter().find(|&&r| r >= h.slots) {
            return Err(SpoolError::BadRecipient {
                index: bad,
                count: h.slots,
            });
        }
        let ones = vec![1u8; idx.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i + 1;
            while j < idx.len() && idx[j] == idx[j - 1] + 1 {
                j += 1;
            }
            let off = HEADER_LEN as u64 + u64::from(idx[i]);
            file.write_all_at(&ones[..j - i], off)
                .map_err(io_err("write", &path))?;
            i = j;
        }
        file.sync_data().map_err(io_err("fdatasync", &path))
    }

    /// Removes a message (no fsync: a lost unlink only means a
    /// duplicate delivery after a crash).
    pub fn delete(&self, id: MessageId) -> Result<(), SpoolError> {
        let path = self.message_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SpoolError::NotFound(id))
            }
            Err(e) => Err(io_err("unlink", &path)(e)),
        }
    }

    /// All message ids in the spool (directory listing, sorted). Does
    /// not validate the files; use [`Spool::recover`] for that.
    pub fn list(&self) -> Result<Vec<MessageId>, SpoolError> {
        let mut ids = Vec::new();
        self.walk(|_, entry| {
            if let Entry::Message(id) = entry {
                ids.push(id);
            }
        })?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Startup scan: returns every committed message (sorted), deletes
    /// incomplete files, and reports (moving corrupt message files to
    /// `<dir>/corrupt/`) what does not validate. Run it before anything
    /// creates messages: an `Incoming` still being written looks
    /// incomplete.
    pub fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        let quarantine = self.inner.dir.join("corrupt");
        self.walk(|path, entry| match entry {
            Entry::Message(id) => match load(&path, id) {
                Ok(_) => rec.committed.push(id),
                Err(Bad::NotFound) => {}
                Err(Bad::Incomplete(_)) => {
                    if fs::remove_file(&path).is_ok() {
                        rec.removed_incomplete += 1;
                    }
                }
                Err(Bad::Corrupt(why)) => {
                    let why = match move_aside(&path, &quarantine) {
                        Ok(()) => why,
                        Err(e) => format!("{why} (not moved: {e})"),
                    };
                    rec.corrupt.push((path, why));
                }
                Err(Bad::Io(e)) => rec.corrupt.push((path, e.to_string())),
            },
            Entry::Stray(why) => rec.corrupt.push((path, why)),
        })?;
        rec.committed.sort_unstable();
        Ok(rec)
    }

    fn walk(
        &self,
        mut f: impl FnMut(PathBuf, Entry),
    ) -> Result<(), SpoolError> {
        let q = &self.inner.shared.q;
        let mut fans: Vec<_> = fs::read_dir(q)
            .map_err(io_err("read", q))?
            .collect::<Result<_, _>>()
            .map_err(io_err("read", q))?;
        fans.sort_by_key(|e| e.file_name());
        for fan_entry in fans {
            let fan_path = fan_entry.path();
            let Some(fan) = parse_fan(&fan_entry.file_name()) else {
                f(fan_path, Entry::Stray("unexpected entry in q/".into()));
                continue;
            };
            let list = match fs::read_dir(&fan_path) {
                Ok(l) => l,
                Err(e) => {
                    f(fan_path, Entry::Stray(format!("unreadable: {e}")));
                    continue;
                }
            };
            for entry in list {
                let entry = entry.map_err(io_err("read", &fan_path))?;
                let path = entry.path();
                let name = entry.file_name();
                let id =
                    name.to_str().and_then(|s| s.parse::<MessageId>().ok());
                match id {
                    Some(id) if id.fan() == fan => f(path, Entry::Message(id)),
                    Some(_) => f(
                        path,
                        Entry::Stray("in the wrong fan-out directory".into()),
                    ),
                    None => {
                        f(path, Entry::Stray("not a message file name".into()))
                    }
                }
            }
        }
        Ok(())
    }
}

enum Entry {
    Message(MessageId),
    Stray(String),
}

fn parse_fan(name: &std::ffi::OsStr) -> Option<u8> {
    let s = name.to_str()?;
    if s.len() != 2
        || !s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

fn move_aside(path: &Path, quarantine: &Path) -> io::Result<()> {
    fs::create_dir_all(quarantine)?;
    let name = path.file_name().unwrap_or_default();
    fs::rename(path, quarantine.join(name))
}

fn fail(job: Job, e: SpoolError) {
    let _ = fs::remove_file(&job.path);
    let done = job.done;
    let _ = catch_unwind(AssertUnwindSafe(move || done(Err(e))));
}

/// The committer thread: group commit.
fn committer(shared: &Shared, rx: &Receiver<Job>) {
    let mut dirs: HashMap<u8, File> = HashMap::new();
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        sync_batch(shared, &mut dirs, &mut batch);
        for job in batch.drain(..) {
            match job.result {
                Ok(()) => {
                    let (done, id) = (job.done, job.id);
                    drop(job.file);
                    let _ =
                        catch_unwind(AssertUnwindSafe(move || done(Ok(id))));
                }
                Err(ref _e) => {
                    let mut job = job;
                    let e = std::mem::replace(&mut job.result, Ok(()))
                        .err()
                        .unwrap_or(SpoolError::Closed);
                    drop(job.file.take());
                    fail(job, e);
                }
            }
        }
    }
}

/// Makes every `Ok` job of the batch durable, turning failures into
/// errors on the jobs concerned.
fn sync_batch(
    shared: &Shared,
    dirs: &mut HashMap<u8, File>,
    batch: &mut [Job],
) {
    if shared.method == SyncMethod::Syncfs {
        if let Err(e) = sys::syncfs(&shared.root_dir) {
            for job in batch.iter_mut() {
                if job.result.is_ok() {
                    let e = io::Error::new(e.kind(), e.to_string());
                    job.result = Err(io_err("syncfs", &job.path)(e));
                }
            }
        } else {
            // Everything on the file system is durable, fan-out
            // directories included.
            for job in batch.iter() {
                shared.fan_durable[usize::from(job.id.fan())]
                    .store(true, Ordering::Relaxed);
            }
        }
        return;
    }
    if shared.method == SyncMethod::WritebackFirst {
        for job in batch.iter() {
            if let (Ok(()), Some(f)) = (&job.result, &job.file) {
                // Errors surface again in fdatasync below.
                let _ = sys::start_writeback(f);
            }
        }
    }
    for job in batch.iter_mut() {
        if let (Ok(()), Some(f)) = (&job.result, &job.file) {
            if let Err(e) = f.sync_data() {
                job.result = Err(io_err("fdatasync", &job.path)(e));
            }
        }
    }
    let fans: BTreeSet<u8> = batch
        .iter()
        .filter(|j| j.result.is_ok())
        .map(|j| j.id.fan())
        .collect();
    let mut failed: HashMap<u8, (io::Error, PathBuf)> = HashMap::new();
    for &fan in &fans {
        let path = shared.fan_dir(fan);
        let res = match dirs.get(&fan) {
            Some(d) => d.sync_all(),
            None => File::open(&path).and_then(|d| {
                let r = d.sync_all();
                dirs.insert(fan, d);
                r
            }),
        };
        if let Err(e) = res {
            dirs.remove(&fan);
            failed.insert(fan, (e, path));
        }
    }
    let fresh: Vec<u8> = fans
        .iter()
        .copied()
        .filter(|&f| !failed.contains_key(&f))
        .filter(|&f| {
            !shared.fan_durable[usize::from(f)].load(Ordering::Relaxed)
        })
        .collect();
    if !fresh.is_empty() {
        match File::open(&shared.q).and_then(|d| d.sync_all()) {
            Ok(()) => {
                for f in fresh {
                    shared.fan_durable[usize::from(f)]
                        .store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                for f in fresh {
                    let e = io::Error::new(e.kind(), e.to_string());
                    failed.insert(f, (e, shared.q.clone()));
                }
            }
        }
    }
    if failed.is_empty() {
        return;
    }
    for job in batch.iter_mut() {
        if job.result.is_ok() {
            if let Some((e, p)) = failed.get(&job.id.fan()) {
                let e = io::Error::new(e.kind(), e.to_string());
                job.result = Err(io_err("fsync directory", p)(e));
            }
        }
    }
}

/// A message being received: a new spool file whose body is written
/// straight into a mapping. Dropping it without commit removes the
/// file.
#[derive(Debug)]
pub struct Incoming {
    id: MessageId,
    path: PathBuf,
    /// `None` once handed to the committer.
    file: Option<File>,
    /// Maps `[body_off, body_off + cap)` of the file.
    map: Option<MmapMut>,
    header: [u8; HEADER_LEN],
    slots: u32,
    body_off: u64,
    len: usize,
    limit: usize,
}

impl Incoming {
    /// The id this message will be committed under.
    pub fn id(&self) -> MessageId {
        self.id
    }

    fn file_ref(&self) -> Result<&File, SpoolError> {
        self.file.as_ref().ok_or(SpoolError::Closed)
    }

    fn cap(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Grows the mapping to at least `need` bytes of body.
    fn grow(&mut self, need: usize) -> Result<(), SpoolError> {
        if need > self.limit {
            return Err(SpoolError::TooLarge);
        }
        let cap = need.max(self.cap().saturating_mul(2)).min(self.limit);
        let file = self.file_ref()?;
        sys::allocate(file, self.body_off + cap as u64)
            .map_err(io_err("fallocate", &self.path))?;
        // SAFETY: the file was created by us with O_EXCL inside the
        // locked spool directory and nothing else writes or truncates it
        // while this `Incoming` lives; it was just made at least
        // `body_off + cap` bytes long, so the whole mapping is backed
        // (blocks preallocated, so stores cannot fault on ENOSPC). The
        // mapping is dropped before the file is shrunk in `finish`.
        let map = unsafe {
            MmapOptions::new().offset(self.body_off).len(cap).map_mut(file)
        }
        .map_err(io_err("mmap", &self.path))?;
        self.map = Some(map);
        Ok(())
    }

    /// Writable space after what is written, at least `at_least` bytes;
    /// grows the file (geometrically) as needed. Refuses to grow past
    /// `max_message_size` + [`GROWTH_SLACK`] with
    /// [`SpoolError::TooLarge`].
    pub fn spare(&mut self, at_least: usize) -> Result<&mut [u8], SpoolError> {
        let need =
            self.len.checked_add(at_least).ok_or(SpoolError::TooLarge)?;
        if need > self.cap() || self.map.is_none() {
            self.grow(need)?;
        }
        let len = self.len;
        match self.map.as_mut() {
            Some(m) => Ok(&mut m[len..]),
            None => Err(SpoolError::Closed),
        }
    }

    /// `n` more bytes of [`Incoming::spare`] were filled (clamped to the
    /// mapped space).
    pub fn advance(&mut self, n: usize) {
        self.len = self.len.saturating_add(n).min(self.cap());
    }

    /// The body bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| &m[..self.len])
    }

    /// Keeps only the first `len` body bytes (no-op if `len` is not
    /// shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends a copy of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let spare = self.spare(data.len())?;
        spare[..data.len()].copy_from_slice(data);
        self.advance(data.len());
        Ok(())
    }

    /// Drops the message and removes its file.
    pub fn abort(self) {}

    /// Writes envelope and trailer and trims the file; hands back the
    /// file for syncing. On error `self` still owns (and removes) it.
    fn finish(&mut self, env: &Envelope) -> Result<File, SpoolError> {
        if env.recipients.len() > self.slots as usize {
            return Err(SpoolError::TooManyRecipients {
                reserved: self.slots as usize,
                got: env.recipients.len(),
            });
        }
        let mut tail = Vec::with_capacity(256 + TRAILER_LEN);
        envelope::encode(env, &mut tail)?;
        let t = Trailer {
            body_len: self.len as u64,
            env_len: tail.len() as u64,
            crc: 0,
        };
        let crc =
            format::checksum(&self.header, self.written(), &tail, &t.lens());
        tail.extend_from_slice(&Trailer { crc, ..t }.encode());
        self.map = None;
        let file = self.file_ref()?;
        let end = self.body_off + self.len as u64;
        file.set_len(end).map_err(io_err("ftruncate", &self.path))?;
        file.write_all_at(&tail, end).map_err(io_err("write", &self.path))?;
        self.file.take().ok_or(SpoolError::Closed)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.map = None;
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A committed message, mapped read-only. `Send + Sync`.
#[derive(Debug)]
pub struct StoredMessage {
    id: MessageId,
    env: Envelope,
    /// Maps body then envelope.
    map: Mmap,
    body_len: usize,
    /// Snapshot of the done map taken when opened.
    done: Vec<u8>,
}

impl StoredMessage {
    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

    /// The body in wire (dot-stuffed) form, borrowed from the mapping.
    pub fn body(&self) -> &[u8] {
        &self.map[..self.body_len]
    }

    /// Whether recipient `rcpt` was final when the message was opened.
    pub fn is_done(&self, rcpt: u32) -> bool {
        self.done.get(rcpt as usize).is_some_and(|&b| b != 0)
    }
}

/// Why a file did not load.
enum Bad {
    NotFound,
    Incomplete(String),
    Corrupt(String),
    Io(SpoolError),
}

/// Opens and fully validates one message file.
fn load(path: &Path, id: MessageId) -> Result<StoredMessage, Bad> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Bad::NotFound);
        }
        Err(e) => return Err(Bad::Io(io_err("open", path)(e))),
    };
    let size =
        file.metadata().map_err(|e| Bad::Io(io_err("stat", path)(e)))?.len();
    if size < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(Bad::Incomplete("shorter than header and trailer".into()));
    }
    let read = |buf: &mut [u8], off| {
        file.read_exact_at(buf, off)
            .map_err(|e| Bad::Io(io_err("read", path)(e)))
    };
    let mut tb = [0; TRAILER_LEN];
    read(&mut tb, size - TRAILER_LEN as u64)?;
    let Some(t) = Trailer::decode(&tb) else {
        return Err(Bad::Incomplete("no trailer".into()));
    };
    let mut hb = [0; HEADER_LEN];
    read(&mut hb, 0)?;
    let h = Header::decode(&hb).map_err(Bad::Corrupt)?;
    if h.id != id.as_u128() {
        return Err(Bad::Corrupt(
            "id in header differs from file name".into(),
        ));
    }
    let mapped = t.body_len.checked_add(t.env_len);
    let total = mapped
        .and_then(|m| m.checked_add(h.body_off))
        .and_then(|m| m.checked_add(TRAILER_LEN as u64));
    let (Some(mapped), Some(total)) = (mapped, total) else {
        return Err(Bad::Corrupt("lengths overflow".into()));
    };
    if total != size || t.env_len == 0 {
        return Err(Bad::Corrupt("lengths disagree with file size".into()));
    }
    let mut done = vec![0; h.slots as usize];
    read(&mut done, HEADER_LEN as u64)?;
    let mapped = usize::try_from(mapped)
        .map_err(|_| Bad::Corrupt("too large to map".into()))?;
    // SAFETY: spool files are only written by this process (the spool
    // directory is locked) and never modified or truncated once
    // committed, except the done map, which lies before `body_off` and
    // so outside every slice we hand out. Deleting the file only
    // unlinks it, which keeps the mapping valid. `total == size` was
    // checked above, so the mapped range is within the file.
    let map = unsafe {
        MmapOptions::new().offset(h.body_off).len(mapped).map(&file)
    }
    .map_err(|e| Bad::Io(io_err("mmap", path)(e)))?;
    let body_len = t.body_len as usize;
    let (body, env_bytes) = map.split_at(body_len);
    if format::checksum(&hb, body, env_bytes, &t.lens()) != t.crc {
        return Err(Bad::Corrupt("checksum mismatch".into()));
    }
    let env = envelope::decode(env_bytes)
        .map_err(|e| Bad::Corrupt(e.to_string()))?;
    if env.recipients.len() > h.slots as usize {
        return Err(Bad::Corrupt("more recipients than slots".into()));
    }
    Ok(StoredMessage { id, env, map, body_len, done })
}
