//! Turns an accepted DATA payload into the message handed to an MTA:
//! validate, repair, then prepend our trace fields (`Received:` and
//! `X-Correo-Journey:`).
//!
//! Memory: the payload (up to `max_message_size`, 25 MB by default) is
//! moved into a [`Bytes`] without copying; the outgoing message is a new,
//! small header section plus a slice of that buffer for the body. The only
//! full copy is the one into the gRPC chunks, made one chunk at a time.

use crate::repair::{self, JOURNEY_HEADER, Repair};
use crate::validate::{self, Identity, Invalid};
use bytes::Bytes;
use correo_smtp::server::SessionInfo;

/// What a submission is prepared with.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub info: &'a SessionInfo,
    pub identity: &'a Identity,
    /// The MSA's host name (`Received: by`, Message-ID right side).
    pub hostname: &'a str,
    pub journey: &'a str,
    pub recipients: &'a [String],
}

/// The message as it leaves the MSA: `head` then `body`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Trace fields, repaired header fields and the empty line.
    head: Bytes,
    /// The submitted body, shared with the submitted buffer.
    body: Bytes,
}

impl Outgoing {
    pub fn new(head: impl Into<Bytes>, body: Bytes) -> Self {
        Outgoing {
            head: head.into(),
            body,
        }
    }

    /// Size in octets.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The header section (with its empty line).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Consecutive chunks of `size` octets (the last one shorter). Owns
    /// cheap clones of the buffers, so a stream built on it is `'static`
    /// and the same message can be streamed again to another MTA.
    pub fn chunks(&self, size: usize) -> Chunks {
        Chunks {
            parts: [self.head.clone(), self.body.clone()],
            part: 0,
            offset: 0,
            size: size.max(1),
        }
    }

    /// The whole message in one buffer (tests, logs of small messages).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.body);
        v
    }
}

/// Iterator returned by [`Outgoing::chunks`].
pub struct Chunks {
    parts: [Bytes; 2],
    part: usize,
    offset: usize,
    size: usize,
}

impl Iterator for Chunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut chunk = Vec::new();
        while chunk.len() < self.size && self.part < self.parts.len() {
            let part = &self.parts[self.part];
            let take = (self.size - chunk.len()).min(part.len() - self.offset);
            if chunk.capacity() == 0 {
                chunk.reserve_exact(self.size.min(self.remaining()));
            }
            chunk.extend_from_slice(&part[self.offset..self.offset + take]);
            self.offset += take;
            if self.offset == part.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

impl Chunks {
    fn remaining(&self) -> usize {
        self.parts[self.part..]
            .iter()
            .map(Bytes::len)
            .sum::<usize>()
            - self.offset
    }
}

/// Validates and repairs `message`; returns the outgoing message and the
/// repairs made.
pub fn prepare(message: Vec<u8>, sub: &Submission<'_>) -> Result<(Outgoing, Vec<Repair>), Invalid> {
    validate::check_line_lengths(&message)?;
    let section = validate::split(&message)?;
    validate::check_from_count(&message, &section)?;
    let ctx = repair::Context::now(sub.identity.domain(), sub.hostname);
    let repaired = repair::repair(&message, &section, &ctx);
    // Addresses are checked after completion: `bob` is fine once it is `bob@domain`.
    validate::check_addresses(&repaired.header, sub.identity)?;

    // RFC 5321 7.2: name the recipient only when there is exactly one.
    let for_recipient = match sub.recipients {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let received =
        correo_smtp::received::received_header(sub.info, sub.hostname, sub.journey, for_recipient);
    let mut head = Vec::with_capacity(received.len() + repaired.header.len() + 80);
    head.extend_from_slice(received.as_bytes());
    if !head.ends_with(b"\r\n") {
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("{JOURNEY_HEADER}: {}\r\n", sub.journey).as_bytes());
    head.extend_from_slice(&repaired.header);
    head.extend_from_slice(b"\r\n");

    let body_start = section.body_start;
    let body = Bytes::from(message).slice(body_start..);
    Ok((Outgoing::new(head, body), repaired.repairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cross_the_head_body_boundary() {
        let out = Outgoing::new(b"abc".to_vec(), Bytes::from_static(b"defghij"));
        let chunks: Vec<_> = out.chunks(4).collect();
        assert_eq!(
            chunks,
            vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]
        );
        assert_eq!(
            out.chunks(100).collect::<Vec<_>>(),
            vec![b"abcdefghij".to_vec()]
        );
        assert_eq!(out.len(), 10);
        let empty_body = Outgoing::new(b"ab".to_vec(), Bytes::new());
        assert_eq!(empty_body.chunks(1).count(), 2);
    }

    #[test]
    fn body_is_shared_not_copied() {
        let message = b"From: a@b.test\r\n\r\nbody".to_vec();
        let ptr = message.as_ptr();
        let body = Bytes::from(message).slice(18..);
        assert_eq!(&body[..], b"body");
        assert_eq!(body.as_ptr(), ptr.wrapping_add(18));
    }

    #[test]
    fn a_25_mb_submission_is_repaired_without_copying_the_body() {
        let info = SessionInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:587".parse().unwrap(),
            helo: Some("client.example.test".into()),
            esmtp: true,
            tls: Some("TLSv1.3:TLS13_AES_256_GCM_SHA384".into()),
            authenticated: Some("alice@example.test".into()),
        };
        let identity = Identity::new("alice@example.test", ["alice@example.test"]);
        let head = b"From: alice\r\nTo: bob\r\nSubject: big\r\n\r\n";
        let line = [b'x'; 998];
        let mut message = Vec::with_capacity(26_214_400);
        message.extend_from_slice(head);
        while message.len() + 1000 <= 26_214_400 {
            message.extend_from_slice(&line);
            message.extend_from_slice(b"\r\n");
        }
        let (len, body_ptr) = (message.len(), message.as_ptr().wrapping_add(head.len()));
        let recipients = vec!["bob@example.test".to_string()];
        let sub = Submission {
            info: &info,
            identity: &identity,
            hostname: "msa.example.test",
            journey: "j-1",
            recipients: &recipients,
        };
        let (out, repairs) = prepare(message, &sub).unwrap();
        assert_eq!(repairs.len(), 4, "{repairs:?}");
        assert_eq!(
            out.body.as_ptr(),
            body_ptr,
            "the body is the submitted buffer"
        );
        assert_eq!(out.body.len(), len - head.len());
        let head = std::str::from_utf8(out.head()).unwrap();
        assert!(
            head.starts_with("Received: from client.example.test"),
            "{head}"
        );
        assert!(
            head.contains(
                "\r\nX-Correo-Journey: j-1\r\nFrom: alice@example.test\r\nTo: bob@example.test\r\n"
            ),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!(
            out.chunks(correo_proto::CHUNK_SIZE)
                .map(|c| c.len())
                .sum::<usize>(),
            out.len()
        );
    }
}
