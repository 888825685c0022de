//! The DATA body scanner and dot-stuffing (RFC 5321 section 4.5.2).
//!
//! The body is kept in wire (dot-stuffed) form. The scanner runs over new
//! bytes as they arrive, in place (the caller's buffer may be an mmap'd
//! spool file), over any split of the input into chunks. Only `CRLF.CRLF`
//! ends the body; `.CRLF` right after the 354 is an empty body. A bare CR
//! or bare LF anywhere in the body is flagged (SMTP smuggling defence).

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

/// Incremental scanner for a DATA body; starts "at the start of a line".
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
        todo!()
    }

    /// Scans the next chunk of input.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        todo!("{chunk:?} {} {} {}", self.state, self.octets, self.bare)
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
}

/// Removes dot-stuffing from a wire-form body (as stored), appending the
/// message as the user wrote it to `out`.
pub fn unstuff(wire: &[u8], out: &mut Vec<u8>) {
    todo!("{wire:?} {out:?}")
}

/// Dot-stuffs `message` into `out` in one call, normalising nothing; the
/// result does not include the terminating `.CRLF`. Equivalent to one
/// [`DotStuffer::write`] call.
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
        todo!("{part:?} {out:?} {} {}", self.at_line_start, self.pending_cr)
    }

    /// Ends the message: a final CRLF if the last line lacks one, then
    /// `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        todo!("{out:?}")
    }
}
