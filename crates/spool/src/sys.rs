//! Thin wrappers over the few system calls std does not offer.

#[cfg(target_os = "linux")]
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
#[cfg(target_os = "linux")]
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// `rename(from, to)` that fails with `AlreadyExists` instead of
/// replacing an existing `to` (`renameat2(RENAME_NOREPLACE)` on Linux;
/// elsewhere a check then a plain rename).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let from = CString::new(from.as_os_str().as_bytes())?;
        let to = CString::new(to.as_os_str().as_bytes())?;
        loop {
            // SAFETY: both pointers come from live NUL-terminated
            // CStrings that outlive the call; AT_FDCWD makes relative
            // paths relative to the working directory, as rename(2).
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Old kernels or file systems without the flag.
                Some(libc::EINVAL | libc::ENOSYS) => break,
                _ => return Err(e),
            }
        }
    }
    if to.symlink_metadata().is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
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

    #[test]
    fn rename_noreplace_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) =
            (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&c).unwrap(), b"a");
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
