//! A scripted SMTP sink for end-to-end tests: answers 250 / 4xx / 5xx per
//! recipient, records every message it accepts, counts connections.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The body as sent on the wire (dot-stuffed), without the final dot.
    pub data: Vec<u8>,
}

/// What to answer to a RCPT: by exact address, with a count of times
/// (None = forever) before falling back to 250.
#[derive(Debug, Clone)]
struct Rule {
    reply: String,
    times: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: HashMap<String, Rule>,
    received: Vec<Received>,
    rcpt_attempts: HashMap<String, usize>,
}

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    ehlo_extra: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    /// Starts a sink on 127.0.0.1:0.
    pub fn start() -> Sink {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts a sink on a given address.
    pub fn start_on(addr: SocketAddr) -> Sink {
        let l = TcpListener::bind(addr).unwrap();
        let sink = Sink {
            addr: l.local_addr().unwrap(),
            state: Default::default(),
            connections: Default::default(),
            stop: Default::default(),
            ehlo_extra: Arc::new(Mutex::new(vec!["DSN".into()])),
        };
        let s = sink.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                std::thread::spawn(move || {
                    let _ = s2.serve(conn);
                });
            }
        });
        sink
    }

    /// Answers `reply` (e.g. "451 4.3.0 try later") to RCPT `addr`,
    /// `times` times (None = always), then 250.
    pub fn script(&self, addr: &str, reply: &str, times: Option<usize>) {
        self.state.lock().unwrap().rules.insert(
            addr.to_ascii_lowercase(),
            Rule { reply: reply.into(), times },
        );
    }

    /// Sets the EHLO keywords after PIPELINING (default: DSN).
    pub fn set_ehlo_extra(&self, kws: &[&str]) {
        *self.ehlo_extra.lock().unwrap() =
            kws.iter().map(|s| s.to_string()).collect();
    }

    /// Messages received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Number of accepted deliveries to `rcpt`.
    pub fn count_for(&self, rcpt: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.received
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .count()
    }

    /// How many RCPT commands named `rcpt`.
    pub fn rcpt_attempts(&self, rcpt: &str) -> usize {
        *self
            .state
            .lock()
            .unwrap()
            .rcpt_attempts
            .get(&rcpt.to_ascii_lowercase())
            .unwrap_or(&0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting (existing connections finish).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    fn rcpt_reply(&self, addr: &str) -> String {
        let mut st = self.state.lock().unwrap();
        let key = addr.to_ascii_lowercase();
        *st.rcpt_attempts.entry(key.clone()).or_default() += 1;
        if let Some(rule) = st.rules.get_mut(&key) {
            match &mut rule.times {
                None => return rule.reply.clone(),
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    return rule.reply.clone();
                }
            }
        }
        "250 2.1.5 Ok".into()
    }

    fn serve(&self, conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut w = conn.try_clone()?;
        let mut r = BufReader::new(conn);
        w.write_all(b"220 sink.test ESMTP\r\n")?;
        let mut from = String::new();
        let mut rcpts: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            let up = l.to_ascii_uppercase();
            let reply: String = if up.starts_with("EHLO") {
                let mut s =
                    String::from("250-sink.test\r\n250-PIPELINING\r\n");
                for k in self.ehlo_extra.lock().unwrap().iter() {
                    s.push_str(&format!("250-{k}\r\n"));
                }
                s.push_str("250 8BITMIME\r\n");
                w.write_all(s.as_bytes())?;
                continue;
            } else if up.starts_with("HELO") {
                "250 sink.test".into()
            } else if up.starts_with("MAIL FROM:") {
                from = angle(l);
                rcpts.clear();
                "250 2.1.0 Ok".into()
            } else if up.starts_with("RCPT TO:") {
                let a = angle(l);
                let rep = self.rcpt_reply(&a);
                if rep.starts_with('2') {
                    rcpts.push(a);
                }
                rep
            } else if up == "DATA" {
                if rcpts.is_empty() {
                    "554 5.5.1 no valid recipients".into()
                } else {
                    w.write_all(b"354 go ahead\r\n")?;
                    let mut data = Vec::new();
                    loop {
                        let mut l2 = Vec::new();
                        if r.read_until(b'\n', &mut l2)? == 0 {
                            return Ok(());
                        }
                        if l2 == b".\r\n" {
                            break;
                        }
                        data.extend_from_slice(&l2);
                    }
                    self.state.lock().unwrap().received.push(Received {
                        from: from.clone(),
                        rcpts: std::mem::take(&mut rcpts),
                        data,
                    });
                    "250 2.0.0 Ok: queued".into()
                }
            } else if up == "RSET" {
                rcpts.clear();
                "250 2.0.0 Ok".into()
            } else if up == "NOOP" {
                "250 2.0.0 Ok".into()
            } else if up == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            } else {
                "500 5.5.2 unknown".into()
            };
            w.write_all(format!("{reply}\r\n").as_bytes())?;
        }
    }
}

fn angle(l: &str) -> String {
    let a = l.find('<').map(|i| i + 1).unwrap_or(0);
    let b = l[a..].find('>').map(|i| a + i).unwrap_or(l.len());
    l[a..b].to_owned()
}

/// Reads everything from a reader (helper for dumps).
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}
