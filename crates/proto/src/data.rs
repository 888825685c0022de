//! The DATA body scanner and dot-stuffing (RFC 5321 section 4.5.2).
//!
//! The body is kept in wire (dot-stuffed) form. The scanner runs over new
//! bytes as they arrive, in place (the caller's buffer may be an mmap'd
//! spool file), over any split of the input into chunks. Only `CRLF.CRLF`
//! ends the body; `.CRLF` right after the 354 is an empty body. A bare CR
//! or bare LF anywhere in the body is flagged (SMTP smuggling defence).

use memchr::memchr2;

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

/// At the start of a line: the body so far is empty or ends in CRLF.
const LINE_START: u8 = 0;
/// A `.` at the start of a line (pending: it may begin the end marker).
const DOT: u8 = 1;
/// `.CR` at the start of a line (pending).
const DOT_CR: u8 = 2;
/// Inside a line (also right after a bare CR or LF: those never start a
/// line, so `\n.\r\n` cannot end the body).
const MID: u8 = 3;
/// A CR inside a line; an LF must follow.
const CR: u8 = 4;
/// The end marker was seen.
const DONE: u8 = 5;

/// Incremental scanner for a DATA body; starts "at the start of a line".
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
    state: u8,
    octets: u64,
    bare: bool,
}

impl Default for BodyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyScanner {
    /// A scanner positioned just after the 354 reply.
    pub fn new() -> Self {
        Self { state: LINE_START, octets: 0, bare: false }
    }

    /// Scans the next chunk of input. After `Complete`, further calls
    /// return `Complete { consumed: 0 }`.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        if self.state == DONE {
            return Scan::Complete { consumed: 0 };
        }
        let n = chunk.len();
        let mut i = 0;
        let mut state = self.state;
        let mut octets = self.octets;
        let mut bare = self.bare;
        while i < n {
            match state {
                MID => match memchr2(b'\r', b'\n', &chunk[i..]) {
                    None => {
                        octets += (n - i) as u64;
                        i = n;
                    }
                    Some(off) => {
                        let j = i + off;
                        octets += (j + 1 - i) as u64;
                        if chunk[j] == b'\n' {
                            // LF without CR: bare, and not a line start.
                            bare = true;
                        } else if j + 1 < n {
                            // The common case: CR LF inside this chunk.
                            if chunk[j + 1] == b'\n' {
                                octets += 1;
                                i = j + 2;
                                state = LINE_START;
                                continue;
                            }
                            bare = true;
                        } else {
                            state = CR;
                        }
                        i = j + 1;
                    }
                },
                CR => {
                    if chunk[i] == b'\n' {
                        octets += 1;
                        i += 1;
                        state = LINE_START;
                    } else {
                        bare = true;
                        state = MID;
                    }
                }
                LINE_START => {
                    if chunk[i] == b'.' {
                        i += 1;
                        state = DOT;
                    } else {
                        state = MID;
                    }
                }
                DOT => {
                    if chunk[i] == b'\r' {
                        i += 1;
                        state = DOT_CR;
                    } else {
                        // A stuffed or plain leading dot: body.
                        octets += 1;
                        state = MID;
                    }
                }
                _ => {
                    // DOT_CR
                    if chunk[i] == b'\n' {
                        self.state = DONE;
                        self.octets = octets;
                        self.bare = bare;
                        return Scan::Complete { consumed: i + 1 };
                    }
                    // `.CR` then not LF: the CR is bare.
                    octets += 2;
                    bare = true;
                    state = MID;
                }
            }
        }
        self.state = state;
        self.octets = octets;
        self.bare = bare;
        Scan::Partial
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
        self.state == DONE
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

#[cfg(test)]
mod tests {
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
        let mut s = BodyScanner::new();
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
