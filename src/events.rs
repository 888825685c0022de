//! The JSON event log: one object per line with `event`, `time` (RFC 3339)
//! and `id`, to stderr or a file (DESIGN.md, "Events").

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Map, Value};

/// Where event lines go. Callers format a line and hand it to a writer
/// thread, which writes whatever has queued up with one `write`: the
/// reactor threads never wait on the log file, and a busy relay writes
/// many lines per system call. Lines never interleave.
pub(crate) struct EventLog {
    tx: Mutex<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

enum Msg {
    Line(String),
    /// Everything sent before is written: answer.
    Flush(SyncSender<()>),
}

enum Target {
    Stderr,
    File(File),
}

impl Target {
    fn write(&mut self, buf: &[u8]) {
        // A failing log must not take the relay down; there is nowhere
        // better to report it.
        let _ = match self {
            Self::Stderr => io::stderr().lock().write_all(buf),
            Self::File(f) => f.write_all(buf),
        };
    }
}

/// Bytes gathered before one write.
const BATCH: usize = 256 * 1024;

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLog")
    }
}

impl EventLog {
    /// Opens the log target: "stderr" or a file path (appended to), and
    /// starts its writer thread.
    pub(crate) fn open(target: &str) -> io::Result<Self> {
        let t = if target == "stderr" || target.is_empty() {
            Target::Stderr
        } else {
            Target::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(target))?,
            )
        };
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("millrace-log".into())
            .spawn(move || writer(t, &rx))?;
        Ok(Self { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Writes one event: `kind`, the time now, `id` (if any) and `fields`.
    pub(crate) fn emit(
        &self,
        kind: &str,
        id: Option<&str>,
        fields: Map<String, Value>,
    ) {
        let mut obj = Map::with_capacity(fields.len() + 3);
        obj.insert("event".into(), Value::from(kind));
        obj.insert("time".into(), Value::from(now_rfc3339()));
        if let Some(id) = id {
            obj.insert("id".into(), Value::from(id));
        }
        obj.extend(fields);
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Msg::Line(line));
        }
    }

    /// Waits until every event emitted before is written.
    pub(crate) fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        let sent = match &*self.tx.lock() {
            Some(tx) => tx.send(Msg::Flush(ack)).is_ok(),
            None => false,
        };
        if sent {
            let _ = done.recv();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        drop(self.tx.lock().take());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: gathers what is queued, writes it at once.
fn writer(mut out: Target, rx: &Receiver<Msg>) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(l) => buf.extend_from_slice(l.as_bytes()),
                Msg::Flush(ack) => acks.push(ack),
            }
            if buf.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            out.write(&buf);
            buf.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// RFC 3339 UTC time with milliseconds.
fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = String::with_capacity(24);
    millrace_proto::date::write_rfc3339(d.as_secs() as i64, &mut s);
    // Insert the milliseconds before the trailing `Z`.
    s.pop();
    s.push_str(&format!(".{:03}Z", d.subsec_millis()));
    s
}

/// Builds a field map: `fields!{"sender" => x, "size" => n}`.
macro_rules! fields {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $(m.insert(String::from($k), serde_json::Value::from($v));)*
        m
    }};
}
pub(crate) use fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_event_time_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = EventLog::open(path.to_str().unwrap()).unwrap();
        log.emit("Reception", Some("ABC"), fields! {"size" => 12u64});
        log.emit("Listening", None, fields! {"addresses" => vec!["x"]});
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "Reception");
        assert_eq!(lines[0]["id"], "ABC");
        assert_eq!(lines[0]["size"], 12);
        let t = lines[0]["time"].as_str().unwrap();
        assert_eq!(t.len(), "2026-11-28T17:42:00.000Z".len(), "{t}");
        assert!(lines[1].get("id").is_none());
    }

    #[test]
    fn many_threads_whole_lines_all_written_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = std::sync::Arc::new(
            EventLog::open(path.to_str().unwrap()).unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = std::sync::Arc::clone(&log);
                thread::spawn(move || {
                    for i in 0..2000u64 {
                        let pad = "x".repeat((i % 300) as usize);
                        log.emit(
                            "Delivery",
                            Some("ID"),
                            fields! {"t" => t, "i" => i, "pad" => pad},
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::HashSet::new();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(seen.insert((v["t"].as_u64(), v["i"].as_u64())));
        }
        assert_eq!(seen.len(), 8000);
    }
}
