//! Interop with Postfix's smtp-sink and smtp-source (Debian package
//! `postfix`). Skipped, with a note, when they are not installed;
//! `scripts/postfix-interop.sh` installs them and covers the same ground.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use millrace_load::{SendOptions, SinkOptions};

use crate::util::{Sink, free_port, send, wait_for};

/// The tool's path, searching PATH and the sbin directories.
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn postfix_tool(tool: &str) -> Option<PathBuf> {
    let found = find(tool);
    if found.is_none() {
        eprintln!(
            "note: {tool} not found; skipping Postfix interop (run \
             tools/loadgen/scripts/postfix-interop.sh)"
        );
    }
    found
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn send_into_postfix_smtp_sink() {
    let Some(smtp_sink) = postfix_tool("smtp-sink") else { return };
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(smtp_sink);
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .args(["-c", &format!("127.0.0.1:{port}"), "256"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(10, "smtp-sink to listen", || TcpStream::connect(addr).is_ok());
    for pipelining in [true, false] {
        let s = send(
            addr,
            SendOptions {
                sessions: 10,
                messages: Some(200),
                recipients: 2,
                pipelining,
                messages_per_session: Some(50),
                timeout: Duration::from_secs(20),
                ..SendOptions::default()
            },
        );
        assert_eq!(s.messages_accepted, 200, "{s}");
        assert_eq!(s.recipients_accepted, 400, "{s}");
        assert_eq!(s.errors.total(), 0, "{s}");
        assert_eq!(s.transactions_pipelined, if pipelining { 200 } else { 0 });
    }
    child.kill().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    let last = out.rsplit(['\r', '\n']).find(|l| l.contains("mesg="));
    let mesg = last
        .and_then(|l| l.rsplit("mesg=").next())
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(mesg, Some(400), "smtp-sink counters: {out:?}");
}

#[test]
fn postfix_smtp_source_into_sink() {
    let Some(smtp_source) = postfix_tool("smtp-source") else { return };
    for extra in [&[][..], &["-d", "-r", "3"][..]] {
        let sink = Sink::start(SinkOptions::default());
        let out = Command::new(&smtp_source)
            .args(["-s", "10", "-m", "200", "-l", "1024"])
            .args(extra)
            .arg(sink.addr.to_string())
            .output()
            .unwrap();
        let k = sink.stop();
        assert!(out.status.success(), "smtp-source {extra:?}: {out:?}");
        let rcpts = if extra.is_empty() { 200 } else { 600 };
        assert_eq!(k.messages, 200, "{extra:?}: {k}");
        assert_eq!(k.recipients, rcpts, "{extra:?}: {k}");
        assert_eq!(k.errors.bad_command, 0, "{k}");
        assert_eq!(k.errors.bare_line_ending, 0, "{k}");
        assert_eq!(k.errors.closed_in_data, 0, "{k}");
        assert!(k.bytes >= 200 * 1024, "{k}");
    }
}
