//! Message ids: time-ordered, unique, usable as file names.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unique id of a spooled message, sortable by arrival time.
///
/// The high bits hold microseconds since the Unix epoch, the low 32 bits
/// a per-process counter seeded randomly, so ids made in the same
/// microsecond by different threads or by a restarted process differ.
/// `Display` is 32 uppercase hex digits; `FromStr` parses it back.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u128);

/// Length of the textual form of a [`MessageId`].
pub const ID_TEXT_LEN: usize = 32;

impl MessageId {
    /// The raw value.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Builds an id from its raw value.
    pub fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// Microseconds since the Unix epoch when the id was made.
    pub fn timestamp_micros(self) -> u64 {
        (self.0 >> 32) as u64
    }

    /// A fresh id for the current time.
    pub(crate) fn generate() -> Self {
        static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
        let counter = COUNTER.get_or_init(|| {
            // RandomState is seeded from the OS per process.
            AtomicU32::new(RandomState::new().hash_one(0x6d69_6c6c_u32) as u32)
        });
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0) as u64;
        let low = counter.fetch_add(1, Ordering::Relaxed);
        Self((u128::from(micros) << 32) | u128::from(low))
    }

    /// The fan-out bucket: bits 20..28 of the timestamp, so the bucket
    /// changes about once a second and cycles through all 256 in about
    /// 4.5 minutes. Messages committed in the same window then share a
    /// directory, and one directory fsync serves the whole batch.
    pub(crate) fn fan(self) -> u8 {
        (self.timestamp_micros() >> 20) as u8
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032X}", self.0)
    }
}

/// Error from parsing a [`MessageId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (want 32 uppercase hex digits)")]
pub struct ParseIdError;

impl FromStr for MessageId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, ParseIdError> {
        let ok = s.len() == ID_TEXT_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        if !ok {
            return Err(ParseIdError);
        }
        u128::from_str_radix(s, 16).map(Self).map_err(|_| ParseIdError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        for v in [0, 1, u128::MAX, 0xABCD_0123_u128 << 40] {
            let id = MessageId::from_u128(v);
            let s = id.to_string();
            assert_eq!(s.len(), ID_TEXT_LEN);
            assert_eq!(s.parse::<MessageId>(), Ok(id));
        }
    }

    #[test]
    fn rejects_bad_text() {
        for s in ["", "0", &"a".repeat(32), &"G".repeat(32), &"0".repeat(33)] {
            assert_eq!(s.parse::<MessageId>(), Err(ParseIdError), "{s:?}");
        }
    }

    #[test]
    fn generated_ids_carry_time() {
        let before =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()
                as u64;
        let id = MessageId::generate();
        assert!(id.timestamp_micros() >= before);
        assert!(id.timestamp_micros() - before < 60_000_000);
    }
}
