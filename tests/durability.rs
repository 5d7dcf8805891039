//! The MTA keeps what it accepted (issue 3): DSNs for permanent failures,
//! a damaged or deleted queue index, a remote MX or the MDA down for a
//! while, SIGTERM under load, and the `mta queue` commands against a
//! running node.

use correo_tests::load::{Session, lost_and_duplicated, run_load, tokens_in_maildir};
use correo_tests::{
    Dns, MAILBOX_PORT, MDA_GRPC_PORT, MTA_GRPC_PORT, Org, OrgOptions, SMTP_PORT, Zone, wait_until,
};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn two_orgs() -> (Org, Org, Dns) {
    let org_b = Org::start(OrgOptions::new("another.test")).unwrap();
    let dns = Dns::start(&[
        Zone::with_mx("another.test", org_b.ip),
        Zone::raw("example.test", ""),
    ])
    .unwrap();
    let mut a = OrgOptions::new("example.test");
    a.dns = Some(dns.addr);
    let org_a = Org::start(a).unwrap();
    (org_a, org_b, dns)
}

#[test]
fn a_550_from_the_remote_produces_a_dsn_in_the_senders_maildir() {
    let (org_a, org_b, _dns) = two_orgs();
    org_a
        .run_mua(
            "alice",
            &[
                "send",
                "--to",
                "nobody@another.test",
                "--subject",
                "Will bounce",
                "--body",
                "Hello?",
            ],
        )
        .unwrap();
    let mail = org_a.wait_for_mail("alice", 1, WAIT).unwrap();
    let dsn = &mail[0];
    assert!(dsn.starts_with("Return-Path: <>\r\n"), "{dsn}");
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{dsn}"
    );
    assert!(
        dsn.contains("From: Mail Delivery System <MAILER-DAEMON@mx.example.test>"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Content-Type: message/delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; nobody@another.test\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{dsn}"
    );
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{dsn}");
    assert!(dsn.contains("Content-Type: text/rfc822-headers"), "{dsn}");
    assert!(
        dsn.contains("Subject: Will bounce"),
        "original headers: {dsn}"
    );
    assert!(!dsn.contains("Hello?"), "no body: {dsn}");
    // The failed message and its DSN have left the queue; nothing arrived at B.
    assert!(wait_until(WAIT, || (org_a.spooled() == 0).then_some(())).is_some());
    assert!(org_b.maildir_new("nobody").is_empty());
}

/// Messages accepted while the MDA is down stay queued (through an
/// authenticated session opened before the MDA went away).
fn queue_while_mda_down(org: &mut Org, tokens: &[&str]) -> Vec<String> {
    let mut session = Session::open(&org.submitter("alice", "bob@example.test")).unwrap();
    org.process("mda").kill();
    let mut accepted = Vec::new();
    for token in tokens {
        let (code, text) = session.send(token).unwrap();
        assert_eq!(code, 250, "{text}");
        accepted.push(token.to_string());
    }
    session.quit();
    accepted
}

#[test]
fn a_deleted_or_damaged_index_is_rebuilt_with_nothing_lost() {
    let mut org = Org::start(OrgOptions::new("example.test")).unwrap();
    let mut accepted = queue_while_mda_down(&mut org, &["idx-1", "idx-2", "idx-3"]);
    assert!(wait_until(WAIT, || (org.spooled() == 3).then_some(())).is_some());

    // Damage: truncate every file inside queue.sled, with the MTA killed.
    org.process("mta").kill();
    for entry in std::fs::read_dir(org.path("mta/queue.sled"))
        .unwrap()
        .flatten()
    {
        if entry.path().is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(entry.path())
                .unwrap()
                .set_len(7)
                .unwrap();
        }
    }
    org.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT]).unwrap();
    let (ok, list, err) = org.mta_queue(&["list"]).unwrap();
    assert!(ok, "{err}");
    assert_eq!(list.matches("bob@example.test").count(), 3, "{list}");

    // Delete it altogether, after queueing two more.
    org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])
        .unwrap();
    let _ = org.wait_for_mail("bob", 3, WAIT).unwrap();
    accepted.extend(queue_while_mda_down(&mut org, &["idx-4", "idx-5"]));
    org.process("mta").kill();
    std::fs::remove_dir_all(org.path("mta/queue.sled")).unwrap();
    org.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT]).unwrap();
    org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])
        .unwrap();

    let maildir = org.path("mda/mail/example.test/bob/Maildir/new");
    let all = wait_until(WAIT, || {
        let d = tokens_in_maildir(&maildir);
        accepted.iter().all(|t| d.contains_key(t)).then_some(d)
    });
    let delivered = tokens_in_maildir(&maildir);
    let (lost, duplicated) = lost_and_duplicated(&accepted, &delivered);
    println!(
        "index rebuild: accepted={} lost={} duplicated={duplicated}",
        accepted.len(),
        lost.len()
    );
    assert!(all.is_some() && lost.is_empty(), "lost {lost:?}");
    assert!(wait_until(WAIT, || (org.spooled() == 0).then_some(())).is_some());
}

#[test]
fn mail_for_a_remote_mx_that_is_down_waits_and_arrives_when_it_is_back() {
    let (org_a, mut org_b, _dns) = two_orgs();
    org_b.process("mta").kill();
    org_a
        .run_mua(
            "alice",
            &[
                "send",
                "--to",
                "bob@another.test",
                "--subject",
                "Patience",
                "--body",
                "Wait for it.",
            ],
        )
        .unwrap();
    // It stays queued at A, deferred, while B's MX is down.
    let deferred = wait_until(WAIT, || {
        let (_, list, _) = org_a.mta_queue(&["list"]).ok()?;
        (list.contains("deferred") && list.contains("bob@another.test")).then_some(list)
    });
    assert!(deferred.is_some(), "not deferred");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(org_a.spooled(), 1);
    org_b
        .start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT])
        .unwrap();
    let mail = org_b.wait_for_mail("bob", 1, WAIT).unwrap();
    assert!(mail[0].contains("Wait for it."));
    assert!(wait_until(WAIT, || (org_a.spooled() == 0).then_some(())).is_some());
}

fn queue_ids(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

#[test]
fn mda_down_keeps_mail_queued_and_every_queue_command_works() {
    let mut org = Org::start(OrgOptions::new("example.test")).unwrap();
    queue_while_mda_down(&mut org, &["q-1", "q-2", "q-3", "q-4"]);

    let list = wait_until(WAIT, || {
        let (ok, list, _) = org.mta_queue(&["list"]).ok()?;
        (ok && list.matches("deferred").count() == 4).then_some(list)
    })
    .expect("four deferred messages");
    assert!(
        list.contains("MDA unavailable") || list.contains("backed off"),
        "{list}"
    );
    assert!(list.contains("<alice@example.test>"), "{list}");
    let ids = queue_ids(&list);
    assert_eq!(ids.len(), 4, "{list}");

    fn run(org: &Org, args: &[&str]) -> String {
        let (ok, out, err) = org.mta_queue(args).unwrap();
        assert!(ok, "mta queue {args:?}: {err}");
        out
    }
    let show = run(&org, &["show", &ids[0]]);
    assert!(
        show.starts_with(&ids[0]) && show.contains("bob@example.test"),
        "{show}"
    );
    assert!(run(&org, &["hold", &ids[0]]).contains("held"));
    assert!(run(&org, &["show", &ids[0]]).contains("[held]"));
    assert!(run(&org, &["release", &ids[0]]).contains("released"));
    assert!(!run(&org, &["show", &ids[0]]).contains("[held]"));
    assert!(run(&org, &["retry", &ids[1]]).contains("scheduled for immediate retry"));
    assert!(run(&org, &["retry", "--all"]).contains("scheduled for immediate retry"));
    let summary = run(&org, &["summary"]);
    assert!(
        summary.contains("DOMAIN") && summary.contains("example.test"),
        "{summary}"
    );
    assert!(run(&org, &["delete", &ids[2]]).contains("deleted"));
    assert!(run(&org, &["bounce", &ids[3]]).contains("1 recipients failed"));
    // Errors name the id.
    for (args, id) in [
        (["show", "0000000000000000"], "0000000000000000"),
        (["hold", "not-an-id"], "not-an-id"),
    ] {
        let (ok, _, err) = org.mta_queue(&args).unwrap();
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(&format!("queue id {id} not found")), "{err}");
    }
    let (ok, _, err) = org.mta_queue(&["delete", &ids[2]]).unwrap();
    assert!(!ok && err.contains(&ids[2]), "{err}");
    // Held messages are not delivered until released: hold one again, then
    // bring the MDA back.
    run(&org, &["hold", &ids[1]]);
    org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])
        .unwrap();
    let maildir = org.path("mda/mail/example.test/bob/Maildir/new");
    assert!(
        wait_until(WAIT, || tokens_in_maildir(&maildir)
            .contains_key("q-1")
            .then_some(()))
        .is_some()
    );
    // The bounce reached alice as a DSN.
    let dsn = org.wait_for_mail("alice", 1, WAIT).unwrap();
    assert!(
        dsn[0].contains("bounced by the queue administrator"),
        "{}",
        dsn[0]
    );
    std::thread::sleep(Duration::from_secs(2));
    let delivered = tokens_in_maildir(&maildir);
    assert!(!delivered.contains_key("q-2"), "held message delivered");
    assert!(!delivered.contains_key("q-3"), "deleted message delivered");
    assert!(!delivered.contains_key("q-4"), "bounced message delivered");
    run(&org, &["release", &ids[1]]);
    assert!(
        wait_until(WAIT, || tokens_in_maildir(&maildir)
            .contains_key("q-2")
            .then_some(()))
        .is_some()
    );
    assert!(wait_until(WAIT, || (org.spooled() == 0).then_some(())).is_some());
    let (ok, out, _) = org.mta_queue(&["list"]).unwrap();
    assert!(ok && out.contains("queue is empty"), "{out}");
}

#[test]
fn sigterm_under_load_leaves_no_half_written_state() {
    let mut org = Org::start(OrgOptions::new("example.test")).unwrap();
    let submitter = org.submitter("alice", "bob@example.test");
    let started = std::time::Instant::now();
    let load = std::thread::spawn(move || run_load(&submitter, 4, 300, "term", 200));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        org.terminate("mta", Duration::from_secs(60)).unwrap(),
        "MTA exit status after SIGTERM"
    );
    println!(
        "sigterm: MTA stopped at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        org.spool_torn_bytes(),
        0,
        "half-written spool records left behind"
    );
    std::thread::sleep(Duration::from_millis(500));
    org.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        org.terminate("mda", Duration::from_secs(60)).unwrap(),
        "MDA exit status after SIGTERM"
    );
    println!(
        "sigterm: MDA stopped at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])
        .unwrap();
    let result = load.join().unwrap();
    println!(
        "sigterm: load done at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let maildir = org.path("mda/mail/example.test/bob/Maildir/new");
    wait_until(Duration::from_secs(120), || {
        let d = tokens_in_maildir(&maildir);
        (org.spooled() == 0 && result.accepted.iter().all(|t| d.contains_key(t))).then_some(())
    });
    let delivered = tokens_in_maildir(&maildir);
    let (lost, duplicated) = lost_and_duplicated(&result.accepted, &delivered);
    println!(
        "sigterm: drained at {:.1}s accepted={} lost={} duplicated={duplicated} refused={} broken={}",
        started.elapsed().as_secs_f64(),
        result.accepted.len(),
        lost.len(),
        result.refused,
        result.broken
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    assert!(result.accepted.len() >= 290);
}
