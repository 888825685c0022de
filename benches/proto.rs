//! Criterion benches of the protocol hot paths, each with its baseline
//! measured in the same run: the DATA scanner against a plain
//! `memchr::memmem` search for `\r\n.\r\n` over the same buffer (and the
//! byte-at-a-time oracle, and on 100 KiB the scanner's slower fast-pass
//! kernels), and the MAIL command parser.
//!
//! Every bench checks its answer, so a broken fast path cannot look fast.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use millrace_proto::data::{Kernel, naive_scan};
use millrace_proto::{BodyScanner, Command, Scan, parse_command};

/// A wire-form body of about `size` bytes with ~72-octet lines, every
/// `dot_every`-th line dot-stuffed, followed by the terminator.
fn body(size: usize, dot_every: Option<usize>) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 80);
    let mut n = 0usize;
    while b.len() < size {
        if dot_every.is_some_and(|k| n.is_multiple_of(k)) {
            b.extend_from_slice(b"..");
        }
        let line =
            b"The quick brown fox jumps over the lazy dog, again and again: ";
        b.extend_from_slice(line);
        b.extend_from_slice(format!("{n:08}\r\n").as_bytes());
        n += 1;
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn scanner(c: &mut Criterion) {
    for (label, size) in
        [("1KiB", 1024), ("100KiB", 100 * 1024), ("10MiB", 10 << 20)]
    {
        for (kind, dots) in [("plain", None), ("dots10", Some(10))] {
            let input = body(size, dots);
            let end = input.len();
            let mut g = c.benchmark_group(format!("scan/{label}/{kind}"));
            g.throughput(Throughput::Bytes(end as u64));
            if size >= 10 << 20 {
                g.sample_size(20);
            }
            g.bench_function("millrace", |b| {
                b.iter(|| {
                    let mut s = BodyScanner::new();
                    let r = s.scan(black_box(&input));
                    assert_eq!(r, Scan::Complete { consumed: end });
                    s.body_len()
                })
            });
            // The other fast-pass kernels this CPU has (`millrace` above
            // uses the fastest), on the mid size only.
            let others = Kernel::ALL
                .into_iter()
                .filter(|&k| size == 100 * 1024 && k != Kernel::best())
                .filter_map(BodyScanner::with_kernel);
            for fresh in others {
                let name = format!("millrace_{:?}", fresh.kernel());
                g.bench_function(name.to_lowercase(), |b| {
                    b.iter(|| {
                        let mut s = fresh.clone();
                        let r = s.scan(black_box(&input));
                        assert_eq!(r, Scan::Complete { consumed: end });
                        s.body_len()
                    })
                });
            }
            let finder = memchr::memmem::Finder::new(b"\r\n.\r\n");
            g.bench_function("memmem_baseline", |b| {
                b.iter(|| {
                    let at = finder.find(black_box(&input));
                    assert_eq!(at, Some(end - 5));
                    at
                })
            });
            if size <= 100 * 1024 {
                g.bench_function("naive_oracle", |b| {
                    b.iter(|| {
                        let r = naive_scan(black_box(&input));
                        assert_eq!(r.0, Some(end));
                        r
                    })
                });
            }
            g.finish();
        }
    }
}

fn commands(c: &mut Criterion) {
    let line = b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME";
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_mail", |b| {
        b.iter(|| {
            let cmd = parse_command(black_box(line)).unwrap();
            assert!(matches!(&cmd, Command::Mail { params, .. } if params.size == Some(1000)));
            cmd
        })
    });
    g.bench_function("parse_rcpt", |b| {
        b.iter(|| {
            let cmd =
                parse_command(black_box(b"RCPT TO:<someone@example.net>"))
                    .unwrap();
            assert!(matches!(cmd, Command::Rcpt { .. }));
            cmd
        })
    });
    g.finish();
}

criterion_group!(benches, scanner, commands);
criterion_main!(benches);
