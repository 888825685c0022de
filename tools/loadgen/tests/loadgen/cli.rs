//! The `millrace-load` binary: arguments, exit codes, JSON reports,
//! the count file and Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use crate::util::{free_port, wait_for};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_millrace-load"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Starts `millrace-load sink` on a free port and returns it with the
/// address it printed.
fn spawn_sink(extra: &[&str]) -> (Child, String) {
    let mut child = bin()
        .args(["sink", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| line.contains("listening on"))
        .unwrap_or_else(|| panic!("unexpected sink output {line:?}"))
        .to_owned();
    // Keep draining stderr so progress lines never block the sink.
    std::thread::spawn(move || {
        let mut sink = std::io::sink();
        let _ = std::io::copy(&mut stderr, &mut sink);
    });
    (child, addr)
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["send", "--sessions", "many"][..],
        &["send", "--rate", "0"],
        &["send", "--to", "nodomain"],
        &["send", "--duration", "soon"],
        &["send", "--server", "no-port-here"],
        &["sink", "--script", "no-equals-sign"],
        &["sink", "--tempfail-percent", "150"],
        &["frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
}

#[test]
fn refused_everywhere_exits_1() {
    let port = free_port().to_string();
    let server = format!("127.0.0.1:{port}");
    let out = run(&["send", "--server", &server, "--sessions", "3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 refused"), "{err}");
}

/// The relay binary of this workspace (built here if the test run did not
/// build it already).
fn millrace_binary() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/millrace
    let profile_dir = me.parent().unwrap().parent().unwrap().to_owned();
    let bin = profile_dir.join("millrace");
    if !bin.is_file() {
        let release = profile_dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "millrace"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "cargo build -p millrace");
    }
    assert!(bin.is_file(), "{}", bin.display());
    bin
}

#[test]
fn bench_runs_the_whole_pipeline() {
    let relay = millrace_binary();
    let out = run(&[
        "bench",
        "--messages",
        "300",
        "--sessions",
        "5",
        "--json",
        "--relay",
        relay.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["send"]["messages_accepted"], 300);
    assert_eq!(r["sink"]["messages"], 300);
    assert_eq!(r["send"]["dot_to_250"]["count"], 300);
    assert_eq!(r["relay_to_sink"]["count"], 300, "every delivery matched");
    assert!(r["relay_cpu_secs"].as_f64().unwrap() > 0.0);
    assert!(r["relay_peak_rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn send_and_sink_binaries_report_json_and_count_file() {
    let dir = tempfile::tempdir().unwrap();
    let count_file = dir.path().join("counts.json");
    let (sink, addr) = spawn_sink(&[
        "--expect",
        "60",
        "--json",
        "--count-file",
        count_file.to_str().unwrap(),
    ]);
    let out = run(&[
        "send",
        "--server",
        &addr,
        "--messages",
        "60",
        "--sessions",
        "6",
        "--recipients",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sink = sink.wait_with_output().unwrap();
    assert!(sink.status.success(), "{sink:?}");
    let k: serde_json::Value = serde_json::from_slice(&sink.stdout).unwrap();
    assert_eq!(s["messages_accepted"], 60);
    assert_eq!(k["messages"], 60);
    assert_eq!(s["recipients_accepted"], 120);
    assert_eq!(k["recipients"], 120);
    assert_eq!(s["bytes"], k["bytes"]);
    assert_eq!(s["replies"]["dot"]["250"], 60);
    assert!(s["dot_to_250"]["p99_us"].as_u64().unwrap() > 0);
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&count_file).unwrap())
            .unwrap();
    assert_eq!(counts["messages"], 60);
    assert_eq!(counts["bytes"], k["bytes"]);
}

#[test]
fn ctrl_c_prints_the_report_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let count_file = dir.path().join("counts.json");
    let (sink, addr) =
        spawn_sink(&["--count-file", count_file.to_str().unwrap()]);
    let out = run(&["send", "--server", &addr, "--messages", "10"]);
    assert!(out.status.success(), "{out:?}");
    // The count file shows the messages once the sink's next tick ran.
    wait_for(20, "count file", || {
        std::fs::read_to_string(&count_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["messages"] == 10)
    });
    let status = Command::new("kill")
        .args(["-INT", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sink = sink.wait_with_output().unwrap();
    assert!(sink.status.success(), "{sink:?}");
    let text = String::from_utf8_lossy(&sink.stdout);
    assert!(text.contains("sink: 10 messages"), "{text}");
    assert!(text.contains("(interrupted)"), "{text}");
}
