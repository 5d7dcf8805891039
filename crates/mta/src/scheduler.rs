//! The delivery scheduler: takes due recipients from the queue, groups
//! them by message and destination domain, and runs the deliveries with
//! bounded concurrency (overall and per destination).
//!
//! One job = one message to one domain. A job in flight is never started
//! twice; its results go back to the queue, which computes the next
//! attempt. A crash mid-job leaves the recipients as they were, so they
//! are tried again: at worst a duplicate, never a loss.

use crate::headers;
use crate::local::Mda;
use crate::queue::{Outcome, Queue, now_secs};
use crate::queue_id::QueueId;
use crate::relay::Relay;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Longest sleep between queue scans; retries due later are found by then.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How long a job whose results could not be stored is held back (a full
/// disk must not turn into a redelivery loop).
const COOLDOWN: Duration = Duration::from_secs(60);

/// One message to one destination domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub queue_id: QueueId,
    pub journey: String,
    pub sender: String,
    pub domain: String,
    pub recipients: Vec<String>,
    /// Which attempt this is for these recipients (1 = first), for the
    /// journey and the logs.
    pub attempt: u32,
}

/// Where jobs go: the MDA for local domains, the relay for the rest.
pub trait Deliver: Send + Sync {
    fn deliver<'a>(
        &'a self,
        job: &'a Job,
        message: &'a [u8],
    ) -> BoxFuture<'a, Vec<(String, Outcome)>>;
}

/// The production router.
pub struct Router {
    pub local_domains: Vec<String>,
    pub mda: Mda,
    pub relay: Relay,
}

impl Deliver for Router {
    fn deliver<'a>(
        &'a self,
        job: &'a Job,
        message: &'a [u8],
    ) -> BoxFuture<'a, Vec<(String, Outcome)>> {
        Box::pin(async move {
            if self
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&job.domain))
            {
                self.mda
                    .deliver(
                        job.queue_id.as_str(),
                        &job.journey,
                        &job.sender,
                        &job.recipients,
                        message,
                    )
                    .await
            } else {
                self.relay
                    .deliver(&job.domain, &job.sender, &job.recipients, message)
                    .await
            }
        })
    }
}

/// Concurrency limits of the scheduler, and its circuit breaker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub per_destination: usize,
    /// Consecutive connection failures that back a destination off as a
    /// whole (0 = never).
    pub breaker_threshold: u32,
    /// First back-off of a destination; doubles on every new trip.
    pub breaker_first: Duration,
    pub breaker_max: Duration,
}

impl Limits {
    /// Limits without a circuit breaker.
    pub fn new(concurrency: usize, per_destination: usize) -> Limits {
        Limits {
            concurrency,
            per_destination,
            breaker_threshold: 0,
            breaker_first: Duration::from_secs(60),
            breaker_max: Duration::from_secs(3600),
        }
    }
}

/// How a destination (a domain) has been doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Connection failures in a row (reset by any answer from it).
    pub failures: u32,
    /// Backed off until then (seconds since the epoch).
    pub open_until: Option<i64>,
    /// Times it was backed off since it last answered.
    pub trips: u32,
    /// After a back-off, one job probes it; the others wait for the probe.
    pub probing: bool,
}

/// Whether a reply means the destination could not be reached at all
/// (connection refused or timed out, DNS or MDA unavailable) rather than
/// an answer from it.
pub fn is_connection_failure(reply: &str) -> bool {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    code.starts_with('4')
        && matches!(
            words.next(),
            Some("4.4.1") | Some("4.4.2") | Some("4.4.3") | Some("4.4.4")
        )
}

/// What the breaker says about a destination now.
enum Gate {
    Open,
    /// Backed off until then: defer without connecting.
    BackedOff(i64, u32),
    /// Its probe is in flight: defer the others for a back-off step.
    Probing(u32),
}

type HealthMap = Arc<Mutex<HashMap<String, Health>>>;

pub struct Scheduler {
    queue: Arc<Queue>,
    deliver: Arc<dyn Deliver>,
    limits: Limits,
    global: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Mutex<HashSet<(QueueId, String)>>>,
    /// Jobs whose results could not be recorded, held back until then.
    cooldown: Arc<Mutex<HashMap<(QueueId, String), Instant>>>,
    health: HealthMap,
    flushing: Arc<std::sync::atomic::AtomicBool>,
}

/// How often the index is flushed at most (each round, in batches).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

impl Scheduler {
    pub fn new(queue: Arc<Queue>, deliver: Arc<dyn Deliver>, limits: Limits) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            queue,
            deliver,
            limits,
            global: Arc::new(Semaphore::new(limits.concurrency)),
            per_domain: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            cooldown: Arc::new(Mutex::new(HashMap::new())),
            health: Arc::new(Mutex::new(HashMap::new())),
            flushing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// The health of a destination (tests, diagnostics).
    pub fn health(&self, domain: &str) -> Health {
        self.health.lock().get(domain).cloned().unwrap_or_default()
    }

    /// Runs until `shutdown` turns true, then waits up to `grace` for the
    /// jobs in flight (abandoned jobs are simply retried after restart).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let mut tasks = JoinSet::new();
        let mut last_flush = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            // At full capacity only a finished job can change anything:
            // skip the schedule until one does.
            let idle = if self.global.available_permits() > 0 {
                let next = self.dispatch(&mut tasks);
                let wait = next.map_or(MAX_IDLE.as_secs() as i64, |at| at - now_secs());
                Duration::from_secs(wait.clamp(1, MAX_IDLE.as_secs() as i64) as u64)
            } else {
                MAX_IDLE
            };
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                self.flush_in_background();
            }
            tokio::select! {
                _ = self.queue.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                Some(_) = tasks.join_next() => {}
                // A dropped sender means the server is gone: stop too.
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        if !tasks.is_empty() {
            tracing::info!(jobs = tasks.len(), "waiting for deliveries in flight");
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(grace, drain).await.is_err() {
                tracing::warn!("deliveries still running at shutdown; they will be retried");
                tasks.abort_all();
            }
        }
    }

    /// Index writes of the last round go to disk together (one flush),
    /// so a crash rarely forgets a delivery (which would repeat it).
    fn flush_in_background(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.flushing.swap(true, SeqCst) {
            return;
        }
        let queue = self.queue.clone();
        let flushing = self.flushing.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = queue.flush_if_dirty() {
                tracing::warn!(error = %e, "cannot flush the queue index");
            }
            flushing.store(false, SeqCst);
        });
    }

    fn gate(&self, domain: &str, now: i64) -> Gate {
        if self.limits.breaker_threshold == 0 {
            return Gate::Open;
        }
        let mut health = self.health.lock();
        let Some(h) = health.get_mut(domain) else {
            return Gate::Open;
        };
        match h.open_until {
            Some(until) if until > now => Gate::BackedOff(until, h.failures),
            Some(_) if h.probing => Gate::Probing(h.failures),
            Some(_) => {
                h.probing = true;
                Gate::Open
            }
            None => Gate::Open,
        }
    }

    /// Starts every due job the limits allow. Returns when the next
    /// deferred recipient falls due, if any.
    pub fn dispatch(&self, tasks: &mut JoinSet<()>) -> Option<i64> {
        let now = now_secs();
        let instant = Instant::now();
        self.cooldown.lock().retain(|_, until| *until > instant);
        // Due work is found per destination domain, and only as much as
        // each domain has free delivery slots for (`Queue::due_by_domain`),
        // passing over messages in flight or cooling down, without reading
        // the index. Walking every due message on every wake-up (one per
        // enqueue and per finished job) was a fifth of the MTA's CPU in a
        // burst (docs/BENCHMARKS.md, run 5).
        let available: HashMap<String, usize> = self
            .per_domain
            .lock()
            .iter()
            .map(|(d, s)| (d.clone(), s.available_permits()))
            .collect();
        let mut full: HashSet<String> = available
            .iter()
            .filter(|(_, free)| **free == 0)
            .map(|(d, _)| d.clone())
            .collect();
        let per_destination = self.limits.per_destination;
        let (candidates, more) = {
            // Borrowed under the locks, not cloned: a wake-up comes with
            // every enqueue and every finished job, and copying each
            // (id, domain) in flight cost two allocations per pair per
            // wake-up (docs/BENCHMARKS.md, run 7).
            let in_flight = self.in_flight.lock();
            let cooldown = self.cooldown.lock();
            let blocked: HashSet<(&str, &str)> = in_flight
                .iter()
                .chain(cooldown.keys())
                .map(|(id, domain)| (id.as_str(), domain.as_str()))
                .collect();
            self.queue.due_by_domain(
                now,
                |domain| available.get(domain).copied().unwrap_or(per_destination),
                |id, domain| blocked.contains(&(id, domain)),
            )
        };
        // A candidate whose destinations all filled up earlier in this
        // round waits; one in flight or cooling down for a destination is
        // passed over for it below.
        let may_start =
            |domains: &[String], full: &HashSet<String>| domains.iter().any(|d| !full.contains(d));
        // Whether this round started or postponed anything: only then is
        // another round right away worth it when `more` is due.
        let mut progressed = false;
        for (id, domains) in candidates {
            if self.global.available_permits() == 0 {
                break; // Everything is busy; finished jobs wake us.
            }
            if !may_start(&domains, &full) {
                continue; // Its destinations filled up earlier in this round.
            }
            let Some(queue_id) = QueueId::parse(&id) else {
                continue;
            };
            let message = match self.queue.show(&id) {
                Ok(Some(message)) => message,
                Ok(None) => {
                    self.queue.unschedule(&id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read the queue index");
                    continue;
                }
            };
            if message.held {
                continue;
            }
            // Group this message's due recipients by destination domain.
            let mut by_domain: Vec<(String, Vec<String>, u32)> = Vec::new();
            for r in message.recipients.iter().filter(|r| r.is_due(now)) {
                let domain = r.domain();
                match by_domain.iter_mut().find(|(d, _, _)| *d == domain) {
                    Some((_, list, attempt)) => {
                        list.push(r.address.clone());
                        *attempt = (*attempt).max(r.attempts + 1);
                    }
                    None => by_domain.push((domain, vec![r.address.clone()], r.attempts + 1)),
                }
            }
            for (domain, recipients, attempt) in by_domain {
                let key = (queue_id.clone(), domain.clone());
                if self.in_flight.lock().contains(&key) || self.cooldown.lock().contains_key(&key) {
                    continue;
                }
                let (until, failures) = match self.gate(&domain, now) {
                    Gate::Open => (None, 0),
                    Gate::Probing(failures) => (
                        Some(now + self.limits.breaker_first.as_secs().max(1) as i64),
                        failures,
                    ),
                    Gate::BackedOff(until, failures) => (Some(until), failures),
                };
                match until {
                    None => {}
                    Some(until) => {
                        let reply = format!(
                            "451 4.4.1 destination {domain} backed off after {failures} consecutive connection failures"
                        );
                        progressed = true;
                        if let Err(e) =
                            self.queue
                                .postpone(&queue_id, &recipients, until, &reply, now)
                        {
                            tracing::error!(queue_id = %queue_id, error = %e, "cannot defer recipients of a backed-off destination");
                            self.cooldown
                                .lock()
                                .insert(key.clone(), Instant::now() + COOLDOWN);
                        }
                        continue;
                    }
                }
                let Ok(global) = self.global.clone().try_acquire_owned() else {
                    self.release_probe(&domain);
                    return self.queue.next_due_after(now);
                };
                let semaphore = self.domain_semaphore(&domain);
                let Ok(local) = semaphore.clone().try_acquire_owned() else {
                    self.release_probe(&domain);
                    full.insert(domain);
                    continue;
                };
                if semaphore.available_permits() == 0 {
                    full.insert(domain.clone());
                }
                self.in_flight.lock().insert(key.clone());
                progressed = true;
                let job = Job {
                    queue_id: queue_id.clone(),
                    journey: message.journey_id.clone(),
                    sender: message.sender.clone(),
                    domain,
                    recipients,
                    attempt,
                };
                let queue = self.queue.clone();
                let deliver = self.deliver.clone();
                let in_flight = self.in_flight.clone();
                let cooldown = self.cooldown.clone();
                let health = self.health.clone();
                let limits = self.limits;
                tasks.spawn(async move {
                    let _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (global, local);
                    let domain = job.domain.clone();
                    let (recorded, unreachable) = run_job(queue.clone(), deliver, job).await;
                    if let Some(unreachable) = unreachable {
                        note_health(&health, &limits, &domain, unreachable, now_secs());
                    }
                    if !recorded {
                        cooldown
                            .lock()
                            .insert(key.clone(), Instant::now() + COOLDOWN);
                    }
                    in_flight.lock().remove(&key);
                    queue.wake.notify_one();
                });
            }
        }
        // Some destination had more due mail than room this round (say a
        // backed-off one, whose messages are postponed a batch at a time):
        // come back at once instead of after the idle wait.
        if more && progressed {
            self.queue.wake.notify_one();
        }
        // Forget idle destinations so the map does not grow forever.
        self.per_domain
            .lock()
            .retain(|_, s| s.available_permits() < per_destination);
        self.queue.next_due_after(now)
    }

    /// A probe that could not start after all.
    fn release_probe(&self, domain: &str) {
        if let Some(h) = self.health.lock().get_mut(domain) {
            h.probing = false;
        }
    }

    fn domain_semaphore(&self, domain: &str) -> Arc<Semaphore> {
        self.per_domain
            .lock()
            .entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_destination)))
            .clone()
    }
}

/// Updates a destination's health after a job: any answer resets it; a
/// connection failure counts, and enough in a row back it off
/// (`breaker_first`, doubling per trip, at most `breaker_max`).
fn note_health(health: &HealthMap, limits: &Limits, domain: &str, unreachable: bool, now: i64) {
    let mut map = health.lock();
    if !unreachable {
        map.remove(domain);
        return;
    }
    if limits.breaker_threshold == 0 {
        return;
    }
    let h = map.entry(domain.to_string()).or_default();
    h.failures += 1;
    h.probing = false;
    if h.failures >= limits.breaker_threshold {
        h.trips += 1;
        let backoff = limits
            .breaker_first
            .checked_mul(1u32 << (h.trips - 1).min(20))
            .unwrap_or(limits.breaker_max)
            .min(limits.breaker_max);
        let until = now + backoff.as_secs().max(1) as i64;
        h.open_until = Some(until);
        tracing::warn!(
            %domain,
            failures = h.failures,
            backoff = ?backoff,
            "destination backed off: its recipients are deferred without connecting"
        );
    }
}

/// Delivers one job and records its results.
/// Returns whether the results were recorded (if not, the caller keeps the
/// job back for a while instead of redelivering at once), and, when the
/// destination was tried, whether it was unreachable.
async fn run_job(queue: Arc<Queue>, deliver: Arc<dyn Deliver>, job: Job) -> (bool, Option<bool>) {
    let span = tracing::info_span!("delivery", queue_id = %job.queue_id, journey = %job.journey, domain = %job.domain);
    async move {
        let id = job.queue_id.clone();
        let q = queue.clone();
        let message = match queue.fresh_body(job.queue_id.as_str()) {
            Some(body) => Ok(Ok(Body::Shared(body))),
            None => tokio::task::spawn_blocking(move || q.read(&id).map(|s| Body::Owned(s.message)))
                .await,
        };
        let message = match message {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read spool file");
                return (unreadable_spool(&queue, &job), None);
            }
            Err(e) => {
                tracing::error!(error = %e, "spool read task failed");
                return (false, None);
            }
        };
        let hops = headers::count(&message, "received");
        let mut tried = false;
        let outcomes = if hops > headers::MAX_HOPS {
            let reply =
                format!("554 5.4.6 too many hops ({hops} Received header fields): mail loop?");
            job.recipients
                .iter()
                .map(|r| (r.clone(), Outcome::Failed(reply.clone())))
                .collect()
        } else {
            tried = true;
            let started = Instant::now();
            let outcomes = deliver.deliver(&job, &message).await;
            correo_runtime::metrics::mta_delivery(
                started.elapsed(),
                outcomes.iter().map(|(_, o)| match o {
                    Outcome::Delivered(_) => "delivered",
                    Outcome::Deferred(_) => "deferred",
                    Outcome::Failed(_) => "failed",
                }),
            );
            outcomes
        };
        let unreachable = tried.then(|| {
            !outcomes.is_empty()
                && outcomes
                    .iter()
                    .all(|(_, o)| matches!(o, Outcome::Deferred(r) if is_connection_failure(r)))
        });
        // `journey_event`: these lines are the MTA's journey records too.
        let attempt = job.attempt;
        for (recipient, outcome) in &outcomes {
            match outcome {
                Outcome::Delivered(reply) => {
                    tracing::info!(%recipient, %reply, attempt, journey_event = "delivered", "delivered")
                }
                Outcome::Deferred(reply) => {
                    tracing::warn!(%recipient, %reply, attempt, journey_event = "deferred", "deferred")
                }
                Outcome::Failed(reply) => {
                    tracing::warn!(%recipient, %reply, attempt, journey_event = "failed", "failed")
                }
            }
        }
        let id = job.queue_id.clone();
        // Most first attempts deliver everything, and recording that waits
        // for no disk: no hop to the blocking pool for it.
        let recorded = match queue.record_if_quick(&id, &outcomes, now_secs()) {
            Some(result) => Ok(result),
            None => {
                tokio::task::spawn_blocking(move || queue.record(&id, &outcomes, now_secs())).await
            }
        };
        let recorded = match recorded {
            Ok(Ok(_)) => true,
            // The recipients stay as they were and are tried again later.
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot record delivery results");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "recording task failed");
                false
            }
        };
        (recorded, unreachable)
    }
    .instrument(span)
    .await
}

/// The octets of a message being delivered: shared with the queue's copy
/// of a fresh message, or read from the spool.
enum Body {
    Shared(Arc<[u8]>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Shared(body) => body,
            Body::Owned(body) => body,
        }
    }
}

/// A spool file that cannot be read: if it is gone, the index entry goes
/// too (the spool is the truth); if it is there but unreadable, the
/// recipients are deferred so the back-off (and finally the lifetime)
/// applies instead of a hot loop.
fn unreadable_spool(queue: &Queue, job: &Job) -> bool {
    match queue.forget_if_vanished(&job.queue_id) {
        Ok(true) => {
            tracing::error!("spool file vanished; message dropped from the index");
            true
        }
        Ok(false) => {
            let reply = "451 4.3.0 spool file unreadable".to_string();
            let outcomes: Vec<_> = job
                .recipients
                .iter()
                .map(|r| (r.clone(), Outcome::Deferred(reply.clone())))
                .collect();
            queue.record(&job.queue_id, &outcomes, now_secs()).is_ok()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check the spool");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;
    use crate::retry::RetryPolicy;
    use crate::spool::SpoolEnvelope;

    #[derive(Default)]
    struct Recorder {
        jobs: Mutex<Vec<Job>>,
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Deliver for Recorder {
        fn deliver<'a>(
            &'a self,
            job: &'a Job,
            _message: &'a [u8],
        ) -> BoxFuture<'a, Vec<(String, Outcome)>> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let now = self.running.fetch_add(1, SeqCst) + 1;
                self.peak.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.running.fetch_sub(1, SeqCst);
                self.jobs.lock().push(job.clone());
                job.recipients
                    .iter()
                    .map(|r| {
                        let outcome = if r.starts_with("later") {
                            Outcome::Deferred("451 4.0.0 later".into())
                        } else {
                            Outcome::Delivered("250 ok".into())
                        };
                        (r.clone(), outcome)
                    })
                    .collect()
            })
        }
    }

    fn envelope(rcpts: &[&str]) -> SpoolEnvelope {
        SpoolEnvelope {
            queue_id: QueueId::generate().to_string(),
            sender: "s@x.test".into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            journey_id: "j".into(),
            received_at: now_secs(),
            authenticated_user: None,
        }
    }

    async fn open(dir: &std::path::Path) -> Arc<Queue> {
        let policy = RetryPolicy::new(&RetryConfig {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            delay_warning: Duration::ZERO,
        });
        Arc::new(Queue::open(dir, policy).unwrap().0)
    }

    #[tokio::test]
    async fn groups_by_domain_and_respects_limits() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        let looped = format!("{}Subject: loop\r\n\r\nx\r\n", "Received: x\r\n".repeat(31));
        let loop_id = queue
            .enqueue(envelope(&["u@loop.test"]), looped.as_bytes())
            .await
            .unwrap();
        let multi = queue
            .enqueue(
                envelope(&["a@one.test", "b@one.test", "later@two.test"]),
                b"m\r\n",
            )
            .await
            .unwrap();
        for _ in 0..6 {
            queue
                .enqueue(envelope(&["c@three.test"]), b"m\r\n")
                .await
                .unwrap();
        }
        let recorder = Arc::new(Recorder::default());
        let scheduler = Scheduler::new(queue.clone(), recorder.clone(), Limits::new(4, 2));
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(scheduler.run(rx, Duration::from_secs(5)));
        for _ in 0..200 {
            if queue.list().unwrap().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(true).unwrap();
        handle.await.unwrap();

        // Only the deferred recipient remains; the loop failed without a delivery attempt.
        let left = queue.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].queue_id, multi.as_str());
        assert!(queue.show(loop_id.as_str()).unwrap().is_none());
        let jobs = recorder.jobs.lock().clone();
        assert!(jobs.iter().all(|j| j.domain != "loop.test"));
        let one: Vec<_> = jobs
            .iter()
            .filter(|j| j.queue_id == multi && j.domain == "one.test")
            .collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].recipients, vec!["a@one.test", "b@one.test"]);
        assert_eq!(jobs.iter().filter(|j| j.domain == "three.test").count(), 6);
        assert!(recorder.peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    }

    #[tokio::test]
    async fn vanished_spool_files_are_dropped_and_unreadable_ones_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        // Too large for the queue to keep a copy in memory: the first
        // attempt reads the spool.
        let message = vec![b'm'; 300 * 1024];
        let gone = queue
            .enqueue(envelope(&["a@one.test"]), message.clone())
            .await
            .unwrap();
        let bad = queue
            .enqueue(envelope(&["b@one.test"]), message)
            .await
            .unwrap();
        queue.spool_for_tests().remove(&gone).unwrap();
        // Damage one octet of `bad`'s record: its checksum no longer holds.
        let seg = std::fs::read_dir(dir.path().join("spool/seg"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes
            .windows(16)
            .position(|w| w == bad.as_str().as_bytes())
            .unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        let recorder = Arc::new(Recorder::default());
        let scheduler = Scheduler::new(queue.clone(), recorder.clone(), Limits::new(4, 4));
        let mut tasks = JoinSet::new();
        scheduler.dispatch(&mut tasks);
        while tasks.join_next().await.is_some() {}
        assert!(queue.show(gone.as_str()).unwrap().is_none());
        let entry = queue.show(bad.as_str()).unwrap().unwrap();
        assert_eq!(
            entry.recipients[0].status,
            crate::index::RecipientStatus::Deferred
        );
        assert_eq!(
            entry.recipients[0].last_reply,
            "451 4.3.0 spool file unreadable"
        );
        assert!(recorder.jobs.lock().is_empty());
    }

    /// Dead domains refuse connections; others deliver. Counts attempts and
    /// the peak of concurrent jobs per domain.
    #[derive(Default)]
    struct Destinations {
        attempts: Mutex<HashMap<String, usize>>,
        running: Mutex<HashMap<String, usize>>,
        peak: Mutex<HashMap<String, usize>>,
    }

    impl Deliver for Destinations {
        fn deliver<'a>(
            &'a self,
            job: &'a Job,
            _message: &'a [u8],
        ) -> BoxFuture<'a, Vec<(String, Outcome)>> {
            Box::pin(async move {
                *self.attempts.lock().entry(job.domain.clone()).or_default() += 1;
                {
                    let mut running = self.running.lock();
                    let now = running.entry(job.domain.clone()).or_default();
                    *now += 1;
                    let mut peak = self.peak.lock();
                    let p = peak.entry(job.domain.clone()).or_default();
                    *p = (*p).max(*now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                *self.running.lock().get_mut(&job.domain).unwrap() -= 1;
                let outcome = if job.domain.starts_with("dead") {
                    Outcome::Deferred("451 4.4.1 192.0.2.9:25: connect failed: refused".into())
                } else {
                    Outcome::Delivered("250 ok".into())
                };
                job.recipients
                    .iter()
                    .map(|r| (r.clone(), outcome.clone()))
                    .collect()
            })
        }
    }

    #[tokio::test]
    async fn a_dead_destination_is_backed_off_and_does_not_delay_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path()).await;
        for _ in 0..300 {
            queue
                .enqueue(envelope(&["u@dead.test"]), b"m\r\n")
                .await
                .unwrap();
        }
        let mut live = Vec::new();
        for _ in 0..20 {
            live.push(
                queue
                    .enqueue(envelope(&["u@live.test"]), b"m\r\n")
                    .await
                    .unwrap(),
            );
        }
        let dest = Arc::new(Destinations::default());
        let limits = Limits {
            breaker_threshold: 3,
            breaker_first: Duration::from_secs(600),
            ..Limits::new(4, 2)
        };
        let scheduler = Scheduler::new(queue.clone(), dest.clone(), limits);
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(scheduler.clone().run(rx, Duration::from_secs(5)));
        let started = Instant::now();
        for _ in 0..500 {
            if live
                .iter()
                .all(|id| queue.show(id.as_str()).unwrap().is_none())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        tx.send(true).unwrap();
        handle.await.unwrap();
        assert!(
            live.iter()
                .all(|id| queue.show(id.as_str()).unwrap().is_none()),
            "live mail waited behind the dead domain"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        // Only a handful of connection attempts to the dead domain; the
        // rest were deferred without one, until the back-off ends.
        let attempts = dest.attempts.lock().get("dead.test").copied().unwrap_or(0);
        assert!(attempts <= 3 + 2, "{attempts} attempts to a dead domain");
        let health = scheduler.health("dead.test");
        assert!(
            health.open_until.is_some() && health.failures >= 3,
            "{health:?}"
        );
        let left = queue.list().unwrap();
        assert_eq!(left.len(), 300);
        let backed_off = left
            .iter()
            .filter(|m| {
                m.recipients[0].last_reply.contains("backed off") && m.recipients[0].attempts == 0
            })
            .count();
        assert!(backed_off >= 290, "{backed_off}");
        assert!(queue.due_ids(now_secs()).is_empty());
        // Per-destination limit held.
        assert!(
            dest.peak.lock().values().all(|&p| p <= 2),
            "{:?}",
            dest.peak.lock()
        );
        assert!(is_connection_failure("451 4.4.1 x: connect failed"));
        assert!(is_connection_failure("451 4.4.3 MDA unavailable: x"));
        assert!(!is_connection_failure("451 4.2.0 mailbox busy"));
        assert!(!is_connection_failure("550 5.4.1 x"));
    }
}
