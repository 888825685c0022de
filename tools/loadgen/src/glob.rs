//! A small glob matcher for `--script` recipient patterns.

/// Matches `text` against `pattern`, ASCII case-insensitively: `*` matches
/// any run of bytes (also empty), `?` exactly one byte, anything else
/// itself. The whole text must match.
///
/// ```
/// use millrace_load::glob::glob_match;
/// assert!(glob_match(b"fail*@*", b"Fail7@example.net"));
/// assert!(!glob_match(b"fail?@*", b"fail17@example.net"));
/// ```
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more byte and retry.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn literals_and_wildcards() {
        assert!(glob_match(b"", b""));
        assert!(!glob_match(b"", b"a"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"*", b"anything@at.all"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"fail*@*", b"fail@x"));
        assert!(glob_match(b"fail*@*", b"failure12@example.net"));
        assert!(!glob_match(b"fail*@*", b"ok@example.net"));
        assert!(glob_match(b"*@example.net", b"u1@EXAMPLE.NET"));
        assert!(!glob_match(b"*@example.net", b"u1@example.network"));
        assert!(glob_match(b"a*b*c", b"axxbyybzc"));
        assert!(!glob_match(b"a*b*c", b"axxbyybz"));
        assert!(glob_match(b"**a**", b"bab"));
    }

    /// Naive recursive oracle.
    fn oracle(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| oracle(rest, &t[i..])),
            Some((&c, rest)) => match t.split_first() {
                Some((&d, trest)) => {
                    (c == b'?' || c.eq_ignore_ascii_case(&d))
                        && oracle(rest, trest)
                }
                None => false,
            },
        }
    }

    #[test]
    fn agrees_with_oracle_on_all_short_inputs() {
        let alphabet = [b'a', b'b', b'*', b'?'];
        let texts = [b'a', b'b'];
        let mut checked = 0;
        for plen in 0..=4u32 {
            for pi in 0..4usize.pow(plen) {
                let pat: Vec<u8> = (0..plen)
                    .map(|k| alphabet[pi / 4usize.pow(k) % 4])
                    .collect();
                for tlen in 0..=4u32 {
                    for ti in 0..2usize.pow(tlen) {
                        let text: Vec<u8> = (0..tlen)
                            .map(|k| texts[ti / 2usize.pow(k) % 2])
                            .collect();
                        assert_eq!(
                            glob_match(&pat, &text),
                            oracle(&pat, &text),
                            "{:?} {:?}",
                            String::from_utf8_lossy(&pat),
                            String::from_utf8_lossy(&text)
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 341 * 31);
    }
}
