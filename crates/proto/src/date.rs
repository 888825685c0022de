//! RFC 5322 date-time formatting (`Sat, 28 Nov 2026 17:42:00 +0000`) from a
//! Unix timestamp the caller supplies (this crate reads no clock).

/// Appends the RFC 5322 `date-time` for `unix_secs` (UTC, `+0000`).
pub fn write_rfc5322(unix_secs: i64, out: &mut String) {
    use std::fmt::Write;
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7) as usize;
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
        "Nov", "Dec",
    ];
    let _ = write!(
        out,
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WD[weekday],
        d,
        MON[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
}

/// The RFC 5322 `date-time` for `unix_secs` as a new string.
pub fn rfc5322(unix_secs: i64) -> String {
    let mut s = String::with_capacity(31);
    write_rfc5322(unix_secs, &mut s);
    s
}

/// Appends the RFC 3339 timestamp (`2026-11-28T17:42:00Z`) for `unix_secs`,
/// as used in the JSON event log.
pub fn write_rfc3339(unix_secs: i64, out: &mut String) {
    use std::fmt::Write;
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(rfc5322(951_827_696), "Tue, 29 Feb 2000 12:34:56 +0000");
        // 2026-11-28 17:42:00 UTC.
        assert_eq!(rfc5322(1_795_887_720), "Sat, 28 Nov 2026 17:42:00 +0000");
        let mut s = String::new();
        write_rfc3339(1_795_887_720, &mut s);
        assert_eq!(s, "2026-11-28T17:42:00Z");
    }

    #[test]
    fn before_epoch() {
        assert_eq!(rfc5322(-86_400), "Wed, 31 Dec 1969 00:00:00 +0000");
    }
}
