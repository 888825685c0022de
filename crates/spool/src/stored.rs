//! Committed messages as delivery reads them, and the validation that
//! decides what is committed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::envelope::{self, Envelope};
use crate::error::io_err;
use crate::format::{self, HEADER_LEN, Header, TRAILER_LEN, Trailer};
use crate::reuse::{Held, lock};
use crate::{MessageId, SpoolError};

/// A committed message, mapped. `Send + Sync`.
#[derive(Debug)]
pub struct StoredMessage {
    id: MessageId,
    backing: Backing,
    /// Snapshot of the done map taken when opened.
    done: Vec<u8>,
}

#[derive(Debug)]
enum Backing {
    /// Still mapped from when it was received.
    Hot(Arc<Held>),
    /// Opened from its file: maps body then envelope, read-only.
    Cold { env: Envelope, map: Mmap, body_len: usize },
}

impl StoredMessage {
    /// Serves a message of the hot set, checksum validated like a file.
    pub(crate) fn hot(h: Arc<Held>) -> Result<Self, SpoolError> {
        let t = Trailer {
            body_len: h.header.body_len,
            env_len: h.header.env_len,
            crc: 0,
        };
        let crc = format::checksum(
            h.header_bytes(),
            h.body(),
            h.env_bytes(),
            &t.lens(),
        );
        if crc != h.crc {
            return Err(SpoolError::Corrupt(format!(
                "{}: checksum mismatch",
                h.id
            )));
        }
        let done = lock(&h.done).clone();
        Ok(Self { id: h.id, backing: Backing::Hot(h), done })
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        match &self.backing {
            Backing::Hot(h) => &h.env,
            Backing::Cold { env, .. } => env,
        }
    }

    /// The body in wire (dot-stuffed) form, borrowed from the mapping.
    pub fn body(&self) -> &[u8] {
        match &self.backing {
            Backing::Hot(h) => h.body(),
            Backing::Cold { map, body_len, .. } => &map[..*body_len],
        }
    }

    /// Whether recipient `rcpt` was final when the message was opened.
    pub fn is_done(&self, rcpt: u32) -> bool {
        self.done.get(rcpt as usize).is_some_and(|&b| b != 0)
    }
}

/// Why a file did not load.
pub(crate) enum Bad {
    NotFound,
    Incomplete(String),
    Corrupt(String),
    Io(SpoolError),
}

/// Opens and fully validates one message file.
pub(crate) fn load(path: &Path, id: MessageId) -> Result<StoredMessage, Bad> {
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
    let mut hb = [0; HEADER_LEN];
    read(&mut hb, 0)?;
    if !Header::has_magic(&hb) {
        return Err(Bad::Incomplete("no header (a freed file)".into()));
    }
    let h = Header::decode(&hb).map_err(Bad::Corrupt)?;
    if h.id != id.as_u128() {
        // A pooled file renamed for a new message whose header never
        // reached the disk.
        return Err(Bad::Incomplete("id in header differs from name".into()));
    }
    if h.env_len == 0 {
        return Err(Bad::Incomplete("never committed".into()));
    }
    let Some(end) = h.record_end() else {
        return Err(Bad::Corrupt("lengths overflow".into()));
    };
    if end > size {
        return Err(Bad::Incomplete("shorter than its record".into()));
    }
    let mut tb = [0; TRAILER_LEN];
    read(&mut tb, end - TRAILER_LEN as u64)?;
    let t = match Trailer::decode(&tb) {
        Some(t) if t.body_len == h.body_len && t.env_len == h.env_len => t,
        // The trailer page never reached the disk.
        _ => return Err(Bad::Incomplete("no trailer".into())),
    };
    let mut done = vec![0; h.slots as usize];
    read(&mut done, HEADER_LEN as u64)?;
    let mapped = usize::try_from(h.body_len + h.env_len)
        .map_err(|_| Bad::Corrupt("too large to map".into()))?;
    // SAFETY: spool files are only written by this process (the spool
    // directory is locked) and never modified or truncated while
    // committed, except the done map, which lies before `body_off` and
    // so outside this mapping. Only a file of the hot set is ever
    // reused, and `delete` renames it away before it leaves the hot
    // set, so a file opened here by name (the hot set missed it) is
    // never reused: deleting it only unlinks it, which keeps the
    // mapping valid. (Ids are known only once committed, so nobody
    // opens a file by name before it joins the hot set; `list` during
    // commits would break that.) `end <= size` was checked above, so
    // the mapped range is within the file.
    let map = unsafe {
        MmapOptions::new().offset(h.body_off).len(mapped).map(&file)
    }
    .map_err(|e| Bad::Io(io_err("mmap", path)(e)))?;
    let body_len = h.body_len as usize;
    let (body, env_bytes) = map.split_at(body_len);
    if format::checksum(&hb, body, env_bytes, &t.lens()) != t.crc {
        return Err(Bad::Corrupt("checksum mismatch".into()));
    }
    let env = envelope::decode(env_bytes)
        .map_err(|e| Bad::Corrupt(e.to_string()))?;
    if env.recipients.len() > h.slots as usize {
        return Err(Bad::Corrupt("more recipients than slots".into()));
    }
    Ok(StoredMessage {
        id,
        backing: Backing::Cold { env, map, body_len },
        done,
    })
}
