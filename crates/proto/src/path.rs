//! Reverse-path and forward-path (RFC 5321 section 4.1.2).
//!
//! ```text
//! Reverse-path   = Path / "<>"
//! Forward-path   = Path
//! Path           = "<" [ A-d-l ":" ] Mailbox ">"
//! A-d-l          = At-domain *( "," At-domain )   ; source route, obsolete
//! Mailbox        = Local-part "@" ( Domain / address-literal )
//! ```
//!
//! Plus `<postmaster>` (no domain) in RCPT, and SMTPUTF8 (RFC 6531) UTF-8
//! local parts and domains.

use std::fmt;

/// Why a path could not be parsed (the server answers 501 / 553).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is not enclosed in angle brackets.
    #[error("path must be enclosed in <>")]
    MissingBrackets,
    /// The local part is empty or malformed.
    #[error("bad local part")]
    BadLocalPart,
    /// The domain or address literal is malformed.
    #[error("bad domain")]
    BadDomain,
    /// The mailbox has no `@domain` (only `postmaster` may omit it).
    #[error("mailbox has no domain")]
    MissingDomain,
    /// The source route is malformed.
    #[error("bad source route")]
    BadRoute,
    /// Non-ASCII octets without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// Malformed UTF-8 (with SMTPUTF8 declared).
    #[error("malformed UTF-8 in address")]
    BadUtf8,
    /// The path is longer than RFC 5321 allows (256 octets).
    #[error("path too long")]
    TooLong,
}

/// A mailbox `local@domain`, stored as one string with the split point.
///
/// The local part is kept exactly as sent (quotes included); the domain is
/// lower-cased for routing. `postmaster` without a domain has an empty
/// domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// `local@domain` (or just `local` for a bare postmaster).
    addr: String,
    /// Byte index of the `@` (== addr.len() when there is no domain).
    at: usize,
}

impl Mailbox {
    /// Builds a mailbox from parts (the domain is lower-cased).
    pub fn new(local: &str, domain: &str) -> Self {
        let mut addr = String::with_capacity(local.len() + 1 + domain.len());
        addr.push_str(local);
        let at = addr.len();
        if !domain.is_empty() {
            addr.push('@');
            addr.push_str(domain);
            addr[at + 1..].make_ascii_lowercase();
        }
        Self { addr, at }
    }

    /// Parses `local@domain` (no angle brackets).
    ///
    /// Without `smtputf8` only ASCII is accepted; with it, UTF-8 local
    /// parts and domains are too. Invalid UTF-8 is always refused.
    pub fn parse(s: &[u8], smtputf8: bool) -> Result<Self, PathError> {
        let text = checked_str(s, smtputf8)?;
        let end = local_part_end(s, smtputf8)?;
        if end > MAX_LOCAL_PART {
            return Err(PathError::TooLong);
        }
        if end == s.len() {
            return Err(PathError::MissingDomain);
        }
        check_domain(&s[end + 1..], smtputf8)?;
        Ok(Self::new(&text[..end], &text[end + 1..]))
    }

    /// The local part, as sent.
    pub fn local(&self) -> &str {
        &self.addr[..self.at]
    }

    /// The domain, lower-cased (empty for a bare `postmaster`). May be an
    /// address literal such as `[127.0.0.1]`.
    pub fn domain(&self) -> &str {
        self.addr.get(self.at + 1..).unwrap_or("")
    }

    /// The whole address `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.addr
    }

    /// True for `postmaster` (any case) with no domain.
    pub fn is_bare_postmaster(&self) -> bool {
        self.at == self.addr.len()
            && self.addr.eq_ignore_ascii_case("postmaster")
    }

    /// True when the address contains non-ASCII (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.addr.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A path: an optional (obsolete) source route and the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The source route `@a,@b` as sent (without the trailing `:`), kept
    /// aside; delivery uses only the mailbox (RFC 5321 appendix C).
    pub route: Option<String>,
    /// The mailbox.
    pub mailbox: Mailbox,
}

impl Path {
    /// Parses the text between the angle brackets: `[A-d-l ":"] Mailbox`.
    fn parse_inner(inner: &[u8], smtputf8: bool) -> Result<Self, PathError> {
        if inner.first() != Some(&b'@') {
            let mailbox = Mailbox::parse(inner, smtputf8)?;
            return Ok(Self { route: None, mailbox });
        }
        // A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
        let colon = memchr::memchr(b':', inner).ok_or(PathError::BadRoute)?;
        let route = &inner[..colon];
        for hop in route.split(|&b| b == b',') {
            match hop.split_first() {
                Some((b'@', domain)) => check_domain(domain, smtputf8)
                    .map_err(|_| PathError::BadRoute)?,
                _ => return Err(PathError::BadRoute),
            }
        }
        let route = checked_str(route, smtputf8)?.to_owned();
        let mailbox = Mailbox::parse(&inner[colon + 1..], smtputf8)?;
        Ok(Self { route: Some(route), mailbox })
    }
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// The null reverse-path `<>` (bounces and other notifications).
    Null,
    /// A real sender.
    Path(Path),
}

impl ReversePath {
    /// Parses `<...>` (or `<>`) from the start of `s`; returns the path and
    /// the number of bytes consumed.
    pub fn parse(
        s: &[u8],
        smtputf8: bool,
    ) -> Result<(Self, usize), PathError> {
        let (inner, consumed) = bracketed(s)?;
        if inner.is_empty() {
            return Ok((Self::Null, consumed));
        }
        let path = Path::parse_inner(inner, smtputf8)?;
        Ok((Self::Path(path), consumed))
    }

    /// The mailbox, if not null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Null => None,
            Self::Path(p) => Some(&p.mailbox),
        }
    }

    /// Writes `<addr>` or `<>`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        if let Self::Path(p) = self {
            out.extend_from_slice(p.mailbox.as_str().as_bytes());
        }
        out.push(b'>');
    }
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath(pub Path);

impl ForwardPath {
    /// Parses `<...>` (including `<postmaster>`) from the start of `s`;
    /// returns the path and the number of bytes consumed.
    pub fn parse(
        s: &[u8],
        smtputf8: bool,
    ) -> Result<(Self, usize), PathError> {
        let (inner, consumed) = bracketed(s)?;
        if inner.is_empty() {
            return Err(PathError::BadLocalPart);
        }
        if inner.eq_ignore_ascii_case(b"postmaster") {
            let text = checked_str(inner, false)?;
            let mailbox = Mailbox::new(text, "");
            return Ok((Self(Path { route: None, mailbox }), consumed));
        }
        let path = Path::parse_inner(inner, smtputf8)?;
        Ok((Self(path), consumed))
    }

    /// The mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.0.mailbox
    }

    /// Writes `<addr>` (the source route is not forwarded).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'<');
        out.extend_from_slice(self.0.mailbox.as_str().as_bytes());
        out.push(b'>');
    }
}

/// Longest local part (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 section 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including the angle brackets (RFC 5321 section 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// `s` as text: ASCII only unless `utf8`, and always valid UTF-8.
fn checked_str(s: &[u8], utf8: bool) -> Result<&str, PathError> {
    if !utf8 && !s.is_ascii() {
        return Err(PathError::NonAscii);
    }
    std::str::from_utf8(s).map_err(|_| PathError::BadUtf8)
}

/// Splits `<inner>` off the front of `s`: returns `inner` and the bytes
/// consumed (brackets included). A `>` inside a quoted local part does not
/// end the path.
fn bracketed(s: &[u8]) -> Result<(&[u8], usize), PathError> {
    if s.first() != Some(&b'<') {
        return Err(PathError::MissingBrackets);
    }
    let limit = s.len().min(MAX_PATH);
    let close = find_close(&s[..limit]).ok_or_else(|| {
        // No `>` within the limit: too long, or not terminated at all.
        if s.len() > MAX_PATH && find_close(s).is_some() {
            PathError::TooLong
        } else {
            PathError::MissingBrackets
        }
    })?;
    Ok((&s[1..close], close + 1))
}

/// Index of the `>` closing the path that starts at `s[0] == '<'`.
fn find_close(s: &[u8]) -> Option<usize> {
    // Paths are short: plain loops beat memchr's dispatch here.
    let gt = s.iter().position(|&b| b == b'>')?;
    if !s[..gt].contains(&b'"') {
        return Some(gt);
    }
    // Slow path: a quoted string may hide `>`.
    let mut quoted = false;
    let mut i = 1;
    while i < s.len() {
        match (quoted, s[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') => quoted = false,
            (false, b'"') => quoted = true,
            (false, b'>') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `atext` of RFC 5322 (as used by RFC 5321 `Atom`).
const fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        )
}

/// [`is_atext`] as a lookup table.
const ATEXT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = is_atext(i as u8);
        i += 1;
    }
    t
};

/// Finds the end of the local part (the index of its `@`, or `s.len()`).
///
/// ```text
/// Local-part     = Dot-string / Quoted-string
/// Dot-string     = Atom *("."  Atom)
/// Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
/// QcontentSMTP   = qtextSMTP / quoted-pairSMTP
/// quoted-pairSMTP = %d92 %d32-126
/// qtextSMTP      = %d32-33 / %d35-91 / %d93-126
/// ```
fn local_part_end(s: &[u8], utf8: bool) -> Result<usize, PathError> {
    if s.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match s.get(i) {
                None => return Err(PathError::BadLocalPart),
                Some(b'"') => break,
                Some(b'\\') => match s.get(i + 1) {
                    Some(32..=126) => i += 2,
                    _ => return Err(PathError::BadLocalPart),
                },
                Some(32..=126) => i += 1,
                Some(128..) if utf8 => i += 1,
                Some(_) => return Err(PathError::BadLocalPart),
            }
        }
        let end = i + 1;
        return match s.get(end) {
            None | Some(b'@') => Ok(end),
            Some(_) => Err(PathError::BadLocalPart),
        };
    }
    let end = s.iter().position(|&b| b == b'@').unwrap_or(s.len());
    let local = &s[..end];
    let mut prev_dot = true; // no leading dot
    for &b in local {
        if b == b'.' {
            if prev_dot {
                return Err(PathError::BadLocalPart);
            }
            prev_dot = true;
        } else if ATEXT[b as usize] || (utf8 && b >= 128) {
            prev_dot = false;
        } else {
            return Err(PathError::BadLocalPart);
        }
    }
    if prev_dot {
        // Empty, or a trailing dot.
        return Err(PathError::BadLocalPart);
    }
    Ok(end)
}

/// Checks `Domain / address-literal`.
///
/// ```text
/// Domain         = sub-domain *("." sub-domain)
/// sub-domain     = Let-dig [Ldh-str]      ; or a U-label with SMTPUTF8
/// ```
pub(crate) fn check_domain(d: &[u8], utf8: bool) -> Result<(), PathError> {
    if d.len() > MAX_DOMAIN {
        return Err(PathError::TooLong);
    }
    if d.first() == Some(&b'[') {
        return if is_address_literal(d) {
            Ok(())
        } else {
            Err(PathError::BadDomain)
        };
    }
    if d.is_empty() {
        return Err(PathError::BadDomain);
    }
    for label in d.split(|&b| b == b'.') {
        let ok = matches!(label.len(), 1..=63)
            && label[0] != b'-'
            && label[label.len() - 1] != b'-'
            && label.iter().all(|&b| {
                b.is_ascii_alphanumeric() || b == b'-' || (utf8 && b >= 128)
            });
        if !ok {
            return Err(PathError::BadDomain);
        }
    }
    Ok(())
}

/// Checks an address literal, brackets included.
///
/// ```text
/// address-literal  = "[" ( IPv4-address-literal /
///                          IPv6-address-literal /
///                          General-address-literal ) "]"
/// IPv6-address-literal = "IPv6:" IPv6-addr
/// General-address-literal = Standardized-tag ":" 1*dcontent
/// dcontent       = %d33-90 / %d94-126
/// ```
pub(crate) fn is_address_literal(d: &[u8]) -> bool {
    let Some(inner) = d.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]"))
    else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(inner) else {
        return false;
    };
    if text.parse::<core::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let Some(colon) = text.find(':') else {
        return false;
    };
    let (tag, rest) = (&text[..colon], &text[colon + 1..]);
    if tag.eq_ignore_ascii_case("IPv6") {
        return rest.parse::<core::net::Ipv6Addr>().is_ok();
    }
    let tag_ok = !tag.is_empty()
        && !tag.ends_with('-')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    tag_ok
        && !rest.is_empty()
        && rest.bytes().all(|b| matches!(b, 33..=90 | 94..=126))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(s: &str) -> Result<(ReversePath, usize), PathError> {
        ReversePath::parse(s.as_bytes(), false)
    }

    fn fwd(s: &str) -> Result<ForwardPath, PathError> {
        ForwardPath::parse(s.as_bytes(), false).map(|(p, _)| p)
    }

    #[test]
    fn null_reverse_path() {
        assert_eq!(rev("<>").unwrap(), (ReversePath::Null, 2));
        assert_eq!(rev("<> SIZE=1").unwrap().1, 2);
        assert_eq!(fwd("<>"), Err(PathError::BadLocalPart));
    }

    #[test]
    fn plain_mailbox_domain_lowercased_local_kept() {
        let (p, n) = rev("<Smith@Bar.COM>").unwrap();
        assert_eq!(n, 15);
        let m = p.mailbox().unwrap();
        assert_eq!(m.local(), "Smith");
        assert_eq!(m.domain(), "bar.com");
        assert_eq!(m.as_str(), "Smith@bar.com");
        assert!(!m.is_utf8());
    }

    #[test]
    fn quoted_local_parts() {
        let m = fwd("<\"john doe\"@example.com>").unwrap();
        assert_eq!(m.mailbox().local(), "\"john doe\"");
        assert_eq!(m.mailbox().domain(), "example.com");
        // `>` and `@` inside quotes, and escapes.
        let m = fwd(r#"<"a>b@c\"d\\"@example.com>"#).unwrap();
        assert_eq!(m.mailbox().local(), r#""a>b@c\"d\\""#);
        let (_, n) =
            ForwardPath::parse(br#"<"x>"@e.com> NOTIFY=NEVER"#, false)
                .unwrap();
        assert_eq!(n, 12);
        assert_eq!(
            fwd("<\"unterminated@e.com>"),
            Err(PathError::MissingBrackets)
        );
        assert_eq!(fwd("<\"ab\"c@e.com>"), Err(PathError::BadLocalPart));
        assert_eq!(fwd("<\"a\tb\"@e.com>"), Err(PathError::BadLocalPart));
    }

    #[test]
    fn dot_string_rules() {
        assert!(fwd("<a.b+tag@e.com>").is_ok());
        assert!(fwd("<!#$%&'*+-/=?^_`{|}~@e.com>").is_ok());
        for bad in ["<.a@e.com>", "<a.@e.com>", "<a..b@e.com>", "<a b@e.com>"]
        {
            assert_eq!(fwd(bad), Err(PathError::BadLocalPart), "{bad}");
        }
        assert_eq!(fwd("<@e.com>"), Err(PathError::BadRoute));
    }

    #[test]
    fn address_literals() {
        for (s, dom) in [
            ("<a@[127.0.0.1]>", "[127.0.0.1]"),
            ("<a@[IPv6:::1]>", "[ipv6:::1]"),
            ("<a@[IPv6:2001:db8::1]>", "[ipv6:2001:db8::1]"),
            ("<a@[x-tag:some-thing]>", "[x-tag:some-thing]"),
        ] {
            assert_eq!(fwd(s).unwrap().mailbox().domain(), dom, "{s}");
        }
        for bad in [
            "<a@[127.0.0.256]>",
            "<a@[IPv6:zz::1]>",
            "<a@[nocolon]>",
            "<a@[tag:]>",
            "<a@[127.0.0.1>",
            "<a@[tag:x[y]>",
        ] {
            assert_eq!(fwd(bad), Err(PathError::BadDomain), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for bad in [
            "<a@>",
            "<a@-x.com>",
            "<a@x-.com>",
            "<a@x..com>",
            "<a@x.com.>",
            "<a@x_y.com>",
        ] {
            assert_eq!(fwd(bad), Err(PathError::BadDomain), "{bad}");
        }
        assert_eq!(fwd("<a>"), Err(PathError::MissingDomain));
        let long_label = format!("<a@{}.com>", "x".repeat(64));
        assert_eq!(fwd(&long_label), Err(PathError::BadDomain));
    }

    #[test]
    fn source_routes() {
        let p = fwd("<@HOSTX.ARPA:JOE@HOSTW.ARPA>").unwrap();
        assert_eq!(p.0.route.as_deref(), Some("@HOSTX.ARPA"));
        assert_eq!(p.mailbox().as_str(), "JOE@hostw.arpa");
        let p = fwd("<@a.example,@b.example:user@d.example>").unwrap();
        assert_eq!(p.0.route.as_deref(), Some("@a.example,@b.example"));
        assert_eq!(p.mailbox().as_str(), "user@d.example");
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out, b"<user@d.example>");
        for bad in [
            "<@a.example>",
            "<@a,b:u@d.example>",
            "<@:u@d.example>",
            "<@a..b:u@d.e>",
        ] {
            assert_eq!(fwd(bad), Err(PathError::BadRoute), "{bad}");
        }
    }

    #[test]
    fn postmaster_only_in_forward_path() {
        for s in ["<postmaster>", "<Postmaster>", "<POSTMASTER>"] {
            let p = fwd(s).unwrap();
            assert!(p.mailbox().is_bare_postmaster(), "{s}");
            assert_eq!(p.mailbox().domain(), "");
            assert_eq!(p.mailbox().local(), &s[1..s.len() - 1]);
        }
        assert_eq!(rev("<postmaster>"), Err(PathError::MissingDomain));
        let p = fwd("<postmaster@Example.com>").unwrap();
        assert!(!p.mailbox().is_bare_postmaster());
    }

    #[test]
    fn brackets_required() {
        assert_eq!(rev("a@b.com"), Err(PathError::MissingBrackets));
        assert_eq!(rev("<a@b.com"), Err(PathError::MissingBrackets));
        assert_eq!(rev(""), Err(PathError::MissingBrackets));
    }

    #[test]
    fn length_limits() {
        let local64 = "l".repeat(64);
        assert!(fwd(&format!("<{local64}@e.com>")).is_ok());
        assert_eq!(
            fwd(&format!("<{local64}l@e.com>")),
            Err(PathError::TooLong)
        );
        // Domain of 255 octets (labels of 63): fits the domain limit, but
        // with the local part and brackets the path is over 256.
        let label = "d".repeat(63);
        let dom255 = format!("{label}.{label}.{label}.{}", "d".repeat(63));
        assert_eq!(dom255.len(), 255);
        assert!(check_domain(dom255.as_bytes(), false).is_ok());
        let dom256 = format!("{dom255}d");
        assert_eq!(
            check_domain(dom256.as_bytes(), false),
            Err(PathError::TooLong)
        );
        assert_eq!(fwd(&format!("<a@{dom255}>")), Err(PathError::TooLong));
        // Exactly 256 octets with the brackets is fine.
        let dom = format!("{label}.{label}.{label}.{}", "d".repeat(60));
        let path = format!("<a@{dom}>");
        assert_eq!(path.len(), 256);
        assert!(fwd(&path).is_ok());
    }

    #[test]
    fn utf8_needs_smtputf8_and_must_be_valid() {
        let s = "<jösé@bücher.example>".as_bytes();
        assert_eq!(ForwardPath::parse(s, false), Err(PathError::NonAscii));
        let (p, n) = ForwardPath::parse(s, true).unwrap();
        assert_eq!(n, s.len());
        assert_eq!(p.mailbox().local(), "jösé");
        assert_eq!(p.mailbox().domain(), "bücher.example");
        assert!(p.mailbox().is_utf8());
        let q = "<\"jö sé\"@e.example>".as_bytes();
        assert!(ForwardPath::parse(q, true).is_ok());
        // Malformed UTF-8 is a syntax error, not a missing SMTPUTF8.
        let bad = b"<j\xff@e.example>";
        assert_eq!(ForwardPath::parse(bad, true), Err(PathError::BadUtf8));
        assert_eq!(Mailbox::parse(b"a@\xc3", true), Err(PathError::BadUtf8));
        assert_eq!(Mailbox::parse(b"a@\xc3", false), Err(PathError::NonAscii));
    }

    #[test]
    fn mailbox_new_and_display() {
        let m = Mailbox::new("Joe", "HostW.ARPA");
        assert_eq!(m.to_string(), "Joe@hostw.arpa");
        assert_eq!(Mailbox::parse(b"Joe@HostW.ARPA", false).unwrap(), m);
        assert_eq!(Mailbox::parse(b"", false), Err(PathError::BadLocalPart));
    }
}
