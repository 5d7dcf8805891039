//! The record format of spool segments, and reading a segment back.
//!
//! ```text
//! record = magic "CSR1" | kind (1 octet) | body length (u32 LE) | CRC-32 of kind+body (u32 LE) | body
//! kind   = 'M' a message: body is the spool header (magic line, JSON envelope line) + the message octets
//!        | 'R' a removal: body is the 16-hex-digit queue id of a message in the same segment
//! ```
//!
//! A removal always sits in the segment of the message it removes, so each
//! segment can be read (and deleted) on its own. A segment ends where its
//! last complete record ends; anything after that is a torn append (a crash
//! while writing), which the scanner reports so the spool can cut it off.

use std::fs::File;
use std::io::{self, Read};

pub const MAGIC: [u8; 4] = *b"CSR1";
pub const HEADER_LEN: usize = 13;
pub const KIND_MESSAGE: u8 = b'M';
pub const KIND_REMOVE: u8 = b'R';

/// The 13-octet header of a record whose body is `parts` concatenated.
pub fn header(kind: u8, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for part in parts {
        crc.update(part);
    }
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = kind;
    out[5..9].copy_from_slice(&(len as u32).to_le_bytes());
    out[9..13].copy_from_slice(&crc.finalize().to_le_bytes());
    out
}

/// A record header read back: kind, body length and checksum.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: u8,
    pub len: u32,
    pub crc: u32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
        if bytes[..4] != MAGIC || !matches!(bytes[4], KIND_MESSAGE | KIND_REMOVE) {
            return None;
        }
        Some(Header {
            kind: bytes[4],
            len: u32::from_le_bytes(bytes[5..9].try_into().expect("4 octets")),
            crc: u32::from_le_bytes(bytes[9..13].try_into().expect("4 octets")),
        })
    }

    /// Whether `body` is what this header promised.
    pub fn matches(&self, body: &[u8]) -> bool {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[self.kind]);
        crc.update(body);
        body.len() == self.len as usize && crc.finalize() == self.crc
    }
}

/// One complete record found by [`scan`]: where its body starts, and the body.
pub struct Found<'a> {
    pub kind: u8,
    pub body_offset: u64,
    pub body: &'a [u8],
}

/// What [`scan`] found besides the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Where the last complete record ends: anything after it is a torn
    /// append, safe to cut off.
    pub end: u64,
    /// Octets of damaged records skipped between complete ones. They are
    /// never cut off: records after them are kept.
    pub skipped: u64,
}

/// The record at `offset`, if one starts there and its checksum holds.
fn record_at(bytes: &[u8], offset: usize) -> Option<(Header, std::ops::Range<usize>)> {
    let raw: &[u8; HEADER_LEN] = bytes.get(offset..offset + HEADER_LEN)?.try_into().ok()?;
    let header = Header::parse(raw)?;
    let start = offset + HEADER_LEN;
    let body = bytes.get(start..start.checked_add(header.len as usize)?)?;
    header
        .matches(body)
        .then_some((header, start..start + body.len()))
}

/// Reads a whole segment. Calls `each` for every complete record. A bad
/// record (a flipped bit on disk) does not hide the records after it: the
/// scan looks for the next record whose checksum holds and goes on there.
pub fn scan(file: &File, mut each: impl FnMut(Found<'_>)) -> io::Result<Scan> {
    let mut bytes = Vec::new();
    let mut reader = file;
    reader.read_to_end(&mut bytes)?;
    let mut offset = 0usize;
    let mut scan = Scan { end: 0, skipped: 0 };
    while offset < bytes.len() {
        if let Some((header, body)) = record_at(&bytes, offset) {
            each(Found {
                kind: header.kind,
                body_offset: body.start as u64,
                body: &bytes[body.clone()],
            });
            offset = body.end;
            scan.end = offset as u64;
            continue;
        }
        let next = (offset + 1..bytes.len().saturating_sub(HEADER_LEN - 1))
            .find(|&at| bytes[at..].starts_with(&MAGIC) && record_at(&bytes, at).is_some());
        match next {
            Some(at) => {
                scan.skipped += (at - offset) as u64;
                offset = at;
            }
            None => break,
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_round_trip_and_a_torn_or_damaged_tail_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut file = File::create(&path).unwrap();
        let bodies: [&[u8]; 3] = [b"first", b"", b"third body"];
        for body in bodies {
            file.write_all(&header(KIND_MESSAGE, &[body])).unwrap();
            file.write_all(body).unwrap();
        }
        let complete = file.metadata().unwrap().len();
        // A record split over two parts has the same header as one part.
        assert_eq!(
            header(KIND_REMOVE, &[b"ab", b"cd"]),
            header(KIND_REMOVE, &[b"abcd"])
        );
        // Torn: a header promising more than is there.
        file.write_all(&header(KIND_REMOVE, &[b"0123456789abcdef"]))
            .unwrap();
        file.write_all(b"0123").unwrap();
        drop(file);

        let read = |path: &std::path::Path| {
            let mut seen = Vec::new();
            let found = scan(&File::open(path).unwrap(), |f| seen.push(f.body.to_vec())).unwrap();
            (seen, found)
        };
        let (seen, found) = read(&path);
        assert_eq!(seen, bodies.map(|b| b.to_vec()));
        assert_eq!(
            found,
            Scan {
                end: complete,
                skipped: 0
            }
        );

        // Damaged: one flipped octet in the second record's checksum. The
        // records after it are still found; only the damaged one is skipped.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_LEN + 5;
        bytes[second + 9] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (seen, found) = read(&path);
        assert_eq!(seen, vec![b"first".to_vec(), b"third body".to_vec()]);
        assert_eq!(
            found,
            Scan {
                end: complete,
                skipped: HEADER_LEN as u64
            }
        );
    }
}
