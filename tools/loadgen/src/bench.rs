//! `millrace-load bench`: the whole pipeline on loopback in one command.
//!
//! Starts a sink in-process, starts `millrace serve` as a child process
//! (a temporary spool, the sink as smarthost), injects with `send`, waits
//! until the sink has every message, and reports injection and end-to-end
//! rates, latencies (connect-to-220 and dot-to-250 from the sender;
//! 250-to-sink from the relay's own event log: `Reception` is logged just
//! before the 250, `Delivery` when the sink's 250 came back), the relay's
//! CPU time per message and its peak memory.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::report::{Latency, LatencyHist, SendReport, SinkReport};
use crate::{SendOptions, SinkOptions, run_send, run_sink};

/// Options of `bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Messages to send.
    pub messages: u64,
    /// Concurrent sending sessions.
    pub sessions: usize,
    /// Body size in bytes.
    pub size: usize,
    /// Recipients per message.
    pub recipients: u32,
    /// Relay reactor threads.
    pub threads: usize,
    /// The `millrace` binary (default: next to this one, then PATH).
    pub relay: Option<PathBuf>,
    /// Keep the temporary directory (spool, config, log).
    pub keep: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 20_000,
            sessions: 20,
            size: 1024,
            recipients: 1,
            threads: 2,
            relay: None,
            keep: false,
        }
    }
}

/// What `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The sender's view (injection).
    pub send: SendReport,
    /// The sink's view.
    pub sink: SinkReport,
    /// Messages acknowledged per second.
    pub injection_msgs_per_sec: f64,
    /// Messages from the first injection to the last sink arrival, per
    /// second.
    pub end_to_end_msgs_per_sec: f64,
    /// The relay's 250 to the sink's acceptance.
    pub relay_to_sink: Latency,
    /// Relay CPU (user + system) in seconds.
    pub relay_cpu_secs: f64,
    /// Relay CPU per message in milliseconds.
    pub relay_cpu_ms_per_msg: f64,
    /// Relay peak resident memory in KiB.
    pub relay_peak_rss_kib: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "== millrace-load bench ==")?;
        writeln!(
            f,
            "injection:   {:.0} msg/s ({} accepted, {:.2} MB/s)",
            self.injection_msgs_per_sec,
            self.send.messages_accepted,
            self.send.mb_per_sec
        )?;
        writeln!(
            f,
            "end to end:  {:.0} msg/s ({} at the sink)",
            self.end_to_end_msgs_per_sec, self.sink.messages
        )?;
        writeln!(f, "connect-to-220 {}", self.send.connect_to_220)?;
        writeln!(f, "dot-to-250     {}", self.send.dot_to_250)?;
        writeln!(f, "250-to-sink    {}", self.relay_to_sink)?;
        writeln!(
            f,
            "relay CPU:   {:.2} s, {:.3} ms per message",
            self.relay_cpu_secs, self.relay_cpu_ms_per_msg
        )?;
        write!(f, "relay peak memory: {} KiB", self.relay_peak_rss_kib)
    }
}

/// Finds the `millrace` binary.
fn find_relay(opt: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = opt {
        return Ok(p.to_owned());
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        for cand in [dir.join("millrace"), dir.join("../millrace")] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("millrace");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    bail!(
        "cannot find the millrace binary next to millrace-load or on PATH; \
         build it with `cargo build --release` (or pass --relay PATH)"
    )
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| {
                v.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// Milliseconds since the epoch from an RFC 3339 `...T12:34:56.789Z`.
fn millis(t: &str) -> Option<i64> {
    let (_, clock) = t.split_once('T')?;
    let clock = clock.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(((h * 60 + m) * 60) * 1000 + (s * 1000.0).round() as i64)
}

/// 250-to-sink latencies from the relay's log (same day assumed; a run
/// that crosses midnight only skews a few samples).
fn relay_to_sink(log: &Path) -> Result<Latency> {
    use std::collections::HashMap;
    let f = std::fs::File::open(log).context("open the relay log")?;
    let mut received: HashMap<String, i64> = HashMap::new();
    let mut hist = LatencyHist::new();
    for line in std::io::BufReader::new(f).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        let (Some(kind), Some(id), Some(t)) =
            (v["event"].as_str(), v["id"].as_str(), v["time"].as_str())
        else {
            continue;
        };
        let Some(ms) = millis(t) else { continue };
        match kind {
            "Reception" => {
                received.insert(id.to_owned(), ms);
            }
            "Delivery" => {
                if let Some(r) = received.get(id) {
                    let us = (ms - r).max(0) as u64 * 1000;
                    hist.record(Duration::from_micros(us));
                }
            }
            _ => {}
        }
    }
    Ok(hist.summary())
}

/// Stops the relay: SIGTERM, then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) with the pid of a child we spawned and still own
    // (not yet waited for), so the pid cannot have been reused.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the benchmark.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport> {
    let relay_bin = find_relay(opts.relay.as_deref())?;
    let dir = std::env::temp_dir()
        .join(format!("millrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("create the bench directory")?;
    let result = run_in(opts, &relay_bin, &dir);
    if opts.keep {
        eprintln!("bench: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(
    opts: &BenchOptions,
    relay_bin: &Path,
    dir: &Path,
) -> Result<BenchReport> {
    let expected = opts.messages * u64::from(opts.recipients.max(1));
    // The sink, in-process.
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let sink_opts = SinkOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        expect: Some(opts.messages),
        ..SinkOptions::default()
    };
    let sink = std::thread::spawn(move || {
        run_sink(sink_opts, move |a| {
            let _ = tx.send(a);
        })
    });
    let sink_addr = rx
        .recv_timeout(Duration::from_secs(10))
        .context("the sink did not start")?;
    // The relay, a child process.
    let log = dir.join("events.log");
    let config = format!(
        "hostname = \"bench.millrace.test\"\nlisten = [\"127.0.0.1:0\"]\n\
         threads = {}\nspool_dir = {:?}\nlog = {:?}\n\
         [delivery]\nsmarthost = \"{sink_addr}\"\n",
        opts.threads,
        dir.join("spool").display().to_string(),
        log.display().to_string(),
    );
    let cfg_path = dir.join("millrace.toml");
    std::fs::write(&cfg_path, config).context("write the relay config")?;
    let mut child = Command::new(relay_bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", relay_bin.display()))?;
    let report = measure(opts, &mut child, &log, expected, sink);
    stop(&mut child);
    report
}

fn measure(
    opts: &BenchOptions,
    child: &mut Child,
    log: &Path,
    expected: u64,
    sink: std::thread::JoinHandle<Result<SinkReport, crate::LoadError>>,
) -> Result<BenchReport> {
    let end = Instant::now() + Duration::from_secs(20);
    let relay_addr = loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the relay exited at start-up: {status}");
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "Listening")
                .then(|| {
                    v["addresses"][0].as_str()?.parse::<SocketAddr>().ok()
                })
                .flatten()
        });
        if let Some(a) = found {
            break a;
        }
        if Instant::now() > end {
            bail!("the relay did not start listening within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = child.id();
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    let send = run_send(
        SendOptions {
            server: relay_addr,
            sessions: opts.sessions,
            messages: Some(opts.messages),
            size: opts.size,
            recipients: opts.recipients,
            to: "user{n}@example.net".into(),
            ..SendOptions::default()
        },
        Arc::new(AtomicBool::new(false)),
    )
    .context("send")?;
    let sink = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the sink thread panicked"))?
        .context("sink")?;
    let cpu1 = cpu_ticks(pid).unwrap_or(cpu0);
    // SAFETY: sysconf has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (cpu1.saturating_sub(cpu0)) as f64 / hz;
    if sink.recipients < expected {
        bail!("the sink got {} of {expected} recipients", sink.recipients);
    }
    let n = send.messages_accepted.max(1) as f64;
    Ok(BenchReport {
        injection_msgs_per_sec: send.messages_per_sec,
        // The sink's first connection to its last message: the relay
        // starts delivering within a millisecond of the first injection.
        end_to_end_msgs_per_sec: sink.messages as f64
            / sink.active_secs.max(1e-9),
        relay_to_sink: relay_to_sink(log)?,
        relay_cpu_secs: cpu,
        relay_cpu_ms_per_msg: cpu * 1000.0 / n,
        relay_peak_rss_kib: peak_rss_kib(pid),
        send,
        sink,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_millis() {
        assert_eq!(millis("2026-11-28T00:00:01.250Z"), Some(1250));
        assert_eq!(millis("2026-11-28T01:02:03.004Z"), Some(3_723_004));
        assert_eq!(millis("garbage"), None);
    }

    #[test]
    fn cpu_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(peak_rss_kib(std::process::id()) > 0);
    }
}
