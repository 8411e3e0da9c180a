//! A property-based fuzzer for the request-head parser and the body decoder,
//! run by `cargo test` for a bounded time (`TURBO_FUZZ_SECS`, 3 s by default).
//! It mutates the seed corpus in `tests/fuzz/corpus` (bit flips, byte
//! insertions and deletions, splices, repeated runs) with a seeded generator,
//! so a failure names the seed that repeats it (`TURBO_FUZZ_SEED`).
//!
//! The properties: nothing panics; a parsed head lies within its input and
//! its ranges point inside it; the head scan fed in random pieces gives what
//! one parse of the whole gives; the decoder fed in random pieces gives what
//! one call over the whole gives, and never consumes more than it is given.

use std::time::{Duration, Instant};

use super::body::Decoder;
use super::parse::{self, BodyKind, HeadScan, Limits, RequestHead};

const LIMITS: Limits = Limits {
    request_line: 4094,
    fields: 100,
    field_size: Some(8190),
    body: Some(1 << 20),
};

/// xorshift64*: small, seeded, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b";",
    b"0\r\n\r\n",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: x\r\n",
    b"HTTP/1.1",
    b"\0",
    b"\xff",
    b"ffffffffffffffffff",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len());
                input.splice(at..at, other[from..].iter().copied());
            }
            _ if at < input.len() => {
                let byte = input[at];
                let n = rng.below(64);
                input.splice(at..at, std::iter::repeat_n(byte, n));
            }
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

fn check_head(input: &[u8], rng: &mut Rng) {
    let mut whole = RequestHead::default();
    let once = parse::parse(input, &LIMITS, &mut whole);
    if let Ok(Some(())) = once {
        assert!(whole.len <= input.len());
        assert!(whole.method.end <= whole.len && whole.target.end <= whole.len);
        for (name, value) in &whole.headers {
            assert!(name.end <= whole.len && value.end <= whole.len);
        }
    }
    // The scan in pieces agrees with the parse of everything it was given.
    let mut scan = HeadScan::default();
    let mut head = RequestHead::default();
    let mut fed = 0;
    let result = loop {
        fed = (fed + 1 + rng.below(64)).min(input.len());
        let got = scan.parse(&input[..fed], &LIMITS, &mut head);
        if !matches!(got, Ok(None)) || fed == input.len() {
            break got;
        }
    };
    if let Ok(Some(())) = result {
        let mut again = RequestHead::default();
        assert_eq!(
            parse::parse(&input[..fed], &LIMITS, &mut again),
            Ok(Some(()))
        );
        assert_eq!(again.len, head.len);
    }
    if let (Ok(Some(())), Ok(Some(()))) = (&result, &once) {
        assert_eq!(head.len, whole.len);
    }
}

fn check_body(input: &[u8], rng: &mut Rng) {
    for kind in [BodyKind::Chunked, BodyKind::Length(input.len() as u64 / 2)] {
        let mut once = Decoder::new(kind).limited(LIMITS.body);
        let mut whole = Vec::new();
        let whole_result = once.decode_into(input, &mut whole);
        if let Ok(used) = whole_result {
            assert!(used <= input.len());
        }
        let mut pieces = Decoder::new(kind).limited(LIMITS.body);
        let mut out = Vec::new();
        let mut used = 0;
        let mut buffered = Vec::new();
        let mut pieces_result = Ok(0);
        let mut fed = 0;
        while fed < input.len() {
            let end = (fed + 1 + rng.below(32)).min(input.len());
            buffered.extend_from_slice(&input[fed..end]);
            fed = end;
            match pieces.decode_into(&buffered, &mut out) {
                Ok(n) => {
                    assert!(n <= buffered.len());
                    buffered.drain(..n);
                    used += n;
                    pieces_result = Ok(used);
                }
                Err(e) => {
                    pieces_result = Err(e);
                    break;
                }
            }
            if pieces.is_done() {
                break;
            }
        }
        match (whole_result, pieces_result) {
            (Ok(a), Ok(b)) if once.is_done() => {
                assert_eq!((a, &whole), (b, &out), "{kind:?}");
            }
            (Err(a), Err(b)) => assert_eq!(a.status, b.status),
            // Whole-input decoding stops at the end of what it can read; in
            // pieces the decoder sees the same bytes, so the bodies agree
            // as far as both went.
            (Ok(_), Ok(_)) => assert!(whole.starts_with(&out) || out.starts_with(&whole)),
            (a, b) => panic!("{kind:?}: whole {a:?}, in pieces {b:?}"),
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

#[test]
fn fuzz_heads_and_bodies() {
    let secs = std::env::var("TURBO_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("TURBO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7u64 << 40 | u64::from(std::process::id()));
    let corpus = corpus();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(seed.max(1));
    let mut cases = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            let case_seed = rng.next();
            let mut case = Rng(case_seed.max(1));
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_head(&input, &mut case);
                check_body(&input, &mut case);
            }));
            if run.is_err() {
                panic!("fuzz case failed (TURBO_FUZZ_SEED={seed}): input {input:?}");
            }
            cases += 1;
        }
    }
    eprintln!("fuzz: {cases} cases in {secs} s, seed {seed}");
}
