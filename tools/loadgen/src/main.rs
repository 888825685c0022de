//! `millrace-load`: SMTP load generator (`send`), mail sink (`sink`) and,
//! later, a one-command local benchmark (`bench`).
//!
//! Exit codes: 0 when the run completed, 1 when every session failed to
//! connect (or the sink could not start), 2 on bad arguments.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use millrace_load::{
    LoadError, Script, SendOptions, SendProgress, SinkOptions, SinkProgress,
    run_send, run_sink,
};

/// Millrace's load generator: send mail, sink mail, measure.
#[derive(Debug, Parser)]
#[command(name = "millrace-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send mail to an SMTP server (like Postfix's smtp-source).
    Send(SendArgs),
    /// Accept and discard mail, counting it (like Postfix's smtp-sink).
    Sink(SinkArgs),
    /// One-command local benchmark: a sink, `millrace serve` and `send`
    /// on loopback, one report.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Concurrent sending sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: u32,
    /// Relay reactor threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The millrace binary (default: next to millrace-load, then PATH).
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Keep the temporary spool, config and log.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Server to send to, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Total messages (default 1000 unless --duration is given).
    #[arg(long)]
    messages: Option<u64>,
    /// Run time, e.g. 30s or 5m; no message starts after it.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Messages per second, open-loop (latency counts from the schedule).
    #[arg(long)]
    rate: Option<f64>,
    /// Body size in bytes (after the headers, before dot-stuffing).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: u32,
    /// Sender pattern; {n} is the message counter.
    #[arg(long, default_value = "sender{n}@example.com")]
    from: String,
    /// Recipient pattern; {n} is the recipient counter, {d} the domain.
    #[arg(long, default_value = "user{n}@example.net")]
    to: String,
    /// Spread recipients over this many domains ({d} in --to, or a
    /// d<index>. label in front of the domain).
    #[arg(long, default_value_t = 1)]
    domains: u32,
    /// QUIT and reconnect after this many messages on a connection.
    #[arg(long)]
    messages_per_session: Option<u64>,
    /// Use PIPELINING when the server offers it (the default).
    #[arg(long, overrides_with = "no_pipelining")]
    pipelining: bool,
    /// Never pipeline: one command, one reply.
    #[arg(long, overrides_with = "pipelining")]
    no_pipelining: bool,
    /// EHLO/HELO name.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// Send this message file (dot-stuffed on the wire) instead of
    /// generated text.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Timeout per reply and per connect.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address to listen on, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:2626")]
    listen: String,
    /// Name in the greeting and the EHLO reply.
    #[arg(long, default_value = "millrace-sink.localhost")]
    hostname: String,
    /// Scripted answer per recipient glob: 'PATTERN=REPLY[;delay=DUR]',
    /// e.g. 'fail*@=550 5.1.1 No such user' (repeatable, first match
    /// wins; a pattern ending in @ matches any domain).
    #[arg(long = "script", value_name = "PATTERN=REPLY")]
    scripts: Vec<Script>,
    /// Percentage of recipients refused with 451 4.7.1.
    #[arg(long, default_value_t = 0.0)]
    tempfail_percent: f64,
    /// Percentage of recipients refused with 550 5.1.1.
    #[arg(long, default_value_t = 0.0)]
    permfail_percent: f64,
    /// Seed for the random refusals.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep each message (envelope and body) as a file in DIR.
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Exit when this many messages have arrived.
    #[arg(long)]
    expect: Option<u64>,
    /// Rewrite this JSON file with the counters every second.
    #[arg(long)]
    count_file: Option<PathBuf>,
    /// Largest body accepted, in bytes (advertised in SIZE).
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    max_size: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("millrace-load: {e:#}");
            let bad_args = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<LoadError>(),
                    Some(LoadError::InvalidOption { .. })
                ) || c.downcast_ref::<BadArgs>().is_some()
            });
            ExitCode::from(if bad_args { 2 } else { 1 })
        }
    }
}

/// A command-line problem found after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadArgs(String);

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Send(a) => send(a),
        Cmd::Sink(a) => sink(a),
        Cmd::Bench(a) => {
            let report = millrace_load::bench::run_bench(
                &millrace_load::bench::BenchOptions {
                    messages: a.messages,
                    sessions: a.sessions,
                    size: a.size,
                    recipients: a.recipients,
                    threads: a.threads,
                    relay: a.relay,
                    keep: a.keep,
                },
            )?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve(option: &str, s: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| BadArgs(format!("--{option} {s:?}: {e}")))?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => bail!(BadArgs(format!("--{option} {s:?}: no address"))),
    }
}

/// Ctrl-C and SIGTERM set the returned flag.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    Ok(stop)
}

fn raise_limits() {
    if let Err(e) = millrace_load::sys::raise_nofile_limit() {
        eprintln!("millrace-load: cannot raise the open-file limit: {e}");
    }
}

/// A progress bar on a terminal, plain lines on stderr otherwise.
fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::new(n),
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        ),
        None => {
            (ProgressBar::new_spinner(), "{elapsed_precise} {spinner} {msg}")
        }
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Some(bar)
}

fn send(a: SendArgs) -> anyhow::Result<ExitCode> {
    let server = resolve("server", &a.server)?;
    raise_limits();
    let messages = match (a.messages, a.duration) {
        (None, None) => Some(1000),
        (m, _) => m,
    };
    let bar = progress_bar(messages);
    let bar2 = bar.clone();
    let mut last = (Duration::ZERO, 0u64);
    let progress = move |p: &SendProgress| {
        let dt = (p.elapsed - last.0).as_secs_f64();
        let rate =
            if dt > 0.0 { (p.accepted - last.1) as f64 / dt } else { 0.0 };
        last = (p.elapsed, p.accepted);
        let line = format!(
            "{:.0} msg/s, accepted {}, refused/failed {}, errors {}, open {}",
            rate, p.accepted, p.failed, p.errors, p.open
        );
        match &bar2 {
            Some(b) => {
                b.set_position(p.accepted + p.failed);
                b.set_message(line);
            }
            None => {
                eprintln!("send {:>6.1}s: {line}", p.elapsed.as_secs_f64())
            }
        }
    };
    let opts = SendOptions {
        server,
        sessions: a.sessions,
        messages,
        duration: a.duration,
        rate: a.rate,
        size: a.size,
        recipients: a.recipients,
        from: a.from,
        to: a.to,
        domains: a.domains,
        messages_per_session: a.messages_per_session,
        pipelining: !a.no_pipelining,
        helo: a.helo,
        body_file: a.body_file,
        timeout: a.timeout,
        progress: Some(Box::new(progress)),
    };
    let report = run_send(opts, stop_flag()?)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    if report.all_connects_failed() {
        eprintln!(
            "millrace-load: could not connect to {server} ({} refused, {} \
             timed out, {} failed otherwise)",
            report.errors.connect_refused,
            report.errors.connect_timeout,
            report.errors.connect_failed
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn sink(a: SinkArgs) -> anyhow::Result<ExitCode> {
    let listen = resolve("listen", &a.listen)?;
    raise_limits();
    let bar = progress_bar(a.expect);
    let bar2 = bar.clone();
    let mut last = (Duration::ZERO, 0u64);
    let progress = move |p: &SinkProgress| {
        let dt = (p.elapsed - last.0).as_secs_f64();
        let rate =
            if dt > 0.0 { (p.messages - last.1) as f64 / dt } else { 0.0 };
        last = (p.elapsed, p.messages);
        let line = format!(
            "{:.0} msg/s, messages {}, recipients {}, connections {}, open {}",
            rate, p.messages, p.recipients, p.connections, p.open
        );
        match &bar2 {
            Some(b) => {
                b.set_position(p.messages);
                b.set_message(line);
            }
            None => {
                eprintln!("sink {:>6.1}s: {line}", p.elapsed.as_secs_f64())
            }
        }
    };
    let opts = SinkOptions {
        listen,
        hostname: a.hostname,
        scripts: a.scripts,
        tempfail_percent: a.tempfail_percent,
        permfail_percent: a.permfail_percent,
        seed: a.seed,
        dump: a.dump,
        expect: a.expect,
        count_file: a.count_file,
        max_size: a.max_size,
        stop: stop_flag()?,
        progress: Some(Box::new(progress)),
    };
    let report = run_sink(opts, |addr| {
        eprintln!("millrace-load sink: listening on {addr}");
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
