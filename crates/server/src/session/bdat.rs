//! Bare CR / bare LF detection over BDAT chunk data, across any split.
//!
//! We do not offer BINARYMIME, so BDAT data must be a text message: every
//! CR is followed by LF and every LF preceded by CR (the same smuggling
//! defence as for DATA).

/// Incremental detector.
#[derive(Debug, Clone, Default)]
pub(super) struct BareScan {
    /// The last byte seen was CR (its LF may come in the next piece).
    pending_cr: bool,
    /// A bare CR or LF was seen.
    bare: bool,
}

impl BareScan {
    /// Scans the next piece of data.
    pub(super) fn scan(&mut self, data: &[u8]) {
        if data.is_empty() || self.bare {
            return;
        }
        if self.pending_cr && data[0] != b'\n' {
            self.bare = true;
            return;
        }
        for i in memchr::memchr2_iter(b'\r', b'\n', data) {
            let ok = if data[i] == b'\n' {
                if i == 0 { self.pending_cr } else { data[i - 1] == b'\r' }
            } else {
                // A CR at the very end is judged by the next piece.
                data.get(i + 1).is_none_or(|&b| b == b'\n')
            };
            if !ok {
                self.bare = true;
                return;
            }
        }
        self.pending_cr = data[data.len() - 1] == b'\r';
    }

    /// The message ended: true when a bare CR or LF was seen (a final CR
    /// counts).
    pub(super) fn finish(&self) -> bool {
        self.bare || self.pending_cr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(pieces: &[&[u8]]) -> bool {
        let mut s = BareScan::default();
        for p in pieces {
            s.scan(p);
        }
        s.finish()
    }

    #[test]
    fn clean_text_in_any_split() {
        let msg = b"Subject: x\r\n\r\nhello\r\nworld\r\n";
        for cut in 0..=msg.len() {
            assert!(!bare(&[&msg[..cut], &msg[cut..]]), "cut {cut}");
        }
        assert!(!bare(&[]));
        assert!(!bare(&[b"no line ending"]));
    }

    #[test]
    fn bare_endings_in_any_split() {
        for msg in [
            &b"a\nb\r\n"[..],
            b"a\rb\r\n",
            b"\n",
            b"a\r\n\r",
            b"a\r\r\n",
            b"\r\n.\n",
            b"\n.\r\n",
        ] {
            for cut in 0..=msg.len() {
                assert!(bare(&[&msg[..cut], &msg[cut..]]), "{msg:?} {cut}");
            }
        }
    }
}
