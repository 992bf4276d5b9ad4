//! Broker sessions: connect, consume the worker's own queue while the order is to run, and
//! reconnect with backoff when the broker goes away; on cordon, drain or SIGTERM stop taking
//! tasks and wait for those in hand.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::heartbeat::Order;
use fleet_queue::{self as amqp, declare_worker_queue};
use fleet_telemetry::metrics;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::reports::Reports;
use super::route::accept;
use super::Worker;

/// Runs broker sessions while the order is to run; on cordon or drain the session stops
/// taking tasks, gives back those not started and waits for the rest; the worker then waits
/// for the order to change, and exits on SIGTERM.
pub(super) async fn serve_sessions(
    worker: &Arc<Worker>,
    stop_rx: watch::Receiver<bool>,
    mut order: watch::Receiver<Order>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    // Tasks outlive a broker session: they keep running while the worker reconnects.
    let mut running = JoinSet::new();
    loop {
        if *order.borrow() != Order::Run {
            tracing::info!(in_flight = running.len(), "taking nothing new; finishing the tasks in hand");
            while running.join_next().await.is_some() {}
            worker.live.drained.store(true, Ordering::Relaxed);
            let mut stop = stop_rx.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    tracing::info!(worker = %worker.config.id, "drained; stopping");
                    return Ok(());
                }
                _ = order.wait_for(|o| *o == Order::Run) => {
                    tracing::info!("uncordoned: taking tasks again");
                    worker.live.drained.store(false, Ordering::Relaxed);
                }
            }
        }
        match session(worker, order.clone(), &mut running).await {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting"),
        }
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                tracing::info!(in_flight = running.len(), "stopping without a broker; finishing the tasks in hand");
                while running.join_next().await.is_some() {}
                return Ok(());
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One broker session: takes tasks until the order is no longer to run (then drains and
/// returns `Ok`) or the broker goes away (then returns the error; tasks in hand keep running).
async fn session(
    worker: &Arc<Worker>,
    mut order: watch::Receiver<Order>,
    running: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let Open { connection, channel, queue, tag, mut tasks } = open(worker).await?;
    let reports = Arc::new(Reports::open(&connection).await?);
    *worker.reports.write().await = Some(reports);
    let _ready = metrics::ReadyGuard::new();
    tracing::info!(worker = %worker.config.id, devices = worker.devices.len(), slots = worker.config.slots,
        executor = ?worker.config.executor, %queue, "connected; taking tasks");
    if let Some(reason) = take_tasks(worker, &mut order, &mut tasks, running).await {
        *worker.reports.write().await = None;
        anyhow::bail!("lost the broker: {reason}");
    }
    let _ = channel.basic_cancel(&tag, BasicCancelOptions::default()).await;
    tracing::info!(in_flight = running.len(), "draining: no new tasks; giving back those not started");
    while running.join_next().await.is_some() {}
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
async fn open(worker: &Worker) -> anyhow::Result<Open> {
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

/// Takes deliveries and starts their tasks until the order is no longer to run (`None`) or
/// the consumer fails (the reason).
async fn take_tasks(
    worker: &Arc<Worker>,
    order: &mut watch::Receiver<Order>,
    tasks: &mut Consumer,
    running: &mut JoinSet<()>,
) -> Option<String> {
    loop {
        let next = tokio::select! {
            biased;
            _ = order.wait_for(|o| *o != Order::Run) => return None,
            next = tasks.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                if let Some(held) = accept(delivery) {
                    let (worker, order) = (worker.clone(), order.clone());
                    running.spawn(async move { held.run(&worker, order).await });
                }
            }
            Some(Err(e)) => return Some(e.to_string()),
            None => return Some("consumer closed".to_string()),
        }
        while running.try_join_next().is_some() {}
    }
}
