//! The routing decision: where mail for a domain goes next. Pure: no DNS,
//! no sockets.
//!
//! Order (DESIGN.md): the `[routes]` entry for the domain, then the
//! smarthost, then the domain's MX records. An address literal
//! (`[127.0.0.1]`, `[IPv6:::1]`) goes straight to that address, port 25.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Where to send mail for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// A static route or an address literal: `host:port`.
    Route(String),
    /// The configured smarthost: `host:port`.
    Smarthost(String),
    /// Look up the MX records of this domain (lower-cased, no trailing dot).
    Mx(String),
}

/// The routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Router {
    routes: HashMap<String, String>,
    smarthost: Option<String>,
}

impl Router {
    /// A router from the `[routes]` table (domain -> `host:port`) and the
    /// optional smarthost (an empty string means none). Domains are
    /// matched case-insensitively.
    pub fn new(
        routes: impl IntoIterator<Item = (String, String)>,
        smarthost: Option<String>,
    ) -> Self {
        let routes =
            routes.into_iter().map(|(d, h)| (normalize(&d), h)).collect();
        let smarthost = smarthost.filter(|s| !s.trim().is_empty());
        Self { routes, smarthost }
    }

    /// The next hop for `domain` (a recipient's domain or address literal).
    pub fn next_hop(&self, domain: &str) -> NextHop {
        let domain = normalize(domain);
        if let Some(hop) = self.routes.get(&domain) {
            return NextHop::Route(hop.clone());
        }
        if let Some(ip) = address_literal(&domain) {
            return NextHop::Route(SocketAddr::new(ip, 25).to_string());
        }
        if let Some(host) = &self.smarthost {
            return NextHop::Smarthost(host.clone());
        }
        NextHop::Mx(domain)
    }
}

/// Lower-cases and strips one trailing dot.
fn normalize(domain: &str) -> String {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.to_ascii_lowercase()
}

/// Parses an RFC 5321 address literal: `[1.2.3.4]` or `[IPv6:...]`.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    if inner.len() > 5 && inner[..5].eq_ignore_ascii_case("ipv6:") {
        return inner[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(
            [("Example.NET".to_string(), "127.0.0.1:2626".to_string())],
            Some("smart.example:2525".to_string()),
        )
    }

    #[test]
    fn route_beats_smarthost() {
        assert_eq!(
            router().next_hop("example.net"),
            NextHop::Route("127.0.0.1:2626".into())
        );
        assert_eq!(
            router().next_hop("EXAMPLE.net."),
            NextHop::Route("127.0.0.1:2626".into())
        );
    }

    #[test]
    fn smarthost_beats_mx() {
        assert_eq!(
            router().next_hop("other.example"),
            NextHop::Smarthost("smart.example:2525".into())
        );
    }

    #[test]
    fn mx_without_smarthost() {
        let r = Router::new([], Some(String::new()));
        assert_eq!(
            r.next_hop("Other.Example"),
            NextHop::Mx("other.example".into())
        );
        let r = Router::default();
        assert_eq!(r.next_hop("a.example"), NextHop::Mx("a.example".into()));
    }

    #[test]
    fn address_literals_go_direct() {
        let r = Router::default();
        assert_eq!(
            r.next_hop("[127.0.0.1]"),
            NextHop::Route("127.0.0.1:25".into())
        );
        assert_eq!(
            r.next_hop("[IPv6:::1]"),
            NextHop::Route("[::1]:25".into())
        );
        // Even with a smarthost, a literal is direct.
        assert_eq!(
            router().next_hop("[127.0.0.1]"),
            NextHop::Route("127.0.0.1:25".into())
        );
        // Malformed literals are not addresses.
        assert_eq!(address_literal("[300.1.1.1]"), None);
        assert_eq!(address_literal("[IPv6:zz]"), None);
        assert_eq!(address_literal("127.0.0.1"), None);
    }
}
