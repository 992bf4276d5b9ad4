//! The dispatcher: takes tasks off the priority queues, places each on a worker's device
//! with the placement policy, grants it a lease and sends it to that worker's own queue.
//!
//! ```text
//! fleet.tasks.interactive --\                       heartbeats (devices, free memory, warm models)
//!                            >-- waiting --> place --> grant lease (Redis) --> fleet.worker.<id>
//! fleet.tasks.batch ---------/      ^  unplaced: wait for capacity     --> ack the queue's delivery
//! ```
//!
//! A queue delivery is acknowledged only once its task is in a worker's queue under a lease;
//! from then on the lease, not the delivery, keeps the task alive (see
//! [`fleet_protocol::lease`]). Tasks that fit nowhere wait here (bounded by the consumers'
//! prefetch) and are tried again whenever a lease ends or a heartbeat changes the fleet; one
//! that has waited [`UNPLACED_RETURN`] goes back to the end of its queue, so a delivery is
//! never held past RabbitMQ's consumer timeout and the reasons are logged and published for
//! `fleetctl queue`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::heartbeat::{Heartbeat, TrainingHold};
use fleet_protocol::job::Priority;
use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::{now_ms, LeaseGrant, TaskMessage, LEASE_HEADER, TRACEPARENT_HEADER};
use fleet_queue::{
    confirmed_channel, header_str, publish_confirmed, publish_each, string_headers, task_queue, worker_queue, Outgoing,
    BATCH_QUEUE, INTERACTIVE_QUEUE, TASKS_EXCHANGE,
};
use fleet_state::lease::Grant;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::context::Scheduler;
use crate::placement::{self, Decision, DeviceView, TaskNeed, WorkerState};

/// Interactive deliveries held at once.
const INTERACTIVE_PREFETCH: u16 = 64;
/// Batch deliveries held at once.
const BATCH_PREFETCH: u16 = 512;
/// Most tasks placed in one round.
const ROUND_MAX: usize = 1024;
/// How often waiting tasks are tried again without news.
const TICK: Duration = Duration::from_millis(50);
/// Heartbeats older than this are read again before a round.
const VIEW_MAX_AGE: Duration = Duration::from_millis(200);
/// A task that fits nowhere this long goes back to the end of its queue.
pub const UNPLACED_RETURN: Duration = Duration::from_secs(60);
/// Images per forward pass a model's activations are reserved for (the engine's batch).
const ACTIVATION_BATCH: u32 = 8;
/// Batch tasks a device may hold per lane slot: one running and the rest waiting on the
/// worker, so its slots never wait for a dispatch round trip.
const LEASES_PER_SLOT: u32 = 3;
/// How long after a grant the dispatcher vouches for a fine-tune its worker's heartbeat does
/// not list yet.
const TRAINING_GRACE_MS: u64 = 2_000;
/// A preemption not answered in this long is asked for again.
const PREEMPT_AGAIN: Duration = Duration::from_secs(10);
/// How long a worker whose queue refused a task is left out.
const EXCLUDE_FOR: Duration = Duration::from_secs(2);

struct Waiting {
    delivery: Delivery,
    message: TaskMessage,
    traceparent: String,
    since: Instant,
}

/// A model sent to a device where it was cold, since the device's last heartbeat: its memory
/// is not in that heartbeat yet.
struct Recent {
    worker: String,
    device: u32,
    model: String,
    need_mib: u64,
    at_ms: u64,
}

/// A fine-tune sent to a device, until the device's heartbeats report it themselves.
struct GrantedTraining {
    worker: String,
    device: u32,
    hold: TrainingHold,
    at_ms: u64,
}

struct Dispatcher {
    sched: Arc<Scheduler>,
    out: Channel,
    interactive: VecDeque<Waiting>,
    batch: VecDeque<Waiting>,
    beats: Vec<Heartbeat>,
    beats_at: Option<Instant>,
    ecc_seen: HashMap<(String, u32), u64>,
    recent: Vec<Recent>,
    training: Vec<GrantedTraining>,
    preempting: HashMap<String, Instant>,
    excluded: HashMap<String, Instant>,
    blocked_logged: Option<Instant>,
}

/// Runs the dispatcher on `connection` until a consumer or the connection fails.
pub async fn run(sched: Arc<Scheduler>, connection: &Connection) -> anyhow::Result<()> {
    let mut interactive = consumer(connection, INTERACTIVE_QUEUE, INTERACTIVE_PREFETCH).await?;
    let mut batch = consumer(connection, BATCH_QUEUE, BATCH_PREFETCH).await?;
    let mut d = Dispatcher {
        out: confirmed_channel(connection).await?,
        sched,
        interactive: VecDeque::new(),
        batch: VecDeque::new(),
        beats: Vec::new(),
        beats_at: None,
        ecc_seen: HashMap::new(),
        recent: Vec::new(),
        training: Vec::new(),
        preempting: HashMap::new(),
        excluded: HashMap::new(),
        blocked_logged: None,
    };
    loop {
        let sched = d.sched.clone();
        let arrived = tokio::select! {
            biased;
            got = interactive.next() => Some(got),
            got = batch.next() => Some(got),
            _ = sched.capacity_freed.notified() => None,
            _ = tokio::time::sleep(TICK) => None,
        };
        if let Some(got) = arrived {
            d.take(got).await?;
        }
        // Whatever else is already here joins this round.
        for consumer in [&mut interactive, &mut batch] {
            for _ in 0..ROUND_MAX {
                match consumer.next().now_or_never() {
                    Some(got) => d.take(got).await?,
                    None => break,
                }
            }
        }
        if !(d.interactive.is_empty() && d.batch.is_empty()) {
            d.round().await?;
        }
    }
}

async fn consumer(connection: &Connection, queue: &str, prefetch: u16) -> anyhow::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("dispatcher-{queue}-{}", std::process::id());
    Ok(channel.basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default()).await?)
}

impl Dispatcher {
    async fn take(&mut self, got: Option<Result<Delivery, lapin::Error>>) -> anyhow::Result<()> {
        let delivery = got.ok_or_else(|| anyhow::anyhow!("a task queue consumer closed"))??;
        let message: TaskMessage = match serde_json::from_slice(&delivery.data) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable task dead-lettered");
                delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await?;
                return Ok(());
            }
        };
        let traceparent = header_str(&delivery.properties, TRACEPARENT_HEADER).unwrap_or_default();
        let waiting = Waiting { delivery, message, traceparent, since: Instant::now() };
        match waiting.message.priority {
            Priority::Interactive => self.interactive.push_back(waiting),
            Priority::Batch => self.batch.push_back(waiting),
        }
        Ok(())
    }

    /// Places what waits (interactive first), grants leases, sends the tasks to their
    /// workers and acknowledges their queue deliveries.
    async fn round(&mut self) -> anyhow::Result<()> {
        let devices = self.devices().await?;
        let mut tasks: Vec<Waiting> = Vec::new();
        while tasks.len() < ROUND_MAX {
            match self.interactive.pop_front().or_else(|| self.batch.pop_front()) {
                Some(w) => tasks.push(w),
                None => break,
            }
        }
        let mut needs = Vec::with_capacity(tasks.len());
        for w in &tasks {
            let need = match (w.message.model.parse::<ModelRef>(), TenantId::new(&w.message.tenant)) {
                (Ok(model), Ok(tenant)) => self.sched.resolve_model(&tenant, &model).await.unwrap_or_default(),
                _ => Default::default(),
            };
            let need = match &w.message.fine_tune {
                // A whole device, or the declared share; otherwise as much as training holds:
                // weights, gradients and two optimiser moments, and a batch's activations and
                // their gradients. Its own "model" name: training memory is never shared.
                Some(ft) => {
                    let (weights_mib, memory_per_image_mib, batch) = match ft.resources.memory_mib {
                        Some(share) => (share, 0, 1),
                        None => (4 * need.weights_mib, 3 * need.memory_per_image_mib, ft.hyper.batch_size),
                    };
                    TaskNeed {
                        id: w.message.id(),
                        interactive: w.message.priority == Priority::Interactive,
                        model: format!("{} (training {})", w.message.model, w.message.id()),
                        weights_mib,
                        memory_per_image_mib,
                        batch,
                        whole_device: ft.resources.whole_device(),
                    }
                }
                None => TaskNeed {
                    id: w.message.id(),
                    interactive: w.message.priority == Priority::Interactive,
                    model: w.message.model.clone(),
                    weights_mib: need.weights_mib,
                    memory_per_image_mib: need.memory_per_image_mib,
                    batch: ACTIVATION_BATCH,
                    whole_device: false,
                },
            };
            needs.push(need);
        }
        let decisions = placement::place(&self.sched.config.placement, &devices, &needs);
        self.preempt(&devices, &needs, &decisions).await;
        let now = now_ms();
        let mut placed = Vec::new();
        let mut unplaced: Vec<(usize, Vec<String>)> = Vec::new();
        for (t, decision) in decisions {
            match decision {
                Decision::Placed { index, need_mib, warm } => placed.push((t, index, need_mib, warm)),
                Decision::Unplaced { reasons } => unplaced.push((t, reasons)),
            }
        }
        let store = &self.sched.store;
        let grants = futures::future::join_all(placed.iter().map(|&(t, index, _, _)| {
            let (w, d) = (&tasks[t], &devices[index]);
            let priority = if w.message.priority == Priority::Interactive { "interactive" } else { "batch" };
            async move {
                let tenant = TenantId::new(&w.message.tenant).ok()?;
                let body = &w.delivery.data;
                Some(
                    store
                        .grant_lease(&tenant, &w.message.job, w.message.task, &d.worker, d.device, priority, now, body)
                        .await,
                )
            }
        }))
        .await;
        let mut outgoing: Vec<Outgoing> = Vec::new();
        let mut sent = Vec::new();
        let mut settled: Vec<(usize, bool)> = Vec::new();
        for (&(t, index, need_mib, warm), grant) in placed.iter().zip(grants) {
            let w = &tasks[t];
            match grant {
                None => settled.push((t, false)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, task = %w.message.id(), "lease not granted; the task waits");
                    unplaced.push((t, vec![format!("lease store: {e}")]));
                }
                Some(Ok(Grant::Granted { token, grants })) => {
                    let device = &devices[index];
                    let lease = LeaseGrant { token, attempt: grants, device: device.device };
                    let props = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_message_id(w.message.id().into())
                        .with_headers(string_headers(&[
                            (TRACEPARENT_HEADER, &w.traceparent),
                            (LEASE_HEADER, &lease.header()),
                        ]));
                    outgoing.push((worker_queue(&device.worker), w.delivery.data.clone(), props));
                    sent.push((t, index, need_mib, warm, token));
                }
                Some(Ok(Grant::Ended | Grant::Held | Grant::Gone)) => {
                    // A second copy of a task that ended or that a live worker holds.
                    fleet_telemetry::metrics::TASKS.with_label_values(&["duplicate"]).inc();
                    settled.push((t, true));
                }
            }
        }
        let outcomes = publish_each(&self.out, "", outgoing).await;
        for ((t, index, need_mib, warm, token), outcome) in sent.into_iter().zip(outcomes) {
            let (w, device) = (&tasks[t], &devices[index]);
            match outcome {
                Ok(()) => {
                    fleet_telemetry::metrics::TASKS.with_label_values(&["leased"]).inc();
                    let label = if warm { "warm" } else { "cold" };
                    fleet_telemetry::metrics::PLACEMENTS.with_label_values(&[label]).inc();
                    if let Some(ft) = &w.message.fine_tune {
                        self.training.push(GrantedTraining {
                            worker: device.worker.clone(),
                            device: device.device,
                            hold: TrainingHold {
                                task: w.message.id(),
                                whole_device: ft.resources.whole_device(),
                                memory_mib: ft.resources.memory_mib.unwrap_or(0),
                                preemptible: ft.resources.preemptible,
                            },
                            at_ms: now,
                        });
                    }
                    if need_mib > 0 {
                        self.recent.push(Recent {
                            worker: device.worker.clone(),
                            device: device.device,
                            model: needs[t].model.clone(),
                            need_mib,
                            at_ms: now,
                        });
                    }
                    settled.push((t, true));
                }
                Err(e) => {
                    tracing::warn!(error = %e, worker = %device.worker, task = %w.message.id(),
                        "worker queue refused the task; lease given back, worker left out for a moment");
                    self.excluded.insert(device.worker.clone(), Instant::now());
                    if let Err(e) = self.sched.store.abandon_lease(&w.message.id(), token).await {
                        tracing::warn!(error = %e, "lease not given back; it expires by itself");
                    }
                    unplaced.push((t, vec![format!("{}: {e}", device.worker)]));
                }
            }
        }
        self.report_blocked(&tasks, &unplaced).await;
        // Settle deliveries: acknowledged once sent (or a duplicate), returned if unreadable;
        // the rest wait, in their order, unless they waited too long.
        let mut done = vec![None; tasks.len()];
        for (t, ack) in settled {
            done[t] = Some(ack);
        }
        let mut back_of_queue = Vec::new();
        for (t, _) in &unplaced {
            if tasks[*t].since.elapsed() >= UNPLACED_RETURN {
                back_of_queue.push(*t);
            }
        }
        for t in back_of_queue {
            let w = &tasks[t];
            let (_, routing_key) = task_queue(w.message.priority);
            let props = w.delivery.properties.clone();
            if publish_confirmed(&self.out, TASKS_EXCHANGE, routing_key, &w.delivery.data, props).await.is_ok() {
                tracing::info!(task = %w.message.id(), "fits nowhere for a while; back to the end of its queue");
                done[t] = Some(true);
            }
        }
        let mut keep = Vec::new();
        for (t, w) in tasks.into_iter().enumerate() {
            match done[t] {
                Some(true) => w.delivery.ack(BasicAckOptions::default()).await?,
                Some(false) => w.delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await?,
                None => keep.push(w),
            }
        }
        for w in keep.into_iter().rev() {
            match w.message.priority {
                Priority::Interactive => self.interactive.push_front(w),
                Priority::Batch => self.batch.push_front(w),
            }
        }
        Ok(())
    }

    /// Every device of every live worker, with its load from the leases and the memory of
    /// the leases granted since its heartbeat set aside.
    async fn devices(&mut self) -> anyhow::Result<Vec<DeviceView>> {
        if self.beats_at.is_none_or(|at| at.elapsed() >= VIEW_MAX_AGE) {
            self.beats = self.sched.store.heartbeats().await?;
            self.beats_at = Some(Instant::now());
            let oldest = self.beats.iter().map(|b| b.at_ms).min().unwrap_or(0);
            self.recent.retain(|r| r.at_ms >= oldest);
            // A worker lists a fine-tune from the moment it takes it: two periods after the
            // grant, its heartbeat speaks for it.
            let beats = &self.beats;
            self.training.retain(|t| {
                beats.iter().find(|b| b.id == t.worker).is_some_and(|b| b.at_ms < t.at_ms + TRAINING_GRACE_MS)
            });
            self.excluded.retain(|_, at| at.elapsed() < EXCLUDE_FOR);
        }
        let load = self.sched.store.load().await?;
        let now = now_ms();
        let mut out = Vec::new();
        for beat in &self.beats {
            if self.excluded.contains_key(&beat.id) {
                continue;
            }
            let state = match beat.state.as_str() {
                "active" => WorkerState::Active,
                "cordoned" => WorkerState::Cordoned,
                _ => WorkerState::Draining,
            };
            for device in &beat.devices {
                let held = |priority: &str| {
                    load.get(&(beat.id.clone(), device.index, priority.to_string())).copied().unwrap_or(0)
                };
                let (interactive, batch) = (held("interactive"), held("batch"));
                let loading: Vec<&Recent> = self
                    .recent
                    .iter()
                    .filter(|r| r.worker == beat.id && r.device == device.index && r.at_ms > beat.at_ms)
                    .filter(|r| !device.warm_models.contains(&r.model))
                    .collect();
                let granted_since: u64 = loading.iter().map(|r| r.need_mib).sum();
                let gpu = device
                    .spec
                    .strip_prefix("cuda:")
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(|n| beat.gpus.iter().find(|g| g.index == n));
                let ecc = gpu.and_then(|g| g.ecc_uncorrected);
                let slot_key = (beat.id.clone(), device.index);
                let ecc_growing = match (ecc, self.ecc_seen.get(&slot_key)) {
                    (Some(now), Some(before)) => now > *before,
                    _ => false,
                };
                if let Some(ecc) = ecc {
                    self.ecc_seen.entry(slot_key).and_modify(|seen| *seen = (*seen).min(ecc)).or_insert(ecc);
                }
                let slots = device.slots.max(1) as u32;
                let mut training = device.training.clone();
                for t in self.training.iter().filter(|t| t.worker == beat.id && t.device == device.index) {
                    if !training.iter().any(|h| h.task == t.hold.task) {
                        training.push(t.hold.clone());
                    }
                }
                out.push(DeviceView {
                    worker: beat.id.clone(),
                    device: device.index,
                    state,
                    total_mib: device.memory_total_mib,
                    free_mib: device.memory_free_mib.saturating_sub(granted_since),
                    evictable_mib: device.warm_mib,
                    load: interactive + batch,
                    batch_load: batch,
                    capacity: 2 * LEASES_PER_SLOT * slots,
                    batch_capacity: LEASES_PER_SLOT * slots,
                    warm: device.warm_models.iter().cloned().collect(),
                    loading: loading.iter().map(|r| r.model.clone()).collect(),
                    temperature_c: gpu.and_then(|g| g.temperature_c),
                    ecc_growing,
                    heartbeat_age_ms: now.saturating_sub(beat.at_ms),
                    training,
                });
            }
        }
        Ok(out)
    }

    /// Asks the fine-tunes standing in the way of interactive tasks that fit nowhere to
    /// checkpoint and give their devices back (once per [`PREEMPT_AGAIN`] each).
    async fn preempt(&mut self, devices: &[DeviceView], needs: &[TaskNeed], decisions: &[(usize, Decision)]) {
        self.preempting.retain(|_, at| at.elapsed() < PREEMPT_AGAIN);
        for p in placement::preemptions(&self.sched.config.placement, devices, needs, decisions) {
            let device = &devices[p.index];
            for victim in p.victims {
                if self.preempting.contains_key(&victim) {
                    continue;
                }
                match self.sched.store.request_preemption(&victim).await {
                    Ok(true) => {
                        tracing::info!(fine_tune = %victim, worker = %device.worker, device = device.device,
                            for_task = %needs[p.for_task].id, "preempting a fine-tune for interactive work");
                        fleet_telemetry::metrics::TASKS.with_label_values(&["preempt_requested"]).inc();
                        self.preempting.insert(victim, Instant::now());
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, fine_tune = %victim, "preemption not requested"),
                }
            }
        }
    }

    /// Publishes what could not be placed, and why, for operators (every few seconds in the
    /// log, always in Redis with a short TTL).
    async fn report_blocked(&mut self, tasks: &[Waiting], unplaced: &[(usize, Vec<String>)]) {
        if unplaced.is_empty() {
            return;
        }
        let count = |p: Priority| unplaced.iter().filter(|(t, _)| tasks[*t].message.priority == p).count();
        let mut reasons: Vec<&String> = unplaced.iter().flat_map(|(_, r)| r.iter()).collect();
        reasons.sort();
        reasons.dedup();
        reasons.truncate(20);
        let summary = serde_json::json!({
            "at_ms": now_ms(),
            "interactive": count(Priority::Interactive),
            "batch": count(Priority::Batch),
            "reasons": reasons,
        });
        if let Err(e) = self.sched.store.put_note(fleet_state::schema::BLOCKED_KEY, &summary.to_string(), 10).await {
            tracing::debug!(error = %e, "placement summary not written");
        }
        if self.blocked_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            self.blocked_logged = Some(Instant::now());
            let no_fleet = reasons.is_empty();
            tracing::info!(
                interactive = count(Priority::Interactive),
                batch = count(Priority::Batch),
                reasons = %if no_fleet { "no worker is heartbeating".to_string() } else { reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join("; ") },
                "tasks waiting for a device"
            );
        }
    }
}
