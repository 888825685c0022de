//! The spool directory: create, commit (group fsync), open, recover.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use memmap2::{MmapMut, MmapOptions};

use crate::envelope::Envelope;
use crate::error::io_err;
use crate::format::{HEADER_LEN, Header, MAX_SLOTS, body_offset};
use crate::incoming::{Finished, Incoming};
use crate::reuse::{HOT_BYTES, HOT_MAX, Hot, Mapped, Pool, Slot, lock};
use crate::stored::{Bad, StoredMessage, load};
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

/// State shared with the committer thread and with messages being
/// received (which must not hold `Inner`, or the spool could never be
/// dropped).
#[derive(Debug)]
pub(crate) struct Shared {
    q: PathBuf,
    /// `<dir>/free`: pooled files.
    free: PathBuf,
    pool: Mutex<Pool>,
    hot: Mutex<Hot>,
    /// Name of the next file to enter the pool.
    next_free: AtomicU64,
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

    fn free_path(&self, name: u64) -> PathBuf {
        self.free.join(format!("{name:016x}"))
    }

    /// Takes a pooled file and renames it to `path`; `None` when the
    /// pool is empty or the rename fails (the file is then dropped).
    fn take_free(&self, path: &Path) -> Option<Mapped> {
        let slot = lock(&self.pool).pop()?;
        let from = self.free_path(slot.name);
        let moved = match sys::rename_noreplace(&from, path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Most likely the fan-out directory is new.
                path.parent()
                    .map_or(Ok(()), fs::create_dir_all)
                    .and_then(|()| sys::rename_noreplace(&from, path))
            }
            r => r,
        };
        match moved {
            Ok(()) => Some(slot.mapped),
            Err(_) => {
                let _ = fs::remove_file(&from);
                None
            }
        }
    }

    /// Moves the file at `path` to a fresh name under `free/`.
    fn park(&self, path: &Path) -> io::Result<u64> {
        let name = self.next_free.fetch_add(1, Ordering::Relaxed);
        fs::rename(path, self.free_path(name))?;
        Ok(name)
    }

    /// Puts the file parked as `free/<name>` into the pool, or unlinks
    /// it if the pool filled up meanwhile (the check and the push are
    /// one critical section, so the bounds hold).
    fn pool_parked(&self, name: u64, m: Mapped) {
        let mut pool = lock(&self.pool);
        if pool.has_room(m.map.len()) {
            pool.push(Slot { mapped: m, name });
            return;
        }
        drop(pool);
        drop(m);
        let _ = fs::remove_file(self.free_path(name));
    }

    /// Retires the file of a message being received (nobody else knows
    /// its name) at `path`: into the pool (renamed under `free/`) when
    /// there is room, otherwise unlinked; unlinked too when the rename
    /// fails (`EXDEV`, `ENOSPC`, a missing `free/`), so the file never
    /// stays behind. `NotFound` if there is no such file. The old
    /// record is left as it is: nothing scans `free/`, and once the
    /// file is renamed for a new message, recovery sees the old id in
    /// the header differ from the name.
    pub(crate) fn recycle(&self, path: &Path, m: Mapped) -> io::Result<()> {
        if lock(&self.pool).has_room(m.map.len())
            && let Ok(name) = self.park(path)
        {
            self.pool_parked(name, m);
            return Ok(());
        }
        drop(m);
        fs::remove_file(path)
    }

    /// Deletes committed message `id`, whose file is at `path`.
    ///
    /// A message of the hot set that nobody reads goes back to the
    /// pool. Its file is renamed under `free/` *before* it leaves the
    /// hot set: from then on an `open_message` that misses the hot set
    /// finds no file, so nobody can map, by name, a file that is about
    /// to be written over for another message. (Leaving the hot set
    /// first let a reader open the file by name in between, and the
    /// next message was written over what it was reading.) A message
    /// still read, evicted meanwhile, or not hot at all is unlinked:
    /// its mappings outlive the name and the file is never reused.
    fn retire(&self, id: MessageId, path: &Path) -> io::Result<()> {
        let idle_len = lock(&self.hot)
            .get_ref(id)
            .filter(|h| Arc::strong_count(h) == 1)
            .map(|h| h.mapped.map.len());
        let parked = match idle_len {
            Some(len) if lock(&self.pool).has_room(len) => {
                self.park(path).ok()
            }
            _ => None,
        };
        let held = lock(&self.hot).remove(id);
        let Some(name) = parked else {
            drop(held);
            return fs::remove_file(path);
        };
        match held.map(Arc::try_unwrap) {
            Some(Ok(h)) => self.pool_parked(name, h.mapped),
            // Opened meanwhile (the reader keeps the mapping), or
            // evicted (someone may have mapped it by name since).
            Some(Err(_)) | None => {
                let _ = fs::remove_file(self.free_path(name));
            }
        }
        Ok(())
    }

    /// A fresh mapping of all of `file` (`len` bytes, allocated).
    pub(crate) fn map(
        file: &File,
        len: usize,
        path: &Path,
    ) -> Result<MmapMut, SpoolError> {
        // SAFETY: spool files are written only by this process (the
        // spool directory is locked), through this mapping or by
        // `pwrite` of the done map, which no slice handed out covers;
        // the caller allocated `len` bytes (fallocate), so every store
        // is backed and cannot fault on ENOSPC; files are never
        // truncated while mapped except a trimmed one, whose mapping is
        // dropped first.
        unsafe { MmapOptions::new().len(len).map_mut(file) }
            .map_err(io_err("mmap", path))
    }
}

type Done = Box<dyn FnOnce(Result<MessageId, SpoolError>) + Send>;

struct Job {
    id: MessageId,
    path: PathBuf,
    rec: Option<Finished>,
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
        let free = dir.join("free");
        let (pool, next_free) = adopt_free_files(&free)?;
        let shared = Shared {
            q: q.clone(),
            free,
            pool: Mutex::new(pool),
            hot: Mutex::new(Hot::new(HOT_MAX, HOT_BYTES)),
            next_free: AtomicU64::new(next_free),
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
    /// mmap'd for writing the body. Reuses a pooled file when there is
    /// one.
    pub fn create(&self, recipients: usize) -> Result<Incoming, SpoolError> {
        if recipients > MAX_SLOTS {
            return Err(SpoolError::TooManyRecipients {
                reserved: MAX_SLOTS,
                got: recipients,
            });
        }
        let shared = &self.inner.shared;
        let slots = recipients as u32;
        let body_off = body_offset(slots);
        let limit = usize::try_from(
            self.inner.opts.max_message_size.saturating_add(GROWTH_SLACK),
        )
        .unwrap_or(usize::MAX);
        let id = MessageId::generate();
        let mut path = self.message_path(id);
        let (id, mapped) = match shared.take_free(&path) {
            Some(m) => (id, m),
            None => {
                let (id, file) = self.create_file(id, &mut path)?;
                let len = self
                    .inner
                    .opts
                    .initial_size
                    .clamp(4096, limit.max(4096))
                    .max(body_off as usize + 4096)
                    .next_multiple_of(4096);
                let mapped = sys::allocate(&file, len as u64)
                    .map_err(io_err("fallocate", &path))
                    .and_then(|()| Shared::map(&file, len, &path))
                    .map(|map| Mapped { file, map });
                match mapped {
                    Ok(m) => (id, m),
                    Err(e) => {
                        let _ = fs::remove_file(&path);
                        return Err(e);
                    }
                }
            }
        };
        let header = Header {
            slots,
            id: id.as_u128(),
            body_off,
            body_len: 0,
            env_len: 0,
        };
        Incoming::new(Arc::clone(shared), path, mapped, header, limit)
    }

    /// Creates a new, empty message file (`O_EXCL`), retrying with a
    /// fresh id on the (unlikely) clash; `path` follows the id.
    fn create_file(
        &self,
        mut id: MessageId,
        path: &mut PathBuf,
    ) -> Result<(MessageId, File), SpoolError> {
        let mut attempt = 0;
        loop {
            let fan_dir = self.inner.shared.fan_dir(id.fan());
            let open = || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&*path)
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
                Ok(f) => return Ok((id, f)),
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && attempt < 16 =>
                {
                    attempt += 1;
                    id = MessageId::generate();
                    *path = self.message_path(id);
                }
                Err(e) => return Err(io_err("create", &*path)(e)),
            }
        }
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
        let id = msg.id();
        let path = msg.path().to_path_buf();
        let (rec, result) = match msg.finish(env) {
            Ok(f) => (Some(f), Ok(())),
            Err(e) => (None, Err(e)),
        };
        // On error `msg` still owns the file and retires it here.
        drop(msg);
        let job = Job { id, path, rec, result, done };
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

    /// Opens a committed message (mmap, checksum validated). A
    /// recently committed one is served from the mapping it was
    /// received into.
    pub fn open_message(
        &self,
        id: MessageId,
    ) -> Result<StoredMessage, SpoolError> {
        let held = lock(&self.inner.shared.hot).get(id);
        if let Some(h) = held {
            return StoredMessage::hot(h);
        }
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
        let mut idx: Vec<u32> = rcpts.to_vec();
        idx.sort_unstable();
        idx.dedup();
        let held = lock(&self.inner.shared.hot).get(id);
        if let Some(h) = held {
            check_indices(&idx, h.header.slots)?;
            write_done(&h.mapped.file, &idx, &path)?;
            let mut mirror = lock(&h.done);
            for &i in &idx {
                if let Some(b) = mirror.get_mut(i as usize) {
                    *b = 1;
                }
            }
            drop(mirror);
            return h
                .mapped
                .file
                .sync_data()
                .map_err(io_err("fdatasync", &path));
        }
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
        check_indices(&idx, h.slots)?;
        write_done(&file, &idx, &path)?;
        file.sync_data().map_err(io_err("fdatasync", &path))
    }

    /// Removes a message (no fsync: a lost unlink only means a
    /// duplicate delivery after a crash). A recently committed message
    /// nobody is reading any more goes back to the pool of files.
    pub fn delete(&self, id: MessageId) -> Result<(), SpoolError> {
        let path = self.message_path(id);
        let res = self.inner.shared.retire(id, &path);
        match res {
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

/// Every index must be below `slots`.
fn check_indices(idx: &[u32], slots: u32) -> Result<(), SpoolError> {
    match idx.iter().find(|&&r| r >= slots) {
        Some(&bad) => {
            Err(SpoolError::BadRecipient { index: bad, count: slots })
        }
        None => Ok(()),
    }
}

/// Writes 1 into the done map for `idx` (sorted), one `pwrite` per run
/// of consecutive indices.
fn write_done(
    file: &File,
    idx: &[u32],
    path: &Path,
) -> Result<(), SpoolError> {
    let ones = vec![1u8; idx.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && idx[j] == idx[j - 1] + 1 {
            j += 1;
        }
        let off = HEADER_LEN as u64 + u64::from(idx[i]);
        file.write_all_at(&ones[..j - i], off)
            .map_err(io_err("write", path))?;
        i = j;
    }
    Ok(())
}

/// Opens the pooled files left in `free` (creating it) and returns
/// them as a pool, with the next unused name. Files that do not fit
/// the pool are removed.
fn adopt_free_files(free: &Path) -> Result<(Pool, u64), SpoolError> {
    fs::create_dir_all(free).map_err(io_err("create", free))?;
    let mut pool = Pool::default();
    let mut next = 0u64;
    for entry in fs::read_dir(free).map_err(io_err("read", free))? {
        let entry = entry.map_err(io_err("read", free))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .to_str()
            .filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        let Some(name) = name else { continue };
        next = next.max(name.saturating_add(1));
        let adopted = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
            .and_then(|file| {
                let meta = file.metadata().map_err(io_err("stat", &path))?;
                let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
                // A second name (a rename a crash left half done on a
                // file system that does not journal it) may be a message
                // in `q/`: never reuse that file, just drop this name.
                if meta.nlink() > 1 || len < 4096 || !pool.has_room(len) {
                    return Ok(None);
                }
                let map = Shared::map(&file, len, &path)?;
                Ok(Some(Mapped { file, map }))
            });
        match adopted {
            Ok(Some(mapped)) => pool.push(Slot { mapped, name }),
            Ok(None) | Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok((pool, next))
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
                    if let Some(Finished::Mapped(held)) = job.rec {
                        // Kept mapped for delivery; whatever had to
                        // leave is unmapped outside the lock.
                        let out = lock(&shared.hot).insert(Arc::from(held));
                        drop(out);
                    }
                    let _ =
                        catch_unwind(AssertUnwindSafe(move || done(Ok(id))));
                }
                Err(ref _e) => {
                    let mut job = job;
                    let e = std::mem::replace(&mut job.result, Ok(()))
                        .err()
                        .unwrap_or(SpoolError::Closed);
                    drop(job.rec.take());
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
            if let (Ok(()), Some(f)) = (&job.result, &job.rec) {
                let f = f.file();
                // Errors surface again in fdatasync below.
                let _ = sys::start_writeback(f);
            }
        }
    }
    for job in batch.iter_mut() {
        if let (Ok(()), Some(f)) = (&job.result, &job.rec)
            && let Err(e) = f.file().sync_data()
        {
            job.result = Err(io_err("fdatasync", &job.path)(e));
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
        if job.result.is_ok()
            && let Some((e, p)) = failed.get(&job.id.fan())
        {
            let e = io::Error::new(e.kind(), e.to_string());
            job.result = Err(io_err("fsync directory", p)(e));
        }
    }
}
