//! Start-up and wiring: spool, recovery, queue, delivery, the inbound
//! reactor, the event log, and the graceful stop on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use millrace_reactor::{Reactor, ReactorConfig};
use millrace_server::{
    Hooks, Inbound, InboundConfig, InboundShared, IpNet, SessionConfig,
};
use millrace_spool::{Envelope, MessageId, Spool, SpoolOptions};

use crate::config::Config;
use crate::events::{EventLog, fields};

/// How long a graceful stop waits for transactions in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the inbound side reports: the Reception event, then the queue.
struct RelayHooks {
    log: Arc<EventLog>,
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
    let hooks = Arc::new(RelayHooks { log: Arc::clone(&log) });
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
