//! Run reports: counters, latency percentiles and reply-code tables, as
//! text for people and JSON (`--json`) for machines.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded, in microseconds (one hour); longer ones are
/// recorded as this value.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHist(Histogram<u64>);

impl LatencyHist {
    pub(crate) fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        Self(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
        )
    }

    pub(crate) fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub(crate) fn summary(&self) -> Latency {
        let h = &self.0;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        Latency {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "n={:<8} p50 {:>9.3} ms  p90 {:>9.3}  p99 {:>9.3}  \
             p99.9 {:>9.3}  max {:>9.3}",
            self.count,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// Reply codes seen, by stage (`greeting`, `ehlo`, `mail`, `rcpt`, `data`,
/// `dot`, ...) then by code.
pub type ReplyTable = BTreeMap<String, BTreeMap<u16, u64>>;

/// Failures of `send` sessions, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SendErrors {
    /// The server refused the connection.
    pub connect_refused: u64,
    /// No connection within `--timeout`.
    pub connect_timeout: u64,
    /// Connecting failed otherwise (unreachable, no local ports, ...).
    pub connect_failed: u64,
    /// No complete reply within `--timeout`.
    pub reply_timeout: u64,
    /// A reply that cannot continue the session (bad greeting, EHLO and
    /// HELO refused, a reply nobody asked for).
    pub unexpected_reply: u64,
    /// The server closed the connection in the middle of a session.
    pub closed: u64,
    /// A reply that could not be parsed, or another I/O error.
    pub protocol: u64,
}

impl SendErrors {
    /// Sum of all kinds.
    pub fn total(&self) -> u64 {
        self.connect_refused
            + self.connect_timeout
            + self.connect_failed
            + self.reply_timeout
            + self.unexpected_reply
            + self.closed
            + self.protocol
    }
}

/// What `send` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SendReport {
    /// Wall time of the run in seconds.
    pub elapsed_secs: f64,
    /// Concurrent sessions asked for.
    pub sessions: usize,
    /// Connection attempts.
    pub connect_attempts: u64,
    /// Connections established.
    pub connections: u64,
    /// Messages for which MAIL FROM was sent.
    pub messages_attempted: u64,
    /// Transactions sent pipelined (MAIL, RCPTs and DATA in one write).
    pub transactions_pipelined: u64,
    /// Messages accepted (2xx after the dot).
    pub messages_accepted: u64,
    /// Messages refused with a 5xx (MAIL, all RCPTs, DATA or the dot).
    pub messages_rejected: u64,
    /// Messages refused with a 4xx.
    pub messages_deferred: u64,
    /// Messages lost to a connection failure or timeout.
    pub messages_failed: u64,
    /// Recipients of accepted messages that were accepted.
    pub recipients_accepted: u64,
    /// Recipients refused (4xx or 5xx to RCPT).
    pub recipients_refused: u64,
    /// Message octets of accepted messages in wire (dot-stuffed) form,
    /// without the terminating `.CRLF`.
    pub bytes: u64,
    /// Accepted messages per second.
    pub messages_per_sec: f64,
    /// Accepted megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Connect to the 220 greeting.
    pub connect_to_220: Latency,
    /// The final dot to its 2xx reply.
    pub dot_to_250: Latency,
    /// The scheduled start of a message to its 2xx reply (open-loop
    /// latency: includes waiting for a free session).
    pub scheduled_to_250: Latency,
    /// Reply codes by stage.
    pub replies: ReplyTable,
    /// Failures by kind.
    pub errors: SendErrors,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

impl SendReport {
    /// True when connections were attempted and none succeeded (the CLI
    /// exits with 1 then).
    pub fn all_connects_failed(&self) -> bool {
        self.connect_attempts > 0 && self.connections == 0
    }

    /// How often `code` was seen at `stage`.
    pub fn code_count(&self, stage: &str, code: u16) -> u64 {
        self.replies
            .get(stage)
            .and_then(|m| m.get(&code))
            .copied()
            .unwrap_or(0)
    }
}

fn write_table(f: &mut fmt::Formatter<'_>, t: &ReplyTable) -> fmt::Result {
    writeln!(f, "reply codes:")?;
    for (stage, codes) in t {
        write!(f, "  {stage:<10}")?;
        for (code, n) in codes {
            write!(f, " {code}x{n}")?;
        }
        writeln!(f)?;
    }
    Ok(())
}

impl fmt::Display for SendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "send: {} messages accepted in {:.3} s: {:.1} msg/s, {:.3} MB/s{}",
            self.messages_accepted,
            self.elapsed_secs,
            self.messages_per_sec,
            self.mb_per_sec,
            if self.interrupted { " (interrupted)" } else { "" }
        )?;
        writeln!(
            f,
            "messages: attempted {} ({} pipelined) accepted {} rejected {} \
             deferred {} failed {}",
            self.messages_attempted,
            self.transactions_pipelined,
            self.messages_accepted,
            self.messages_rejected,
            self.messages_deferred,
            self.messages_failed
        )?;
        writeln!(
            f,
            "recipients: accepted {} refused {}; bytes {}; sessions {}; \
             connections {}/{}",
            self.recipients_accepted,
            self.recipients_refused,
            self.bytes,
            self.sessions,
            self.connections,
            self.connect_attempts
        )?;
        writeln!(f, "connect-to-220   {}", self.connect_to_220)?;
        writeln!(f, "dot-to-250       {}", self.dot_to_250)?;
        writeln!(f, "scheduled-to-250 {}", self.scheduled_to_250)?;
        write_table(f, &self.replies)?;
        let e = &self.errors;
        writeln!(
            f,
            "errors: {} (connect refused {}, connect timeout {}, connect \
             failed {}, reply timeout {}, unexpected reply {}, closed {}, \
             protocol {})",
            e.total(),
            e.connect_refused,
            e.connect_timeout,
            e.connect_failed,
            e.reply_timeout,
            e.unexpected_reply,
            e.closed,
            e.protocol
        )
    }
}

/// Problems the sink saw, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkErrors {
    /// `accept` failed (e.g. out of file descriptors).
    pub accept_failed: u64,
    /// A client closed the connection in the middle of DATA.
    pub closed_in_data: u64,
    /// A body with a bare CR or LF (refused with 550 5.6.0).
    pub bare_line_ending: u64,
    /// A body over the size limit (refused with 552 5.3.4).
    pub too_big: u64,
    /// Command lines over 512 octets or not understood.
    pub bad_command: u64,
    /// Read or write errors.
    pub io: u64,
}

/// What `sink` received.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SinkReport {
    /// Wall time of the run in seconds.
    pub elapsed_secs: f64,
    /// Seconds from the first connection to the last message accepted;
    /// the rates are per this time.
    pub active_secs: f64,
    /// Connections accepted.
    pub connections: u64,
    /// Messages accepted.
    pub messages: u64,
    /// Accepted recipients of accepted messages.
    pub recipients: u64,
    /// Body octets of accepted messages in wire form (without `.CRLF`).
    pub bytes: u64,
    /// Messages per second.
    pub messages_per_sec: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Reply codes sent, by stage.
    pub replies: ReplyTable,
    /// Problems by kind.
    pub errors: SinkErrors,
    /// The run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

impl SinkReport {
    /// How often `code` was sent at `stage`.
    pub fn code_count(&self, stage: &str, code: u16) -> u64 {
        self.replies
            .get(stage)
            .and_then(|m| m.get(&code))
            .copied()
            .unwrap_or(0)
    }
}

impl fmt::Display for SinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sink: {} messages in {:.3} s (first connection to last \
             message): {:.1} msg/s, {:.3} MB/s{}",
            self.messages,
            self.active_secs,
            self.messages_per_sec,
            self.mb_per_sec,
            if self.interrupted { " (interrupted)" } else { "" }
        )?;
        writeln!(
            f,
            "recipients {}; bytes {}; connections {}",
            self.recipients, self.bytes, self.connections
        )?;
        write_table(f, &self.replies)?;
        let e = &self.errors;
        writeln!(
            f,
            "errors: accept failed {}, closed in data {}, bare line ending \
             {}, too big {}, bad command {}, io {}",
            e.accept_failed,
            e.closed_in_data,
            e.bare_line_ending,
            e.too_big,
            e.bad_command,
            e.io
        )
    }
}

/// `count / secs`, 0 when no time passed.
pub(crate) fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_percentiles() {
        let mut h = LatencyHist::new();
        assert_eq!(h.summary(), Latency::default());
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        // hdrhistogram keeps 3 significant digits.
        assert!((499_000..=501_000).contains(&s.p50_us), "{s:?}");
        assert!((989_000..=991_000).contains(&s.p99_us), "{s:?}");
        assert!((999_000..=1_001_000).contains(&s.max_us), "{s:?}");
        h.record(Duration::from_secs(100_000));
        assert!(h.summary().max_us >= MAX_LATENCY_US / 1000 * 999);
    }

    #[test]
    fn report_json_has_code_table() {
        let mut r = SendReport::default();
        r.replies.entry("rcpt".into()).or_default().insert(550, 3);
        assert_eq!(r.code_count("rcpt", 550), 3);
        assert_eq!(r.code_count("rcpt", 250), 0);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["replies"]["rcpt"]["550"], 3);
        assert!(r.to_string().contains("rcpt       550x3"));
    }
}
