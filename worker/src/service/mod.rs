//! The worker process: takes the tasks the scheduler's dispatcher placed on its devices from
//! its own queue, holds each under a lease it renews on every heartbeat, runs them on warm
//! engines, interactive before batch, and reports to the scheduler under the lease's token.
//!
//! ```text
//! fleet.worker.<id> --(task + lease: token, attempt, device)--> lease held, delivery acknowledged
//!    --> device d, lane interactive | batch (own slots) --> task (S3 in, engine, S3 out)
//!    --> report started / completed / attempt_failed / skipped / released --> fleet.reports.<priority>
//! heartbeat every second: telemetry, devices, warm models, tasks in hand, leases renewed
//! ```
//!
//! A delivery is acknowledged on receipt: the lease in Redis, not the delivery, keeps the
//! task alive, so a task may run for hours. A worker that dies stops renewing; the scheduler
//! takes its leases over within three heartbeat periods and dispatches the tasks elsewhere. A
//! worker that was only silent (stopped, partitioned) learns on its next renewal that it lost
//! the lease; it checks the lease before writing outputs and its late reports carry a stale
//! token, which the scheduler ignores. Tasks keep running while the broker is away; their
//! reports wait for the next session. Cordon, drain or SIGTERM: nothing new is taken, tasks
//! not started are given back at once, tasks in hand finish.

pub mod fine_tune;
pub mod heartbeat;
pub mod models;
pub mod task;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::heartbeat::Order;
use fleet_protocol::job::Priority;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{now_ms, trace_id, LeaseGrant, Report, TaskMessage, LEASE_HEADER, TRACEPARENT_HEADER};
use fleet_protocol::state::JobState;
use fleet_protocol::DeviceSpec;
use fleet_queue::{
    self as amqp, confirmed_channel, declare_worker_queue, header_str, publish_confirmed, reports_queue,
};
use fleet_state::RedisJobStore;
use fleet_store::s3::{S3Config, S3Store};
use fleet_telemetry::metrics;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use self::models::ModelCache;
use self::task::{Fence, TaskContext, TaskResult};

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
    /// The devices this worker drives, each with its own warm models and lanes.
    pub devices: Vec<DeviceConfig>,
    /// Tasks run at once per device and priority lane.
    pub slots: usize,
    /// Engine or no-op.
    pub executor: Executor,
    /// How long a no-op task pretends to work.
    pub noop_task_time: Duration,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// One device a worker drives.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The libtorch device.
    pub spec: DeviceSpec,
    /// Device memory the warm models may hold, MiB: the GPU's memory less a margin, or the
    /// declared capacity of a CPU device.
    pub memory_mib: f64,
}

/// A device in use: its warm models, its lanes and what runs on it.
struct Device {
    config: DeviceConfig,
    models: ModelCache,
    interactive: Arc<Semaphore>,
    batch: Arc<Semaphore>,
    running: AtomicU32,
}

impl Device {
    fn lane(&self, priority: Priority) -> &Arc<Semaphore> {
        match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }
}

struct Worker {
    config: WorkerConfig,
    s3: S3Store,
    jobs: RedisJobStore,
    devices: Vec<Device>,
    live: heartbeat::Live,
    /// The report channels of the current broker session (none between sessions).
    reports: tokio::sync::RwLock<Option<Arc<Reports>>>,
}

/// Runs the worker until `shutdown` resolves, then drains.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    anyhow::ensure!(!config.devices.is_empty(), "a worker needs at least one device");
    let slots = config.slots.max(1);
    let devices = config
        .devices
        .iter()
        .map(|d| Device {
            models: ModelCache::new(config.model_cache.clone(), d.spec, Some(d.memory_mib)),
            config: d.clone(),
            interactive: Arc::new(Semaphore::new(slots)),
            batch: Arc::new(Semaphore::new(slots)),
            running: AtomicU32::new(0),
        })
        .collect();
    let worker = Arc::new(Worker {
        s3: S3Store::new(&config.s3),
        jobs: RedisJobStore::connect(&config.redis_url).await?,
        devices,
        live: heartbeat::Live::default(),
        reports: tokio::sync::RwLock::new(None),
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
    let gpus = crate::nvml::Gpus::probe();
    let host = host_name();
    let base = fleet_protocol::heartbeat::Heartbeat {
        id: worker.config.id.clone(),
        host,
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: "active".into(),
        device: worker.devices.iter().map(|d| d.config.spec.to_string()).collect::<Vec<_>>().join(","),
        gpus: Vec::new(),
        telemetry_absent: None,
        slots: worker.config.slots,
        devices: Vec::new(),
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
        let devices: Vec<heartbeat::DeviceState> = worker
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| heartbeat::DeviceState {
                spec: d.config.spec,
                memory_mib: d.config.memory_mib,
                warm: d.models.warm(),
                warm_mib: d.models.used_mib(),
                running: d.running.load(Ordering::Relaxed),
                training: worker.live.training_on(i as u32),
            })
            .collect();
        let beat = heartbeat::beat(&base, &gpus, &worker.live, now, &devices);
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
        renew_leases(&worker).await;
        tokio::select! {
            _ = exited.wait_for(|d| *d) => break,
            _ = stop.wait_for(|s| *s), if !stopped => {}
            _ = tokio::time::sleep(fleet_protocol::heartbeat::HEARTBEAT_PERIOD) => {}
        }
    }
    if let Err(e) = worker.jobs.remove_heartbeat(&worker.config.id).await {
        tracing::warn!(error = %e, "heartbeat not removed; it expires by itself");
    }
}

/// Renews every lease the worker holds; a lease it no longer holds (the scheduler took the
/// task over while the worker was silent) is marked lost, so its task writes nothing more and
/// reports nothing; a lease the scheduler asks back is marked preempted (a fine-tune then
/// checkpoints and yields).
async fn renew_leases(worker: &Worker) {
    let held: Vec<(String, u64)> = {
        let leases = worker.live.leases.lock().expect("lease table");
        leases.iter().map(|(id, l)| (id.clone(), l.token)).collect()
    };
    match worker.jobs.renew_leases(&worker.config.id, &held, now_ms()).await {
        Ok(renewal) => {
            let leases = worker.live.leases.lock().expect("lease table");
            for id in renewal.lost {
                if let Some(lease) = leases.get(&id) {
                    if !lease.lost.swap(true, Ordering::Relaxed) {
                        tracing::warn!(task = %id, token = lease.token,
                            "lease lost: the scheduler took the task over; abandoning it");
                    }
                }
            }
            for id in renewal.preempt {
                if let Some(lease) = leases.get(&id) {
                    if !lease.preempt.swap(true, Ordering::Relaxed) {
                        tracing::info!(task = %id, token = lease.token,
                            "preempted for interactive work: checkpointing and giving the device back");
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "leases not renewed; retrying on the next beat"),
    }
}

/// Runs broker sessions while the order is to run; on cordon or drain the session stops
/// taking tasks, gives back those not started and waits for the rest; the worker then waits
/// for the order to change, and exits on SIGTERM.
async fn serve_sessions(
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

async fn session(
    worker: &Arc<Worker>,
    mut order: watch::Receiver<Order>,
    running: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let connection = amqp::connect(&worker.config.amqp_url).await?;
    // The broker holds the topology from its definitions; a worker only checks it is there.
    amqp::verify_topology(&connection).await?;
    let channel = connection.create_channel().await?;
    let queue = declare_worker_queue(&channel, &worker.config.id).await?;
    let tag = format!("{}-tasks", worker.config.id);
    // Acknowledged on receipt: from here on the task's lease keeps it alive.
    let consume = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
    let mut tasks = channel.basic_consume(&queue, &tag, consume, FieldTable::default()).await?;
    let reports = Arc::new(Reports {
        interactive: confirmed_channel(&connection).await?,
        batch: confirmed_channel(&connection).await?,
    });
    *worker.reports.write().await = Some(reports);
    let _ready = metrics::ReadyGuard::new();
    tracing::info!(worker = %worker.config.id, devices = worker.devices.len(), slots = worker.config.slots,
        executor = ?worker.config.executor, %queue, "connected; taking tasks");
    let lost = loop {
        let next = tokio::select! {
            biased;
            _ = order.wait_for(|o| *o != Order::Run) => break None,
            next = tasks.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                if let Some(held) = accept(worker, delivery) {
                    let (worker, order) = (worker.clone(), order.clone());
                    running.spawn(async move { held.run(&worker, order).await });
                }
            }
            Some(Err(e)) => break Some(e.to_string()),
            None => break Some("consumer closed".to_string()),
        }
        while running.try_join_next().is_some() {}
    };
    if let Some(reason) = lost {
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

/// A task received under a lease, waiting for a slot on its device.
struct Accepted {
    task: TaskMessage,
    lease: LeaseGrant,
    traceparent: String,
    lost: Arc<AtomicBool>,
    preempt: Arc<AtomicBool>,
}

/// Reads a delivery and registers its lease, so the next heartbeat renews it.
fn accept(worker: &Worker, delivery: Delivery) -> Option<Accepted> {
    let task: TaskMessage = match serde_json::from_slice(&delivery.data) {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable task dropped; its lease expires and the scheduler sees to it");
            return None;
        }
    };
    let Some(lease) = header_str(&delivery.properties, LEASE_HEADER).as_deref().and_then(LeaseGrant::parse) else {
        tracing::warn!(task = %task.id(), "task without a lease dropped");
        return None;
    };
    let lost = Arc::new(AtomicBool::new(false));
    let preempt = Arc::new(AtomicBool::new(false));
    let held = heartbeat::HeldLease { token: lease.token, lost: lost.clone(), preempt: preempt.clone() };
    worker.live.leases.lock().expect("lease table").insert(task.id(), held);
    if let Some(ft) = &task.fine_tune {
        let hold = fleet_protocol::heartbeat::TrainingHold {
            task: task.id(),
            whole_device: ft.resources.whole_device(),
            memory_mib: ft.resources.memory_mib.unwrap_or(0),
            preemptible: ft.resources.preemptible,
        };
        worker.live.training.lock().expect("training table").insert(task.id(), (lease.device, hold));
    }
    let traceparent = header_str(&delivery.properties, TRACEPARENT_HEADER).unwrap_or_default();
    Some(Accepted { task, lease, traceparent, lost, preempt })
}

impl Accepted {
    async fn run(self, worker: &Worker, mut order: watch::Receiver<Order>) {
        let Accepted { task, lease, traceparent, lost, preempt } = self;
        let span = tracing::info_span!("task", tenant = %task.tenant, job = %task.job, task = task.task,
            attempt = lease.attempt, token = lease.token, trace_id = trace_id(&traceparent).unwrap_or(""));
        async {
            let Some(device) = worker.devices.get(lease.device as usize) else {
                let reason = format!("placed on device {} but this worker has {}", lease.device, worker.devices.len());
                let _ = report_to_scheduler(worker, &lost, task.priority, &failed(worker, &task, &lease, reason)).await;
                return;
            };
            // Wait for a slot on the device's lane, unless told to stop taking work.
            let permit = tokio::select! {
                biased;
                _ = order.wait_for(|o| *o != Order::Run) => None,
                permit = device.lane(task.priority).clone().acquire_owned() => permit.ok(),
            };
            let Some(permit) = permit else {
                let report = released(worker, &task, &lease, None);
                let _ = report_to_scheduler(worker, &lost, task.priority, &report).await;
                return;
            };
            let held = InFlight::hold(&worker.live, task.id());
            // A fine-tune runs for hours: on cordon, drain or SIGTERM it checkpoints and yields
            // rather than holding the worker until it ends.
            let yield_on_drain = task.fine_tune.is_some().then(|| {
                let (mut order, preempt) = (order.clone(), preempt.clone());
                tokio::spawn(async move {
                    if order.wait_for(|o| *o != Order::Run).await.is_ok() {
                        preempt.store(true, Ordering::Relaxed);
                    }
                })
            });
            device.running.fetch_add(1, Ordering::Relaxed);
            handle(worker, device, &task, &lease, &lost, &preempt).await;
            device.running.fetch_sub(1, Ordering::Relaxed);
            if let Some(watch) = yield_on_drain {
                watch.abort();
            }
            drop(held);
            drop(permit);
        }
        .instrument(span)
        .await;
        worker.live.leases.lock().expect("lease table").remove(&task.id());
        worker.live.training.lock().expect("training table").remove(&task.id());
    }
}

fn failed(worker: &Worker, task: &TaskMessage, lease: &LeaseGrant, reason: String) -> Report {
    Report::AttemptFailed {
        tenant: task.tenant.clone(),
        job: task.job.clone(),
        task: task.task,
        attempt: lease.attempt,
        token: lease.token,
        worker: worker.config.id.clone(),
        reason,
    }
}

/// The task given back: unstarted, or a fine-tune at its checkpoint `checkpoint_step`.
fn released(worker: &Worker, task: &TaskMessage, lease: &LeaseGrant, checkpoint_step: Option<u32>) -> Report {
    Report::Released {
        tenant: task.tenant.clone(),
        job: task.job.clone(),
        task: task.task,
        token: lease.token,
        worker: worker.config.id.clone(),
        checkpoint_step,
    }
}

async fn handle(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    lease: &LeaseGrant,
    lost: &Arc<AtomicBool>,
    preempt: &Arc<AtomicBool>,
) {
    let priority = format!("{:?}", task.priority).to_lowercase();
    let timer = metrics::WORKER_TASK_SECONDS.with_label_values(&[&priority]).start_timer();
    match work(worker, device, task, lease, lost, preempt).await {
        Ok(()) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "ended"]).inc();
            timer.observe_duration();
        }
        Err(Handback::Retry(reason)) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "failed_attempt"]).inc();
            tracing::warn!(%reason, "attempt failed; the scheduler retries it");
            let _ = report_to_scheduler(worker, lost, task.priority, &failed(worker, task, lease, reason)).await;
        }
        Err(Handback::Fenced) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "lease_lost"]).inc();
            tracing::warn!("lease lost mid-task: outputs not written, nothing reported");
        }
        Err(Handback::Yielded(step)) => {
            metrics::WORKER_TASKS.with_label_values(&[&priority, "yielded"]).inc();
            tracing::info!(step, "fine-tune checkpointed and gave its device back");
            let report = released(worker, task, lease, Some(step));
            let _ = report_to_scheduler(worker, lost, task.priority, &report).await;
        }
    }
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

enum Handback {
    /// The attempt failed; retry it.
    Retry(String),
    /// The lease was taken over: stop, write and report nothing.
    Fenced,
    /// A fine-tune saved a checkpoint at this step and gives its device back.
    Yielded(u32),
}

async fn work(
    worker: &Worker,
    device: &Device,
    task: &TaskMessage,
    lease: &LeaseGrant,
    lost: &Arc<AtomicBool>,
    preempt: &Arc<AtomicBool>,
) -> Result<(), Handback> {
    let tenant = TenantId::new(&task.tenant).map_err(|e| Handback::Retry(e.to_string()))?;
    let token = lease.token;
    if matches!(worker.jobs.get(&tenant, &task.job).await, Ok(Some(job)) if job.state == JobState::Cancelled) {
        tracing::info!("job cancelled; task skipped");
        let skipped = Report::Skipped { tenant: task.tenant.clone(), job: task.job.clone(), task: task.task, token };
        return report_to_scheduler(worker, lost, task.priority, &skipped).await;
    }
    let id = worker.config.id.clone();
    let (tenant_name, job) = (task.tenant.clone(), task.job.clone());
    let started = Report::Started {
        tenant: tenant_name.clone(),
        job: job.clone(),
        task: task.task,
        attempt: lease.attempt,
        token,
        worker: id.clone(),
        at_ms: now_ms(),
    };
    report_to_scheduler(worker, lost, task.priority, &started).await?;
    let started_at_ms = now_ms();
    let fence = Fence { jobs: &worker.jobs, task_id: task.id(), token, lost };
    let result = match (&task.fine_tune, worker.config.executor) {
        (Some(spec), Executor::Engine) => {
            let priority = task.priority;
            let relay = move |progress: fleet_protocol::message::TrainingProgress| {
                let report = fine_tune::report_for(task, token, progress);
                Box::pin(async move {
                    let _ = report_to_scheduler(worker, lost, priority, &report).await;
                }) as futures::future::BoxFuture<'_, ()>
            };
            let ctx = fine_tune::FineTuneContext {
                s3: &worker.s3,
                model_cache: &worker.config.model_cache,
                device: device.config.spec,
                fence: &fence,
                progress: &relay,
                yield_now: preempt.clone(),
            };
            match fine_tune::run(&ctx, task, spec).await {
                Ok(fine_tune::Ended::Trained(result)) => result,
                Ok(fine_tune::Ended::Yielded { step }) => return Err(Handback::Yielded(step)),
                Err(_) if fence.is_lost() => return Err(Handback::Fenced),
                Err(e) => return Err(Handback::Retry(e.0)),
            }
        }
        (_, Executor::Noop) => {
            // A stand-in for device time, so the dispatch path can be measured with busy workers.
            tokio::time::sleep(worker.config.noop_task_time).await;
            TaskResult { succeeded: task.keys.len() as u64, failures: Vec::new(), manifest: String::new() }
        }
        (None, Executor::Engine) => {
            let engine = device
                .models
                .get(&worker.s3, &tenant, &task.model)
                .await
                .map_err(|e| Handback::Retry(e.to_string()))?;
            let generator = match &task.background {
                fleet_protocol::job::BackgroundSpec::Generate(g) => Some(
                    device
                        .models
                        .generator(&worker.s3, &tenant, &g.model)
                        .await
                        .map_err(|e| Handback::Retry(e.to_string()))?,
                ),
                _ => None,
            };
            let ctx =
                TaskContext { s3: &worker.s3, engine, worker: &id, attempt: lease.attempt, fence: &fence, generator };
            match task::run(&ctx, task).await {
                Ok(result) => result,
                Err(_) if fence.is_lost() => return Err(Handback::Fenced),
                Err(e) => return Err(Handback::Retry(e.0)),
            }
        }
    };
    tracing::info!(succeeded = result.succeeded, failed = result.failures.len(), "task done");
    metrics::WORKER_IMAGES.with_label_values(&["ok"]).inc_by(result.succeeded);
    metrics::WORKER_IMAGES.with_label_values(&["failed"]).inc_by(result.failures.len() as u64);
    let completed = Report::Completed {
        tenant: tenant_name,
        job,
        task: task.task,
        attempt: lease.attempt,
        token,
        worker: id,
        succeeded: result.succeeded,
        failures: result.failures,
        manifest: result.manifest,
        started_at_ms,
        finished_at_ms: now_ms(),
    };
    report_to_scheduler(worker, lost, task.priority, &completed).await
}

/// Confirm-mode channels for reports, one per priority: confirms come back in order per
/// channel, so an interactive task's report never waits behind a batch backlog's.
struct Reports {
    interactive: Channel,
    batch: Channel,
}

/// Publishes a report and waits for the broker's confirm; while the broker is away it waits
/// for the next session (the lease is renewed meanwhile). A task whose lease was lost
/// reports nothing.
async fn report_to_scheduler(
    worker: &Worker,
    lost: &AtomicBool,
    priority: Priority,
    report: &Report,
) -> Result<(), Handback> {
    let body = serde_json::to_vec(report).expect("a report serialises");
    let mut wait = Duration::from_millis(100);
    loop {
        if lost.load(Ordering::Relaxed) {
            return Err(Handback::Fenced);
        }
        let channels = worker.reports.read().await.clone();
        if let Some(channels) = channels {
            let channel = match priority {
                Priority::Interactive => &channels.interactive,
                Priority::Batch => &channels.batch,
            };
            let props = BasicProperties::default().with_content_type("application/json".into());
            match publish_confirmed(channel, "", reports_queue(priority), &body, props).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, report = report.kind(), "report not confirmed; retrying"),
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// This host's name (from `/etc/hostname`; `host` when unreadable).
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}
