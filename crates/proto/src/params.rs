//! ESMTP parameters of MAIL and RCPT.
//!
//! MAIL: SIZE (RFC 1870), BODY (RFC 6152 / RFC 3030), SMTPUTF8 (RFC 6531),
//! RET and ENVID (RFC 3461), AUTH (RFC 4954).
//! RCPT: NOTIFY and ORCPT (RFC 3461).
//!
//! ```text
//! esmtp-param    = esmtp-keyword ["=" esmtp-value]
//! esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
//! esmtp-value    = 1*(%d33-60 / %d62-126 / UTF8-non-ascii)
//! xtext          = *( xchar / hexchar )   ; "+" HEX HEX encodes one octet
//! ```

/// Why a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A parameter we do not implement (the server answers 555 5.5.4).
    #[error("unknown parameter {0}")]
    Unknown(String),
    /// A known parameter with a bad value (501 5.5.4).
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// The same parameter given twice (501 5.5.4).
    #[error("duplicate parameter {0}")]
    Duplicate(&'static str),
    /// Malformed `keyword=value` syntax (501 5.5.4).
    #[error("malformed parameter")]
    Syntax,
}

/// The BODY parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `BODY=7BIT` (or absent).
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (requires BDAT).
    BinaryMime,
}

/// The RET parameter of RFC 3461.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// The NOTIFY parameter of RFC 3461 as a set of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `NOTIFY=NEVER`.
    pub never: bool,
    /// SUCCESS requested.
    pub success: bool,
    /// FAILURE requested.
    pub failure: bool,
    /// DELAY requested.
    pub delay: bool,
}

impl Notify {
    /// True when NOTIFY was absent (default: failure and maybe delay).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a failure DSN should be sent for this recipient.
    pub fn wants_failure(&self) -> bool {
        !self.never && (self.failure || self.is_default())
    }

    /// Whether a delay DSN may be sent for this recipient.
    pub fn wants_delay(&self) -> bool {
        !self.never && (self.delay || self.is_default())
    }

    /// Whether a success DSN should be sent for this recipient.
    pub fn wants_success(&self) -> bool {
        !self.never && self.success
    }

    /// Writes the value (`NEVER` or e.g. `SUCCESS,FAILURE`), or nothing
    /// when default.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.never {
            out.extend_from_slice(b"NEVER");
            return;
        }
        let mut first = true;
        for (on, word) in [
            (self.success, &b"SUCCESS"[..]),
            (self.failure, b"FAILURE"),
            (self.delay, b"DELAY"),
        ] {
            if on {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(word);
                first = false;
            }
        }
    }

    /// Parses the NOTIFY value: `NEVER` or a comma list of
    /// SUCCESS / FAILURE / DELAY (case-insensitive; NEVER is exclusive).
    pub fn parse(v: &[u8]) -> Result<Self, ParamError> {
        let mut n = Self::default();
        for word in v.split(|&b| b == b',') {
            if word.eq_ignore_ascii_case(b"NEVER") {
                n.never = true;
            } else if word.eq_ignore_ascii_case(b"SUCCESS") {
                n.success = true;
            } else if word.eq_ignore_ascii_case(b"FAILURE") {
                n.failure = true;
            } else if word.eq_ignore_ascii_case(b"DELAY") {
                n.delay = true;
            } else {
                return Err(ParamError::BadValue("NOTIFY"));
            }
        }
        if n.never && (n.success || n.failure || n.delay) {
            return Err(ParamError::BadValue("NOTIFY"));
        }
        Ok(n)
    }
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE=n declared message size.
    pub size: Option<u64>,
    /// BODY=...
    pub body: BodyType,
    /// SMTPUTF8 present.
    pub smtputf8: bool,
    /// RET=FULL|HDRS.
    pub ret: Option<Ret>,
    /// ENVID, xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=<mailbox>` (xtext-decoded), `<>` kept as "<>".
    pub auth: Option<String>,
}

impl MailParams {
    /// Parses the parameters after the reverse-path (space separated).
    pub fn parse(s: &[u8]) -> Result<Self, ParamError> {
        let mut p = Self::default();
        let mut seen = 0u8;
        for token in tokens(s) {
            let (key, value) = split_param(token)?;
            let (bit, name) = if key.eq_ignore_ascii_case(b"SIZE") {
                let v = value.ok_or(ParamError::BadValue("SIZE"))?;
                p.size =
                    Some(parse_size(v).ok_or(ParamError::BadValue("SIZE"))?);
                (0, "SIZE")
            } else if key.eq_ignore_ascii_case(b"BODY") {
                let v = value.ok_or(ParamError::BadValue("BODY"))?;
                p.body = if v.eq_ignore_ascii_case(b"8BITMIME") {
                    BodyType::EightBitMime
                } else if v.eq_ignore_ascii_case(b"7BIT") {
                    BodyType::SevenBit
                } else if v.eq_ignore_ascii_case(b"BINARYMIME") {
                    BodyType::BinaryMime
                } else {
                    return Err(ParamError::BadValue("BODY"));
                };
                (1, "BODY")
            } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
                if value.is_some() {
                    return Err(ParamError::BadValue("SMTPUTF8"));
                }
                p.smtputf8 = true;
                (2, "SMTPUTF8")
            } else if key.eq_ignore_ascii_case(b"RET") {
                let v = value.ok_or(ParamError::BadValue("RET"))?;
                p.ret = Some(if v.eq_ignore_ascii_case(b"FULL") {
                    Ret::Full
                } else if v.eq_ignore_ascii_case(b"HDRS") {
                    Ret::Hdrs
                } else {
                    return Err(ParamError::BadValue("RET"));
                });
                (3, "RET")
            } else if key.eq_ignore_ascii_case(b"ENVID") {
                // The 100-octet limit applies to the value; its xtext
                // form may escape every octet (+XX), so up to 300 chars
                // are read. (Checking the encoded length instead made a
                // raw-UTF-8 ENVID parse but its encoding not: fuzzing.)
                let v = value
                    .filter(|v| v.len() <= 3 * MAX_ENVID)
                    .ok_or(ParamError::BadValue("ENVID"))?;
                let envid = xtext_decode(v)
                    .ok()
                    .filter(|d| d.len() <= MAX_ENVID)
                    .ok_or(ParamError::BadValue("ENVID"))?;
                p.envid = Some(envid);
                (4, "ENVID")
            } else if key.eq_ignore_ascii_case(b"AUTH") {
                let v = value.ok_or(ParamError::BadValue("AUTH"))?;
                p.auth = Some(
                    xtext_decode(v)
                        .map_err(|_| ParamError::BadValue("AUTH"))?,
                );
                (5, "AUTH")
            } else {
                return Err(unknown(key));
            };
            mark_seen(&mut seen, bit, name)?;
        }
        Ok(p)
    }

    /// Writes the parameters (each preceded by a space) for an outbound
    /// MAIL command; `dsn` says whether RET/ENVID may be sent.
    pub fn encode(&self, dsn: bool, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            out.extend_from_slice(b" SIZE=");
            push_u64(out, size);
        }
        match self.body {
            BodyType::SevenBit => {}
            BodyType::EightBitMime => out.extend_from_slice(b" BODY=8BITMIME"),
            BodyType::BinaryMime => {
                out.extend_from_slice(b" BODY=BINARYMIME");
            }
        }
        if self.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        if dsn {
            match self.ret {
                Some(Ret::Full) => out.extend_from_slice(b" RET=FULL"),
                Some(Ret::Hdrs) => out.extend_from_slice(b" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &self.envid {
                out.extend_from_slice(b" ENVID=");
                xtext_encode(envid, out);
            }
        }
        if let Some(auth) = &self.auth {
            out.extend_from_slice(b" AUTH=");
            xtext_encode(auth, out);
        }
    }
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// NOTIFY flags.
    pub notify: Notify,
    /// ORCPT as (address type, xtext-decoded address), e.g. ("rfc822", "a@b").
    pub orcpt: Option<(String, String)>,
}

impl RcptParams {
    /// Parses the parameters after the forward-path.
    ///
    /// ```text
    /// notify-esmtp-value  = "NEVER" / 1#notify-list-element
    /// notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
    /// orcpt-parameter     = "ORCPT=" addr-type ";" xtext
    /// ```
    pub fn parse(s: &[u8]) -> Result<Self, ParamError> {
        let mut p = Self::default();
        let mut seen = 0u8;
        for token in tokens(s) {
            let (key, value) = split_param(token)?;
            let (bit, name) = if key.eq_ignore_ascii_case(b"NOTIFY") {
                let v = value.ok_or(ParamError::BadValue("NOTIFY"))?;
                p.notify = Notify::parse(v)?;
                (0, "NOTIFY")
            } else if key.eq_ignore_ascii_case(b"ORCPT") {
                let v = value.ok_or(ParamError::BadValue("ORCPT"))?;
                p.orcpt = Some(parse_orcpt(v)?);
                (1, "ORCPT")
            } else {
                return Err(unknown(key));
            };
            mark_seen(&mut seen, bit, name)?;
        }
        Ok(p)
    }

    /// Writes the parameters (each preceded by a space) for an outbound
    /// RCPT command; only when the next hop advertises DSN.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if !self.notify.is_default() {
            out.extend_from_slice(b" NOTIFY=");
            self.notify.encode(out);
        }
        if let Some((kind, addr)) = &self.orcpt {
            out.extend_from_slice(b" ORCPT=");
            out.extend_from_slice(kind.as_bytes());
            out.push(b';');
            xtext_encode(addr, out);
        }
    }
}

/// Longest ENVID value (RFC 3461 section 4.4).
const MAX_ENVID: usize = 100;

/// Records keyword number `bit` (`name`) as seen; a second sighting is a
/// duplicate.
fn mark_seen(
    seen: &mut u8,
    bit: u8,
    name: &'static str,
) -> Result<(), ParamError> {
    let mask = 1u8 << (bit & 7);
    if *seen & mask != 0 {
        return Err(ParamError::Duplicate(name));
    }
    *seen |= mask;
    Ok(())
}

/// The space-separated tokens of a parameter list (runs of spaces are
/// tolerated).
fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// Splits `keyword[=value]` and checks both against the grammar.
fn split_param(token: &[u8]) -> Result<(&[u8], Option<&[u8]>), ParamError> {
    // Tokens are short: a plain loop beats memchr's dispatch here.
    let (key, value) = match token.iter().position(|&b| b == b'=') {
        Some(i) => (&token[..i], Some(&token[i + 1..])),
        None => (token, None),
    };
    let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
        && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    if !key_ok {
        return Err(ParamError::Syntax);
    }
    if let Some(v) = value {
        let ok = !v.is_empty()
            && v.iter().all(|&b| matches!(b, 33..=60 | 62..=126 | 128..));
        if !ok {
            return Err(ParamError::Syntax);
        }
    }
    Ok((key, value))
}

/// The error for a keyword we do not implement.
fn unknown(key: &[u8]) -> ParamError {
    ParamError::Unknown(String::from_utf8_lossy(key).into_owned())
}

/// Parses `addr-type ";" xtext`; the type is lower-cased.
fn parse_orcpt(v: &[u8]) -> Result<(String, String), ParamError> {
    let bad = ParamError::BadValue("ORCPT");
    let semi = memchr::memchr(b';', v).ok_or(bad.clone())?;
    let (kind, addr) = (&v[..semi], &v[semi + 1..]);
    let kind_ok = kind.first().is_some_and(u8::is_ascii_alphanumeric)
        && kind.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    if !kind_ok || addr.is_empty() {
        return Err(bad);
    }
    let addr = xtext_decode(addr).map_err(|_| bad)?;
    let kind = String::from_utf8_lossy(kind).to_ascii_lowercase();
    Ok((kind, addr))
}

/// Parses 1 to 20 ASCII digits as a u64 (no sign, no overflow).
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parses a SIZE value: `1*20DIGIT` (RFC 1870), or any longer run of
/// digits, saturating at `u64::MAX`. Twenty digits can exceed a u64;
/// such a size is valid syntax and simply over every limit, so the
/// server answers 552 5.3.4 rather than 501.
fn parse_size(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let first = v.iter().position(|&b| b != b'0').unwrap_or(v.len() - 1);
    Some(parse_u64(&v[first..]).unwrap_or(u64::MAX))
}

/// Appends the decimal form of `n`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Value of one hex digit (either case).
fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes).
///
/// ```text
/// xtext    = *( xchar / hexchar )
/// xchar    = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
///            except for "+" and "="
/// hexchar  = "+" 2(HEXDIG)
/// ```
///
/// Lower-case hex digits are accepted; raw UTF-8 (RFC 6533 style) is
/// passed through. The decoded octets must be UTF-8.
pub fn xtext_decode(s: &[u8]) -> Result<String, ParamError> {
    let bad = ParamError::BadValue("xtext");
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => {
                let hi = s.get(i + 1).copied().and_then(hex_val);
                let lo = s.get(i + 2).copied().and_then(hex_val);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(bad);
                };
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'=' => return Err(bad),
            b @ (33..=126 | 128..) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad),
        }
    }
    String::from_utf8(out).map_err(|_| bad)
}

/// Encodes RFC 3461 xtext: `+`, `=`, controls, space and non-ASCII octets
/// become `+XX` (upper-case hex).
pub fn xtext_encode(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if matches!(b, 33..=126) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'+',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params_all() {
        let p = MailParams::parse(
            b" SIZE=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B314 \
              AUTH=<>",
        )
        .unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: BodyType::EightBitMime,
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+314".into()),
                auth: Some("<>".into()),
            }
        );
        assert_eq!(MailParams::parse(b"").unwrap(), MailParams::default());
        assert_eq!(
            MailParams::parse(b"BODY=7BIT RET=full").unwrap(),
            MailParams { ret: Some(Ret::Full), ..Default::default() }
        );
        assert_eq!(
            MailParams::parse(b"BODY=BINARYMIME").unwrap().body,
            BodyType::BinaryMime
        );
        let auth = MailParams::parse(b"AUTH=e+3Dmc2@example.com").unwrap();
        assert_eq!(auth.auth.as_deref(), Some("e=mc2@example.com"));
    }

    #[test]
    fn mail_param_errors() {
        use ParamError::*;
        for (s, e) in [
            (&b"SIZE"[..], BadValue("SIZE")),
            (b"SIZE=", Syntax),
            (b"SIZE=12a", BadValue("SIZE")),
            (b"SIZE=-1", BadValue("SIZE")),
            (b"BODY=9BIT", BadValue("BODY")),
            (b"SMTPUTF8=yes", BadValue("SMTPUTF8")),
            (b"RET=ALL", BadValue("RET")),
            (b"ENVID=a+zz", BadValue("ENVID")),
            (b"AUTH=+4", BadValue("AUTH")),
            (b"XFOO=1", Unknown("XFOO".into())),
            (b"NOTIFY=NEVER", Unknown("NOTIFY".into())),
            (b"SIZE=1 size=2", Duplicate("SIZE")),
            (b"SMTPUTF8 SMTPUTF8", Duplicate("SMTPUTF8")),
            (b"-X=1", Syntax),
            (b"A_B", Syntax),
            (b"=1", Syntax),
            (b"X=a=b", Syntax),
        ] {
            assert_eq!(MailParams::parse(s), Err(e), "{}", s.escape_ascii());
        }
        let long = format!("ENVID={}", "a".repeat(101));
        assert_eq!(MailParams::parse(long.as_bytes()), Err(BadValue("ENVID")));
        // 100 octets, every one escaped: 300 characters, accepted.
        let escaped = format!("ENVID={}", "+41".repeat(100));
        assert_eq!(
            MailParams::parse(escaped.as_bytes()).unwrap().envid.unwrap(),
            "A".repeat(100)
        );
    }

    #[test]
    fn fuzz_regression_utf8_envid_round_trips() {
        // A raw UTF-8 ENVID within 100 octets re-encodes as +XX escapes
        // (longer than 100 characters) and must still parse back.
        let v = format!("ENVID={}", "é".repeat(40));
        let p = MailParams::parse(v.as_bytes()).unwrap();
        let mut out = Vec::new();
        p.encode(true, &mut out);
        let back = MailParams::parse(&out[1..]).unwrap();
        assert_eq!(back.envid, p.envid);
    }

    #[test]
    fn rcpt_params() {
        let p = RcptParams::parse(
            b"NOTIFY=SUCCESS,failure ORCPT=RFC822;Joe+40hostw.arpa",
        )
        .unwrap();
        assert!(p.notify.success && p.notify.failure && !p.notify.delay);
        assert!(p.notify.wants_success() && p.notify.wants_failure());
        assert!(!p.notify.wants_delay());
        assert_eq!(
            p.orcpt,
            Some(("rfc822".to_owned(), "Joe@hostw.arpa".to_owned()))
        );
        let n = RcptParams::parse(b"NOTIFY=NEVER").unwrap().notify;
        assert!(n.never && !n.wants_failure() && !n.wants_delay());
        let d = RcptParams::parse(b"").unwrap().notify;
        assert!(d.is_default() && d.wants_failure() && d.wants_delay());
        assert!(!d.wants_success());
        let delay = RcptParams::parse(b"NOTIFY=DELAY").unwrap().notify;
        assert!(delay.wants_delay() && !delay.wants_failure());
    }

    #[test]
    fn rcpt_param_errors() {
        use ParamError::*;
        for (s, e) in [
            (&b"NOTIFY=NEVER,SUCCESS"[..], BadValue("NOTIFY")),
            (b"NOTIFY=SOMETIMES", BadValue("NOTIFY")),
            (b"NOTIFY=SUCCESS,", BadValue("NOTIFY")),
            (b"NOTIFY", BadValue("NOTIFY")),
            (b"ORCPT=rfc822", BadValue("ORCPT")),
            (b"ORCPT=;a@b", BadValue("ORCPT")),
            (b"ORCPT=rfc822;", BadValue("ORCPT")),
            (b"ORCPT=rfc822;a+g0", BadValue("ORCPT")),
            (b"NOTIFY=DELAY NOTIFY=DELAY", Duplicate("NOTIFY")),
            (b"SIZE=10", Unknown("SIZE".into())),
        ] {
            assert_eq!(RcptParams::parse(s), Err(e), "{}", s.escape_ascii());
        }
    }

    #[test]
    fn encode_round_trips() {
        let p = MailParams {
            size: Some(0),
            body: BodyType::BinaryMime,
            smtputf8: true,
            ret: Some(Ret::Full),
            envid: Some("id +=x é".into()),
            auth: Some("<>".into()),
        };
        let mut out = Vec::new();
        p.encode(true, &mut out);
        assert_eq!(
            out,
            b" SIZE=0 BODY=BINARYMIME SMTPUTF8 RET=FULL \
              ENVID=id+20+2B+3Dx+20+C3+A9 AUTH=<>"
        );
        assert_eq!(MailParams::parse(&out).unwrap(), p);
        out.clear();
        p.encode(false, &mut out);
        assert_eq!(out, b" SIZE=0 BODY=BINARYMIME SMTPUTF8 AUTH=<>");

        let r = RcptParams {
            notify: Notify { success: true, delay: true, ..Notify::default() },
            orcpt: Some(("rfc822".into(), "a+b@c".into())),
        };
        out.clear();
        r.encode(&mut out);
        assert_eq!(out, b" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@c");
        assert_eq!(RcptParams::parse(&out).unwrap(), r);
        out.clear();
        RcptParams::default().encode(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode(b"abc+2B+3d").unwrap(), "abc+=");
        assert_eq!(xtext_decode(b"").unwrap(), "");
        assert!(xtext_decode(b"+2").is_err());
        assert!(xtext_decode(b"a=b").is_err());
        assert!(xtext_decode(b"a b").is_err());
        assert!(xtext_decode(b"+FF").is_err(), "not UTF-8");
        let mut out = Vec::new();
        xtext_encode("a b+c=d\u{7f}", &mut out);
        assert_eq!(out, b"a+20b+2Bc+3Dd+7F");
        assert_eq!(xtext_decode(&out).unwrap(), "a b+c=d\u{7f}");
    }

    #[test]
    fn huge_size_saturates() {
        // RFC 1870 allows 20 digits, more than a u64 holds; any run of
        // digits is a valid size, and one past u64::MAX is simply over
        // every limit (552 5.3.4 at the server, as Postfix answers).
        for v in [
            &b"SIZE=18446744073709551616"[..],
            b"SIZE=99999999999999999999",
            b"SIZE=999999999999999999999999999999",
        ] {
            let p = MailParams::parse(v).unwrap();
            assert_eq!(p.size, Some(u64::MAX), "{}", v.escape_ascii());
        }
        let p = MailParams::parse(b"SIZE=000000000000000000000042").unwrap();
        assert_eq!(p.size, Some(42));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        let mut out = Vec::new();
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"18446744073709551615");
    }
}
