//! Broker sessions: connect, consume the worker's own queue while the order is to run, and
//! reconnect with backoff when the broker goes away; on cordon, drain or shutdown stop taking
//! tasks and wait for those in hand.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleet_queue::{self as amqp, declare_worker_queue};
use fleet_telemetry::metrics;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::task::TaskTracker;

use super::error::ServiceError;
use super::intake::Intake;
use super::reports::Reports;
use super::route::accept;
use super::Worker;

/// Runs broker sessions while the intake is open; on cordon or drain the session stops taking
/// tasks, gives back those not started and waits for the rest; the worker then waits for the
/// order to change. On shutdown (the intake's token) it does the same and returns once the
/// tasks in hand have ended, with or without a broker.
pub(super) async fn serve_sessions(worker: &Arc<Worker>, mut intake: Intake, tracker: &TaskTracker) {
    let mut backoff = Duration::from_millis(200);
    // Tasks outlive a broker session: they keep running while the worker reconnects.
    let in_hand = InHand::new(tracker);
    loop {
        if !intake.is_open() {
            tracing::info!(in_flight = in_hand.len(), "taking nothing new; finishing the tasks in hand");
            in_hand.finish().await;
            worker.live.drained.store(true, Ordering::Relaxed);
            if !intake.reopened().await {
                tracing::info!(worker = %worker.config.id, "drained; stopping");
                return;
            }
            tracing::info!("uncordoned: taking tasks again");
            worker.live.drained.store(false, Ordering::Relaxed);
        }
        match session(worker, intake.clone(), &in_hand).await {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting"),
        }
        tokio::select! {
            _ = intake.shutdown() => {
                tracing::info!(in_flight = in_hand.len(), "stopping without a broker; finishing the tasks in hand");
                in_hand.finish().await;
                return;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The tasks taken: each runs on `run`'s tracker (which `run` waits on before it stops the
/// heartbeat) and is also counted here, so a cordon or drain can wait for the tasks in hand
/// and then take tasks again.
struct InHand<'a> {
    /// `run`'s tracker, closed by `run` alone.
    tracker: &'a TaskTracker,
    /// The tasks in hand; closed and reopened around each wait for them.
    here: TaskTracker,
}

impl<'a> InHand<'a> {
    /// Nothing in hand yet; tasks will run on `tracker`.
    fn new(tracker: &'a TaskTracker) -> Self {
        InHand { tracker, here: TaskTracker::new() }
    }

    /// Starts a task.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.tracker.spawn(self.here.track_future(task)));
    }

    /// How many tasks are in hand.
    fn len(&self) -> usize {
        self.here.len()
    }

    /// Waits until every task in hand has ended.
    async fn finish(&self) {
        self.here.close();
        self.here.wait().await;
        self.here.reopen();
    }
}

/// One broker session: takes tasks until the intake closes (then drains and returns `Ok`) or
/// the broker goes away (then returns the error; tasks in hand keep running).
async fn session(worker: &Arc<Worker>, mut intake: Intake, in_hand: &InHand<'_>) -> Result<(), ServiceError> {
    let Open { connection, channel, queue, tag, mut tasks } = open(worker).await?;
    let reports = Arc::new(Reports::open(&connection).await?);
    *worker.reports.write().await = Some(reports);
    let _ready = metrics::ReadyGuard::new();
    tracing::info!(worker = %worker.config.id, devices = worker.devices.len(), slots = worker.config.slots,
        executor = ?worker.config.executor, %queue, "connected; taking tasks");
    if let Err(lost) = take_tasks(worker, &mut intake, &mut tasks, in_hand).await {
        *worker.reports.write().await = None;
        return Err(lost);
    }
    let _ = channel.basic_cancel(&tag, BasicCancelOptions::default()).await;
    tracing::info!(in_flight = in_hand.len(), "draining: no new tasks; giving back those not started");
    in_hand.finish().await;
    *worker.reports.write().await = None;
    let _ = channel.close(200, "worker draining").await;
    let _ = connection.close(200, "worker stopped").await;
    Ok(())
}

/// A connection consuming the worker's own queue.
struct Open {
    connection: Connection,
    channel: Channel,
    queue: String,
    tag: String,
    tasks: Consumer,
}

/// Connects, checks the topology and starts consuming the worker's queue.
async fn open(worker: &Worker) -> Result<Open, ServiceError> {
    let connection = amqp::connect(&worker.config.amqp_url).await?;
    // The broker holds the topology from its definitions; a worker only checks it is there.
    amqp::verify_topology(&connection).await?;
    let channel = connection.create_channel().await?;
    let queue = declare_worker_queue(&channel, &worker.config.id).await?;
    let tag = format!("{}-tasks", worker.config.id);
    // Acknowledged on receipt: from here on the task's lease keeps it alive.
    let consume = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
    let tasks = channel.basic_consume(&queue, &tag, consume, FieldTable::default()).await?;
    Ok(Open { connection, channel, queue, tag, tasks })
}

/// Takes deliveries and starts their tasks until the intake closes (`Ok`) or the consumer
/// fails (the error).
async fn take_tasks(
    worker: &Arc<Worker>,
    intake: &mut Intake,
    tasks: &mut Consumer,
    in_hand: &InHand<'_>,
) -> Result<(), ServiceError> {
    loop {
        let next = tokio::select! {
            biased;
            _ = intake.closed() => return Ok(()),
            next = tasks.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                if let Some(held) = accept(delivery) {
                    let (worker, intake) = (worker.clone(), intake.clone());
                    in_hand.spawn(async move { held.run(&worker, intake).await });
                }
            }
            Some(Err(e)) => return Err(ServiceError::ConsumerFailed(e)),
            None => return Err(ServiceError::ConsumerClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` resolves within a few milliseconds.
    async fn resolves(future: impl Future) -> bool {
        tokio::time::timeout(Duration::from_millis(20), future).await.is_ok()
    }

    #[tokio::test]
    async fn a_drain_waits_for_the_tasks_in_hand_and_run_waits_for_every_task() {
        let tracker = TaskTracker::new();
        let in_hand = InHand::new(&tracker);
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        in_hand.spawn(async move {
            let _ = ended.await;
        });
        assert_eq!((in_hand.len(), tracker.len()), (1, 1));
        assert!(!resolves(in_hand.finish()).await, "a drain waits for the task in hand");
        end.send(()).expect("the task waits");
        in_hand.finish().await;
        assert_eq!((in_hand.len(), tracker.len()), (0, 0));
        assert!(!resolves(tracker.wait()).await, "the heartbeat goes on while `run` has not closed the tracker");
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        in_hand.spawn(async move {
            let _ = ended.await;
        });
        assert_eq!(in_hand.len(), 1, "after a drain the worker takes tasks again");
        tracker.close();
        assert!(!resolves(tracker.wait()).await, "closed, but a task still runs");
        end.send(()).expect("the task waits");
        assert!(resolves(tracker.wait()).await);
    }
}
