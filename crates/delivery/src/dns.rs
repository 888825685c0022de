//! MX resolution on a dedicated thread.
//!
//! [`Dns`] owns one thread running a tokio current-thread runtime (hickory
//! needs one; tokio appears nowhere else in Millrace) with a caching
//! hickory resolver. Callers hand it a domain and a callback; the callback
//! runs on the DNS thread, so a reactor driver forwards the result through
//! its own channel and never blocks.
//!
//! Rules (RFC 5321 section 5.1, RFC 7505):
//! - MX records by preference, equal preferences shuffled;
//! - the A/AAAA records of each exchanger;
//! - no MX records (NOERROR/NODATA): the domain itself is the exchanger
//!   (implicit MX);
//! - a null MX (`0 .`): [`RouteError::NullMx`], permanent;
//! - NXDOMAIN: [`RouteError::NoSuchDomain`], permanent;
//! - no exchanger with an address: [`RouteError::NoAddress`], permanent;
//! - SERVFAIL, REFUSED, timeouts, an unreachable resolver:
//!   [`RouteError::Temporary`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hickory_proto::rr::RData;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use millrace_proto::{EnhancedCode, Reply};
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::{Semaphore, mpsc};

/// Lookups queued to the DNS thread before callers are told "busy".
pub const MAX_QUEUED: usize = 4096;

/// Lookups the DNS thread runs at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Exchangers kept per domain (the best ones by preference).
pub const MAX_EXCHANGERS: usize = 16;

/// Attempts per query (per name server).
const ATTEMPTS: usize = 2;

/// One mail exchanger with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanger {
    /// The exchanger's host name (no trailing dot).
    pub host: String,
    /// MX preference (0 for an implicit MX).
    pub preference: u16,
    /// Its addresses, with the SMTP port (25 unless overridden).
    pub addrs: Vec<SocketAddr>,
}

/// Why a domain has no usable next hop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{0}: null MX, the domain accepts no mail")]
    NullMx(String),
    /// NXDOMAIN, or a name that cannot exist.
    #[error("{0}: no such domain")]
    NoSuchDomain(String),
    /// No exchanger (explicit or implicit) has an address.
    #[error("{0}: no mail exchanger with an address")]
    NoAddress(String),
    /// SERVFAIL, REFUSED, timeout, unreachable resolver, resolver busy.
    #[error("{domain}: temporary DNS failure: {detail}")]
    Temporary {
        /// The domain looked up.
        domain: String,
        /// What went wrong (for logs only).
        detail: String,
    },
}

impl RouteError {
    /// The synthetic SMTP reply used in logs and bounces (bland: no
    /// internals).
    pub fn reply(&self) -> Reply {
        let (code, enh, text) = match self {
            Self::NullMx(_) => (
                556,
                EnhancedCode::new(5, 1, 10),
                "recipient domain does not accept mail (null MX)",
            ),
            Self::NoSuchDomain(_) => (
                550,
                EnhancedCode::new(5, 1, 2),
                "recipient domain does not exist",
            ),
            Self::NoAddress(_) => (
                550,
                EnhancedCode::new(5, 1, 2),
                "no mail exchanger with an address",
            ),
            Self::Temporary { .. } => (
                451,
                EnhancedCode::new(4, 4, 3),
                "temporary DNS failure looking up the recipient domain",
            ),
        };
        Reply::new(code, Some(enh), text)
    }

    /// True for the final failures (bounce), false for temporary ones.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Temporary { .. })
    }

    fn temporary(domain: &str, detail: impl fmt::Display) -> Self {
        Self::Temporary {
            domain: domain.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// Why the DNS service could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `/etc/resolv.conf` could not be read or parsed.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    /// The resolver could not be built from the configuration.
    #[error("cannot build the resolver: {0}")]
    Resolver(String),
    /// The thread or its runtime could not be started.
    #[error("cannot start the DNS thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Where a lookup result goes; runs on the DNS thread.
pub type MxCallback =
    Box<dyn FnOnce(Result<Vec<Exchanger>, RouteError>) + Send + 'static>;

/// Where a host lookup result goes; runs on the DNS thread.
pub type HostCallback =
    Box<dyn FnOnce(Result<Vec<SocketAddr>, RouteError>) + Send + 'static>;

enum Request {
    Mx { domain: String, port: u16, reply_to: MxCallback },
    Host { host: String, port: u16, reply_to: HostCallback },
}

/// Handle to the DNS thread. Cheap to clone; the thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Dns {
    tx: mpsc::Sender<Request>,
    mx_port: u16,
    deadline: Duration,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("mx_port", &self.mx_port)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// Starts the DNS thread. `resolvers` are `ip:port` name servers
    /// (queried over UDP, and TCP for truncated answers); when empty,
    /// `/etc/resolv.conf` is used. `timeout` bounds each query attempt
    /// (two attempts). Sends nothing over the network; configuration
    /// errors are returned.
    pub fn start(
        resolvers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let guard = runtime.enter();
        let mut builder = if resolvers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DnsError::SystemConfig(e.to_string()))?
        } else {
            let servers = resolvers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let timeout = timeout.max(Duration::from_millis(10));
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = ATTEMPTS;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.ndots = 0;
        let resolver =
            builder.build().map_err(|e| DnsError::Resolver(e.to_string()))?;
        drop(guard);
        // Each lookup is a few sequential queries, each bounded by the
        // resolver's attempts; this caps the whole lookup regardless.
        let deadline = timeout * (ATTEMPTS as u32) * 3;
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        thread::Builder::new().name("millrace-dns".into()).spawn(
            move || {
                runtime.block_on(serve(resolver, rx, deadline));
            },
        )?;
        Ok(Self { tx, mx_port: 25, deadline })
    }

    /// Uses `port` instead of 25 for exchangers (tests point it at a
    /// loopback sink).
    pub fn with_port(mut self, port: u16) -> Self {
        self.mx_port = port;
        self
    }

    /// The SMTP port given to exchangers.
    pub fn mx_port(&self) -> u16 {
        self.mx_port
    }

    /// Resolves the exchangers of `domain`, in the order to try them.
    /// Never blocks; `reply_to` runs on the DNS thread (at once, on the
    /// caller's thread, if the queue is full or the thread is gone).
    pub fn resolve_mx(&self, domain: &str, reply_to: MxCallback) {
        let domain = normalize(domain);
        let req = Request::Mx { domain, port: self.mx_port, reply_to };
        if let Err(e) = self.tx.try_send(req) {
            let (busy, req) = match e {
                mpsc::error::TrySendError::Full(r) => ("resolver busy", r),
                mpsc::error::TrySendError::Closed(r) => ("resolver gone", r),
            };
            if let Request::Mx { domain, reply_to, .. } = req {
                reply_to(Err(RouteError::temporary(&domain, busy)));
            }
        }
    }

    /// Resolves a host name (a route or smarthost) to addresses with
    /// `port`; an IP address is returned as is.
    pub fn resolve_host(&self, host: &str, port: u16, reply_to: HostCallback) {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            reply_to(Ok(vec![SocketAddr::new(ip, port)]));
            return;
        }
        let host = normalize(host);
        let req = Request::Host { host, port, reply_to };
        if let Err(e) = self.tx.try_send(req) {
            let req = match e {
                mpsc::error::TrySendError::Full(r)
                | mpsc::error::TrySendError::Closed(r) => r,
            };
            if let Request::Host { host, reply_to, .. } = req {
                reply_to(Err(RouteError::temporary(&host, "resolver busy")));
            }
        }
    }

    /// [`Dns::resolve_mx`], waiting for the answer (tests, tools).
    pub fn resolve_mx_blocking(
        &self,
        domain: &str,
    ) -> Result<Vec<Exchanger>, RouteError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.resolve_mx(
            domain,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let wait = self.deadline + Duration::from_secs(5);
        rx.recv_timeout(wait).unwrap_or_else(|_| {
            Err(RouteError::temporary(domain, "no answer from DNS thread"))
        })
    }

    /// [`Dns::resolve_host`], waiting for the answer.
    pub fn resolve_host_blocking(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, RouteError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.resolve_host(
            host,
            port,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let wait = self.deadline + Duration::from_secs(5);
        rx.recv_timeout(wait).unwrap_or_else(|_| {
            Err(RouteError::temporary(host, "no answer from DNS thread"))
        })
    }
}

/// Lower-case, without a trailing dot.
fn normalize(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase()
}

/// The DNS thread's loop: one task per request, at most
/// [`MAX_IN_FLIGHT`] at once.
async fn serve(
    resolver: TokioResolver,
    mut rx: mpsc::Receiver<Request>,
    deadline: Duration,
) {
    let resolver = Arc::new(resolver);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(req) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            match req {
                Request::Mx { domain, port, reply_to } => {
                    let r = tokio::time::timeout(
                        deadline,
                        lookup_mx(&resolver, &domain, port),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(RouteError::temporary(&domain, "DNS timeout"))
                    });
                    reply_to(r);
                }
                Request::Host { host, port, reply_to } => {
                    let r = tokio::time::timeout(
                        deadline,
                        lookup_host(&resolver, &host, port),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(RouteError::temporary(&host, "DNS timeout"))
                    });
                    reply_to(r.and_then(|addrs| {
                        if addrs.is_empty() {
                            Err(RouteError::NoAddress(host))
                        } else {
                            Ok(addrs)
                        }
                    }));
                }
            }
            drop(permit);
        });
    }
}

/// What an address lookup found.
enum Addrs {
    Found(Vec<IpAddr>),
    /// NXDOMAIN or NODATA: the exchanger has no address.
    None,
    /// A temporary failure.
    Failed(String),
}

async fn lookup_ips(resolver: &TokioResolver, host: &str) -> Addrs {
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(ips) => Addrs::Found(ips.iter().collect()),
        Err(e) if e.is_no_records_found() => Addrs::None,
        Err(e) => Addrs::Failed(e.to_string()),
    }
}

async fn lookup_host(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, RouteError> {
    match lookup_ips(resolver, host).await {
        Addrs::Found(ips) => {
            Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
        }
        Addrs::None => Err(RouteError::NoAddress(host.to_string())),
        Addrs::Failed(e) => Err(RouteError::temporary(host, e)),
    }
}

/// The MX answer, classified.
enum MxAnswer {
    Records(Vec<(u16, String)>),
    Null,
    Implicit,
}

fn classify_mx(
    domain: &str,
    r: Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Result<MxAnswer, RouteError> {
    let lookup = match r {
        Ok(l) => l,
        Err(e) if e.is_nx_domain() => {
            return Err(RouteError::NoSuchDomain(domain.to_string()));
        }
        Err(e) if e.is_no_records_found() => return Ok(MxAnswer::Implicit),
        Err(NetError::Proto(e)) => {
            // The name itself is malformed (label too long, ...).
            let _ = e;
            return Err(RouteError::NoSuchDomain(domain.to_string()));
        }
        Err(e) => return Err(RouteError::temporary(domain, e)),
    };
    let mut records = Vec::new();
    let mut null = false;
    for record in lookup.answers() {
        if let RData::MX(mx) = &record.data {
            if mx.exchange.is_root() {
                null = true;
            } else {
                let host = mx.exchange.to_ascii();
                records.push((mx.preference, normalize(&host)));
            }
        }
    }
    if null && records.is_empty() {
        return Ok(MxAnswer::Null);
    }
    if records.is_empty() {
        // Only CNAMEs or other types in the answer: treat as NODATA.
        return Ok(MxAnswer::Implicit);
    }
    records.sort();
    records.dedup();
    Ok(MxAnswer::Records(records))
}

/// Orders exchangers by preference; equal preferences are shuffled with
/// `rng` (RFC 5321 section 5.1).
pub fn order_exchangers<R: Rng + ?Sized>(
    list: &mut [(u16, String)],
    rng: &mut R,
) {
    list.shuffle(rng);
    list.sort_by_key(|(pref, _)| *pref);
}

async fn lookup_mx(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
) -> Result<Vec<Exchanger>, RouteError> {
    if domain.is_empty() || domain.len() > 253 {
        return Err(RouteError::NoSuchDomain(domain.to_string()));
    }
    let answer =
        classify_mx(domain, resolver.mx_lookup(format!("{domain}.")).await)?;
    let mut list = match answer {
        MxAnswer::Null => return Err(RouteError::NullMx(domain.to_string())),
        MxAnswer::Implicit => vec![(0, domain.to_string())],
        MxAnswer::Records(r) => r,
    };
    order_exchangers(&mut list, &mut rand::rng());
    list.truncate(MAX_EXCHANGERS);
    // Look the exchangers' addresses up concurrently.
    let tasks: Vec<_> = list
        .iter()
        .map(|(_, host)| {
            let resolver = resolver.clone();
            let host = host.clone();
            tokio::spawn(async move { lookup_ips(&resolver, &host).await })
        })
        .collect();
    let mut out = Vec::with_capacity(list.len());
    let mut failure = None;
    for ((preference, host), task) in list.into_iter().zip(tasks) {
        match task.await {
            Ok(Addrs::Found(ips)) if !ips.is_empty() => {
                let addrs = ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                out.push(Exchanger { host, preference, addrs });
            }
            Ok(Addrs::Found(_) | Addrs::None) => {}
            Ok(Addrs::Failed(e)) => failure = Some(e),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if out.is_empty() {
        return Err(match failure {
            Some(e) => RouteError::temporary(domain, e),
            None => RouteError::NoAddress(domain.to_string()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ordering_is_by_preference_with_shuffled_ties() {
        let base = vec![
            (20, "c".to_string()),
            (10, "a".to_string()),
            (10, "b".to_string()),
            (30, "d".to_string()),
        ];
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut l = base.clone();
            order_exchangers(&mut l, &mut rng);
            let prefs: Vec<u16> = l.iter().map(|e| e.0).collect();
            assert_eq!(prefs, [10, 10, 20, 30]);
            assert_eq!(l[2].1, "c");
            assert_eq!(l[3].1, "d");
            firsts.insert(l[0].1.clone());
        }
        // Both exchangers of preference 10 come first for some seed.
        assert_eq!(
            firsts.into_iter().collect::<Vec<_>>(),
            ["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn replies_and_permanence() {
        let d = "x.example".to_string();
        let null = RouteError::NullMx(d.clone());
        assert_eq!(null.reply().code, 556);
        assert_eq!(null.reply().enhanced, Some(EnhancedCode::new(5, 1, 10)));
        assert!(null.is_permanent());
        let nx = RouteError::NoSuchDomain(d.clone());
        assert_eq!(nx.reply().enhanced, Some(EnhancedCode::new(5, 1, 2)));
        assert!(nx.is_permanent());
        let none = RouteError::NoAddress(d.clone());
        assert_eq!(none.reply().code, 550);
        assert!(none.is_permanent());
        let t = RouteError::temporary(&d, "SERVFAIL");
        assert_eq!(t.reply().code, 451);
        assert_eq!(t.reply().enhanced, Some(EnhancedCode::new(4, 4, 3)));
        assert!(!t.is_permanent());
        // No internals in the reply.
        assert!(!t.reply().lines.concat().contains("SERVFAIL"));
    }
}
