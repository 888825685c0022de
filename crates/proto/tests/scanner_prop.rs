//! Property tests of the DATA scanner against the byte-at-a-time oracle,
//! over arbitrary chunk splits and alignments, with every fast-pass kernel
//! the CPU has, and of dot-stuffing.

use millrace_proto::data::{Kernel, naive_scan};
use millrace_proto::{BodyScanner, DotStuffer, Scan, unstuff};
use proptest::prelude::*;

fn scan_chunks(input: &[u8], cuts: &[usize]) -> (Option<usize>, u64, bool) {
    scan_chunks_with(BodyScanner::new(), input, cuts)
}

fn scan_chunks_with(
    mut s: BodyScanner,
    input: &[u8],
    cuts: &[usize],
) -> (Option<usize>, u64, bool) {
    let mut bounds: Vec<usize> =
        cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut start = 0;
    for end in bounds {
        if let Scan::Complete { consumed } = s.scan(&input[start..end]) {
            return (
                Some(start + consumed),
                s.body_len(),
                s.saw_bare_line_ending(),
            );
        }
        start = end;
    }
    (None, s.body_len(), s.saw_bare_line_ending())
}

/// Bodies over an alphabet that makes line endings and dots common.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b'b', b' ']),
        0..200,
    )
}

/// Long bodies (past the fast pass's minimum chunk) that are mostly clean
/// CRLF text, so that the kernels clear whole blocks, with stuffed dots,
/// end markers, smuggling vectors and bare line endings mixed in.
fn long_body() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        200 => "[a-z ]{1,70}\r\n".prop_map(String::into_bytes),
        30 => "\\.\\.[a-z]{0,10}\r\n".prop_map(String::into_bytes),
        1 => Just(b"\r\n.\r\n".to_vec()),
        1 => Just(b".\r\n".to_vec()),
        1 => Just(b"\n.\r\n".to_vec()),
        1 => Just(b"\r\n.\n".to_vec()),
        1 => Just(b"\r.\r\n".to_vec()),
        1 => Just(b"\r\n.\r".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"\n".to_vec()),
    ];
    prop::collection::vec(token, 0..120).prop_map(|t| t.concat())
}

/// Bodies made of proper CRLF lines (no bare line endings).
fn clean_message() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec("[a-z. ]{0,20}", 0..20).prop_map(|lines| {
        let mut m = Vec::new();
        for l in lines {
            m.extend_from_slice(l.as_bytes());
            m.extend_from_slice(b"\r\n");
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn chunked_equals_whole_equals_oracle(
        input in body(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        pad in 0usize..64,
    ) {
        // Padding shifts the alignment of the slice the scanner sees.
        let mut padded = vec![b'x'; pad];
        padded.extend_from_slice(&input);
        let input = &padded[pad..];
        let expect = naive_scan(input);
        prop_assert_eq!(scan_chunks(input, &[]), expect);
        prop_assert_eq!(scan_chunks(input, &cuts), expect);
    }

    #[test]
    fn every_kernel_equals_the_oracle_on_long_bodies(
        input in long_body(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        pad in 0usize..64,
    ) {
        let mut padded = vec![b'x'; pad];
        padded.extend_from_slice(&input);
        let input = &padded[pad..];
        let expect = naive_scan(input);
        for kernel in Kernel::ALL {
            let Some(s) = BodyScanner::with_kernel(kernel) else { continue };
            prop_assert_eq!(kernel, s.kernel());
            prop_assert_eq!(
                scan_chunks_with(s.clone(), input, &[]),
                expect,
                "{:?}",
                kernel
            );
            prop_assert_eq!(
                scan_chunks_with(s, input, &cuts),
                expect,
                "{:?}",
                kernel
            );
        }
    }

    #[test]
    fn bare_line_endings_are_always_flagged(
        msg in clean_message(),
        at in any::<usize>(),
        lf in any::<bool>(),
    ) {
        let mut m = msg.clone();
        let at = at % (m.len() + 1);
        // Insert a bare LF (not after CR) or a bare CR (not before LF).
        let ins: &[u8] = if lf { b"x\nx" } else { b"x\rx" };
        m.splice(at..at, ins.iter().copied());
        let mut wire = Vec::new();
        // Stuff by hand (DotStuffer would normalise the bare ending).
        for line in m.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        if !wire.ends_with(b"\r\n") {
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let (end, _, bare) = scan_chunks(&wire, &[]);
        prop_assert!(bare, "{:?}", String::from_utf8_lossy(&wire));
        prop_assert!(end.is_some());
    }

    #[test]
    fn stuff_then_unstuff_is_identity(
        msg in clean_message(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut wire = Vec::new();
        let mut d = DotStuffer::new();
        let mut bounds: Vec<usize> =
            cuts.iter().map(|c| c % (msg.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(msg.len());
        let mut start = 0;
        for end in bounds {
            d.write(&msg[start..end], &mut wire);
            start = end;
        }
        d.finish(&mut wire);
        // The stuffed message scans to exactly its body, no bare endings.
        let (end, len, bare) = scan_chunks(&wire, &[]);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert!(!bare);
        let mut back = Vec::new();
        unstuff(&wire[..len as usize], &mut back);
        prop_assert_eq!(back, msg);
    }
}
