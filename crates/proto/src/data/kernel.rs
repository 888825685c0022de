//! The fast path of the DATA scanner: how much of a chunk holds nothing
//! the exact scanner needs to look at.
//!
//! The chunk is cut into 64-byte blocks from its start. For each block a
//! kernel computes three 64-bit masks, one bit per byte: the CRs, the LFs
//! and the dots. With the masks of the block before (carried, simdjson
//! style) it finds two kinds of *event*, each at a byte index `j`:
//!
//! - a bare line ending, `lf != cr << 1`: `buf[j]` is an LF not preceded
//!   by a CR, or `buf[j - 1]` is a CR not followed by an LF;
//! - a possible end marker, `cr & dot << 1 & lf << 2`: `buf[j - 2..=j]` is
//!   `LF '.' CR`, the middle of `CRLF.CRLF`.
//!
//! The two bytes before `buf` (the end of the previous chunk) are passed
//! in as `before`, so events at indices 0 and 1 are found too.
//! [`Fast::clean_prefix`] returns the start of the first block holding an
//! event, or where the whole blocks end if none does. So with `q` that
//! length, for every `j` in `0..q`, `buf[j] == LF` exactly when the byte
//! before it is a CR, and no `LF '.' CR` ends in `buf[..q]`. Hence no end
//! marker ends in `buf[..q]` either, unless `before` and the stream before
//! it end with `CRLF.CR` and `buf[0]` is LF: the caller checks that case.
//! Every kernel returns the same `q` for the same input: `q` is a
//! multiple of 64, and the block holding the end marker (and any bytes
//! after the last whole block) are left to the caller's exact scan.
//!
//! This is the one module of the crate with `unsafe`: the SIMD loads and
//! the calls into `#[target_feature]` functions. Kernels are only reached
//! through [`Fast`], which is only built after the CPU features it needs
//! were detected.

use std::sync::LazyLock;

/// Bytes per block; `q` is a multiple of this.
pub(super) const BLOCK: usize = 64;

/// Which implementation of the fast path a scanner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust (vectorised by the compiler for the baseline target).
    Portable,
    /// x86-64 AVX2 intrinsics, 32 bytes at a time.
    Avx2,
    /// x86-64 AVX-512BW intrinsics, 64-bit compare masks.
    Avx512,
}

impl Kernel {
    /// Every kernel, fastest last.
    pub const ALL: [Self; 3] = [Self::Portable, Self::Avx2, Self::Avx512];

    /// True when this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => false,
        }
    }

    /// The fastest kernel this CPU supports (detected once).
    pub fn best() -> Self {
        static BEST: LazyLock<Kernel> = LazyLock::new(|| {
            Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.is_supported())
                .unwrap_or(Kernel::Portable)
        });
        *BEST
    }
}

/// A kernel the CPU was checked to support: the only way to run one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fast(Kernel);

impl Fast {
    /// The fastest supported kernel.
    pub(super) fn best() -> Self {
        Self(Kernel::best())
    }

    /// `kernel`, if this CPU supports it.
    pub(super) fn new(kernel: Kernel) -> Option<Self> {
        kernel.is_supported().then_some(Self(kernel))
    }

    /// The kernel.
    pub(super) fn kernel(self) -> Kernel {
        self.0
    }

    /// The length of the clean prefix of `buf`, which follows the bytes
    /// `before` (see the module docs).
    pub(super) fn clean_prefix(self, before: [u8; 2], buf: &[u8]) -> usize {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                // SAFETY: a `Fast` holding `Avx512` is only built by
                // `Fast::new`/`Fast::best`, after `Kernel::is_supported`
                // detected avx512f and avx512bw, the features
                // `x86::clean_prefix_avx512` enables.
                unsafe { x86::clean_prefix_avx512(before, buf) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                // SAFETY: as above, a `Fast` holding `Avx2` exists only
                // once avx2 was detected.
                unsafe { x86::clean_prefix_avx2(before, buf) }
            }
            _ => clean_prefix_portable(before, buf),
        }
    }
}

/// The masks of the previous block, which events at the start of a block
/// need.
#[derive(Clone, Copy)]
struct Carry {
    cr: u64,
    lf: u64,
    dot: u64,
}

impl Carry {
    /// The carry before the first block: the masks of the two bytes
    /// `before` it, in the top bits.
    #[inline(always)]
    fn start(before: [u8; 2]) -> Self {
        let bits = |b: u8| {
            u64::from(before[0] == b) << 62 | u64::from(before[1] == b) << 63
        };
        Self { cr: bits(b'\r'), lf: bits(b'\n'), dot: bits(b'.') }
    }

    /// The events of a block with these masks (bit `k` for byte `k`);
    /// carries them to the next block.
    #[inline(always)]
    fn events(&mut self, cr: u64, lf: u64, dot: u64) -> u64 {
        let cr_before = cr << 1 | self.cr >> 63;
        let dot_before = dot << 1 | self.dot >> 63;
        let lf_before2 = lf << 2 | self.lf >> 62;
        *self = Self { cr, lf, dot };
        (lf ^ cr_before) | (cr & dot_before & lf_before2)
    }
}

/// Runs `masks` (CR, LF and dot masks of one block) over the whole blocks
/// of `buf`; stops at the first with an event. Returns the clean length.
#[inline(always)]
fn blocks(
    before: [u8; 2],
    buf: &[u8],
    mut masks: impl FnMut(&[u8; BLOCK]) -> (u64, u64, u64),
) -> usize {
    let mut carry = Carry::start(before);
    let mut q = 0;
    for block in buf.chunks_exact(BLOCK) {
        let (cr, lf, dot) = masks(block.try_into().expect("whole block"));
        if carry.events(cr, lf, dot) != 0 {
            break;
        }
        q += BLOCK;
    }
    q
}

/// The portable kernel: the same events, computed byte-wise over each
/// block and the two bytes before it, branch-free so that the compiler
/// vectorises it.
pub(super) fn clean_prefix_portable(before: [u8; 2], buf: &[u8]) -> usize {
    /// True when the block `w[2..]` (after two bytes of context) holds an
    /// event.
    #[inline(always)]
    fn any_event(w: &[u8; BLOCK + 2]) -> bool {
        let mut acc = 0u8;
        for k in 0..BLOCK {
            let (b2, b1, b0) = (w[k], w[k + 1], w[k + 2]);
            let lf = b0 == b'\n';
            let bare = lf != (b1 == b'\r');
            let marker = (b2 == b'\n') & (b1 == b'.') & (b0 == b'\r');
            acc |= u8::from(bare | marker);
        }
        acc != 0
    }
    let Some(first) = buf.first_chunk::<BLOCK>() else { return 0 };
    // The first block's context is `before`.
    let mut w = [0u8; BLOCK + 2];
    w[..2].copy_from_slice(&before);
    w[2..].copy_from_slice(first);
    if any_event(&w) {
        return 0;
    }
    let mut q = BLOCK;
    while let Some(w) = buf.get(q - 2..q + BLOCK) {
        if any_event(w.try_into().expect("block and context")) {
            break;
        }
        q += BLOCK;
    }
    q
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256i, __m512i, _mm256_cmpeq_epi8, _mm256_loadu_si256,
        _mm256_movemask_epi8, _mm256_set1_epi8, _mm512_cmpeq_epi8_mask,
        _mm512_loadu_si512, _mm512_set1_epi8,
    };

    use super::{BLOCK, blocks};

    /// Loads 32 bytes.
    #[target_feature(enable = "avx2")]
    fn load32(bytes: &[u8; 32]) -> __m256i {
        // SAFETY: `bytes` is 32 readable bytes, the size of `__m256i`;
        // `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    }

    /// Loads 64 bytes.
    #[target_feature(enable = "avx512f")]
    fn load64(bytes: &[u8; 64]) -> __m512i {
        // SAFETY: `bytes` is 64 readable bytes, the size of `__m512i`;
        // `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    }

    /// The AVX2 kernel: two 32-byte halves per block, `movemask` for the
    /// masks.
    #[target_feature(enable = "avx2")]
    pub(super) fn clean_prefix_avx2(before: [u8; 2], buf: &[u8]) -> usize {
        let cr = _mm256_set1_epi8(b'\r' as i8);
        let lf = _mm256_set1_epi8(b'\n' as i8);
        let dot = _mm256_set1_epi8(b'.' as i8);
        let mask = |v: __m256i, c: __m256i| {
            // `as u32` keeps the 32 bits of the movemask as they are.
            u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, c)) as u32)
        };
        blocks(before, buf, |block| {
            let (lo, hi) = block.split_at(BLOCK / 2);
            let lo = load32(lo.try_into().expect("half block"));
            let hi = load32(hi.try_into().expect("half block"));
            (
                mask(lo, cr) | mask(hi, cr) << 32,
                mask(lo, lf) | mask(hi, lf) << 32,
                mask(lo, dot) | mask(hi, dot) << 32,
            )
        })
    }

    /// The AVX-512BW kernel: the compares give the 64-bit masks directly.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn clean_prefix_avx512(before: [u8; 2], buf: &[u8]) -> usize {
        let cr = _mm512_set1_epi8(b'\r' as i8);
        let lf = _mm512_set1_epi8(b'\n' as i8);
        let dot = _mm512_set1_epi8(b'.' as i8);
        blocks(before, buf, |block| {
            let v = load64(block);
            (
                _mm512_cmpeq_epi8_mask(v, cr),
                _mm512_cmpeq_epi8_mask(v, lf),
                _mm512_cmpeq_epi8_mask(v, dot),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event at `j` of `buf` (after two bytes of context): a bare
    /// line ending in the pair `(j - 1, j)`, or `LF '.' CR` ending at `j`.
    fn event(buf: &[u8], j: usize) -> bool {
        let j = j + 2;
        (buf[j] == b'\n') != (buf[j - 1] == b'\r')
            || &buf[j - 2..=j] == b"\n.\r"
    }

    /// The exact answer every kernel must give, byte by byte.
    fn reference(before: [u8; 2], buf: &[u8]) -> usize {
        let full = [&before[..], buf].concat();
        let mut q = 0;
        while q + BLOCK <= buf.len() {
            if (q..q + BLOCK).any(|j| event(&full, j)) {
                break;
            }
            q += BLOCK;
        }
        // The contract of the module docs.
        assert!((0..q).all(|j| !event(&full, j)));
        q
    }

    fn check_with(before: [u8; 2], buf: &[u8]) -> usize {
        let q = reference(before, buf);
        for k in Kernel::ALL {
            if let Some(f) = Fast::new(k) {
                let got = f.clean_prefix(before, buf);
                assert_eq!(
                    got,
                    q,
                    "{k:?} {before:?} {:?}",
                    buf.escape_ascii()
                );
            }
        }
        assert_eq!(clean_prefix_portable(before, buf), q);
        q
    }

    /// Checks every kernel after several contexts; returns `q` after a
    /// neutral one.
    fn check(buf: &[u8]) -> usize {
        for before in
            [*b"\r\n", *b"\n.", *b".\r", *b"\n\r", *b"\r\r", *b"\n\n"]
        {
            check_with(before, buf);
        }
        check_with(*b"ab", buf)
    }

    #[test]
    fn clean_text_is_cleared_to_the_last_whole_block() {
        let line = b"..0123456789abcdefghijklmnopqrstuvwxyz.....\r\n";
        let buf: Vec<u8> = line.iter().copied().cycle().take(5000).collect();
        let q = check(&buf);
        assert_eq!(q, buf.len() / BLOCK * BLOCK);
        assert_eq!(check(&[]), 0);
        // Indices 0 and 1 see the bytes before.
        let lf = line.len() - 1;
        assert_eq!(check(&buf[lf..]), 0);
        let q = (buf.len() - lf) / BLOCK * BLOCK;
        assert_eq!(check_with(*b"a\r", &buf[lf..]), q);
        assert_eq!(check_with(*b"\n.", b"\r\n"), 0);
        let mut dot = b".\r\n".to_vec();
        dot.extend_from_slice(&buf[..BLOCK]);
        assert_eq!(check_with(*b"\r\n", &dot), 0);
        assert_eq!(check_with(*b"\r\n", &dot[1..]), BLOCK);
        assert_eq!(check_with(*b"\n.", &dot[1..]), 0);
    }

    #[test]
    fn each_event_stops_its_block() {
        let base = vec![b'a'; 600];
        // Each event, and the offset in it of the index that shows it.
        let events: [(&[u8], usize); 5] = [
            (b"\n", 0),
            (b"\r", 1),
            (b"\r\r\n", 1),
            (b"\n.\r", 0),
            (b"x\r\n.\r\n", 4),
        ];
        for (ev, off) in events {
            for at in 0..=base.len() - ev.len() {
                // Also misaligned: the kernels must not care.
                for pad in [0, 1, 31] {
                    let mut buf = vec![b'a'; pad];
                    buf.extend_from_slice(&base);
                    let e = &mut buf[pad + at..pad + at + ev.len()];
                    e.copy_from_slice(ev);
                    let q = check(&buf[pad..]);
                    let i = at + off;
                    if i < base.len() / BLOCK * BLOCK {
                        assert!(q <= i && q + BLOCK > i, "{ev:?} {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_on_random_bytes() {
        // Mostly text and CRLF (so clean blocks happen), with dots, markers
        // and the odd bare CR or LF.
        let tokens: [&[u8]; 8] = [
            b"abcdefgh",
            b"ab",
            b"\r\n",
            b"\r\n.",
            b".",
            b"\r\n.\r\n",
            b"\r",
            b"\n",
        ];
        let weights = [40, 20, 15, 8, 8, 1, 1, 1];
        let total: u64 = weights.iter().sum();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let len = (next() % 1200) as usize;
            let mut buf = Vec::new();
            while buf.len() < len {
                let mut r = next() % total;
                let mut t = 0;
                while r >= weights[t] {
                    r -= weights[t];
                    t += 1;
                }
                buf.extend_from_slice(tokens[t]);
            }
            check(&buf);
        }
    }
}
