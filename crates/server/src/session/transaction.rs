//! A complete, accepted transaction and its Received header field.

use std::net::{IpAddr, SocketAddr};

use millrace_proto::{ForwardPath, MailParams, RcptParams, ReversePath};

/// Everything the glue needs to commit one message durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// MAIL FROM (`<>` allowed).
    pub sender: ReversePath,
    /// ESMTP parameters of MAIL.
    pub mail_params: MailParams,
    /// Accepted recipients in order (source routes stripped, a bare
    /// `<postmaster>` rewritten to `postmaster@<hostname>`).
    pub recipients: Vec<(ForwardPath, RcptParams)>,
    /// The HELO/EHLO argument.
    pub helo: String,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
    /// The client.
    pub peer: SocketAddr,
    /// Body octets: for DATA in wire (dot-stuffed) form without the final
    /// `.CRLF`; for BDAT the chunk octets as received (not stuffed).
    pub body_len: u64,
}

impl Transaction {
    /// The `with` protocol of RFC 3848 / RFC 6531: `SMTP`, `ESMTP` or
    /// `UTF8SMTP`.
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.mail_params.smtputf8) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "UTF8SMTP",
        }
    }

    /// The Received header field, folded and CRLF-terminated:
    ///
    /// ```text
    /// Received: from <helo> ([<ip>])
    /// <TAB>by <hostname> (Millrace) with ESMTP id <ID>
    /// <TAB>for <rcpt>; <RFC 5322 date>
    /// ```
    ///
    /// (`<TAB>` is a tab; `for` only with a single recipient; IPv6 as
    /// `[IPv6:...]`.)
    pub fn received_header(
        &self,
        hostname: &str,
        id: &str,
        now_unix: i64,
    ) -> String {
        let ip = match self.peer.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("IPv6:{v6}"),
        };
        let mut s = format!(
            "Received: from {} ([{ip}])\r\n\tby {hostname} (Millrace) \
             with {} id {id}",
            self.helo,
            self.protocol()
        );
        if let [(rcpt, _)] = self.recipients.as_slice() {
            s.push_str("\r\n\tfor <");
            s.push_str(rcpt.mailbox().as_str());
            s.push('>');
        }
        s.push_str("; ");
        millrace_proto::date::write_rfc5322(now_unix, &mut s);
        s.push_str("\r\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::{Mailbox, Path};

    fn rcpt(addr: &str) -> (ForwardPath, RcptParams) {
        let (l, d) = addr.split_once('@').unwrap();
        let path = Path { route: None, mailbox: Mailbox::new(l, d) };
        (ForwardPath(path), RcptParams::default())
    }

    fn tx(peer: &str, esmtp: bool, rcpts: &[&str]) -> Transaction {
        Transaction {
            sender: ReversePath::Null,
            mail_params: MailParams::default(),
            recipients: rcpts.iter().map(|r| rcpt(r)).collect(),
            helo: "client.test".into(),
            esmtp,
            peer: peer.parse().unwrap(),
            body_len: 0,
        }
    }

    #[test]
    fn received_single_recipient_v4() {
        let t = tx("127.0.0.1:4000", true, &["a@b.test"]);
        assert_eq!(
            t.received_header("mx.test", "ABC123", 0),
            "Received: from client.test ([127.0.0.1])\r\n\
             \tby mx.test (Millrace) with ESMTP id ABC123\r\n\
             \tfor <a@b.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn received_many_recipients_v6_helo() {
        let t = tx("[::1]:25", false, &["a@b.test", "c@d.test"]);
        assert_eq!(
            t.received_header("mx.test", "ID", 86_400),
            "Received: from client.test ([IPv6:::1])\r\n\
             \tby mx.test (Millrace) with SMTP id ID; \
             Fri, 2 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn protocol_utf8smtp() {
        let mut t = tx("127.0.0.1:1", true, &[]);
        t.mail_params.smtputf8 = true;
        assert_eq!(t.protocol(), "UTF8SMTP");
        t.esmtp = false;
        assert_eq!(t.protocol(), "SMTP");
    }
}
