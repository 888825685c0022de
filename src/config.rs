//! The TOML configuration of DESIGN.md: every key optional, unknown keys
//! refused, each problem reported on one line naming the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem: the key (dotted path) and what is wrong.
#[derive(Debug)]
pub(crate) struct ConfigError {
    /// Dotted key path, e.g. `timeouts.command` (empty for syntax errors).
    pub(crate) key: String,
    /// What is wrong, on one line.
    pub(crate) problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "key `{}`: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into() }
}

/// A duration written the humantime way (`5m`, `1h 30m`, `0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("bad duration {s:?}: {e}"))
        })
    }
}

/// What to do with a bare CR or LF in a DATA body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BareLineEndings {
    /// Refuse the message with 550 5.6.0; nothing is queued.
    #[default]
    Reject,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Our name in the greeting, EHLO and Received headers.
    pub(crate) hostname: String,
    /// Listening addresses.
    pub(crate) listen: Vec<SocketAddr>,
    /// Reactor threads; 0 = one per core.
    pub(crate) threads: usize,
    /// The spool directory.
    pub(crate) spool_dir: PathBuf,
    /// Maximum body size in wire form (advertised in SIZE).
    pub(crate) max_message_size: u64,
    /// Maximum recipients per message.
    pub(crate) max_recipients: usize,
    /// Maximum concurrent inbound connections for the whole server.
    pub(crate) max_connections: usize,
    /// Policy for bare CR / LF in DATA.
    pub(crate) bare_line_endings: BareLineEndings,
    /// Client networks allowed to relay (CIDR).
    pub(crate) mynetworks: Vec<String>,
    /// Recipient domains anyone may send to.
    pub(crate) relay_domains: Vec<String>,
    /// "stderr" or a file path for the JSON event log.
    pub(crate) log: String,
    /// Inbound timeouts.
    pub(crate) timeouts: Timeouts,
    /// Outbound delivery.
    pub(crate) delivery: Delivery,
    /// DNS.
    pub(crate) dns: Dns,
    /// Per-domain static next hops.
    pub(crate) routes: BTreeMap<String, String>,
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Timeouts {
    /// Idle time allowed between commands.
    pub(crate) command: Dur,
    /// Idle time allowed while receiving a body.
    pub(crate) data: Dur,
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Delivery {
    /// `host:port` to send everything to ("" = none).
    pub(crate) smarthost: String,
    /// Retry schedule; the last interval repeats.
    pub(crate) retry_intervals: Vec<Dur>,
    /// Bounce after this long in the queue.
    pub(crate) max_queue_lifetime: Dur,
    /// One "delayed" DSN after this long ("0s" = off).
    pub(crate) delay_warning: Dur,
    /// Outbound connect timeout.
    pub(crate) connect_timeout: Dur,
    /// Concurrent connections per next hop.
    pub(crate) max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub(crate) max_messages_per_connection: usize,
    /// Recipients per outbound transaction.
    pub(crate) max_recipients_per_transaction: usize,
    /// Name used in our EHLO ("" = hostname).
    pub(crate) helo_name: String,
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Dns {
    /// Resolvers as "ip:port"; empty = /etc/resolv.conf.
    pub(crate) resolvers: Vec<SocketAddr>,
}

fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hostname: String::new(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            threads: 0,
            spool_dir: PathBuf::from("./millrace-spool"),
            max_message_size: 35_882_577,
            max_recipients: 1000,
            max_connections: 10_000,
            bare_line_endings: BareLineEndings::Reject,
            mynetworks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            relay_domains: Vec::new(),
            log: "stderr".into(),
            timeouts: Timeouts::default(),
            delivery: Delivery::default(),
            dns: Dns::default(),
            routes: BTreeMap::new(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { command: secs(300), data: secs(600) }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            smarthost: String::new(),
            retry_intervals: [60, 300, 900, 1800, 3600, 7200, 14_400]
                .into_iter()
                .map(secs)
                .collect(),
            max_queue_lifetime: secs(5 * 86_400),
            delay_warning: secs(4 * 3600),
            connect_timeout: secs(30),
            max_connections_per_destination: 32,
            max_messages_per_connection: 100,
            max_recipients_per_transaction: 100,
            helo_name: String::new(),
        }
    }
}

/// An IP network in CIDR notation (`127.0.0.0/8`, `::1/128`, or a bare
/// address meaning a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// Network address.
    pub(crate) addr: IpAddr,
    /// Prefix length.
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr =
            a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length {p:?}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

fn check_host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| err(key, format!("{v:?} is not host:port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(err(key, format!("{v:?} is not host:port")));
    }
    Ok(())
}

fn check_domain(key: &str, d: &str) -> Result<(), ConfigError> {
    let d = d.strip_prefix('.').unwrap_or(d);
    let ok = !d.is_empty()
        && d.len() <= 255
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok { Ok(()) } else { Err(err(key, format!("bad domain {d:?}"))) }
}

impl Config {
    /// Parses and validates a TOML document.
    pub(crate) fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| toml_error(text, "", &e))?;
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(text, &key, e.inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that types alone do not.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.hostname.is_empty() {
            check_domain("hostname", &self.hostname)?;
        }
        if self.listen.is_empty() {
            return Err(err("listen", "at least one address is needed"));
        }
        if self.max_message_size == 0 {
            return Err(err("max_message_size", "must be greater than 0"));
        }
        if self.max_recipients == 0 {
            return Err(err("max_recipients", "must be greater than 0"));
        }
        if self.max_connections == 0 {
            return Err(err("max_connections", "must be greater than 0"));
        }
        for n in &self.mynetworks {
            Cidr::parse(n).map_err(|p| err("mynetworks", p))?;
        }
        for d in &self.relay_domains {
            check_domain("relay_domains", d)?;
        }
        let d = &self.delivery;
        if !d.smarthost.is_empty() {
            check_host_port("delivery.smarthost", &d.smarthost)?;
        }
        if d.retry_intervals.is_empty() {
            return Err(err(
                "delivery.retry_intervals",
                "at least one interval is needed",
            ));
        }
        if d.retry_intervals.iter().any(|i| i.0.is_zero()) {
            return Err(err(
                "delivery.retry_intervals",
                "intervals must be > 0",
            ));
        }
        if d.max_queue_lifetime.0.is_zero() {
            return Err(err("delivery.max_queue_lifetime", "must be > 0"));
        }
        for (k, v) in [
            (
                "delivery.max_connections_per_destination",
                d.max_connections_per_destination,
            ),
            (
                "delivery.max_messages_per_connection",
                d.max_messages_per_connection,
            ),
            (
                "delivery.max_recipients_per_transaction",
                d.max_recipients_per_transaction,
            ),
        ] {
            if v == 0 {
                return Err(err(k, "must be greater than 0"));
            }
        }
        if !d.helo_name.is_empty() {
            check_domain("delivery.helo_name", &d.helo_name)?;
        }
        for (dom, hop) in &self.routes {
            let key = format!("routes.{dom}");
            check_domain(&key, dom)?;
            check_host_port(&key, hop)?;
        }
        Ok(())
    }

    /// The hostname in effect (the configured one or the machine's).
    pub(crate) fn effective_hostname(&self) -> String {
        if !self.hostname.is_empty() {
            return self.hostname.clone();
        }
        machine_hostname().unwrap_or_else(|| "localhost".into())
    }
}

/// One line from a toml error: `line N: message` (+ the key when known).
fn toml_error(text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().lines().next().unwrap_or("invalid").trim();
    let problem = match e.span() {
        Some(span) => {
            let line =
                text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg.to_owned(),
    };
    ConfigError { key: key.to_owned(), problem }
}

fn machine_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_is_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.max_message_size, 35_882_577);
        assert_eq!(c.delivery.retry_intervals.len(), 7);
        assert_eq!(c.timeouts.command.0, Duration::from_secs(300));
    }

    #[test]
    fn design_example_parses() {
        let c = Config::from_toml(
            r#"
hostname = "relay.example.com"
listen = ["127.0.0.1:2525", "[::1]:2525"]
threads = 2
spool_dir = "/tmp/spool"
max_message_size = 1000
max_recipients = 5
max_connections = 10
bare_line_endings = "reject"
mynetworks = ["127.0.0.0/8", "::1/128"]
relay_domains = ["example.org", ".example.net"]
log = "stderr"
[timeouts]
command = "5m"
data = "10m"
[delivery]
smarthost = "127.0.0.1:2626"
retry_intervals = ["1m", "5m"]
max_queue_lifetime = "5d"
delay_warning = "0s"
connect_timeout = "30s"
max_connections_per_destination = 4
max_messages_per_connection = 10
max_recipients_per_transaction = 50
helo_name = "out.example.com"
[dns]
resolvers = ["127.0.0.1:5353"]
[routes]
"example.net" = "127.0.0.1:2626"
"#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.delivery.delay_warning.0, Duration::ZERO);
        assert_eq!(c.routes["example.net"], "127.0.0.1:2626");
    }

    #[test]
    fn errors_name_the_key_on_one_line() {
        for (text, key) in [
            ("hostnme = \"x\"", "hostnme"),
            ("threads = \"two\"", "threads"),
            ("[timeouts]\ncommand = \"5 parsecs\"", "timeouts.command"),
            (
                "[delivery]\nmax_queue_lifetime = 3",
                "delivery.max_queue_lifetime",
            ),
            ("mynetworks = [\"10.0.0.0/99\"]", "mynetworks"),
            ("[routes]\n\"a.example\" = \"nowhere\"", "routes.a.example"),
            ("[delivery]\nsmarthost = \"x\"", "delivery.smarthost"),
            ("[dns]\nresolvers = [\"bogus\"]", "dns.resolvers"),
            ("listen = []", "listen"),
        ] {
            let e = bad(text);
            assert!(e.contains(key), "{text:?} -> {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = bad("threads = ");
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn cidr() {
        assert_eq!(Cidr::parse("10.1.0.0/16").unwrap().prefix, 16);
        assert_eq!(Cidr::parse("::1").unwrap().prefix, 128);
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        assert!(Cidr::parse("nope/3").is_err());
    }
}
