//! The scheduler process: one broker session at a time, reconnecting with backoff when
//! RabbitMQ goes away. A session declares the topology, resumes splitting every job whose
//! cursor is in Redis, and runs the intake, reports and dead-lettered-task consumers, the
//! dispatcher (placement and leases) and the recovery sweep (expired leases, retries) until
//! the connection drops or shutdown is asked for.
//!
//! Shutdown is one cancellation tree: `run` owns the root token and cancels it when its
//! shutdown future resolves; each broker session holds a child, and each of the session's
//! loops (intake, reports, dead letters, dispatcher, recovery sweep, queue-depth sampler, the
//! splitting of jobs) a child of that. The loops run on the session's [`TaskTracker`]. On
//! cancellation every loop stops taking deliveries, finishes what it has in hand (a message,
//! the reports in flight, a dispatch round, a sweep, a page of tasks) and ends; the session
//! waits for all of them, closes its broker connection (what was prefetched but not taken goes
//! back to its queue) and `run` returns. A loop that ends by itself (the broker went away)
//! cancels its session the same way, and the next session starts once it has drained.
//!
//! One scheduler leads at a time (see [`lead`]): the others wait as standbys, not ready, and
//! the first to find the leader's key gone takes over. Sessions run only under a lead; a
//! leader that cannot renew its lead stops its session before the lead can pass on.

mod loops;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::keys::TenantId;
use fleet_queue::{self as amqp, confirmed_channel, INTAKE_DEAD_QUEUE, INTAKE_QUEUE, TASKS_DEAD_QUEUE};
use fleet_state::JobRecord;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::{Channel, Connection, Consumer};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use self::loops::ReportConsumers;
use crate::context::{Config, Scheduler};
use crate::dispatch;
use crate::error::SchedulerError;
use crate::shard::{shard_job, Outlets, ShardCursor, TaskChannels};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long closing the broker connection may take at the end of a session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the scheduler until `shutdown` resolves, then drains: stops consuming, lets the
/// handlers in flight finish, closes the broker connection and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), SchedulerError> {
    // The metrics endpoint serves for as long as `run` runs, drain included.
    let _metrics = config.metrics_addr.map(|addr| {
        AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = fleet_telemetry::metrics::serve(addr).await.map_err(SchedulerError::Metrics) {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        }))
    });
    let sched = Arc::new(Scheduler::connect(config).await?);
    let root = CancellationToken::new();
    let stop = async {
        shutdown.await;
        tracing::info!("scheduler stopping");
        root.cancel();
    };
    tokio::join!(stop, lead(sched, root.child_token()));
    Ok(())
}

/// How long a lead lasts unless renewed.
pub const LEADER_TTL: Duration = Duration::from_secs(10);
/// How often the leader renews its lead, and a standby looks for a free one.
const LEADER_RENEW: Duration = Duration::from_secs(2);

/// Waits for the lead, runs broker sessions under it, and goes back to waiting if it is lost,
/// until `stop` is cancelled; then gives the lead up so a standby takes over at once.
async fn lead(sched: Arc<Scheduler>, stop: CancellationToken) {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let holder = format!("{}:{}:{:x}", fleet_protocol::heartbeat::host_name(), std::process::id(), started.as_nanos());
    let mut announced = String::new();
    while !stop.is_cancelled() {
        match sched.store.acquire_leadership(&holder, LEADER_TTL).await {
            Ok(None) => {
                tracing::info!(%holder, "leading: this scheduler is the active one");
                let term = stop.child_token();
                tokio::join!(keep_lead(&sched, &holder, term.clone()), sessions(sched.clone(), term.clone()));
                announced.clear();
            }
            Ok(Some(leader)) => {
                if leader != announced {
                    tracing::info!(%leader, "standby: another scheduler leads; taking over when its lead lapses");
                    announced = leader;
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader key unreadable; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(LEADER_RENEW) => {}
        }
    }
    if let Err(e) = sched.store.release_leadership(&holder).await {
        tracing::warn!(error = %e, "lead not released; it lapses by itself");
    }
}

/// Renews the lead until `term` is cancelled; cancels `term` (stopping the sessions) when the
/// lead is lost or cannot be renewed for half its life, before another scheduler can take it.
async fn keep_lead(sched: &Scheduler, holder: &str, term: CancellationToken) {
    let mut renewed_at = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tokio::time::sleep(LEADER_RENEW) => {}
        }
        match sched.store.renew_leadership(holder, LEADER_TTL).await {
            Ok(true) => renewed_at = std::time::Instant::now(),
            Ok(false) => {
                tracing::warn!("lead lost to another scheduler; stopping this one's session");
                term.cancel();
                return;
            }
            Err(e) if renewed_at.elapsed() >= LEADER_TTL / 2 => {
                tracing::warn!(error = %e, "lead not renewed for half its life; stepping down before it can pass");
                term.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "lead not renewed; trying again"),
        }
    }
}

/// Broker sessions one after the other, with backoff between them, until `stop` is cancelled.
async fn sessions(sched: Arc<Scheduler>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(sched.clone(), stop.child_token()).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The channels of one broker session.
struct Session {
    connection: Connection,
    /// Confirm-mode channels for tasks, one per priority.
    tasks: TaskChannels,
    /// Confirm-mode channel for parked messages.
    parking: Channel,
    /// Channel for job events.
    events: Channel,
}

impl Session {
    /// Connects, declares the topology and opens the session's publishing channels.
    async fn open(url: &str) -> Result<Session, SchedulerError> {
        let connection = amqp::connect(url).await?;
        let setup = connection.create_channel().await?;
        amqp::declare_topology(&setup).await?;
        Ok(Session {
            tasks: TaskChannels {
                interactive: confirmed_channel(&connection).await?,
                batch: confirmed_channel(&connection).await?,
            },
            parking: confirmed_channel(&connection).await?,
            events: connection.create_channel().await?,
            connection,
        })
    }

    /// Closes the connection, so the broker takes back at once what the session held unsettled.
    async fn close(&self) {
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "scheduler session ended")).await;
        if let Ok(Err(e)) = closed {
            tracing::debug!(error = %e, "broker connection already gone");
        }
    }
}

/// One broker session, until `stop` is cancelled (`Ok`) or the broker goes away (`Err`);
/// either way it returns only once every loop it started has ended.
async fn session(sched: Arc<Scheduler>, stop: CancellationToken) -> Result<(), SchedulerError> {
    let Some(opened) = stop.run_until_cancelled(Session::open(&sched.config.amqp_url)).await else {
        return Ok(());
    };
    let session = Arc::new(opened?);
    tracing::info!("connected to the broker");
    let tracker = TaskTracker::new();
    let (ended, handles) = match stop.run_until_cancelled(start(&sched, &session, &tracker, &stop)).await {
        Some(Ok((loops, handles))) => (first_to_end(loops, &stop).await, Some(handles)),
        Some(Err(e)) => (Err(e), None),
        None => (Ok(()), None),
    };
    // Whatever ended the session stops the rest of it; splitting resumes from its cursors.
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    session.close().await;
    drop(handles);
    ended
}

/// The session's consumer loops, each on the session's tracker.
type Loops = FuturesUnordered<JoinHandle<Result<(), SchedulerError>>>;

/// What the session's loops consume and publish on. The session keeps a copy until it has
/// closed the connection: a last handle dropped earlier makes lapin close its channel by
/// itself, racing the close of the connection (a race it logs as a connection error).
#[derive(Clone)]
struct Handles {
    sampling: Channel,
    intake: Consumer,
    reports: ReportConsumers,
    dead: Consumer,
    dead_submissions: Consumer,
    dispatch: dispatch::Queues,
    /// Confirm-mode channel for tasks sent back to their queue, and one for job events.
    recovery: (Channel, Channel),
}

impl Handles {
    /// Starts every consumer of the session and opens the loops' channels.
    async fn open(connection: &Connection) -> Result<Handles, SchedulerError> {
        Ok(Handles {
            sampling: connection.create_channel().await?,
            intake: loops::consumer(connection, INTAKE_QUEUE, 32).await?,
            reports: loops::reports(connection).await?,
            dead: loops::consumer(connection, TASKS_DEAD_QUEUE, 16).await?,
            dead_submissions: loops::consumer(connection, INTAKE_DEAD_QUEUE, 16).await?,
            dispatch: dispatch::Queues::open(connection).await?,
            recovery: (confirmed_channel(connection).await?, connection.create_channel().await?),
        })
    }
}

/// Resumes splitting the jobs with a cursor in Redis and starts the session's loops, each
/// with a child of `stop`; the sampler and the splitting of jobs are not among the loops
/// returned, since their end does not end the session.
async fn start(
    sched: &Arc<Scheduler>,
    session: &Arc<Session>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(Loops, Handles), SchedulerError> {
    let splitter =
        Splitter { sched: sched.clone(), session: session.clone(), tracker: tracker.clone(), stop: stop.child_token() };
    for (tenant, job, _) in sched.store.cursors().await? {
        if let Ok(tenant) = TenantId::new(&tenant) {
            tracing::info!(tenant = %tenant, job, "resuming the split of a job");
            splitter.spawn(tenant, job, None);
        }
    }
    let handles = Handles::open(&session.connection).await?;
    let h = handles.clone();
    tracker.spawn(loops::sample_queue_depths(h.sampling, stop.child_token()));
    tracker.spawn(crate::backlog::sample(sched.clone(), stop.child_token()));
    let loops = Loops::new();
    loops.push(tracker.spawn(loops::intake(splitter, h.intake, stop.child_token())));
    let (s, x) = (sched.clone(), session.clone());
    loops.push(tracker.spawn(loops::reports_loop(s, x, h.reports, stop.child_token())));
    let (s, x) = (sched.clone(), session.clone());
    loops.push(tracker.spawn(loops::dead_letters(s, x, h.dead, stop.child_token())));
    let (s, x) = (sched.clone(), session.clone());
    loops.push(tracker.spawn(loops::dead_submissions(s, x, h.dead_submissions, stop.child_token())));
    loops.push(tracker.spawn(dispatch::run(sched.clone(), h.dispatch, stop.child_token())));
    let (tasks, events) = h.recovery;
    loops.push(tracker.spawn(crate::recovery::run(sched.clone(), tasks, events, stop.child_token())));
    Ok((loops, handles))
}

/// Waits for the first of `loops` to end, which stops the session: `Ok` when `stop` was
/// cancelled from above, its error (or [`SchedulerError::ConsumerStopped`]) otherwise.
/// Readiness lasts from the start of the wait to its end.
async fn first_to_end(mut loops: Loops, stop: &CancellationToken) -> Result<(), SchedulerError> {
    // Every consumer is in place: from here a submitted job is taken at once.
    let ready = fleet_telemetry::metrics::ReadyGuard::new();
    tracing::info!("ready: consuming intake, reports and tasks");
    let first = loops.next().await.map(joined).unwrap_or(Ok(()));
    drop(ready);
    let ended = match first {
        // Stopped from above: whatever the loops met on the way out is no news.
        _ if stop.is_cancelled() => Ok(()),
        Ok(()) => Err(SchedulerError::ConsumerStopped),
        Err(e) => Err(e),
    };
    stop.cancel();
    // The others' outcomes say no more than the first's.
    while let Some(other) = loops.next().await {
        let _ = joined(other);
    }
    ended
}

/// The outcome of a loop; a loop that panicked panics here, as it did in the session.
fn joined(outcome: Result<Result<(), SchedulerError>, JoinError>) -> Result<(), SchedulerError> {
    match outcome {
        Ok(ended) => ended,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}

/// Starts the splitting of jobs on the session's tracker, each paused by a child of `stop`.
#[derive(Clone)]
struct Splitter {
    sched: Arc<Scheduler>,
    session: Arc<Session>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Splitter {
    /// Splits `job` in a task of its own; `known` as for [`shard_job`].
    fn spawn(&self, tenant: TenantId, job: String, known: Option<(JobRecord, ShardCursor)>) {
        let (sched, session, stop) = (self.sched.clone(), self.session.clone(), self.stop.child_token());
        self.tracker.spawn(async move {
            let out = Outlets { tasks: &session.tasks, events: &session.events, stop: &stop };
            shard_job(&sched, out, &tenant, &job, known).await
        });
    }
}

#[cfg(test)]
mod tests;
