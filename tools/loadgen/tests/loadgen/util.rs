//! Shared helpers: start a sink on 127.0.0.1:0, poll with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use millrace_load::{
    LoadError, SendOptions, SendReport, SinkOptions, SinkReport, run_send,
    run_sink,
};

/// A sink running on its own thread.
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<SinkReport, LoadError>>,
}

impl Sink {
    /// Starts a sink on 127.0.0.1:0 with `opts` (its listen address and
    /// stop flag are replaced).
    pub(crate) fn start(mut opts: SinkOptions) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.stop = Arc::clone(&stop);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            run_sink(opts, move |addr| tx.send(addr).unwrap())
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("sink did not start");
        Self { addr, stop, handle }
    }

    /// Waits for the sink to end by itself (`expect`), with a deadline.
    pub(crate) fn wait(self) -> SinkReport {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.handle.is_finished() {
            assert!(Instant::now() < deadline, "sink did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.handle.join().unwrap().unwrap()
    }

    /// Stops the sink and returns its report.
    pub(crate) fn stop(self) -> SinkReport {
        self.stop.store(true, Ordering::Relaxed);
        self.wait()
    }
}

/// Runs `send` against `addr` with `opts` (server replaced).
pub(crate) fn send(addr: SocketAddr, mut opts: SendOptions) -> SendReport {
    opts.server = addr;
    let report = run_send(opts, Arc::default()).unwrap();
    assert!(!report.interrupted);
    report
}

/// Polls `cond` every few milliseconds until it holds or `secs` pass.
pub(crate) fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback port (bound then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
