//! The envelope stored with each message, and its binary encoding.
//!
//! Encoding (all integers little endian): version `u8` = 1, sender,
//! flags `u8` (1 = 8BITMIME, 2 = SMTPUTF8, 4 = is DSN), RET `u8`
//! (0 none, 1 HDRS, 2 FULL), ENVID (optional string), client ip, helo,
//! arrival `i64`, Received field, recipient count `u32`, then per
//! recipient: address, NOTIFY `u8`, ORCPT (optional string). A string is
//! a `u32` length and UTF-8 bytes; an optional string is a tag byte
//! (0 absent, 1 present) then the string. Decoding checks every length
//! against the bytes that are left, so a corrupt file cannot make it
//! allocate more than the file holds.

use crate::SpoolError;

/// The envelope stored with each message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Reverse-path; `""` is the null reverse-path `<>`.
    pub sender: String,
    /// Forward-paths, in RCPT order; indices are recipient numbers.
    pub recipients: Vec<Recipient>,
    /// RET=FULL is `Some(true)`, RET=HDRS is `Some(false)`.
    pub ret_full: Option<bool>,
    /// ENVID, decoded.
    pub envid: Option<String>,
    /// BODY=8BITMIME was given.
    pub body_8bitmime: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// The client's IP address, as text.
    pub client_ip: String,
    /// The HELO/EHLO argument.
    pub helo: String,
    /// Arrival time, seconds since the Unix epoch.
    pub arrival_unix: i64,
    /// The Received header field (folded, ending in CRLF).
    pub received: String,
    /// A generated bounce (sender is `<>`).
    pub is_dsn: bool,
}

/// One recipient of a message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Recipient {
    /// The forward-path address.
    pub address: String,
    /// NOTIFY bits: 1 NEVER, 2 SUCCESS, 4 FAILURE, 8 DELAY; 0 = not given.
    pub notify: u8,
    /// ORCPT decoded, e.g. `"rfc822;a@b"`.
    pub orcpt: Option<String>,
}

const VERSION: u8 = 1;
const F_8BITMIME: u8 = 1;
const F_SMTPUTF8: u8 = 2;
const F_DSN: u8 = 4;
/// Smallest possible encoded recipient (empty address, no ORCPT).
const MIN_RCPT_LEN: usize = 4 + 1 + 1;

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), SpoolError> {
    let len = u32::try_from(s.len()).map_err(|_| SpoolError::TooLarge)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) -> Result<(), SpoolError> {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s)?;
        }
    }
    Ok(())
}

/// Appends the encoding of `env` to `out`.
pub(crate) fn encode(
    env: &Envelope,
    out: &mut Vec<u8>,
) -> Result<(), SpoolError> {
    out.push(VERSION);
    put_str(out, &env.sender)?;
    let mut flags = 0;
    if env.body_8bitmime {
        flags |= F_8BITMIME;
    }
    if env.smtputf8 {
        flags |= F_SMTPUTF8;
    }
    if env.is_dsn {
        flags |= F_DSN;
    }
    out.push(flags);
    out.push(match env.ret_full {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    put_opt(out, env.envid.as_deref())?;
    put_str(out, &env.client_ip)?;
    put_str(out, &env.helo)?;
    out.extend_from_slice(&env.arrival_unix.to_le_bytes());
    put_str(out, &env.received)?;
    let n = u32::try_from(env.recipients.len())
        .map_err(|_| SpoolError::TooLarge)?;
    out.extend_from_slice(&n.to_le_bytes());
    for r in &env.recipients {
        put_str(out, &r.address)?;
        out.push(r.notify);
        put_opt(out, r.orcpt.as_deref())?;
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn corrupt(what: &str) -> SpoolError {
    SpoolError::Corrupt(format!("envelope: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SpoolError> {
        if n > self.buf.len() {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SpoolError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SpoolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, SpoolError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, SpoolError> {
        let len = self.u32()? as usize;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("bad UTF-8"))
    }

    fn opt(&mut self) -> Result<Option<String>, SpoolError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(corrupt("bad option tag")),
        }
    }
}

/// Decodes an envelope that must fill `buf` exactly.
pub(crate) fn decode(buf: &[u8]) -> Result<Envelope, SpoolError> {
    let mut r = Reader { buf };
    if r.u8()? != VERSION {
        return Err(corrupt("unknown version"));
    }
    let sender = r.string()?;
    let flags = r.u8()?;
    if flags & !(F_8BITMIME | F_SMTPUTF8 | F_DSN) != 0 {
        return Err(corrupt("unknown flags"));
    }
    let ret_full = match r.u8()? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        _ => return Err(corrupt("bad RET")),
    };
    let envid = r.opt()?;
    let client_ip = r.string()?;
    let helo = r.string()?;
    let arrival_unix = r.i64()?;
    let received = r.string()?;
    let n = r.u32()? as usize;
    if n > r.buf.len() / MIN_RCPT_LEN {
        return Err(corrupt("recipient count exceeds data"));
    }
    let mut recipients = Vec::with_capacity(n);
    for _ in 0..n {
        let address = r.string()?;
        let notify = r.u8()?;
        let orcpt = r.opt()?;
        recipients.push(Recipient { address, notify, orcpt });
    }
    if !r.buf.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(Envelope {
        sender,
        recipients,
        ret_full,
        envid,
        body_8bitmime: flags & F_8BITMIME != 0,
        smtputf8: flags & F_SMTPUTF8 != 0,
        client_ip,
        helo,
        arrival_unix,
        received,
        is_dsn: flags & F_DSN != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            sender: "a@example.org".into(),
            recipients: vec![
                Recipient {
                    address: "b@example.net".into(),
                    notify: 4 | 8,
                    orcpt: Some("rfc822;b@example.net".into()),
                },
                Recipient {
                    address: "ü@example.net".into(),
                    ..Default::default()
                },
            ],
            ret_full: Some(false),
            envid: Some("QQ314159".into()),
            body_8bitmime: true,
            smtputf8: true,
            client_ip: "127.0.0.1".into(),
            helo: "client.example".into(),
            arrival_unix: -5,
            received: "Received: from x\r\n\tby y; now\r\n".into(),
            is_dsn: false,
        }
    }

    #[test]
    fn round_trip() {
        for env in [sample(), Envelope::default()] {
            let mut buf = Vec::new();
            encode(&env, &mut buf).unwrap();
            assert_eq!(decode(&buf).unwrap(), env);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert!(decode(&buf).is_err());
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut buf = Vec::new();
        encode(&Envelope::default(), &mut buf).unwrap();
        let n = buf.len();
        buf[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf), Err(SpoolError::Corrupt(_))));
        // A string length far beyond the buffer.
        let mut buf = vec![VERSION];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf), Err(SpoolError::Corrupt(_))));
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b);
            }
        }
    }
}
