//! What every part of the scheduler shares: the stores, the channels of the current broker
//! session, job events and job completion.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::{
    event_routing_key, now_ms, ItemFailureReport, JobEventMessage, Progress, EVENT_FAILURES_MAX,
};
use fleet_protocol::state::{JobEvent, JobState};
use fleet_queue::EVENTS_EXCHANGE;
use fleet_state::{JobRecord, JobStoreError, RedisJobStore};
use fleet_store::registry::{self, RegistryError};
use fleet_store::s3::{S3Config, S3Store};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

/// How long a resolved model stays trusted without asking the registry again.
const MODEL_CACHE_TTL: Duration = Duration::from_secs(30);

/// Device memory a model needs, and what it does, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelNeed {
    /// Weights, MiB.
    pub weights_mib: u64,
    /// Activations per image in a forward pass, MiB.
    pub memory_per_image_mib: u64,
    /// Matting model or background generator.
    pub task: fleet_protocol::manifest::Task,
}

impl Default for ModelNeed {
    fn default() -> Self {
        ModelNeed { weights_mib: 0, memory_per_image_mib: 0, task: fleet_protocol::manifest::Task::Matting }
    }
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ URL of the scheduler's user.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// The object store holding inputs and the model registry.
    pub s3: S3Config,
    /// Images per task when a job does not say.
    pub default_shard_size: u32,
    /// Least time between two progress events of one job.
    pub progress_interval: Duration,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How the dispatcher places tasks on devices.
    pub placement: crate::placement::Policy,
    /// Tenants' quotas and weights.
    pub tenants: fleet_protocol::tenancy::Policies,
    /// Batch tasks of one tenant published and not yet sent on by the dispatcher, at most:
    /// the rest wait in their job's cursor, so no tenant's flood stands in front of another.
    pub queue_window: u32,
    /// How long a finished job's records stay in Redis.
    pub retention: Duration,
}

/// The scheduler's shared state. Job state lives in Redis; what is kept here is only caches
/// and rate limits that may be lost at any time.
pub struct Scheduler {
    /// Settings.
    pub config: Config,
    /// Job and task records.
    pub store: RedisJobStore,
    /// Inputs and the model registry.
    pub s3: S3Store,
    models: Mutex<HashMap<(TenantId, ModelRef), (Instant, ModelNeed)>>,
    /// Woken whenever a lease ends, so the dispatcher places waiting tasks at once.
    pub capacity_freed: tokio::sync::Notify,
    running: Mutex<HashSet<(String, String)>>,
    last_progress: Mutex<HashMap<(String, String), Instant>>,
    /// Per-tenant usage: fair share, limits, the splitter's window.
    pub usage: crate::fair::Usage,
}

impl Scheduler {
    /// Connects to Redis and builds the S3 client.
    pub async fn connect(config: Config) -> Result<Self, JobStoreError> {
        let store = RedisJobStore::connect(&config.redis_url).await?.with_retention(config.retention);
        let s3 = S3Store::new(&config.s3);
        Ok(Scheduler {
            config,
            store,
            s3,
            models: Mutex::new(HashMap::new()),
            capacity_freed: tokio::sync::Notify::new(),
            running: Mutex::new(HashSet::new()),
            last_progress: Mutex::new(HashMap::new()),
            usage: crate::fair::Usage::default(),
        })
    }

    /// Checks that `tenant` can use `model` (its own or a shared one) and returns the device
    /// memory it needs; remembered for a short while so a burst of jobs does not read the
    /// same manifest once each.
    pub async fn resolve_model(&self, tenant: &TenantId, model: &ModelRef) -> Result<ModelNeed, RegistryError> {
        let key = (tenant.clone(), model.clone());
        let cached = self.models.lock().expect("model cache").get(&key).copied();
        match cached {
            Some((at, need)) if at.elapsed() < MODEL_CACHE_TTL => Ok(need),
            _ => {
                let (_, manifest) = registry::locate(&self.s3, tenant, model).await?;
                let need = ModelNeed {
                    weights_mib: manifest.weights_mib.ceil() as u64,
                    memory_per_image_mib: manifest.memory_per_image_mib.ceil() as u64,
                    task: manifest.task,
                };
                self.models.lock().expect("model cache").insert(key, (Instant::now(), need));
                Ok(need)
            }
        }
    }

    /// Publishes a job event. Events are best effort for listeners (the job store is the
    /// record), so a failed publish is logged, not retried.
    pub async fn publish_event(&self, events: &Channel, mut event: JobEventMessage) {
        let Ok(tenant) = TenantId::new(&event.tenant) else { return };
        match self.store.next_event_seq(&tenant, &event.job).await {
            Ok(seq) => event.seq = seq,
            Err(e) => tracing::warn!(job = %event.job, error = %e, "event sequence unavailable"),
        }
        let key = event_routing_key(&event.tenant, &event.job, &event.kind);
        let body = serde_json::to_vec(&event).expect("an event serialises");
        let props = BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
        if let Err(e) = events.basic_publish(EVENTS_EXCHANGE, &key, BasicPublishOptions::default(), &body, props).await
        {
            tracing::warn!(job = %event.job, kind = %event.kind, error = %e, "job event not published");
        }
    }

    /// A progress event, at most one per job per `progress_interval`.
    pub async fn progress_event(&self, events: &Channel, tenant: &str, job: &str, progress: Progress) {
        let key = (tenant.to_string(), job.to_string());
        {
            let mut last = self.last_progress.lock().expect("progress limiter");
            if last.get(&key).is_some_and(|t| t.elapsed() < self.config.progress_interval) {
                return;
            }
            last.insert(key, Instant::now());
        }
        self.publish_event(events, event(tenant, job, "progress").with_progress(progress)).await;
    }

    /// Moves the job to running on its first started task (once per scheduler lifetime).
    pub async fn job_started(&self, tenant: &TenantId, job: &str) {
        let key = (tenant.to_string(), job.to_string());
        if self.running.lock().expect("running set").contains(&key) {
            return;
        }
        match self.store.get(tenant, job).await {
            Ok(Some(record)) if record.state == JobState::Queued => {
                if let Err(e) = self.store.apply(tenant, job, JobEvent::TaskStarted).await {
                    tracing::debug!(job, error = %e, "job already past queued");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job, error = %e, "job record unavailable"),
        }
        self.running.lock().expect("running set").insert(key);
    }

    /// Ends the job once every task has ended: succeeded, succeeded with item errors or
    /// failed by its items' outcomes; failed outright when the input matched nothing.
    /// Safe to call more than once: a finished job refuses the second end.
    pub async fn finalize_if_done(&self, events: &Channel, tenant: &TenantId, job: &str, progress: Progress) {
        if !progress.all_done() {
            return;
        }
        let (event, reason) = if progress.items_total == 0 {
            (JobEvent::Fail, Some("the job's input matched no objects".to_string()))
        } else {
            (JobEvent::TasksEnded { succeeded: progress.items_succeeded, failed: progress.items_failed }, None)
        };
        match self.store.apply_with_reason(tenant, job, event, reason).await {
            Ok(record) => {
                self.forget(tenant, job);
                self.terminal_event(events, &record, progress).await;
            }
            Err(JobStoreError::Transition(_)) => {}
            Err(e) => tracing::warn!(job, error = %e, "could not end the job; the next report retries"),
        }
    }

    /// Publishes the event of a job that reached a terminal state.
    pub async fn terminal_event(&self, events: &Channel, record: &JobRecord, progress: Progress) {
        let tenant = TenantId::new(&record.tenant).expect("stored tenants are valid");
        let failures = match self.store.failures(&tenant, &record.id, 0, EVENT_FAILURES_MAX).await {
            Ok(failures) => failures,
            Err(e) => {
                tracing::warn!(job = %record.id, error = %e, "failures unavailable for the event");
                Vec::new()
            }
        };
        let kind = state_name(record.state);
        tracing::info!(job = %record.id, tenant = %record.tenant, state = kind, succeeded = progress.items_succeeded,
            failed = progress.items_failed, "job ended");
        let mut message = event(&record.tenant, &record.id, kind).with_progress(progress);
        message.reason = record.reason.clone();
        message.failures = failures;
        self.publish_event(events, message).await;
    }

    fn forget(&self, tenant: &TenantId, job: &str) {
        let key = (tenant.to_string(), job.to_string());
        self.running.lock().expect("running set").remove(&key);
        self.last_progress.lock().expect("progress limiter").remove(&key);
    }
}

/// A bare event of `kind`.
pub fn event(tenant: &str, job: &str, kind: &str) -> JobEventMessage {
    JobEventMessage {
        tenant: tenant.to_string(),
        job: job.to_string(),
        kind: kind.to_string(),
        seq: 0,
        at_ms: now_ms(),
        progress: None,
        reason: None,
        code: None,
        retry_after_ms: None,
        duplicate: false,
        failures: Vec::<ItemFailureReport>::new(),
        training: None,
    }
}

/// The snake_case name of a job state, as events and the CLI show it.
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Accepted => "accepted",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::SucceededWithItemErrors => "succeeded_with_item_errors",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}
