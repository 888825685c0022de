//! Splitting the command stream into lines, with the 512-octet limit.
//!
//! The reader remembers where its last search for LF stopped, so no byte is
//! scanned twice however the input is split; an over-long line is reported
//! once and the rest of it discarded up to its LF.

/// What [`LineReader::next_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStatus {
    /// A complete line `buf[..len]` (without CR LF), `consumed` bytes in
    /// all including the line ending; `bare_lf` when it ended in LF only.
    Line {
        /// Length of the line without its ending.
        len: usize,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
        /// The line ended with a bare LF.
        bare_lf: bool,
    },
    /// The line exceeded the limit; `consumed` bytes (through its LF) are
    /// to be dropped. Reported once per over-long line, when its end is
    /// seen.
    TooLong {
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// No complete line yet; the caller may drop `discard` bytes from the
    /// front (only non-zero while skipping an over-long line) and must read
    /// more.
    Partial {
        /// Bytes to drop from the front of the buffer.
        discard: usize,
    },
}

/// Incremental line splitter with a length limit.
#[derive(Debug, Clone, Default)]
pub struct LineReader {
    searched: usize,
    skipping: bool,
}

impl LineReader {
    /// A new reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for the next line at the front of `buf` (the caller drops what
    /// the status says was consumed before calling again). `limit` is the
    /// maximum line length including CRLF.
    pub fn next_line(&mut self, buf: &[u8], limit: usize) -> LineStatus {
        if self.skipping {
            // Everything before was handed back as `discard`, so `buf`
            // starts with unseen bytes of the over-long line.
            return match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    self.skipping = false;
                    self.searched = 0;
                    LineStatus::TooLong { consumed: i + 1 }
                }
                None => LineStatus::Partial { discard: buf.len() },
            };
        }
        // The LF of an acceptable line sits at index < limit.
        let window = buf.len().min(limit);
        let from = self.searched.min(window);
        if let Some(i) = memchr::memchr(b'\n', &buf[from..window]) {
            let lf = from + i;
            self.searched = 0;
            let bare_lf = lf == 0 || buf[lf - 1] != b'\r';
            let len = if bare_lf { lf } else { lf - 1 };
            return LineStatus::Line { len, consumed: lf + 1, bare_lf };
        }
        if buf.len() < limit {
            self.searched = buf.len();
            return LineStatus::Partial { discard: 0 };
        }
        // Over the limit: report once, at the line's end.
        self.searched = 0;
        match memchr::memchr(b'\n', &buf[window..]) {
            Some(i) => LineStatus::TooLong { consumed: window + i + 1 },
            None => {
                self.skipping = true;
                LineStatus::Partial { discard: buf.len() }
            }
        }
    }

    /// True while the rest of an over-long line is being skipped.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_crlf_and_bare_lf() {
        let mut r = LineReader::new();
        let buf = b"EHLO a\r\nNOOP\nQU";
        assert_eq!(
            r.next_line(buf, 512),
            LineStatus::Line { len: 6, consumed: 8, bare_lf: false }
        );
        assert_eq!(
            r.next_line(&buf[8..], 512),
            LineStatus::Line { len: 4, consumed: 5, bare_lf: true }
        );
        assert_eq!(
            r.next_line(&buf[13..], 512),
            LineStatus::Partial { discard: 0 }
        );
        let mut grown = buf[13..].to_vec();
        grown.extend_from_slice(b"IT\r\n");
        assert_eq!(
            r.next_line(&grown, 512),
            LineStatus::Line { len: 4, consumed: 6, bare_lf: false }
        );
        assert_eq!(
            LineReader::new().next_line(b"\n", 512),
            LineStatus::Line { len: 0, consumed: 1, bare_lf: true }
        );
    }

    #[test]
    fn limit_is_inclusive_of_crlf() {
        let mut line = vec![b'x'; 510];
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            LineReader::new().next_line(&line, 512),
            LineStatus::Line { len: 510, consumed: 512, bare_lf: false }
        );
        line.insert(0, b'x');
        assert_eq!(
            LineReader::new().next_line(&line, 512),
            LineStatus::TooLong { consumed: 513 }
        );
    }

    #[test]
    fn too_long_reported_once_and_skipped() {
        let mut r = LineReader::new();
        let chunk = vec![b'a'; 600];
        assert_eq!(
            r.next_line(&chunk, 512),
            LineStatus::Partial { discard: 600 }
        );
        assert!(r.is_skipping());
        assert_eq!(
            r.next_line(&chunk, 512),
            LineStatus::Partial { discard: 600 }
        );
        assert_eq!(
            r.next_line(b"aaa\r\nNOOP\r\n", 512),
            LineStatus::TooLong { consumed: 5 }
        );
        assert!(!r.is_skipping());
        assert_eq!(
            r.next_line(b"NOOP\r\n", 512),
            LineStatus::Line { len: 4, consumed: 6, bare_lf: false }
        );
    }

    #[test]
    fn resumes_search_where_it_stopped() {
        let mut r = LineReader::new();
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.push(b'z');
            assert_eq!(
                r.next_line(&buf, 512),
                LineStatus::Partial { discard: 0 }
            );
        }
        assert_eq!(r.searched, 100);
        buf.push(b'\n');
        assert_eq!(
            r.next_line(&buf, 512),
            LineStatus::Line { len: 100, consumed: 101, bare_lf: true }
        );
    }
}
