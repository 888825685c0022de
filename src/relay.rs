//! Start-up and wiring: spool, recovery, queue, delivery, the inbound
//! reactor, the event log, and the graceful stop on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use millrace_delivery::driver::{
    DeliveryMsg, DriverConfig, DriverShared, Outbound,
};
use millrace_delivery::{Dns, NextHop};
use millrace_queue::{
    Destination, Dispatcher, Events, Failure, Job, Queue, QueueConfig,
    QueueEvent,
};
use millrace_reactor::{Reactor, ReactorConfig, Remote};
use millrace_server::{
    Hooks, Inbound, InboundConfig, InboundShared, IpNet, SessionConfig,
};
use millrace_spool::{Envelope, MessageId, Spool, SpoolOptions};

use crate::bounce::Bouncer;
use crate::config::Config;
use crate::events::{EventLog, fields};

/// How long a graceful stop waits for transactions in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long one DNS query attempt may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long we wait for a reply from a next hop.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// What the inbound side reports: the Reception event, then the queue.
struct RelayHooks {
    log: Arc<EventLog>,
    queue: Queue,
}

/// Maps a recipient domain to its next hop key for the queue.
struct QueueRouter(millrace_delivery::Router);

impl millrace_queue::Router for QueueRouter {
    fn destination(&self, domain: &str) -> Destination {
        match self.0.next_hop(domain) {
            NextHop::Route(h) => Destination::new(&format!("route:{h}")),
            NextHop::Smarthost(h) => {
                Destination::new(&format!("smarthost:{h}"))
            }
            NextHop::Mx(d) => Destination::new(&format!("mx:{d}")),
        }
    }
}

/// Hands new connections to the delivery threads, each destination
/// always to the same thread, so that a thread's idle connection to a
/// destination is reused for its next job.
struct ByDestination {
    remotes: OnceLock<Vec<Remote<DeliveryMsg>>>,
}

impl ByDestination {
    fn send(&self, dest: &Destination, msg: DeliveryMsg) {
        use std::hash::{Hash, Hasher};
        let Some(r) = self.remotes.get() else { return };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dest.as_str().hash(&mut h);
        let i = (h.finish() % r.len() as u64) as usize;
        let _ = r[i].send(msg);
    }
}

impl Dispatcher for ByDestination {
    fn dispatch(&self, job: Job) {
        let dest = job.dest.clone();
        self.send(&dest, DeliveryMsg::Job(job));
    }

    fn nudge(&self, dest: &Destination) {
        self.send(dest, DeliveryMsg::Nudge(dest.clone()));
    }
}

/// Queue decisions as JSON event lines, and bounces for final failures.
struct QueueLog {
    log: Arc<EventLog>,
    bouncer: Arc<Bouncer>,
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut s = String::new();
    millrace_proto::date::write_rfc3339(secs as i64, &mut s);
    s
}

impl Events for QueueLog {
    fn failed(&self, id: MessageId, failures: &[Failure]) {
        self.bouncer.failed(id, failures);
    }

    fn event(&self, e: QueueEvent) {
        let log = &self.log;
        match e {
            QueueEvent::Delivery { id, rcpt, remote, reply } => log.emit(
                "Delivery",
                Some(&id.to_string()),
                fields! {"recipient" => rcpt, "remote" => remote, "reply" => reply},
            ),
            QueueEvent::TransientFailure {
                id,
                rcpt,
                remote,
                reply,
                next_attempt,
            } => log.emit(
                "TransientFailure",
                Some(&id.to_string()),
                fields! {
                    "recipient" => rcpt,
                    "remote" => remote,
                    "reply" => reply,
                    "next_attempt" => rfc3339(next_attempt),
                },
            ),
            QueueEvent::Bounce { id, rcpt, remote, reply } => log.emit(
                "Bounce",
                Some(&id.to_string()),
                fields! {"recipient" => rcpt, "remote" => remote, "reply" => reply},
            ),
            QueueEvent::Expiration { id, rcpt, reply } => log.emit(
                "Expiration",
                Some(&id.to_string()),
                fields! {"recipient" => rcpt, "reply" => reply},
            ),
            QueueEvent::DelayWarning { id, rcpts, reply } => {
                log.emit(
                    "DelayWarning",
                    Some(&id.to_string()),
                    fields! {"recipients" => rcpts.clone(), "reply" => reply.as_str()},
                );
                self.bouncer.delayed(id, &rcpts, &reply);
            }
            QueueEvent::StoreFailure { id, op, error } => log.emit(
                "StoreFailure",
                Some(&id.to_string()),
                fields! {"op" => op, "error" => error},
            ),
        }
    }
}

impl Hooks for RelayHooks {
    fn committed(&self, id: MessageId, env: &Envelope, size: u64) {
        let rcpts: Vec<&str> =
            env.recipients.iter().map(|r| r.address.as_str()).collect();
        self.log.emit(
            "Reception",
            Some(&id.to_string()),
            fields! {
                "sender" => env.sender.as_str(),
                "recipients" => rcpts,
                "size" => size,
                "client" => env.client_ip.as_str(),
                "helo" => env.helo.as_str(),
            },
        );
        self.queue.enqueue(id, env);
    }
}

/// Runs the relay until SIGTERM or SIGINT.
pub(crate) fn serve(cfg: Config) -> Result<()> {
    raise_nofile();
    let log = Arc::new(
        EventLog::open(&cfg.log)
            .with_context(|| format!("cannot open log {:?}", cfg.log))?,
    );
    let hostname = cfg.effective_hostname();
    let spool = Spool::open(
        &cfg.spool_dir,
        SpoolOptions {
            max_message_size: cfg.max_message_size,
            initial_size: 64 * 1024,
        },
    )
    .with_context(|| {
        format!("cannot open spool {}", cfg.spool_dir.display())
    })?;
    let recovery = spool.recover().context("spool recovery scan")?;
    for (path, why) in &recovery.corrupt {
        log.emit(
            "SpoolCorrupt",
            None,
            fields! {"path" => path.display().to_string(), "reason" => why.as_str()},
        );
    }
    log.emit(
        "Recovery",
        None,
        fields! {
            "committed" => recovery.committed.len(),
            "removed_incomplete" => recovery.removed_incomplete,
            "corrupt" => recovery.corrupt.len(),
        },
    );

    // Outbound: DNS, the delivery threads, then the queue that feeds them.
    let mut dns = Dns::start(&cfg.dns.resolvers, DNS_TIMEOUT)
        .context("cannot start the DNS resolver")?;
    // Test hook: exchangers found by MX lookup on another port than 25,
    // so routing tests can run sinks on loopback without privileges.
    if let Some(port) =
        std::env::var("MILLRACE_MX_PORT").ok().and_then(|p| p.parse().ok())
    {
        dns = dns.with_port(port);
    }
    let d = &cfg.delivery;
    let helo_name = if d.helo_name.is_empty() {
        hostname.clone()
    } else {
        d.helo_name.clone()
    };
    let driver = DriverShared::new(
        DriverConfig {
            helo_name,
            connect_timeout: d.connect_timeout.0,
            reply_timeout: REPLY_TIMEOUT,
            max_messages_per_connection: d.max_messages_per_connection,
        },
        spool.clone(),
        dns,
    );
    let factory_driver = Arc::clone(&driver);
    let outbound = Reactor::start(
        ReactorConfig {
            threads: cfg.threads,
            listen: Vec::new(),
            backlog: 0,
            name: "smtp".into(),
        },
        move |_| Outbound::new(Arc::clone(&factory_driver)),
    )
    .context("cannot start the delivery threads")?;
    driver.set_remotes(outbound.remotes());
    let dispatcher = Arc::new(ByDestination { remotes: OnceLock::new() });
    let _ = dispatcher.remotes.set(outbound.remotes());
    let router = millrace_delivery::Router::new(
        cfg.routes.clone(),
        Some(d.smarthost.clone()),
    );
    let bouncer = Arc::new(Bouncer::new(
        spool.clone(),
        hostname.clone(),
        Arc::clone(&log),
        d.max_queue_lifetime.0.as_secs(),
    ));
    let queue = Queue::start(
        QueueConfig {
            retry_intervals: d.retry_intervals.iter().map(|i| i.0).collect(),
            max_queue_lifetime: d.max_queue_lifetime.0,
            delay_warning: Some(d.delay_warning.0).filter(|w| !w.is_zero()),
            max_connections_per_destination: d.max_connections_per_destination,
            max_messages_per_connection: d.max_messages_per_connection,
            max_recipients_per_transaction: d.max_recipients_per_transaction,
        },
        Arc::new(spool.clone()),
        Arc::new(QueueRouter(router)),
        dispatcher,
        Arc::new(QueueLog {
            log: Arc::clone(&log),
            bouncer: Arc::clone(&bouncer),
        }),
    )
    .context("cannot start the queue")?;
    driver.set_queue(queue.clone());
    bouncer.set_queue(queue.clone());
    let relay_bouncer = Arc::clone(&bouncer);
    driver.set_relayed_hook(Box::new(move |id, relayed| {
        relay_bouncer.relayed(id, relayed);
    }));
    queue.load(recovery.committed.clone());

    let mynetworks = cfg
        .mynetworks
        .iter()
        .map(|n| parse_net(n))
        .collect::<Result<Vec<_>>>()?;
    let session = SessionConfig {
        hostname: hostname.clone(),
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        mynetworks,
        relay_domains: cfg
            .relay_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        max_errors: 10,
        chunking: true,
        max_pending_output: 64 * 1024,
    };
    let hooks =
        Arc::new(RelayHooks { log: Arc::clone(&log), queue: queue.clone() });
    let shared = InboundShared::new(
        InboundConfig {
            session: Arc::new(session),
            command_timeout: cfg.timeouts.command.0,
            data_timeout: cfg.timeouts.data.0,
            max_connections: cfg.max_connections,
        },
        spool.clone(),
        hooks,
    );
    let factory_shared = Arc::clone(&shared);
    let inbound = Reactor::start(
        ReactorConfig {
            threads: cfg.threads,
            listen: cfg.listen.clone(),
            backlog: 1024,
            name: "smtpd".into(),
        },
        move |_| Inbound::new(Arc::clone(&factory_shared)),
    )
    .context("cannot start the SMTP listeners")?;
    shared.set_remotes(inbound.remotes());
    let addrs: Vec<String> =
        inbound.local_addrs().iter().map(SocketAddr::to_string).collect();
    log.emit(
        "Listening",
        None,
        fields! {
            "addresses" => addrs,
            "hostname" => hostname.as_str(),
            "threads" => inbound.threads(),
        },
    );

    wait_for_stop_signal()?;
    log.emit("Stopping", None, fields! {});
    inbound.shutdown(STOP_GRACE);
    inbound.join();
    // Deliveries in flight are dropped unacknowledged by us: the spool
    // keeps them and a restart sends them again (at-least-once).
    outbound.shutdown(Duration::ZERO);
    outbound.join();
    queue.shutdown();
    log.emit("Stopped", None, fields! {});
    Ok(())
}

fn parse_net(n: &str) -> Result<IpNet> {
    let c = crate::config::Cidr::parse(n).map_err(anyhow::Error::msg)?;
    IpNet::new(c.addr, c.prefix).with_context(|| format!("mynetworks {n:?}"))
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_stop_signal() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let _ = signals.forever().next();
    Ok(())
}

/// Raises the open-file soft limit to the hard limit (a relay holds many
/// connections).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit are given a valid pointer to a local
    // struct that lives for the whole call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0
            && lim.rlim_cur < lim.rlim_max
        {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
