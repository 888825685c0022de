//! What a session needs to know from the configuration.

use std::net::IpAddr;

use ipnet::IpNet;
use millrace_proto::Capabilities;

/// Per-listener settings shared (behind an `Arc`) by every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our name, in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Largest body accepted, in wire (dot-stuffed) octets; advertised in
    /// SIZE.
    pub max_message_size: u64,
    /// Recipients per message; one more gets 452 4.5.3.
    pub max_recipients: usize,
    /// Clients in these networks may relay anywhere.
    pub mynetworks: Vec<IpNet>,
    /// Other clients may send only to these domains (exact match, or any
    /// subdomain when the entry starts with `.`).
    pub relay_domains: Vec<String>,
    /// At this many error replies the session ends with 421 4.7.0.
    pub max_errors: u32,
    /// Offer CHUNKING and accept BDAT (RFC 3030).
    pub chunking: bool,
    /// Bytes of replies queued before [`crate::Session::receive`] stops and
    /// asks the glue to flush ([`crate::Action::Flush`]).
    pub max_pending_output: usize,
}

impl SessionConfig {
    /// The defaults of DESIGN.md for `hostname`: 35882577 octets, 1000
    /// recipients, loopback-only `mynetworks`, no relay domains, 10 errors,
    /// CHUNKING on, 64 KiB of pending output.
    pub fn new(hostname: impl Into<String>) -> Self {
        let loopback = |s: &str| s.parse::<IpNet>().ok();
        Self {
            hostname: hostname.into(),
            max_message_size: 35_882_577,
            max_recipients: 1000,
            mynetworks: ["127.0.0.0/8", "::1/128"]
                .into_iter()
                .filter_map(loopback)
                .collect(),
            relay_domains: Vec::new(),
            max_errors: 10,
            chunking: true,
            max_pending_output: 64 * 1024,
        }
    }

    /// The EHLO capabilities: PIPELINING, SIZE, 8BITMIME,
    /// ENHANCEDSTATUSCODES, SMTPUTF8, DSN, and CHUNKING when enabled.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            pipelining: true,
            size: Some(self.max_message_size),
            eightbitmime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            dsn: true,
            chunking: self.chunking,
            ..Capabilities::default()
        }
    }

    /// True when `ip` is in `mynetworks` (IPv4-mapped IPv6 addresses are
    /// treated as IPv4).
    pub fn in_mynetworks(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.mynetworks.iter().any(|net| net.contains(&ip))
    }

    /// True when `domain` (already lower-case) is one of `relay_domains`:
    /// equal to an entry, or a subdomain of an entry that starts with `.`.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        self.relay_domains.iter().any(|entry| {
            if entry.starts_with('.') {
                // ".example.net" matches "a.example.net", not itself.
                domain.len() > entry.len() && ends_with_ci(domain, entry)
            } else {
                domain.eq_ignore_ascii_case(entry)
            }
        })
    }
}

/// Case-insensitive `ends_with`.
fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..]
            .eq_ignore_ascii_case(suffix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mynetworks_default_is_loopback_only() {
        let c = SessionConfig::new("mx.test");
        assert!(c.in_mynetworks("127.0.0.1".parse().unwrap()));
        assert!(c.in_mynetworks("127.9.9.9".parse().unwrap()));
        assert!(c.in_mynetworks("::1".parse().unwrap()));
        assert!(c.in_mynetworks("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.in_mynetworks("10.0.0.1".parse().unwrap()));
        assert!(!c.in_mynetworks("::2".parse().unwrap()));
    }

    #[test]
    fn relay_domains_exact_and_dot_prefixed() {
        let mut c = SessionConfig::new("mx.test");
        c.relay_domains = vec!["example.org".into(), ".example.net".into()];
        assert!(c.is_relay_domain("example.org"));
        assert!(c.is_relay_domain("EXAMPLE.org"));
        assert!(!c.is_relay_domain("sub.example.org"));
        assert!(c.is_relay_domain("sub.example.net"));
        assert!(c.is_relay_domain("a.b.example.net"));
        assert!(!c.is_relay_domain("example.net"));
        assert!(!c.is_relay_domain("badexample.net"));
        assert!(!c.is_relay_domain("other.test"));
    }

    #[test]
    fn capabilities_follow_config() {
        let mut c = SessionConfig::new("mx.test");
        c.max_message_size = 1000;
        let caps = c.capabilities();
        assert_eq!(caps.size, Some(1000));
        assert!(caps.pipelining && caps.chunking && caps.dsn);
        assert!(!caps.starttls && caps.auth.is_empty());
        c.chunking = false;
        assert!(!c.capabilities().chunking);
    }
}
