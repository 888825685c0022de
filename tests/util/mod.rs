//! Test support: start the real `millrace` binary on an ephemeral loopback
//! port and talk SMTP to it over TCP. Failures dump the command, config,
//! ports and logs (the ripgrep `tests/util.rs` habit).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns Some, or panics with `what` at the deadline.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running relay.
pub struct Relay {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub config: String,
    pub spool: PathBuf,
    pub log: PathBuf,
    stderr: PathBuf,
}

impl Relay {
    /// Starts a relay with the base test config plus `extra` TOML
    /// (top-level keys first, then tables).
    pub fn start(extra: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Starts a relay in an existing directory (for restarts on the same
    /// spool).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Relay {
        Self::start_in_env(dir, extra, &[])
    }

    /// Starts a relay with extra environment variables.
    pub fn start_env(extra: &str, env: &[(&str, String)]) -> Relay {
        Self::start_in_env(tempfile::tempdir().unwrap(), extra, env)
    }

    /// Starts a relay in `dir` with extra environment variables.
    pub fn start_in_env(
        dir: tempfile::TempDir,
        extra: &str,
        env: &[(&str, String)],
    ) -> Relay {
        let spool = dir.path().join("spool");
        let log = dir.path().join("events.log");
        let stderr = dir.path().join("stderr.log");
        let config = format!(
            "hostname = \"relay.test.example\"\nlisten = [\"127.0.0.1:0\"]\n\
             threads = 2\nspool_dir = {:?}\nlog = {:?}\n{extra}\n",
            spool.display().to_string(),
            log.display().to_string()
        );
        let cfg_path = dir.path().join("millrace.toml");
        std::fs::write(&cfg_path, &config).unwrap();
        // A restart appends to the same log: only count new events.
        let skip = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let child = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn millrace");
        let mut relay = Relay {
            child: Some(child),
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            config,
            spool,
            log,
            stderr,
        };
        let addr = wait_for("the Listening event", DEADLINE, || {
            if let Some(status) =
                relay.child.as_mut().unwrap().try_wait().unwrap()
            {
                relay.dump();
                panic!("millrace exited early: {status}");
            }
            relay
                .all_events()
                .into_iter()
                .skip(skip)
                .find(|e| e["event"] == "Listening")
                .and_then(|e| e["addresses"][0].as_str()?.parse().ok())
        });
        relay.addr = addr;
        relay
    }

    /// Every event line so far.
    pub fn all_events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Events of one kind.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.all_events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// Waits until at least `n` events of `kind` are logged.
    pub fn wait_events(&self, kind: &str, n: usize) -> Vec<Value> {
        let mut last = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&format!("{n} {kind} events"), DEADLINE, || {
                let ev = self.events(kind);
                last = ev.len();
                (ev.len() >= n).then_some(ev)
            })
        }));
        match r {
            Ok(v) => v,
            Err(_) => {
                self.dump();
                panic!("only {last} of {n} {kind} events");
            }
        }
    }

    /// Opens an SMTP connection and reads the greeting.
    pub fn connect(&self) -> Smtp {
        let mut s = Smtp::connect(self.addr);
        let (code, _) = s.reply();
        assert_eq!(code, 220, "greeting");
        s
    }

    /// SIGKILL, no grace.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY-free: plain kill(2) through the libc-less `kill` command.
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        wait_for("exit after SIGTERM", DEADLINE, || c.try_wait().unwrap())
    }

    /// Stops the relay and hands back its directory (same spool).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Message files in the spool (under `q/`; files parked in `free/`
    /// for reuse hold no message).
    pub fn spool_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.spool.join("q"), &mut out);
        out
    }

    /// Prints everything useful for a failure.
    pub fn dump(&self) {
        eprintln!("--- config ---\n{}", self.config);
        eprintln!("--- address --- {}", self.addr);
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        eprintln!("--- stderr ---\n{}", tail(&err, 60));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("--- events ---\n{}", tail(&log, 60));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        self.kill();
    }
}

/// A minimal SMTP client over a blocking TCP stream.
pub struct Smtp {
    pub r: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects (does not read the greeting).
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Smtp { r: BufReader::new(s) }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }

    /// Reads one (possibly multi-line) reply: code and the lines' text.
    pub fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while reading a reply");
            assert!(
                line.ends_with("\r\n"),
                "reply line without CRLF: {line:?}"
            );
            let code: u16 = line[..3].parse().expect("reply code");
            let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
            lines.push(line[4.min(line.len())..].trim_end().to_owned());
            if sep != b'-' {
                return (code, lines);
            }
        }
    }

    /// Sends a command line and returns the reply's code and first line.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        let (code, lines) = self.reply();
        (code, lines.join("\n"))
    }

    /// Sends a command and asserts the reply starts with `expect` (code and
    /// optionally the enhanced code, e.g. "250 2.1.5").
    pub fn expect(&mut self, line: &str, expect: &str) -> String {
        let (code, text) = self.cmd(line);
        let got = format!("{code} {text}");
        assert!(
            got.starts_with(expect),
            "{line:?}: expected {expect:?}, got {got:?}"
        );
        got
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }

    /// A whole transaction; returns the queue id from the 250 after DATA.
    pub fn send_mail(
        &mut self,
        from: &str,
        to: &[&str],
        body: &str,
    ) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), "250");
        }
        self.expect("DATA", "354");
        self.send(body.as_bytes());
        self.send(b".\r\n");
        let (code, lines) = self.reply();
        assert_eq!(code, 250, "after DATA: {lines:?}");
        queue_id(&lines[0])
    }
}

/// The id from `2.0.0 Ok: queued as ID`.
pub fn queue_id(text: &str) -> String {
    text.rsplit(' ').next().unwrap().to_owned()
}
pub mod dns;
pub mod sink;
