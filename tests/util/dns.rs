//! A hand-made DNS responder on a loopback UDP socket for the routing
//! tests: MX, A and AAAA records from a table, NXDOMAIN for listed names,
//! an empty answer (NOERROR, no data) for everything else.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A record.
#[derive(Clone, Debug)]
pub enum Rr {
    /// MX preference and exchange ("." for null MX).
    Mx(u16, String),
    /// An IPv4 address.
    A(Ipv4Addr),
}

/// The zone and counters.
#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<Rr>>,
    nxdomain: Vec<String>,
}

/// A running responder.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    pub queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let queries: Arc<AtomicUsize> = Arc::default();
        let (z, q) = (zone.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
                q.fetch_add(1, Ordering::SeqCst);
                if let Some(resp) = answer(&buf[..n], &z.lock().unwrap()) {
                    let _ = sock.send_to(&resp, from);
                }
            }
        });
        DnsServer { addr, zone, queries }
    }

    /// Adds a record for `name` (lower case, no trailing dot).
    pub fn add(&self, name: &str, rr: Rr) {
        self.zone
            .lock()
            .unwrap()
            .records
            .entry(name.into())
            .or_default()
            .push(rr);
    }

    /// Makes `name` not exist.
    pub fn nxdomain(&self, name: &str) {
        self.zone.lock().unwrap().nxdomain.push(name.into());
    }
}

/// Reads a (non-compressed) name at `pos`; returns it and the next offset.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(
            String::from_utf8_lossy(msg.get(pos..pos + len)?)
                .to_ascii_lowercase(),
        );
        pos += len;
    }
    Some((labels.join("."), pos))
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

const TYPE_A: u16 = 1;
const TYPE_MX: u16 = 15;

fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let (name, end) = read_name(q, 12)?;
    let qtype = u16::from_be_bytes([*q.get(end)?, *q.get(end + 1)?]);
    let question = &q[12..end + 4];
    let nx = zone.nxdomain.contains(&name);
    let answers: Vec<&Rr> = zone
        .records
        .get(&name)
        .map(|rrs| {
            rrs.iter()
                .filter(|rr| match rr {
                    Rr::Mx(..) => qtype == TYPE_MX,
                    Rr::A(_) => qtype == TYPE_A,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]); // id
    let rcode = if nx { 3 } else { 0 };
    out.push(0x84 | (q[2] & 0x01)); // QR, AA, RD copied
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(question);
    for rr in answers {
        write_name(&mut out, &name);
        let mut rdata = Vec::new();
        let t = match rr {
            Rr::Mx(pref, exch) => {
                rdata.extend_from_slice(&pref.to_be_bytes());
                write_name(&mut rdata, exch);
                TYPE_MX
            }
            Rr::A(ip) => {
                rdata.extend_from_slice(&ip.octets());
                TYPE_A
            }
        };
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&60u32.to_be_bytes()); // TTL
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}
