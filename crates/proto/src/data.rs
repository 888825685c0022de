//! The DATA body scanner and dot-stuffing (RFC 5321 section 4.5.2).
//!
//! The body is kept in wire (dot-stuffed) form. The scanner runs over new
//! bytes as they arrive, in place (the caller's buffer may be an mmap'd
//! spool file), over any split of the input into chunks. Only `CRLF.CRLF`
//! ends the body; `.CRLF` right after the 354 is an empty body. A bare CR
//! or bare LF anywhere in the body is flagged (SMTP smuggling defence).

use std::sync::LazyLock;

use memchr::{memchr2, memmem};

#[allow(unsafe_code)]
mod kernel;

use kernel::Fast;
#[doc(hidden)]
pub use kernel::Kernel;

/// Result of scanning one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The whole chunk is body (or a possible prefix of the end marker);
    /// keep reading.
    Partial,
    /// The end marker finished in this chunk: `consumed` bytes of the chunk
    /// belong to the body and the marker; the rest of the chunk belongs to
    /// the next (pipelined) command. See [`BodyScanner::body_len`].
    Complete {
        /// Bytes of this chunk used, terminator included.
        consumed: usize,
    },
}

/// The end-of-data marker, with the CRLF that ends the last body line.
const END_MARKER: &[u8; 5] = b"\r\n.\r\n";

/// The memmem searcher for [`END_MARKER`], built once.
static END: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(END_MARKER));

/// Incremental scanner for a DATA body; starts "at the start of a line".
///
/// Chunks of 256 bytes or more first go through a fused SIMD pass (module
/// `kernel`: AVX-512BW or AVX2 when the CPU has them, else portable code)
/// that computes CR, LF and `.` bitmasks 64 bytes at a time and clears the
/// blocks holding neither a bare line ending nor a possible end marker.
/// The rest (from the first block with such an event on, or the last
/// partial block) goes through the exact path: `memmem` finds the first
/// `CRLF.CRLF` (the end: a bare CR or LF before it cannot hide it, and
/// nothing else ends the body), then a branchless check of adjacent byte
/// pairs finds any LF not preceded by CR or CR not followed by LF. Once a
/// bare line ending was seen, only the `memmem` search is left. The last
/// four bytes seen are kept so a marker split across chunks is found, and
/// a virtual CRLF precedes the body so that `.CRLF` right after the 354 is
/// an empty body.
///
/// ```
/// use millrace_proto::{BodyScanner, Scan};
/// let mut s = BodyScanner::new();
/// assert_eq!(s.scan(b"Subject: x\r\n\r\nhi\r\n."), Scan::Partial);
/// assert_eq!(s.scan(b"\r\nQUIT\r\n"), Scan::Complete { consumed: 2 });
/// assert_eq!(s.body_len(), 18);
/// assert!(!s.saw_bare_line_ending());
/// ```
#[derive(Debug, Clone)]
pub struct BodyScanner {
    /// The last bytes of the stream (at most 4), starting with a virtual
    /// CRLF before the body.
    tail: [u8; 4],
    tail_len: usize,
    /// Body stream bytes scanned so far (the virtual CRLF excluded).
    seen: u64,
    /// Body octets: final once done; while scanning, `seen` minus the
    /// bytes that may still be the marker.
    octets: u64,
    bare: bool,
    done: bool,
    fast: Fast,
}

impl Default for BodyScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// True when an adjacent pair shows a bare line ending: LF not preceded
/// by CR, or CR not followed by LF. `prev` is the byte before `buf`.
fn bare_pairs(prev: u8, buf: &[u8]) -> bool {
    let Some(&first) = buf.first() else { return false };
    let bad = |x: u8, y: u8| {
        ((y == b'\n') & (x != b'\r')) | ((x == b'\r') & (y != b'\n'))
    };
    if bad(prev, first) {
        return true;
    }
    // Blocks keep the reduction short and allow an early exit; the inner
    // loop has no branches and is vectorised.
    const BLOCK: usize = 4096;
    let mut start = 0;
    while start + 1 < buf.len() {
        let end = (start + BLOCK + 1).min(buf.len());
        let (a, b) = (&buf[start..end - 1], &buf[start + 1..end]);
        let mut acc = 0u8;
        for (&x, &y) in a.iter().zip(b) {
            acc |= u8::from(bad(x, y));
        }
        if acc != 0 {
            return true;
        }
        start = end - 1;
    }
    false
}

/// Chunks shorter than this skip the fast pass (it would clear little;
/// the type's docs say 256).
const FAST_MIN: usize = 4 * kernel::BLOCK;

impl BodyScanner {
    /// A scanner positioned just after the 354 reply.
    pub fn new() -> Self {
        Self::with_fast(Fast::best())
    }

    /// A scanner whose fast pass uses `kernel`, or `None` if this CPU
    /// cannot run it. For tests and benches: every kernel gives the same
    /// results, [`BodyScanner::new`] picks the fastest.
    #[doc(hidden)]
    pub fn with_kernel(kernel: Kernel) -> Option<Self> {
        Fast::new(kernel).map(Self::with_fast)
    }

    fn with_fast(fast: Fast) -> Self {
        Self {
            tail: [b'\r', b'\n', 0, 0],
            tail_len: 2,
            seen: 0,
            octets: 0,
            bare: false,
            done: false,
            fast,
        }
    }

    /// The fast-pass kernel this scanner uses.
    #[doc(hidden)]
    pub fn kernel(&self) -> Kernel {
        self.fast.kernel()
    }

    /// Scans the next chunk of input. After `Complete`, further calls
    /// return `Complete { consumed: 0 }`.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        let t = &self.tail[..self.tail_len];
        // Once a bare line ending was seen, the exact path is one memmem.
        // The kernel cannot see a marker whose last LF is `chunk[0]`.
        if self.done
            || self.bare
            || chunk.len() < FAST_MIN
            || t.ends_with(b"\r\n.\r")
        {
            return self.scan_exact(chunk);
        }
        // The tail holds at least the two bytes before `chunk`.
        let before = [t[t.len() - 2], t[t.len() - 1]];
        // No end marker and no bare line ending end in `chunk[..q]`: the
        // exact path would only count these bytes and keep the last ones.
        // Do just that, then scan the rest exactly.
        let q = self.fast.clean_prefix(before, chunk);
        let (clean, rest) = chunk.split_at(q);
        self.seen += q as u64;
        self.push_tail(clean);
        match self.scan_exact(rest) {
            Scan::Complete { consumed } => {
                Scan::Complete { consumed: q + consumed }
            }
            Scan::Partial => Scan::Partial,
        }
    }

    /// The exact path: `memmem` for the marker, then the pair check.
    fn scan_exact(&mut self, chunk: &[u8]) -> Scan {
        if self.done {
            return Scan::Complete { consumed: 0 };
        }
        let n = chunk.len();
        let tl = self.tail_len;
        // A marker that starts in the tail and ends in this chunk.
        let mut window = [0u8; 8];
        let k = n.min(4);
        window[..tl].copy_from_slice(&self.tail[..tl]);
        window[tl..tl + k].copy_from_slice(&chunk[..k]);
        let found = match END.find(&window[..tl + k]) {
            Some(p) if p < tl => Some(p as i64 - tl as i64),
            _ => END.find(chunk).map(|p| p as i64),
        };
        let prev = self.tail[tl - 1];
        if let Some(p) = found {
            // The body ends after the marker's CRLF, at chunk offset
            // `p + 2` (negative: inside the previous chunk).
            let body_end = p + 2;
            if !self.bare && body_end > 0 {
                self.bare = bare_pairs(prev, &chunk[..body_end as usize]);
            }
            self.octets = (self.seen as i64 + body_end) as u64;
            self.done = true;
            return Scan::Complete { consumed: (p + 5) as usize };
        }
        if !self.bare {
            self.bare = bare_pairs(prev, chunk);
        }
        self.seen += n as u64;
        self.push_tail(chunk);
        // Bytes that may still turn out to be the marker: `.` or `.CR`
        // after a CRLF.
        let t = &self.tail[..self.tail_len];
        let pending = if t.ends_with(b"\r\n.\r") {
            2
        } else if t.ends_with(b"\r\n.") {
            1
        } else {
            0
        };
        self.octets = self.seen - pending;
        Scan::Partial
    }

    /// Keeps the last four bytes of the stream, `bytes` being the newest.
    fn push_tail(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if n >= 4 {
            self.tail.copy_from_slice(&bytes[n - 4..]);
            self.tail_len = 4;
        } else {
            let tl = self.tail_len;
            let mut t = [0u8; 8];
            t[..tl].copy_from_slice(&self.tail[..tl]);
            t[tl..tl + n].copy_from_slice(bytes);
            let len = tl + n;
            let keep = len.min(4);
            self.tail[..keep].copy_from_slice(&t[len - keep..len]);
            self.tail_len = keep;
        }
    }

    /// Body octets so far in wire form, excluding the terminating `.CRLF`
    /// but including the CRLF that ends the last line. After `Complete`,
    /// the body is exactly the first `body_len()` bytes from where scanning
    /// started. While `Partial`, bytes that may turn out to be the end
    /// marker are not counted yet.
    pub fn body_len(&self) -> u64 {
        self.octets
    }

    /// True once a bare CR or bare LF has been seen in the body.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare
    }

    /// True once the end marker was seen.
    pub fn is_complete(&self) -> bool {
        self.done
    }
}

/// The header section of a message body (wire or plain form): its header
/// lines up to and including the CRLF of the last one, without the empty
/// line that ends them. Empty when the body starts with that empty line;
/// the whole body when no empty line comes.
pub fn header_section(body: &[u8]) -> &[u8] {
    if body.starts_with(b"\r\n") {
        return &body[..0];
    }
    match memmem::find(body, b"\r\n\r\n") {
        Some(p) => &body[..p + 2],
        None => body,
    }
}

/// Removes dot-stuffing from a wire-form body (as stored), appending the
/// message as the user wrote it to `out`.
pub fn unstuff(wire: &[u8], out: &mut Vec<u8>) {
    out.reserve(wire.len());
    let mut rest = wire;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        }
        match memchr::memchr(b'\n', rest) {
            Some(j) => {
                out.extend_from_slice(&rest[..=j]);
                rest = &rest[j + 1..];
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
}

/// Dot-stuffs `message` into `out` in one call (bare CR / LF become
/// CRLF); the result does not include the terminating `.CRLF`.
/// Equivalent to one [`DotStuffer::write`] call.
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    DotStuffer::new().write(message, out);
}

/// Incremental dot-stuffing writer for generated messages (bounces).
/// Also converts bare LF / bare CR to CRLF so that nothing we send contains
/// a bare line ending.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A writer at the start of a line.
    pub fn new() -> Self {
        Self { at_line_start: true, pending_cr: false }
    }

    /// Stuffs the next part of the message into `out`.
    pub fn write(&mut self, part: &[u8], out: &mut Vec<u8>) {
        out.reserve(part.len() + part.len() / 64);
        let mut i = 0;
        while i < part.len() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if part[i] == b'\n' {
                    i += 1;
                }
                continue;
            }
            if self.at_line_start && part[i] == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
            match memchr2(b'\r', b'\n', &part[i..]) {
                None => {
                    out.extend_from_slice(&part[i..]);
                    i = part.len();
                }
                Some(off) => {
                    let j = i + off;
                    out.extend_from_slice(&part[i..j]);
                    if part[j] == b'\n' {
                        out.extend_from_slice(b"\r\n");
                        self.at_line_start = true;
                    } else {
                        self.pending_cr = true;
                    }
                    i = j + 1;
                }
            }
        }
    }

    /// Ends the message: a final CRLF if the last line lacks one, then
    /// `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Byte-at-a-time reference scanner: the oracle the fast one is tested
/// against. Returns (consumed, body_len, bare) when the body ended, else
/// (None, counted so far, bare).
#[doc(hidden)]
pub fn naive_scan(input: &[u8]) -> (Option<usize>, u64, bool) {
    let mut bare = false;
    let mut line_start = true;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if line_start && input[i..].starts_with(b".\r\n") {
            return (Some(i + 3), i as u64, bare);
        }
        line_start = false;
        if b == b'\r' {
            if input.get(i + 1) == Some(&b'\n') {
                i += 2;
                line_start = true;
                continue;
            }
            if i + 1 < input.len() {
                bare = true;
            }
        } else if b == b'\n' {
            bare = true;
        }
        i += 1;
    }
    // Pending tail that could still be the marker is not counted.
    let pending = if line_start {
        0
    } else if input.ends_with(b"\r\n.\r") || input == b".\r" {
        2
    } else if input.ends_with(b"\r\n.") || input == b"." {
        1
    } else {
        0
    };
    (None, (input.len() - pending) as u64, bare)
}

/// Fuzz entry point: the scanner over a fuzzer-chosen chunking agrees with
/// one pass over the whole input and with the byte-at-a-time oracle, with
/// every fast-pass kernel this CPU has, and never claims more bytes than it
/// was given. The first byte picks the chunk size (small ones, and ones
/// past the fast pass's minimum); the input is tried raw and mapped onto
/// `{CR, LF, '.', 'a'}` (where all the interesting cases live) and onto
/// mostly `a` with CR, LF and `.` mixed in (so that whole blocks are
/// clean).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_scanner(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = if step < 128 {
        usize::from(step % 16) + 1
    } else {
        FAST_MIN + usize::from(step - 128) * 5
    };
    let mapped: Vec<u8> = rest
        .iter()
        .map(|b| [b'\r', b'\n', b'.', b'a'][usize::from(b % 4)])
        .collect();
    let sparse: Vec<u8> = rest
        .iter()
        .flat_map(|&b| match b {
            0 => &b"\r"[..],
            1 => b"\n",
            2 => b".",
            3..=31 => b"\r\n",
            _ => b"a",
        })
        .copied()
        .collect();
    for input in [rest, &mapped[..], &sparse[..]] {
        let oracle = naive_scan(input);
        for kernel in Kernel::ALL {
            let Some(fresh) = BodyScanner::with_kernel(kernel) else {
                continue;
            };
            let mut whole = fresh.clone();
            let w = match whole.scan(input) {
                Scan::Complete { consumed } => {
                    assert!(consumed <= input.len());
                    Some(consumed)
                }
                Scan::Partial => None,
            };
            assert_eq!(
                (w, whole.body_len(), whole.saw_bare_line_ending()),
                oracle,
                "{kernel:?}"
            );
            let mut chunked = fresh;
            let mut done = None;
            for (i, chunk) in input.chunks(step).enumerate() {
                if let Scan::Complete { consumed } = chunked.scan(chunk) {
                    assert!(consumed <= chunk.len());
                    done = Some(i * step + consumed);
                    break;
                }
            }
            assert_eq!(done, w, "{kernel:?}");
            assert_eq!(chunked.body_len(), whole.body_len());
            assert_eq!(
                chunked.saw_bare_line_ending(),
                whole.saw_bare_line_ending()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_section_ends_at_the_first_empty_line() {
        use super::header_section as h;
        assert_eq!(
            h(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(h(b"\r\nbody\r\n\r\nx"), b"");
        assert_eq!(h(b"A: 1\r\nno end"), b"A: 1\r\nno end");
        assert_eq!(h(b""), b"");
    }

    use super::*;

    fn whole(input: &[u8]) -> (Option<usize>, u64, bool) {
        let mut s = BodyScanner::new();
        match s.scan(input) {
            Scan::Complete { consumed } => {
                (Some(consumed), s.body_len(), s.saw_bare_line_ending())
            }
            Scan::Partial => (None, s.body_len(), s.saw_bare_line_ending()),
        }
    }

    fn chunked(input: &[u8], cuts: &[usize]) -> (Option<usize>, u64, bool) {
        chunked_with(BodyScanner::new(), input, cuts)
    }

    fn chunked_with(
        mut s: BodyScanner,
        input: &[u8],
        cuts: &[usize],
    ) -> (Option<usize>, u64, bool) {
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        for end in bounds {
            let end = end.clamp(start, input.len());
            if let Scan::Complete { consumed } = s.scan(&input[start..end]) {
                return (
                    Some(start + consumed),
                    s.body_len(),
                    s.saw_bare_line_ending(),
                );
            }
            start = end;
        }
        (None, s.body_len(), s.saw_bare_line_ending())
    }

    #[test]
    fn empty_body() {
        assert_eq!(whole(b".\r\n"), (Some(3), 0, false));
        assert_eq!(whole(b".\r\nMAIL FROM:<>\r\n"), (Some(3), 0, false));
    }

    #[test]
    fn last_line_keeps_its_crlf() {
        assert_eq!(whole(b"abc\r\n.\r\n"), (Some(8), 5, false));
        assert_eq!(whole(b"a\r\n\r\n.\r\n"), (Some(8), 5, false));
    }

    #[test]
    fn stuffed_dots_are_body() {
        assert_eq!(whole(b"..x\r\n.\r\n"), (Some(8), 5, false));
        assert_eq!(whole(b"..\r\n.\r\n"), (Some(7), 4, false));
        assert_eq!(whole(b".x\r\n.\r\n"), (Some(7), 4, false));
    }

    #[test]
    fn smuggling_vectors_never_end_the_body() {
        for v in
            [&b"\n.\r\n"[..], b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\rX"]
        {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<e@x>\r\n");
            let (end, _, bare) = whole(&input);
            assert_eq!(end, None, "{v:?} ended the body");
            assert!(bare, "{v:?} not flagged");
            // The real end still works afterwards.
            input.extend_from_slice(b"\r\n.\r\n");
            let (end, len, bare) = whole(&input);
            assert_eq!(end, Some(input.len()), "{v:?}");
            assert_eq!(len as usize, input.len() - 3);
            assert!(bare);
        }
    }

    #[test]
    fn bare_at_chunk_edges() {
        // CR at the end of one chunk, LF at the start of the next: fine.
        assert_eq!(chunked(b"ab\r\n.\r\n", &[3]), (Some(7), 4, false));
        // CR then a non-LF across chunks: bare.
        assert!(chunked(b"ab\rc\r\n.\r\n", &[3]).2);
        // The terminator split into one-byte chunks.
        assert_eq!(
            chunked(b"x\r\n.\r\n", &[1, 2, 3, 4, 5]),
            (Some(6), 3, false)
        );
    }

    #[test]
    fn after_complete() {
        let mut s = BodyScanner::new();
        assert_eq!(s.scan(b".\r\n"), Scan::Complete { consumed: 3 });
        assert!(s.is_complete());
        assert_eq!(s.scan(b"more"), Scan::Complete { consumed: 0 });
    }

    #[test]
    fn oracle_agrees_on_the_examples() {
        for input in [
            &b".\r\n"[..],
            b"abc\r\n.\r\n",
            b"\n.\r\nx",
            b"a\rb\r\n.\r\n",
            b"abc",
            b"abc\r\n.",
            b"abc\r\n.\r",
            b"abc\r",
        ] {
            assert_eq!(whole(input), naive_scan(input), "{input:?}");
        }
    }

    #[test]
    fn every_two_and_three_way_split_agrees() {
        let inputs: [&[u8]; 4] = [
            b"Subject: a\r\n\r\n..dot\r\n\n.\r\nx\r.\r\nend\r\n.\r\nNEXT",
            b".\r\n",
            b"a\r\n.\rb\r\n.\r\n",
            b"\r\n\r\n.\r\n",
        ];
        for input in inputs {
            let expect = whole(input);
            for a in 0..=input.len() {
                assert_eq!(chunked(input, &[a]), expect, "{input:?} @{a}");
                for b in a..=input.len() {
                    assert_eq!(
                        chunked(input, &[a, b]),
                        expect,
                        "{input:?} @{a},{b}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_is_available_when_supported() {
        assert!(BodyScanner::with_kernel(Kernel::Portable).is_some());
        for k in Kernel::ALL {
            assert_eq!(
                BodyScanner::with_kernel(k).is_some(),
                k.is_supported()
            );
        }
        assert!(Kernel::best().is_supported());
        assert_eq!(BodyScanner::new().kernel(), Kernel::best());
    }

    /// Each smuggling vector, end marker and bare line ending at every
    /// offset around the first blocks and the end of a long clean body,
    /// scanned whole and split, by every kernel this CPU has.
    #[test]
    fn every_kernel_agrees_around_block_edges() {
        let line = b"The quick brown fox\r\n..dot\r\n\r\n";
        let base: Vec<u8> = line.iter().copied().cycle().take(700).collect();
        let vectors: [&[u8]; 10] = [
            b"\r\n.\r\n",
            b".\r\n",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\n.\n",
            b"\r.\r\n",
            b"\r\n.\rX",
            b"\r",
            b"\n",
            b"\r\r\n",
        ];
        for v in vectors {
            for at in (0..200).chain(base.len() - 140..=base.len()) {
                let mut input = base.clone();
                input.splice(at..at, v.iter().copied());
                input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
                let expect = naive_scan(&input);
                for k in Kernel::ALL {
                    let Some(s) = BodyScanner::with_kernel(k) else {
                        continue;
                    };
                    let got = chunked_with(s.clone(), &input, &[]);
                    assert_eq!(got, expect, "{k:?} {v:?} at {at}");
                    for cut in [1, 2, 3, 4, 5, 64, 256, at, at + 2, at + 4] {
                        let got = chunked_with(s.clone(), &input, &[cut]);
                        assert_eq!(got, expect, "{k:?} {v:?} at {at}/{cut}");
                    }
                }
            }
        }
    }

    #[test]
    fn unstuff_and_stuff() {
        let mut out = Vec::new();
        unstuff(b"..a\r\nb\r\n.\r\n..\r\n", &mut out);
        assert_eq!(out, b".a\r\nb\r\n\r\n.\r\n");
        let mut w = Vec::new();
        stuff(b".a\r\nb\n.\rc", &mut w);
        assert_eq!(w, b"..a\r\nb\r\n..\r\nc");
        let mut d = DotStuffer::new();
        let mut w = Vec::new();
        d.write(b"x\r", &mut w);
        d.write(b"\n.y", &mut w);
        d.finish(&mut w);
        assert_eq!(w, b"x\r\n..y\r\n.\r\n");
        let mut w = Vec::new();
        DotStuffer::new().finish(&mut w);
        assert_eq!(w, b".\r\n");
    }
}
