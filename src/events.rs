//! The JSON event log: one object per line with `event`, `time` (RFC 3339)
//! and `id`, to stderr or a file (DESIGN.md, "Events").

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Where event lines go. Each line is written with a single `write`, so
/// lines from different threads never interleave: the file is opened
/// with `O_APPEND` (each write lands whole at the end, no lock of ours
/// needed, so reactor threads never wait on each other here); stderr is
/// written under its own lock.
pub(crate) struct EventLog {
    out: Target,
}

enum Target {
    Stderr,
    File(File),
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLog")
    }
}

impl EventLog {
    /// Opens the log target: "stderr" or a file path (appended to).
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
        Ok(Self { out: t })
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
        // A failing log must not take the relay down; there is nowhere
        // better to report it.
        let _ = match &self.out {
            Target::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Target::File(f) => (&*f).write_all(line.as_bytes()),
        };
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
    fn lines_from_many_threads_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = std::sync::Arc::new(
            EventLog::open(path.to_str().unwrap()).unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
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
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::HashSet::new();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(seen.insert((v["t"].as_u64(), v["i"].as_u64())));
        }
        assert_eq!(seen.len(), 8000);
    }
}
