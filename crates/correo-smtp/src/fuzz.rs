//! Fuzz entry points: the bodies of the `fuzz/` cargo-fuzz targets, and of
//! the stable "fuzz smoke" tests that run each of them on pseudo-random and
//! mutated inputs in CI (see `docs/FUZZING.md`). Each function takes
//! arbitrary bytes, must never panic, and asserts the invariants the rest
//! of Correo relies on; a failed assertion is a bug.

use crate::address::{Address, MAX_ADDRESS_LEN};
use crate::reader::{BareLineEndings, CommandReader, DataReader, ReplyReader, dot_stuff};

/// Splits `data` into chunk sizes driven by its own bytes, so one input
/// also exercises one way of feeding it piecewise.
fn chunk_sizes(seed: u8, len: usize) -> impl Iterator<Item = usize> {
    let mut state = u32::from(seed) | 1;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = ((state % 17) as usize + 1).min(left);
        left -= n;
        Some(n)
    })
}

/// Command reader + command parser: lines never exceed the limit, feeding
/// whole and piecewise gives the same lines, and every line parses to a
/// command or a refusal without panicking.
pub fn command_reader(data: &[u8]) {
    let whole = read_lines(data, None);
    let seed = data.first().copied().unwrap_or(0);
    let pieces = read_lines(data, Some(seed));
    assert_eq!(whole, pieces, "chunking changed the command lines");
    for line in whole.into_iter().flatten() {
        assert!(
            line.len() < crate::reader::MAX_COMMAND_LINE,
            "{} octets",
            line.len()
        );
        assert!(!line.contains(['\r', '\n', '\0']), "{line:?}");
        if let Ok(command) = crate::server::command::parse(&line, "mx.example.test") {
            let _ = format!("{command:?}");
        }
    }
}

fn read_lines(data: &[u8], seed: Option<u8>) -> Vec<Result<String, crate::reader::LineError>> {
    let mut reader = CommandReader::new();
    let mut out = Vec::new();
    let mut feed = |chunk: &[u8], out: &mut Vec<_>| {
        let mut pos = 0;
        while pos < chunk.len() {
            let (n, line) = reader.feed(&chunk[pos..]);
            assert!(n > 0 && pos + n <= chunk.len(), "reader consumed {n}");
            pos += n;
            out.extend(line);
        }
    };
    match seed {
        None => feed(data, &mut out),
        Some(seed) => {
            let mut pos = 0;
            for n in chunk_sizes(seed, data.len()) {
                feed(&data[pos..pos + n], &mut out);
                pos += n;
            }
        }
    }
    out
}

/// DATA reader: whole and piecewise feeding agree; the end is only ever a
/// real CRLF.CRLF; Normalize output has no bare CR or LF; what is read
/// survives `dot_stuff` and a second read unchanged.
pub fn data_reader(data: &[u8]) {
    let (mode, data) = match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => return,
    };
    let bare = if mode & 1 == 0 {
        BareLineEndings::Reject
    } else {
        BareLineEndings::Normalize
    };
    let max = if mode & 2 == 0 { 1 << 20 } else { 64 };
    let whole = read_data(data, max, bare, None);
    let pieces = read_data(data, max, bare, Some(mode));
    assert_eq!(whole, pieces, "chunking changed the DATA result");
    let Some((result, consumed)) = whole else {
        return;
    };
    // The end-of-data line is a real CRLF "." CRLF (or the very first line).
    let head = &data[..consumed];
    assert!(head.ends_with(b".\r\n"), "ended without .CRLF: {head:?}");
    assert!(
        consumed == 3 || head.ends_with(b"\r\n.\r\n"),
        "ended without CRLF.CRLF: {head:?}"
    );
    if let Ok(message) = result {
        assert!(message.len() <= max);
        if bare == BareLineEndings::Normalize || bare == BareLineEndings::Reject {
            for (i, &b) in message.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR in output");
                }
                if b == b'\n' {
                    assert!(i > 0 && message[i - 1] == b'\r', "bare LF in output");
                }
            }
        }
        let stuffed = dot_stuff(&message);
        let again = read_data(&stuffed, usize::MAX, BareLineEndings::Reject, None)
            .expect("dot_stuff output has an end");
        assert_eq!(again.1, stuffed.len(), "dot_stuff output read past its end");
        let again = again.0.expect("dot_stuff output is clean");
        let mut expected = message.clone();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(again, expected, "dot_stuff round trip");
    }
}

type DataOutcome = Option<(Result<Vec<u8>, crate::reader::DataError>, usize)>;

fn read_data(data: &[u8], max: usize, bare: BareLineEndings, seed: Option<u8>) -> DataOutcome {
    let mut reader = DataReader::new(max, bare);
    let sizes: Vec<usize> = match seed {
        None => vec![data.len()],
        Some(s) => chunk_sizes(s, data.len()).collect(),
    };
    let mut pos = 0;
    for n in sizes {
        let end = pos + n;
        while pos < end {
            let (used, done) = reader.feed(&data[pos..end]);
            assert!(pos + used <= end);
            pos += used;
            if done {
                return Some((reader.finish(), pos));
            }
            if used == 0 {
                break;
            }
        }
    }
    None
}

/// Address parsing: anything accepted is short, has exactly one `@`, no
/// relay characters, no IP literal, a lowercase domain, and parses again
/// to itself.
pub fn address(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for candidate in [text.as_ref(), text.trim_matches(['<', '>'])] {
        if let Ok(a) = Address::parse(candidate) {
            let s = a.as_str();
            assert!(s.len() <= MAX_ADDRESS_LEN, "{s:?}");
            assert_eq!(s.matches('@').count(), 1, "{s:?}");
            assert!(!a.local_part().contains(['%', '!']), "{s:?}");
            assert!(!a.domain().starts_with('['), "{s:?}");
            assert!(!a.domain().is_empty() && !a.local_part().is_empty());
            assert_eq!(a.domain(), a.domain().to_ascii_lowercase());
            assert!(
                s.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) || b == b' ' && s.contains('"'))
            );
            assert_eq!(Address::parse(s).as_ref(), Ok(&a), "not idempotent: {s:?}");
        }
    }
}

/// Client replies (the MTA's outbound client reads what remote servers
/// send): bounded, never panics.
pub fn reply_reader(data: &[u8]) {
    let mut reader = ReplyReader::new();
    let mut pos = 0;
    while pos < data.len() {
        let (n, reply) = reader.feed(&data[pos..]);
        assert!(n > 0 || reply.is_some());
        pos += n;
        match reply {
            Some(Ok(r)) => {
                assert!(r.code < 1000);
                let _ = r.to_wire();
            }
            Some(Err(_)) => reader = ReplyReader::new(),
            None => {}
        }
        if n == 0 {
            break;
        }
    }
}

/// SCRAM client-first and client-final parsing never panic.
pub fn scram(data: &[u8]) {
    if let Ok(first) = crate::scram::parse_client_first(data) {
        assert!(!first.username.is_empty());
        let creds = crate::scram::derive_credentials("pw", b"salt", 1);
        let (server, _) = crate::scram::ScramServer::new(first, creds, "nonce");
        let _ = server.finish(data);
    }
}

/// A tiny deterministic generator for the smoke tests: random inputs over
/// an alphabet rich in SMTP's special bytes, plus mutations of seeds.
#[derive(Debug, Clone)]
pub struct Smoke {
    state: u64,
}

impl Smoke {
    pub fn new(seed: u64) -> Self {
        Smoke { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One input: random bytes from `alphabet`-heavy noise, or a mutated seed.
    pub fn input(&mut self, seeds: &[&[u8]], alphabet: &[u8]) -> Vec<u8> {
        let mut out = if !seeds.is_empty() && self.below(3) > 0 {
            seeds[self.below(seeds.len())].to_vec()
        } else {
            Vec::new()
        };
        let edits = 1 + self.below(8);
        for _ in 0..edits {
            let pos = self.below(out.len() + 1);
            match self.below(6) {
                0 if !out.is_empty() && pos < out.len() => {
                    out.remove(pos);
                }
                1 => {
                    let b = self.next() as u8;
                    out.insert(pos, b);
                }
                2 if !seeds.is_empty() => {
                    let s = seeds[self.below(seeds.len())];
                    let start = self.below(s.len());
                    let end = start + self.below(s.len() - start + 1);
                    out.splice(pos..pos, s[start..end].iter().copied());
                }
                3 => {
                    let n = self.below(600);
                    let b = alphabet[self.below(alphabet.len())];
                    out.splice(pos..pos, std::iter::repeat_n(b, n));
                }
                _ => {
                    let n = 1 + self.below(12);
                    for _ in 0..n {
                        let b = alphabet[self.below(alphabet.len())];
                        let p = self.below(out.len() + 1);
                        out.insert(p, b);
                    }
                }
            }
        }
        out
    }

    /// Runs `target` on `count` inputs, stopping early after `budget`.
    pub fn run(
        seed: u64,
        count: usize,
        budget: std::time::Duration,
        seeds: &[&[u8]],
        alphabet: &[u8],
        target: impl Fn(&[u8]),
    ) -> usize {
        let start = std::time::Instant::now();
        let mut smoke = Smoke::new(seed);
        for &s in seeds {
            target(s);
        }
        for i in 0..count {
            let input = smoke.input(seeds, alphabet);
            target(&input);
            if start.elapsed() > budget {
                return i + 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod smoke {
    //! The stable, short version of each fuzz target (CI). A failure here
    //! prints the input; add it to the regression tests.
    use super::*;
    use std::time::Duration;

    const BUDGET: Duration = Duration::from_secs(4);
    const COUNT: usize = 20_000;
    const SMTP_BYTES: &[u8] = b"\r\n.\0 <>@:,\"\\%!=[]\xff\xc3MAILFROMRCPTDATA";

    const COMMANDS: &[&[u8]] = &[
        b"EHLO client.example\r\nMAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\n",
        b"RCPT TO:<@a,@b:user@c.test>\r\nRCPT TO:<\"x@y\"@z.test>\r\nRCPT TO:<Postmaster>\r\n",
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH SCRAM-SHA-256 =\r\nSTARTTLS\r\nQUIT\r\n",
        b"MAIL FROM:<a@b.c> SIZE=18446744073709551616 AUTH=<>\r\nNOOP\rRSET\n",
    ];
    const DATA: &[&[u8]] = &[
        b"\x00Subject: a\r\n\r\nbody\r\n..x\r\n.\r\nQUIT\r\n",
        b"\x01a\n.\nb\r.\r\nc\r\n.\r\n",
        b"\x02first\r\n\x00.\r\nMAIL FROM:<e@x>\r\n.\r\n",
        b"\x03.\r\n",
    ];
    const ADDRESSES: &[&[u8]] = &[
        b"user@example.test",
        b"\"quoted local\"@example.test",
        b"a.b+c@sub.example.test",
        b"user%foreign@local.test",
        b"@a,@b:user@c",
        b"user@[127.0.0.1]",
        b"USER@FOREIGN.TEST.",
    ];
    const REPLIES: &[&[u8]] = &[
        b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n",
        b"550 5.1.1 no such user\r\n421-a\r\n421 4.4.2 b\r\n",
    ];
    const SCRAM: &[&[u8]] = &[
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        b"n,a=u,n=u,r=x,ext=1",
        b"c=biws,r=xnonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ];

    #[test]
    fn fuzz_smoke_command_reader() {
        Smoke::run(1, COUNT, BUDGET, COMMANDS, SMTP_BYTES, command_reader);
    }

    #[test]
    fn fuzz_smoke_data_reader() {
        Smoke::run(2, COUNT, BUDGET, DATA, SMTP_BYTES, data_reader);
    }

    #[test]
    fn fuzz_smoke_address() {
        Smoke::run(3, COUNT, BUDGET, ADDRESSES, SMTP_BYTES, address);
    }

    #[test]
    fn fuzz_smoke_reply_reader() {
        Smoke::run(
            4,
            COUNT,
            BUDGET,
            REPLIES,
            b"0123456789- \r\n.",
            reply_reader,
        );
    }

    #[test]
    fn fuzz_smoke_scram() {
        Smoke::run(5, COUNT, BUDGET, SCRAM, b"nmrcpa=,2C3D", scram);
    }
}
