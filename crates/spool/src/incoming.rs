//! A message being received: the body goes straight into a mapping of
//! its spool file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};
use std::sync::{Arc, Mutex};

use crate::envelope::{self, Envelope};
use crate::error::io_err;
use crate::format::{self, HEADER_LEN, Header, TRAILER_LEN, Trailer};
use crate::reuse::{Held, Mapped, REUSE_MAX_FILE};
use crate::spool::Shared;
use crate::sys;
use crate::{MessageId, SpoolError};

/// A message being received: a spool file (new, or reused from the
/// pool) whose body is written straight into a mapping. Dropping it
/// without commit retires the file.
#[derive(Debug)]
pub struct Incoming {
    shared: Arc<Shared>,
    path: PathBuf,
    /// `None` once handed to the committer.
    m: Option<Mapped>,
    header: Header,
    len: usize,
    limit: usize,
}

/// A file whose record is complete, ready to be synced.
#[derive(Debug)]
pub(crate) enum Finished {
    /// Kept mapped (it joins the hot set once durable).
    Mapped(Box<Held>),
    /// Trimmed to its record and unmapped (a large message).
    Trimmed(File),
}

impl Finished {
    /// The file to sync.
    pub(crate) fn file(&self) -> &File {
        match self {
            Self::Mapped(h) => &h.mapped.file,
            Self::Trimmed(f) => f,
        }
    }
}

impl Incoming {
    /// Takes over `mapped` (already at `path`) for a new message:
    /// writes the header (no lengths yet) and clears the done map.
    pub(crate) fn new(
        shared: Arc<Shared>,
        path: PathBuf,
        mapped: Mapped,
        header: Header,
        limit: usize,
    ) -> Result<Self, SpoolError> {
        let mut msg =
            Self { shared, path, m: Some(mapped), header, len: 0, limit };
        let body_off = msg.body_off();
        if msg.total() < body_off + 4096 {
            msg.grow(4096, true)?;
        }
        let hb = msg.header.encode();
        let map = msg.map_mut()?;
        map[..HEADER_LEN].copy_from_slice(&hb);
        map[HEADER_LEN..body_off].fill(0);
        Ok(msg)
    }

    /// The id this message will be committed under.
    pub fn id(&self) -> MessageId {
        MessageId::from_u128(self.header.id)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn body_off(&self) -> usize {
        self.header.body_off as usize
    }

    /// Length of the file (and of the mapping).
    fn total(&self) -> usize {
        self.m.as_ref().map_or(0, |m| m.map.len())
    }

    /// Room for the body: the mapping after the header and done map,
    /// but never past the size limit.
    fn cap(&self) -> usize {
        self.room().min(self.limit)
    }

    /// All the mapping after the header and done map.
    fn room(&self) -> usize {
        self.total().saturating_sub(self.body_off())
    }

    fn map_mut(&mut self) -> Result<&mut [u8], SpoolError> {
        self.m.as_mut().map(|m| &mut m.map[..]).ok_or(SpoolError::Closed)
    }

    /// Grows the file and its mapping to hold at least `need` bytes
    /// after the header and done map (geometrically); `limit` refuses
    /// to grow the body past the size limit.
    fn grow(&mut self, need: usize, limit: bool) -> Result<(), SpoolError> {
        if limit && need > self.limit {
            return Err(SpoolError::TooLarge);
        }
        let body_off = self.body_off();
        let mut len = need.max(self.room().saturating_mul(2));
        if limit {
            len = len.min(self.limit);
        }
        let total = body_off
            .checked_add(len)
            .map(|t| t.next_multiple_of(4096))
            .ok_or(SpoolError::TooLarge)?;
        let m = self.m.as_mut().ok_or(SpoolError::Closed)?;
        sys::allocate(&m.file, total as u64)
            .map_err(io_err("fallocate", &self.path))?;
        m.map = Shared::map(&m.file, total, &self.path)?;
        Ok(())
    }

    /// Writable space after what is written, at least `at_least` bytes;
    /// grows the file (geometrically) as needed. Refuses to grow past
    /// `max_message_size` + [`GROWTH_SLACK`](crate::GROWTH_SLACK) with
    /// [`SpoolError::TooLarge`].
    pub fn spare(&mut self, at_least: usize) -> Result<&mut [u8], SpoolError> {
        let need =
            self.len.checked_add(at_least).ok_or(SpoolError::TooLarge)?;
        if need > self.cap() {
            self.grow(need, true)?;
        }
        let from = self.body_off() + self.len;
        Ok(&mut self.map_mut()?[from..])
    }

    /// `n` more bytes of [`Incoming::spare`] were filled (clamped to the
    /// mapped space).
    pub fn advance(&mut self, n: usize) {
        self.len = self.len.saturating_add(n).min(self.cap());
    }

    /// The body bytes written so far.
    pub fn written(&self) -> &[u8] {
        let from = self.body_off();
        self.m.as_ref().map_or(&[], |m| &m.map[from..from + self.len])
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

    /// Drops the message and retires its file.
    pub fn abort(self) {}

    /// Completes the record (header lengths, envelope, trailer, all
    /// through the mapping) and hands the file over for syncing. On
    /// error `self` still owns (and retires) it.
    pub(crate) fn finish(
        &mut self,
        env: &Envelope,
    ) -> Result<Finished, SpoolError> {
        let slots = self.header.slots;
        if env.recipients.len() > slots as usize {
            return Err(SpoolError::TooManyRecipients {
                reserved: slots as usize,
                got: env.recipients.len(),
            });
        }
        let mut tail = Vec::with_capacity(256 + TRAILER_LEN);
        envelope::encode(env, &mut tail)?;
        let env_len = tail.len();
        let room = self.len + env_len + TRAILER_LEN;
        if room > self.room() {
            self.grow(room, false)?;
        }
        self.header.body_len = self.len as u64;
        self.header.env_len = env_len as u64;
        let hb = self.header.encode();
        let t = Trailer {
            body_len: self.header.body_len,
            env_len: self.header.env_len,
            crc: 0,
        };
        let crc = format::checksum(&hb, self.written(), &tail, &t.lens());
        tail.extend_from_slice(&Trailer { crc, ..t }.encode());
        let end = self.body_off() + self.len;
        let map = self.map_mut()?;
        // Trailer before the lengths: a process killed between the two
        // leaves a header without lengths (incomplete), never lengths
        // that point at a stale trailer of the file's previous message.
        map[end..end + tail.len()].copy_from_slice(&tail);
        // Keep the compiler from moving the header stores before the
        // trailer's (x86 and ARM keep program order for a process crash
        // once the stores are issued in it; a power loss has no order).
        compiler_fence(Ordering::SeqCst);
        map[..HEADER_LEN].copy_from_slice(&hb);
        let record_end = end + tail.len();
        let m = self.m.take().ok_or(SpoolError::Closed)?;
        if m.map.len() <= REUSE_MAX_FILE {
            let done = vec![0; slots as usize];
            return Ok(Finished::Mapped(Box::new(Held {
                id: self.id(),
                mapped: m,
                header: self.header,
                crc,
                env: env.clone(),
                done: Mutex::new(done),
            })));
        }
        let Mapped { file, map } = m;
        drop(map);
        match file.set_len(record_end as u64) {
            Ok(()) => Ok(Finished::Trimmed(file)),
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(io_err("ftruncate", &self.path)(e))
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(m) = self.m.take() {
            let _ = self.shared.recycle(&self.path, m);
        }
    }
}
