//! Thin wrappers over the few system calls std does not offer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when someone else holds it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file`
        // keeps open for the duration of the call; no memory is passed.
        let rc = unsafe {
            libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Makes the file at least `len` bytes long with the blocks allocated,
/// so that later stores through a mapping cannot hit ENOSPC (which
/// would be a SIGBUS instead of an error). Falls back to `set_len`
/// where the file system cannot preallocate.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        loop {
            // SAFETY: fallocate only reads the descriptor, which `file`
            // keeps open during the call; no memory is passed.
            let rc =
                unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) => break,
                _ => return Err(e),
            }
        }
    }
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Starts writeback of all dirty pages of `file` without waiting.
pub(crate) fn start_writeback(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sync_file_range only reads the descriptor, which
        // `file` keeps open during the call; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// `syncfs(2)`: writes back and commits everything on the file system
/// that holds `file`, waiting for the device to confirm. Reports
/// writeback errors (Linux >= 5.8).
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: syncfs only reads the descriptor, which `file` keeps
        // open during the call; no memory is passed.
        let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_between_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }

    #[test]
    fn allocate_grows_and_writeback_runs() {
        let dir = tempfile::tempdir().unwrap();
        let f = tempfile::tempfile_in(dir.path()).unwrap();
        allocate(&f, 100_000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100_000);
        allocate(&f, 10).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100_000, "never shrinks");
        start_writeback(&f).unwrap();
        syncfs(&f).unwrap();
    }
}
