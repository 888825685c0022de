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
        todo!("{buf:?} {limit} {:?} {:?}", self.searched, self.skipping)
    }
}
