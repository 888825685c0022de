//! Process limits.
#![allow(unsafe_code)]

use std::io;

/// Raises the soft `RLIMIT_NOFILE` (open file descriptors) to the hard
/// limit, so that thousands of sessions can be open at once. Returns the
/// soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, exclusively borrowed `rlimit` that
    // getrlimit fills in; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid `rlimit` read from getrlimit whose soft
        // limit is raised to (not above) its hard limit; setrlimit only
        // reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::raise_nofile_limit;

    #[test]
    fn soft_limit_reaches_hard_limit() {
        let now = raise_nofile_limit().unwrap();
        assert!(now >= 1024, "soft limit {now}");
        // Idempotent: a second call finds it already raised.
        assert_eq!(raise_nofile_limit().unwrap(), now);
    }
}
