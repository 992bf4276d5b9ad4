//! The worker process: consumes tasks from RabbitMQ with a bounded prefetch, interactive
//! before batch, runs each on a warm engine and reports to the scheduler.
//!
//! ```text
//! fleet.tasks.interactive --\
//!                            >-- biased pick when a slot frees --> task (S3 in, engine, S3 out)
//! fleet.tasks.batch ---------/        --> report started / completed / attempt_failed --> fleet.reports.<priority>
//! ```
//!
//! Each priority has its own `slots` task slots (and prefetch), so an interactive task never
//! waits for a batch task to free a slot. A delivery is acknowledged only after its completion report is confirmed by the broker,
//! so a worker that dies mid-task leaves the task to RabbitMQ, which redelivers it to
//! another worker. A failed attempt is handed back (`nack` with requeue) after a short
//! backoff; the quorum queue's delivery limit dead-letters a task that keeps failing. SIGTERM
//! drains: no new task is taken, tasks in hand finish and are acknowledged, prefetched ones
//! go back to the queue when the channel closes.

pub mod heartbeat;
pub mod models;
pub mod task;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_common::amqp::{
    self, attempt_of, confirmed_channel, header_str, publish_confirmed, reports_queue, BATCH_QUEUE, INTERACTIVE_QUEUE,
};
use fleet_common::heartbeat::Order;
use fleet_common::job::Priority;
use fleet_common::jobstore::RedisJobStore;
use fleet_common::keys::TenantId;
use fleet_common::metrics;
use fleet_common::protocol::{now_ms, trace_id, Report, TaskMessage, TRACEPARENT_HEADER};
use fleet_common::state::JobState;
use fleet_common::store::s3::{S3Config, S3Store};
use fleet_common::DeviceSpec;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use self::models::ModelCache;
use self::task::{TaskContext, TaskResult};

/// What a worker does with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// Run the engine: the real work.
    Engine,
    /// Report every item done without touching S3 or the model: measures the dispatch path
    /// (broker, scheduler, Redis) alone.
    Noop,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id, in reports and task manifests.
    pub id: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL (read-only use: cancellations).
    pub redis_url: String,
    /// Object store.
    pub s3: S3Config,
    /// Local cache of registry models.
    pub model_cache: PathBuf,
    /// Device for the engines.
    pub device: DeviceSpec,
    /// Tasks run at once.
    pub slots: usize,
    /// Engine or no-op.
    pub executor: Executor,
    /// How long a no-op task pretends to work.
    pub noop_task_time: Duration,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Device memory the warm models may hold, MiB (`None`: unbounded).
    pub model_memory_mib: Option<f64>,
}

struct Worker {
    config: WorkerConfig,
    s3: S3Store,
    jobs: RedisJobStore,
    models: ModelCache,
    live: heartbeat::Live,
}

/// Runs the worker until `shutdown` resolves, then drains.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let worker = Arc::new(Worker {
        s3: S3Store::new(&config.s3),
        jobs: RedisJobStore::connect(&config.redis_url).await?,
        models: ModelCache::new(config.model_cache.clone(), config.device, config.model_memory_mib),
        live: heartbeat::Live::default(),
        config,
    });
    if let Some(addr) = worker.config.metrics_addr {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (order_tx, order_rx) = watch::channel(Order::Run);
    let (exited_tx, exited_rx) = watch::channel(false);
    let beats = tokio::spawn(beat_until(worker.clone(), stop_rx.clone(), order_tx, exited_rx));
    let result = serve_sessions(&worker, stop_rx, order_rx).await;
    let _ = exited_tx.send(true);
    let _ = beats.await;
    result
}

/// Writes a heartbeat every period, reading the operator's order for the worker on each beat
/// (SIGTERM counts as a drain), until the worker exits; then removes the heartbeat.
async fn beat_until(
    worker: Arc<Worker>,
    mut stop: watch::Receiver<bool>,
    order: watch::Sender<Order>,
    mut exited: watch::Receiver<bool>,
) {
    let gpus = crate::telemetry::Gpus::probe();
    let host = host_name();
    let base = fleet_common::heartbeat::Heartbeat {
        id: worker.config.id.clone(),
        host,
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: "active".into(),
        device: worker.config.device.to_string(),
        gpus: Vec::new(),
        telemetry_absent: None,
        slots: worker.config.slots,
        warm_models: Vec::new(),
        in_flight: Vec::new(),
        started_at_ms: now_ms(),
        at_ms: 0,
    };
    loop {
        let ordered = match worker.jobs.worker_order(&worker.config.id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "operator order unreadable; keeping the last one");
                *order.borrow()
            }
        };
        let stopped = *stop.borrow();
        let now = if stopped { Order::Drain } else { ordered };
        if *order.borrow() != now {
            tracing::info!(order = ?now, "operator order");
            let _ = order.send(now);
        }
        let beat = heartbeat::beat(&base, &gpus, &worker.live, now, worker.models.warm());
        for g in &beat.gpus {
            let gpu = g.index.to_string();
            let readings = [
                ("memory_used_mib", Some(g.memory_used_mib as f64)),
                ("memory_total_mib", Some(g.memory_total_mib as f64)),
                ("utilization_pct", g.gpu_util_pct.map(f64::from)),
                ("temperature_c", g.temperature_c.map(f64::from)),
                ("power_w", g.power_w),
            ];
            for (reading, value) in readings {
                if let Some(v) = value {
                    metrics::GPU.with_label_values(&[&gpu, reading]).set(v);
                }
            }
        }
        if let Err(e) = worker.jobs.put_heartbeat(&beat).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
        tokio::select! {
            _ = exited.wait_for(|d| *d) => break,
            _ = stop.wait_for(|s| *s), if !stopped => {}
            _ = tokio::time::sleep(fleet_common::heartbeat::HEARTBEAT_PERIOD) => {}
        }
    }
    if let Err(e) = worker.jobs.remove_heartbeat(&worker.config.id).await {
        tracing::warn!(error = %e, "heartbeat not removed; it expires by itself");
    }
}

/// Runs broker sessions while the order is to run; on cordon or drain the session finishes
/// what it holds and ends; the worker then waits for the order to change, and exits on
/// SIGTERM.
async fn serve_sessions(
    worker: &Arc<Worker>,
    stop_rx: watch::Receiver<bool>,
    mut order: watch::Receiver<Order>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *order.borrow() != Order::Run {
            worker.live.drained.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut stop = stop_rx.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    tracing::info!(worker = %worker.config.id, "drained; stopping");
                    return Ok(());
                }
                _ = order.wait_for(|o| *o == Order::Run) => {
                    tracing::info!("uncordoned: taking tasks again");
                    worker.live.drained.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        match session(worker, order.clone()).await {
            Ok(()) => {
                tracing::info!(worker = %worker.config.id, order = ?*order.borrow(), "took nothing new and finished what it held");
                continue;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "broker session ended; reconnecting"),
        }
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(worker: &Arc<Worker>, mut order: watch::Receiver<Order>) -> anyhow::Result<()> {
    let connection = amqp::connect(&worker.config.amqp_url).await?;
    let setup = connection.create_channel().await?;
    amqp::declare_topology(&setup).await?;
    let channel = connection.create_channel().await?;
    let slots = worker.config.slots.max(1);
    channel.basic_qos(slots.min(u16::MAX as usize) as u16, BasicQosOptions::default()).await?;
    let tag = |queue: &str| format!("{}-{queue}", worker.config.id);
    let consume = BasicConsumeOptions::default();
    let mut interactive =
        channel.basic_consume(INTERACTIVE_QUEUE, &tag(INTERACTIVE_QUEUE), consume, FieldTable::default()).await?;
    let mut batch = channel.basic_consume(BATCH_QUEUE, &tag(BATCH_QUEUE), consume, FieldTable::default()).await?;
    let reports = Arc::new(Reports {
        interactive: confirmed_channel(&connection).await?,
        batch: confirmed_channel(&connection).await?,
    });
    tracing::info!(worker = %worker.config.id, slots, executor = ?worker.config.executor, "connected; taking tasks");
    // Each priority has its own slots, so an interactive task never waits for a batch slot.
    let (interactive_slots, batch_slots) = (Arc::new(Semaphore::new(slots)), Arc::new(Semaphore::new(slots)));
    let mut running = JoinSet::new();
    let lost = loop {
        let delivery = tokio::select! {
            biased;
            _ = order.wait_for(|o| *o != Order::Run) => break None,
            (permit, d) = take(&interactive_slots, &mut interactive) => (permit, d),
            (permit, d) = take(&batch_slots, &mut batch) => (permit, d),
        };
        match delivery {
            (permit, Some(Ok(delivery))) => {
                let (worker, reports) = (worker.clone(), reports.clone());
                running.spawn(async move {
                    handle(&worker, &reports, delivery).await;
                    drop(permit);
                });
            }
            (_, Some(Err(e))) => break Some(e.to_string()),
            (_, None) => break Some("consumer closed".to_string()),
        }
        while running.try_join_next().is_some() {}
    };
    if let Some(reason) = lost {
        anyhow::bail!("lost the broker: {reason}");
    }
    tracing::info!(in_flight = running.len(), "draining: no new tasks; finishing those in hand");
    for queue in [INTERACTIVE_QUEUE, BATCH_QUEUE] {
        let _ = channel.basic_cancel(&tag(queue), BasicCancelOptions::default()).await;
    }
    while running.join_next().await.is_some() {}
    // Closing returns every prefetched, unstarted delivery to its queue.
    let _ = channel.close(200, "worker draining").await;
    let _ = connection.close(200, "worker stopped").await;
    Ok(())
}

async fn handle(worker: &Worker, reports: &Reports, delivery: Delivery) {
    let attempt = attempt_of(&delivery.properties);
    let task: TaskMessage = match serde_json::from_slice(&delivery.data) {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable task dead-lettered");
            let _ = delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await;
            return;
        }
    };
    let traceparent = header_str(&delivery.properties, TRACEPARENT_HEADER).unwrap_or_default();
    let span = tracing::info_span!("task", tenant = %task.tenant, job = %task.job, task = task.task, attempt,
        trace_id = trace_id(&traceparent).unwrap_or(""));
    let held = InFlight::hold(&worker.live, task.id());
    let priority = format!("{:?}", task.priority).to_lowercase();
    let timer = metrics::WORKER_TASK_SECONDS.with_label_values(&[&priority]).start_timer();
    async {
        match work(worker, reports, &task, attempt).await {
            Ok(()) => {
                metrics::WORKER_TASKS.with_label_values(&[&priority, "ended"]).inc();
                timer.observe_duration();
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(Handback::Retry(reason)) => {
                metrics::WORKER_TASKS.with_label_values(&[&priority, "failed_attempt"]).inc();
                tracing::warn!(%reason, "attempt failed; handing the task back");
                let report = Report::AttemptFailed {
                    tenant: task.tenant.clone(),
                    job: task.job.clone(),
                    task: task.task,
                    attempt,
                    worker: worker.config.id.clone(),
                    reason,
                };
                let _ = report_to(reports, task.priority, &report).await;
                tokio::time::sleep(Duration::from_millis(250 * attempt.min(8) as u64)).await;
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
            Err(Handback::BrokerLost(reason)) => {
                // Without the broker the delivery cannot be settled; RabbitMQ redelivers it.
                tracing::warn!(%reason, "report not confirmed; the broker will redeliver the task");
            }
        }
    }
    .instrument(span)
    .await;
    drop(held);
}

/// A task's place in the heartbeat's in-flight list, for as long as the worker holds it.
struct InFlight<'a> {
    live: &'a heartbeat::Live,
    id: String,
}

impl<'a> InFlight<'a> {
    fn hold(live: &'a heartbeat::Live, id: String) -> Self {
        live.in_flight.lock().expect("in-flight set").insert(id.clone());
        InFlight { live, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.live.in_flight.lock().expect("in-flight set").remove(&self.id);
    }
}

/// The next delivery of a lane, once one of its slots is free.
async fn take(
    slots: &Arc<Semaphore>,
    consumer: &mut lapin::Consumer,
) -> (tokio::sync::OwnedSemaphorePermit, Option<Result<Delivery, lapin::Error>>) {
    let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    (permit, consumer.next().await)
}

enum Handback {
    /// The attempt failed; retry it.
    Retry(String),
    /// The broker is gone.
    BrokerLost(String),
}

async fn work(worker: &Worker, reports: &Reports, task: &TaskMessage, attempt: u32) -> Result<(), Handback> {
    let tenant = TenantId::new(&task.tenant).map_err(|e| Handback::Retry(e.to_string()))?;
    if matches!(worker.jobs.get(&tenant, &task.job).await, Ok(Some(job)) if job.state == JobState::Cancelled) {
        tracing::info!("job cancelled; task skipped");
        let skipped = Report::Skipped { tenant: task.tenant.clone(), job: task.job.clone(), task: task.task };
        return report_to(reports, task.priority, &skipped).await;
    }
    let id = worker.config.id.clone();
    let (tenant_name, job) = (task.tenant.clone(), task.job.clone());
    let started = Report::Started {
        tenant: tenant_name.clone(),
        job: job.clone(),
        task: task.task,
        attempt,
        worker: id.clone(),
        at_ms: now_ms(),
    };
    report_to(reports, task.priority, &started).await?;
    let started_at_ms = now_ms();
    let result = match worker.config.executor {
        Executor::Noop => {
            // A stand-in for device time, so the dispatch path can be measured with busy workers.
            tokio::time::sleep(worker.config.noop_task_time).await;
            TaskResult { succeeded: task.keys.len() as u64, failures: Vec::new(), manifest: String::new() }
        }
        Executor::Engine => {
            let engine =
                worker.models.get(&worker.s3, &task.model).await.map_err(|e| Handback::Retry(e.to_string()))?;
            let ctx = TaskContext { s3: &worker.s3, engine, worker: &id, attempt };
            task::run(&ctx, task).await.map_err(|e| Handback::Retry(e.0))?
        }
    };
    tracing::info!(succeeded = result.succeeded, failed = result.failures.len(), "task done");
    metrics::WORKER_IMAGES.with_label_values(&["ok"]).inc_by(result.succeeded);
    metrics::WORKER_IMAGES.with_label_values(&["failed"]).inc_by(result.failures.len() as u64);
    let completed = Report::Completed {
        tenant: tenant_name,
        job,
        task: task.task,
        attempt,
        worker: id,
        succeeded: result.succeeded,
        failures: result.failures,
        manifest: result.manifest,
        started_at_ms,
        finished_at_ms: now_ms(),
    };
    report_to(reports, task.priority, &completed).await
}

/// Confirm-mode channels for reports, one per priority: confirms come back in order per
/// channel, so an interactive task's report never waits behind a batch backlog's.
struct Reports {
    interactive: Channel,
    batch: Channel,
}

async fn report_to(reports: &Reports, priority: Priority, report: &Report) -> Result<(), Handback> {
    let body = serde_json::to_vec(report).expect("a report serialises");
    let props = BasicProperties::default().with_content_type("application/json".into());
    let channel = match priority {
        Priority::Interactive => &reports.interactive,
        Priority::Batch => &reports.batch,
    };
    publish_confirmed(channel, "", reports_queue(priority), &body, props)
        .await
        .map_err(|e| Handback::BrokerLost(e.to_string()))
}

/// This host's name (from `/etc/hostname`; `host` when unreadable).
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}
