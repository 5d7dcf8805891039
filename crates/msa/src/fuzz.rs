//! Fuzz entry point for the MSA's message validation and repair (the body
//! of the `msa_prepare` cargo-fuzz target and of the stable smoke test; see
//! `docs/FUZZING.md`). Must never panic on any input.

use crate::prepare::{self, Submission};
use crate::validate::{self, Identity};
use correo_smtp::server::SessionInfo;

/// Runs `prepare` on `data` as alice@example.test would submit it. What
/// comes out must itself pass validation: repair never produces a message
/// the MSA would refuse, and never a bare CR or LF when none went in.
pub fn prepare(data: &[u8]) {
    let info = SessionInfo {
        peer: "192.0.2.7:40000".parse().expect("addr"),
        local: "192.0.2.1:587".parse().expect("addr"),
        helo: Some("client.example.test".into()),
        esmtp: true,
        tls: Some("TLSv1.3:TLS13_AES_256_GCM_SHA384".into()),
        authenticated: Some("alice@example.test".into()),
    };
    let identity = Identity::new(
        "alice@example.test",
        ["alice@example.test", "sales@example.test"],
    );
    let recipients = vec!["bob@example.test".to_string()];
    let sub = Submission {
        info: &info,
        identity: &identity,
        hostname: "msa.example.test",
        journey: "00000000-0000-4000-8000-000000000000",
        recipients: &recipients,
    };
    let Ok((outgoing, _repairs)) = prepare::prepare(data.to_vec(), &sub) else {
        return;
    };
    let out = outgoing.to_vec();
    assert_eq!(out.len(), outgoing.len());
    let section = validate::split(&out).expect("repaired message has a header section");
    validate::check_from_count(&out, &section).expect("repaired message has one From");
    let clean = |m: &[u8]| {
        m.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => m.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && m[i - 1] == b'\r',
            _ => true,
        })
    };
    if clean(data) {
        assert!(clean(&out), "repair introduced a bare CR or LF");
    }
}

#[cfg(test)]
mod smoke {
    use correo_smtp::fuzz::Smoke;
    use std::time::Duration;

    const SEEDS: &[&[u8]] = &[
        b"From: alice@example.test\r\nTo: bob\r\nSubject: hi\r\n\r\nbody\r\n",
        b"From: Alice <alice@example.test>\r\nDate: Tue, 1 Dec 2026 08:00:00 +0000\r\nMessage-ID: <a@b>\r\nBcc: x@y.test\r\n\r\n",
        b"From: alice@example.test\r\nX-Correo-Journey: abc\r\nSubject: =?utf-8?q?x?=\r\n folded\r\n\r\n",
        b"From: sales@example.test, alice@example.test\r\nSender: alice@example.test\r\nTo: \"a, b\" <c@d.test>, e\r\n\r\n.",
        b"Subject: no from\r\n\r\n",
    ];

    #[test]
    fn fuzz_smoke_msa_prepare() {
        Smoke::run(
            6,
            20_000,
            Duration::from_secs(5),
            SEEDS,
            b"\r\n:,<>@\" \t=?;()\\\x00\xff",
            super::prepare,
        );
    }
}
