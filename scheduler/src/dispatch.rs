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
//! [`fleet_state::lease`]). Tasks that fit nowhere wait here (bounded by the consumers'
//! prefetch) and are tried again whenever a lease ends or a heartbeat changes the fleet; one
//! that has waited [`UNPLACED_RETURN`] goes back to the end of its queue, so a delivery is
//! never held past RabbitMQ's consumer timeout and the reasons are logged and published for
//! `fleetctl queue`.

mod fleet;
mod round;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::job::Priority;
use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::{now_ms, TaskMessage, TRACEPARENT_HEADER};
use fleet_queue::{
    confirmed_channel, header_str, publish_confirmed, publish_each, task_queue, Outgoing, BATCH_QUEUE,
    INTERACTIVE_QUEUE, TASKS_EXCHANGE,
};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use self::fleet::FleetView;
use self::round::{GrantResult, Granted, Placed, Round};
use crate::context::{ModelNeed, Scheduler};
use crate::error::SchedulerError;
use crate::fair;
use crate::placement::{self, Decision, DeviceView, TaskNeed};

/// Interactive deliveries held at once.
const INTERACTIVE_PREFETCH: u16 = 64;
/// Batch deliveries held at once.
const BATCH_PREFETCH: u16 = 512;
/// Most tasks placed in one round.
const ROUND_MAX: usize = 1024;
/// How often waiting tasks are tried again without news.
const TICK: Duration = Duration::from_millis(50);
/// A task that fits nowhere this long goes back to the end of its queue.
pub const UNPLACED_RETURN: Duration = Duration::from_secs(60);
/// Images per forward pass a model's activations are reserved for (the engine's batch).
const ACTIVATION_BATCH: u32 = 8;
/// A preemption not answered in this long is asked for again.
const PREEMPT_AGAIN: Duration = Duration::from_secs(10);

/// A task delivery not yet placed.
struct Waiting {
    delivery: Delivery,
    message: TaskMessage,
    traceparent: String,
    since: Instant,
}

/// The dispatcher's state between rounds.
struct Dispatcher {
    sched: Arc<Scheduler>,
    out: Channel,
    interactive: VecDeque<Waiting>,
    batch: VecDeque<Waiting>,
    fleet: FleetView,
    preempting: HashMap<String, Instant>,
    blocked_logged: Option<Instant>,
}

/// The dispatcher's consumers of the priority queues and its channel to the workers' queues.
#[derive(Clone)]
pub struct Queues {
    /// Consumer of the interactive task queue.
    pub interactive: lapin::Consumer,
    /// Consumer of the batch task queue.
    pub batch: lapin::Consumer,
    /// Confirm-mode channel for sending tasks to workers.
    pub out: Channel,
}

impl Queues {
    /// Starts consuming both task queues on `connection` and opens the channel to the workers.
    pub async fn open(connection: &Connection) -> Result<Queues, SchedulerError> {
        Ok(Queues {
            interactive: consumer(connection, INTERACTIVE_QUEUE, INTERACTIVE_PREFETCH).await?,
            batch: consumer(connection, BATCH_QUEUE, BATCH_PREFETCH).await?,
            out: confirmed_channel(connection).await?,
        })
    }
}

/// Runs the dispatcher on `queues` until a consumer or the connection fails, or until `stop`
/// is cancelled: then it takes nothing more and returns after the round in hand. The
/// deliveries still waiting go back to their queues when the connection closes.
pub async fn run(sched: Arc<Scheduler>, queues: Queues, stop: CancellationToken) -> Result<(), SchedulerError> {
    let Queues { mut interactive, mut batch, out } = queues;
    sched.usage.reset_pending();
    let mut d = Dispatcher {
        out,
        sched,
        interactive: VecDeque::new(),
        batch: VecDeque::new(),
        fleet: FleetView::default(),
        preempting: HashMap::new(),
        blocked_logged: None,
    };
    loop {
        let sched = d.sched.clone();
        let arrived = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
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
            match d.round().await {
                // Redis did not answer before anything was taken from the waiting lists: the
                // tasks wait on (holding their deliveries) for the next round, rather than the
                // session ending and every delivery it holds going back to its queue.
                Err(SchedulerError::Redis(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "dispatch round postponed: the job store did not answer");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(ROUND_RETRY) => {}
                    }
                }
                other => other?,
            }
        }
    }
}

/// Pause before a dispatch round that found the job store unreachable tries again.
const ROUND_RETRY: Duration = Duration::from_millis(500);

/// A consumer of `queue` on a channel of its own, holding up to `prefetch` deliveries.
async fn consumer(connection: &Connection, queue: &str, prefetch: u16) -> Result<lapin::Consumer, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("dispatcher-{queue}-{}", std::process::id());
    channel.basic_consume(queue, &tag, BasicConsumeOptions::default(), FieldTable::default()).await
}

impl Dispatcher {
    /// Queues a delivery to wait for the next round; an unreadable one is dead-lettered.
    async fn take(&mut self, got: Option<Result<Delivery, lapin::Error>>) -> Result<(), SchedulerError> {
        let delivery = got.ok_or(SchedulerError::TaskQueueClosed)??;
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
    async fn round(&mut self) -> Result<(), SchedulerError> {
        let devices = self.fleet.devices(&self.sched.store).await?;
        let tasks = self.next_tasks();
        let needs = self.needs(&tasks).await;
        let decisions = placement::place(&self.sched.config.placement, &devices, &needs);
        self.preempt(&devices, &needs, &decisions).await;
        let mut round = Round { tasks, needs, devices, now: now_ms(), settled: Vec::new(), unplaced: Vec::new() };
        let placed = round.placed(decisions);
        let grants = self.grant_leases(&round, &placed).await;
        let (outgoing, granted) = round.sort_grants(&placed, grants);
        self.send(&mut round, outgoing, granted).await;
        self.report_blocked(&round.tasks, &round.unplaced).await;
        Ok(self.settle(round).await?)
    }

    /// Takes up to [`ROUND_MAX`] waiting tasks, interactive ones first, each class in fair
    /// share order between tenants (see [`crate::fair`]); tasks of tenants at a limit stay.
    fn next_tasks(&mut self) -> Vec<Waiting> {
        let mut tasks: Vec<Waiting> = Vec::new();
        for class in [&mut self.interactive, &mut self.batch] {
            if tasks.len() >= ROUND_MAX || class.is_empty() {
                continue;
            }
            let waiting: Vec<Waiting> = class.drain(..).collect();
            let candidates: Vec<fair::Candidate> = waiting
                .iter()
                .map(|w| fair::Candidate { tenant: &w.message.tenant, items: w.message.keys.len() as u64 })
                .collect();
            let mut order = self.sched.usage.order(&candidates, &self.sched.config.tenants, Instant::now());
            order.truncate(ROUND_MAX - tasks.len());
            let mut chosen: Vec<Option<Waiting>> = waiting.into_iter().map(Some).collect();
            for i in order {
                tasks.push(chosen[i].take().expect("each index once"));
            }
            class.extend(chosen.into_iter().flatten());
        }
        tasks
    }

    /// What each task needs of a device, from its model's manifest (nothing known when the
    /// model cannot be resolved).
    async fn needs(&self, tasks: &[Waiting]) -> Vec<TaskNeed> {
        let mut needs = Vec::with_capacity(tasks.len());
        for w in tasks {
            let model = match (w.message.model.parse::<ModelRef>(), TenantId::new(&w.message.tenant)) {
                (Ok(model), Ok(tenant)) => self.sched.resolve_model(&tenant, &model).await.unwrap_or_default(),
                _ => Default::default(),
            };
            needs.push(task_need(&w.message, model));
        }
        needs
    }

    /// Grants each placed task its lease on its device, all at once.
    async fn grant_leases(&self, round: &Round, placed: &[Placed]) -> Vec<GrantResult> {
        let store = &self.sched.store;
        futures::future::join_all(placed.iter().map(|p| {
            let (w, d) = (&round.tasks[p.task], &round.devices[p.device]);
            let priority = if w.message.priority == Priority::Interactive { "interactive" } else { "batch" };
            async move {
                let tenant = TenantId::new(&w.message.tenant).ok()?;
                let body = &w.delivery.data;
                Some(
                    store
                        .grant_lease(&tenant, &w.message.job, w.message.task, &d.worker, d.device, priority, body)
                        .await,
                )
            }
        }))
        .await
    }

    /// Sends the granted tasks to their workers' queues; a task a queue refuses gives its
    /// lease back and waits, and its worker is left out for a moment.
    async fn send(&mut self, round: &mut Round, outgoing: Vec<Outgoing>, granted: Vec<Granted>) {
        let outcomes = publish_each(&self.out, "", outgoing).await;
        for (Granted { placed: p, token }, outcome) in granted.into_iter().zip(outcomes) {
            let (w, device) = (&round.tasks[p.task], &round.devices[p.device]);
            match outcome {
                Ok(()) => {
                    let tenant = &w.message.tenant;
                    let weight = self.sched.config.tenants.limits(tenant).weight();
                    let items = w.message.keys.len() as u64;
                    self.sched.usage.sent(tenant, &w.message.id(), items, weight, Instant::now());
                    fleet_telemetry::metrics::TASKS.with_label_values(&["leased"]).inc();
                    let label = if p.warm { "warm" } else { "cold" };
                    fleet_telemetry::metrics::PLACEMENTS.with_label_values(&[label]).inc();
                    self.fleet.record_sent(device, &w.message, &round.needs[p.task].model, p.need_mib, round.now);
                    round.settled.push((p.task, true));
                }
                Err(e) => {
                    tracing::warn!(error = %e, worker = %device.worker, task = %w.message.id(),
                        "worker queue refused the task; lease given back, worker left out for a moment");
                    self.fleet.exclude(&device.worker);
                    if let Err(e) = self.sched.store.abandon_lease(&w.message.id(), token).await {
                        tracing::warn!(error = %e, "lease not given back; it expires by itself");
                    }
                    round.unplaced.push((p.task, vec![format!("{}: {e}", device.worker)]));
                }
            }
        }
    }

    /// Settles deliveries: acknowledged once sent (or a duplicate, or returned to the end of
    /// their queue), dead-lettered if unreadable; the rest wait here again, in their order.
    async fn settle(&mut self, round: Round) -> Result<(), lapin::Error> {
        let mut done = vec![None; round.tasks.len()];
        for &(t, ack) in &round.settled {
            done[t] = Some(ack);
        }
        self.return_long_waiting(&round, &mut done).await;
        let mut keep = Vec::new();
        for (t, w) in round.tasks.into_iter().enumerate() {
            // A batch task that leaves the dispatcher frees a place in its tenant's window: the
            // window spans the queue and the dispatcher's waiting list, so the list never fills
            // with one tenant's tasks while another's wait behind them in the queue.
            if done[t].is_some() && w.message.priority == Priority::Batch {
                self.sched.usage.taken(&w.message.tenant);
            }
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

    /// Publishes the unplaced tasks that waited [`UNPLACED_RETURN`] again at the end of their
    /// queue, marking each one republished as done (to acknowledge).
    async fn return_long_waiting(&self, round: &Round, done: &mut [Option<bool>]) {
        let mut back_of_queue = Vec::new();
        for (t, _) in &round.unplaced {
            if round.tasks[*t].since.elapsed() >= UNPLACED_RETURN {
                back_of_queue.push(*t);
            }
        }
        for t in back_of_queue {
            let w = &round.tasks[t];
            let (_, routing_key) = task_queue(w.message.priority);
            let props = w.delivery.properties.clone();
            if publish_confirmed(&self.out, TASKS_EXCHANGE, routing_key, &w.delivery.data, props).await.is_ok() {
                tracing::info!(task = %w.message.id(), "fits nowhere for a while; back to the end of its queue");
                done[t] = Some(true);
            }
        }
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

/// What `message` asks of a device, given what its model needs.
fn task_need(message: &TaskMessage, model: ModelNeed) -> TaskNeed {
    let interactive = message.priority == Priority::Interactive;
    match &message.fine_tune {
        // A whole device, or the declared share; otherwise as much as training holds:
        // weights, gradients and two optimiser moments, and a batch's activations and
        // their gradients. Its own "model" name: training memory is never shared.
        Some(ft) => {
            let (weights_mib, memory_per_image_mib, batch) = match ft.resources.memory_mib {
                Some(share) => (share, 0, 1),
                None => (4 * model.weights_mib, 3 * model.memory_per_image_mib, ft.hyper.batch_size),
            };
            TaskNeed {
                id: message.id(),
                interactive,
                model: format!("{} (training {})", message.model, message.id()),
                weights_mib,
                memory_per_image_mib,
                batch,
                whole_device: ft.resources.whole_device(),
            }
        }
        None => TaskNeed {
            id: message.id(),
            interactive,
            model: message.model.clone(),
            weights_mib: model.weights_mib,
            memory_per_image_mib: model.memory_per_image_mib,
            batch: ACTIVATION_BATCH,
            whole_device: false,
        },
    }
}
