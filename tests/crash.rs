//! Crash safety of the transfer path (issue 3): a load of messages goes
//! MSA → MTA → MDA (SMTP submission with STARTTLS + AUTH from several
//! concurrent clients) while the MTA and the MDA are killed with SIGKILL at
//! random moments and restarted. Once the queue has drained, every message
//! that got a `250` must be in the recipient's Maildir (at least once);
//! duplicates are measured and reported, not asserted.
//!
//! Sizes are tuned for CI (debug build, 2 cores): `CRASH_MESSAGES`,
//! `CRASH_CLIENTS` and `CRASH_KILLS` override them.

use correo_tests::load::{
    LoadResult, lost_and_duplicated, run_load, tokens_in_maildir, unacknowledged,
};
use correo_tests::{MAILBOX_PORT, MDA_GRPC_PORT, MTA_GRPC_PORT, Org, OrgOptions, SMTP_PORT};
use rand::Rng;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_of_mta_and_mda_under_load_loses_nothing() {
    let messages = env_or("CRASH_MESSAGES", 2000);
    let clients = env_or("CRASH_CLIENTS", 6);
    let min_kills = env_or("CRASH_KILLS", 12);

    let mut options = OrgOptions::new("crash.test");
    options.retry_first = "1s".into();
    options.retry_max = "2s".into();
    let mut org = Org::start(options).unwrap();
    let submitter = org.submitter("alice", "bob@crash.test");
    let started = Instant::now();
    let load = std::thread::spawn(move || run_load(&submitter, clients, messages, "crash", 200));

    // Kill the MTA or the MDA at random moments while the load runs (and
    // at least `min_kills` times), restarting each after a short pause.
    let mut rng = rand::thread_rng();
    let (mut mta_kills, mut mda_kills) = (0, 0);
    while mta_kills + mda_kills < min_kills || !load.is_finished() {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        let role = if rng.gen_bool(0.5) { "mta" } else { "mda" };
        org.process(role).kill();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..700)));
        if role == "mta" {
            mta_kills += 1;
            org.start_role("mta", &[MTA_GRPC_PORT, SMTP_PORT]).unwrap();
        } else {
            mda_kills += 1;
            org.start_role("mda", &[MDA_GRPC_PORT, MAILBOX_PORT])
                .unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "load did not finish"
        );
    }
    let LoadResult {
        accepted,
        refused,
        broken,
    } = load.join().unwrap();
    let load_time = started.elapsed();

    // Drain: the spool empties and every accepted token arrives.
    let maildir = org.path("mda/mail/crash.test/bob/Maildir/new");
    let drained = correo_tests::wait_until(Duration::from_secs(180), || {
        let delivered = tokens_in_maildir(&maildir);
        (org.spooled() == 0 && accepted.iter().all(|t| delivered.contains_key(t))).then_some(())
    });
    let delivered = tokens_in_maildir(&maildir);
    let (lost, duplicated) = lost_and_duplicated(&accepted, &delivered);
    let extra = unacknowledged(&accepted, &delivered);
    let delivered_accepted = accepted
        .iter()
        .filter(|t| delivered.contains_key(*t))
        .count();
    println!(
        "crash test: messages={messages} clients={clients} kills: mta={mta_kills} mda={mda_kills} \
         load={:.1}s total={:.1}s\n\
         crash test: accepted={} delivered={delivered_accepted} lost={} duplicated={duplicated} \
         (delivered without a 250: {extra}; attempts refused 4xx/5xx: {refused}; connections lost mid-message: {broken}; \
         left in spool: {})",
        load_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        accepted.len(),
        lost.len(),
        org.spooled(),
    );
    assert!(mta_kills + mda_kills >= 10);
    assert!(
        accepted.len() >= messages * 9 / 10,
        "too few messages accepted: {}",
        accepted.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} accepted messages, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        drained.is_some(),
        "the queue did not drain ({} left)",
        org.spooled()
    );
}
