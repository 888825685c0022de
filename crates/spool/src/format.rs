//! On-disk layout of one spool file.
//!
//! ```text
//! offset 0      header (64 bytes): magic "MILLRSP\x01", version u32,
//!               recipient slots u32, id u128, body offset u64, body_len
//!               u64, env_len u64, zeros (both lengths 0 until commit)
//! offset 64     done map: one byte per recipient slot, 0 = pending,
//!               1 = final; only ever goes 0 -> 1 (by pwrite), so a torn
//!               write is harmless; not covered by the checksum
//! body offset   body (wire form), body_len bytes (64 + slots, rounded
//!               up to 8)
//! ...           envelope (see `envelope`), env_len bytes
//! ...           trailer (32 bytes): body_len u64, env_len u64, crc32c
//!               u32, zero u32, magic "MILLREND"
//! ...           unused space up to the end of the file (files are
//!               reused, so it may hold anything)
//! ```
//!
//! The crc32c covers the header (lengths included), the body, the
//! envelope and the two trailer lengths. A file is committed if and only
//! if its header carries lengths, its trailer sits where they say with
//! the same lengths, and the checksum validates. Without lengths, or
//! without that trailer, the file is incomplete (never acknowledged);
//! with them but a bad checksum it is corrupt. A header whose id differs
//! from the file name is a reused file whose new header never reached
//! the disk: incomplete too.

/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 64;
/// Size of the trailer.
pub(crate) const TRAILER_LEN: usize = 32;
/// Most recipient slots one file may reserve.
pub(crate) const MAX_SLOTS: usize = 1 << 20;

const HEADER_MAGIC: [u8; 8] = *b"MILLRSP\x01";
const TRAILER_MAGIC: [u8; 8] = *b"MILLREND";
const VERSION: u32 = 2;

/// Where the body starts for `slots` recipients.
pub(crate) fn body_offset(slots: u32) -> u64 {
    (HEADER_LEN as u64 + u64::from(slots) + 7) & !7
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) slots: u32,
    pub(crate) id: u128,
    pub(crate) body_off: u64,
    /// Body length; 0 with `env_len` 0 until commit.
    pub(crate) body_len: u64,
    /// Envelope length; never 0 once committed.
    pub(crate) env_len: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.slots.to_le_bytes());
        b[16..32].copy_from_slice(&self.id.to_le_bytes());
        b[32..40].copy_from_slice(&self.body_off.to_le_bytes());
        b[40..48].copy_from_slice(&self.body_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.env_len.to_le_bytes());
        b
    }

    /// Whether the magic is there at all (a file that never got a header
    /// is all zeros).
    pub(crate) fn has_magic(b: &[u8; HEADER_LEN]) -> bool {
        b[0..8] == HEADER_MAGIC
    }

    /// Offset just past the trailer, if the lengths do not overflow.
    pub(crate) fn record_end(&self) -> Option<u64> {
        self.body_off
            .checked_add(self.body_len)?
            .checked_add(self.env_len)?
            .checked_add(TRAILER_LEN as u64)
    }

    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, String> {
        if b[0..8] != HEADER_MAGIC {
            return Err("bad header magic".into());
        }
        if le_u32(&b[8..12]) != VERSION {
            return Err(format!("unknown version {}", le_u32(&b[8..12])));
        }
        let h = Self {
            slots: le_u32(&b[12..16]),
            id: u128::from_le_bytes(b[16..32].try_into().unwrap_or([0; 16])),
            body_off: le_u64(&b[32..40]),
            body_len: le_u64(&b[40..48]),
            env_len: le_u64(&b[48..56]),
        };
        if h.slots as usize > MAX_SLOTS || h.body_off != body_offset(h.slots) {
            return Err("bad recipient count or body offset".into());
        }
        Ok(h)
    }
}

/// The trailer (without magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub(crate) body_len: u64,
    pub(crate) env_len: u64,
    pub(crate) crc: u32,
}

impl Trailer {
    /// The lengths part, which the checksum covers.
    pub(crate) fn lens(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.body_len.to_le_bytes());
        b[8..].copy_from_slice(&self.env_len.to_le_bytes());
        b
    }

    pub(crate) fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0; TRAILER_LEN];
        b[..16].copy_from_slice(&self.lens());
        b[16..20].copy_from_slice(&self.crc.to_le_bytes());
        b[24..32].copy_from_slice(&TRAILER_MAGIC);
        b
    }

    /// `None` if the magic is missing (the file is incomplete).
    pub(crate) fn decode(b: &[u8; TRAILER_LEN]) -> Option<Self> {
        if b[24..32] != TRAILER_MAGIC {
            return None;
        }
        Some(Self {
            body_len: le_u64(&b[0..8]),
            env_len: le_u64(&b[8..16]),
            crc: le_u32(&b[16..20]),
        })
    }
}

/// The checksum of a message's covered parts.
pub(crate) fn checksum(
    header: &[u8; HEADER_LEN],
    body: &[u8],
    env: &[u8],
    lens: &[u8; 16],
) -> u32 {
    let c = crc32c::crc32c(header);
    let c = crc32c::crc32c_append(c, body);
    let c = crc32c::crc32c_append(c, env);
    crc32c::crc32c_append(c, lens)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = Header {
            slots: 3,
            id: 42,
            body_off: body_offset(3),
            body_len: 10,
            env_len: 20,
        };
        assert_eq!(h.body_off, 72);
        assert_eq!(h.record_end(), Some(72 + 10 + 20 + TRAILER_LEN as u64));
        let mut b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        b[32] ^= 1;
        assert!(Header::decode(&b).is_err());
        assert!(Header::has_magic(&b));
        b[0] = 0;
        assert!(Header::decode(&b).is_err());
        assert!(!Header::has_magic(&b));
    }

    #[test]
    fn trailer_round_trip() {
        let t = Trailer { body_len: 5, env_len: 9, crc: 0xDEAD_BEEF };
        let mut b = t.encode();
        assert_eq!(Trailer::decode(&b), Some(t));
        b[31] = 0;
        assert_eq!(Trailer::decode(&b), None);
    }
}
