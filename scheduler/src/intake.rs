//! Job intake: every message on `fleet.jobs.intake` ends as a recorded job, a recorded
//! rejection the submitter can read (job store and `rejected` event), or, when not even a
//! tenant can be named, a message parked in `fleet.dead`. Nothing is dropped silently and a
//! bad message never stops the consumer.

use fleet_protocol::fine_tune::Target;
use fleet_protocol::job::{is_valid_id, validate, BackgroundSpec, JobKind, Rejection, ValidJob};
use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::{ModelRef, Task};
use fleet_protocol::message::{new_traceparent, now_ms, trace_id, CancelRequest, CANCEL_TYPE, TRACEPARENT_HEADER};
use fleet_protocol::state::{JobEvent, JobState};
use fleet_queue::{header_str, INTAKE_QUEUE};
use fleet_state::{Created, JobRecord};
use fleet_store::registry::{self, RegistryError};
use fleet_telemetry::metrics;
use lapin::{BasicProperties, Channel};
use tracing::Instrument;

use crate::context::{event, Scheduler};
use crate::shard::{Cursor, ShardCursor};

/// What to do with the intake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it (recorded or rejected).
    Ack,
    /// A dependency (Redis, S3) failed: put it back and try again.
    Retry(String),
    /// Unattributable: dead-letter it for an operator.
    Park(String),
}

/// What intake decided, for the caller to act on after acking.
#[derive(Debug)]
pub enum Intake {
    /// A new job to split into tasks.
    NewJob {
        /// Its tenant.
        tenant: TenantId,
        /// Its id.
        job: String,
        /// Its record, as stored.
        record: Box<JobRecord>,
        /// Where splitting starts.
        cursor: ShardCursor,
    },
    /// Nothing more to do.
    Done,
}

/// Handles one intake message.
pub async fn handle(
    sched: &Scheduler,
    events: &Channel,
    body: &[u8],
    props: &BasicProperties,
) -> (Disposition, Intake) {
    let Some(tenant) = props.user_id().as_ref().and_then(|u| TenantId::new(u.as_str()).ok()) else {
        let reason = "message has no broker-validated user_id naming a tenant".to_string();
        tracing::warn!(%reason, "intake message parked");
        return (Disposition::Park(reason), Intake::Done);
    };
    if props.kind().as_ref().is_some_and(|k| k.as_str() == CANCEL_TYPE) {
        return (cancel(sched, events, &tenant, body).await, Intake::Done);
    }
    let traceparent =
        header_str(props, TRACEPARENT_HEADER).filter(|t| trace_id(t).is_some()).unwrap_or_else(new_traceparent);
    let valid = match validate(body, &tenant) {
        Ok(valid) => valid,
        Err(rejection) => {
            let id = submitted_id(body, props);
            return (reject(sched, events, &tenant, &id, rejection).await, Intake::Done);
        }
    };
    let id = valid.request.id.clone();
    let span = tracing::info_span!("intake", tenant = %tenant, job = %id, trace_id = trace_id(&traceparent).unwrap_or(""),
        "messaging.system" = "rabbitmq", "messaging.destination.name" = fleet_queue::INTAKE_QUEUE);
    fleet_telemetry::traces::follow(&span, &traceparent);
    // The job keeps the intake span's context, so its split and tasks hang beneath it.
    let traceparent = fleet_telemetry::traces::traceparent_of(&span).unwrap_or(traceparent);
    accept(sched, events, tenant, valid, traceparent).instrument(span).await
}

async fn accept(
    sched: &Scheduler,
    events: &Channel,
    tenant: TenantId,
    valid: ValidJob,
    traceparent: String,
) -> (Disposition, Intake) {
    let id = valid.request.id.clone();
    match quota(sched, &tenant, &valid).await {
        Ok(None) => {}
        Ok(Some((rejection, retry_after_ms))) => {
            return (reject_after(sched, events, &tenant, &id, rejection, retry_after_ms).await, Intake::Done)
        }
        Err(e) => return (Disposition::Retry(format!("job store: {e}")), Intake::Done),
    }
    // Every model the job names must exist and do what the job uses it for.
    for (model, want, role) in models_named(&valid) {
        let rejection = match sched.resolve_model(&tenant, &model).await {
            Ok(need) if need.task == want => continue,
            Ok(need) => Rejection {
                code: "invalid".into(),
                reason: format!("{role} {model} is a {} model, not a {}", task_name(need.task), task_name(want)),
            },
            Err(RegistryError::UnknownModel { model }) => Rejection {
                code: "unknown_model".into(),
                reason: format!("model {model} is not in the registry (models/{}/{}/)", model.name, model.version),
            },
            Err(RegistryError::BadManifest { model, source }) => {
                Rejection { code: "invalid".into(), reason: format!("model {model} is unusable: {source}") }
            }
            Err(e) => return (Disposition::Retry(format!("model registry: {e}")), Intake::Done),
        };
        return (reject(sched, events, &tenant, &id, rejection).await, Intake::Done);
    }
    if let JobKind::FineTune(spec) = &valid.work {
        // Registered models never change under a name and version.
        let own = registry::Scope::Tenant(tenant.clone());
        match registry::resolve_in(&sched.s3, &own, &spec.output.model_ref()).await {
            Err(RegistryError::UnknownModel { .. }) => {}
            Ok(_) | Err(RegistryError::BadManifest { .. }) => {
                let rejection = Rejection {
                    code: "conflict".into(),
                    reason: format!(
                        "model {} is already registered for this tenant: pick a new version",
                        spec.output.model_ref()
                    ),
                };
                return (reject(sched, events, &tenant, &id, rejection).await, Intake::Done);
            }
            Err(e) => return (Disposition::Retry(format!("model registry: {e}")), Intake::Done),
        }
    }
    record(sched, events, tenant, valid, traceparent).await
}

/// The models a job names, what each must be, and its role in the job.
fn models_named(valid: &ValidJob) -> Vec<(ModelRef, Task, &'static str)> {
    let mut models = Vec::new();
    match &valid.work {
        JobKind::BackgroundReplace(spec) => {
            models.push((valid.model.clone(), Task::Matting, "model"));
            if let BackgroundSpec::Generate(g) = &spec.background {
                if let Ok(generator) = g.model.parse() {
                    models.push((generator, Task::BackgroundGenerator, "background.model"));
                }
            }
        }
        JobKind::FineTune(spec) => {
            let base = match spec.target {
                Target::Matting => Task::Matting,
                Target::BackgroundGenerator => Task::BackgroundGenerator,
            };
            models.push((valid.model.clone(), base, "base_model"));
            if let Some(mask) = spec.generator.as_ref().and_then(|g| g.mask_model.parse().ok()) {
                models.push((mask, Task::Matting, "generator.mask_model"));
            }
        }
    }
    models
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Matting => "matting",
        Task::BackgroundGenerator => "background generator",
    }
}

async fn record(
    sched: &Scheduler,
    events: &Channel,
    tenant: TenantId,
    valid: ValidJob,
    traceparent: String,
) -> (Disposition, Intake) {
    let id = valid.request.id.clone();
    let position = match &valid.work {
        JobKind::BackgroundReplace(spec) => Cursor::start(&spec.input),
        // A fine-tune is one task: its cursor only says whether that task went out.
        JobKind::FineTune(_) => Cursor::Keys { next: 0 },
    };
    let record = JobRecord {
        tenant: tenant.to_string(),
        id: id.clone(),
        priority: valid.request.priority,
        state: JobState::Accepted,
        model: valid.model.to_string(),
        request: serde_json::to_value(&valid.request).expect("a request serialises"),
        accepted_at_ms: now_ms(),
        succeeded_items: 0,
        failed_items: 0,
        reason: None,
        traceparent,
        finished_at_ms: None,
    };
    // The cursor goes first: a job whose record exists is always either split or resumable.
    let cursor = ShardCursor { next_task: 0, position };
    if let Ok(Some(_)) = sched.store.get(&tenant, &id).await {
        // Known id: do not touch the existing job's cursor.
    } else if let Err(e) = sched.store.save_cursor(&tenant, &id, &cursor.to_json()).await {
        return (Disposition::Retry(format!("job store: {e}")), Intake::Done);
    }
    match sched.store.create(record).await {
        Ok(Created::New(record)) => {
            tracing::info!(priority = ?record.priority, model = %record.model, "job accepted");
            metrics::JOBS.with_label_values(&["accepted"]).inc();
            sched.publish_event(events, event(&record.tenant, &record.id, "accepted")).await;
            (Disposition::Ack, Intake::NewJob { tenant, job: id, record: Box::new(record), cursor })
        }
        Ok(Created::Existing(existing)) => {
            tracing::info!(state = ?existing.state, "duplicate submission: the job exists");
            metrics::JOBS.with_label_values(&["duplicate"]).inc();
            let mut message = event(&existing.tenant, &existing.id, "accepted");
            message.duplicate = true;
            sched.publish_event(events, message).await;
            (Disposition::Ack, Intake::Done)
        }
        Err(e) => (Disposition::Retry(format!("job store: {e}")), Intake::Done),
    }
}

/// The tenant's quotas against this job: a rejection (with when to try again, for limits
/// that pass with time) when it is over one.
async fn quota(
    sched: &Scheduler,
    tenant: &TenantId,
    valid: &ValidJob,
) -> Result<Option<(Rejection, Option<u64>)>, fleet_state::JobStoreError> {
    let limits = sched.config.tenants.limits(tenant.as_str());
    let over = |reason: String| Rejection { code: "over_quota".into(), reason };
    let keys = match &valid.work {
        JobKind::BackgroundReplace(spec) => match &spec.input {
            fleet_protocol::job::InputSpec::Keys(keys) => keys.len() as u64,
            _ => 0,
        },
        JobKind::FineTune(_) => 0,
    };
    if let Some(max) = limits.max_job_items {
        if keys > max {
            let reason = format!("{keys} items in one job; this tenant's max_job_items is {max}: split the job");
            return Ok(Some((Rejection { code: "too_large".into(), reason }, None)));
        }
    }
    if let (JobKind::FineTune(spec), Some(max)) = (&valid.work, limits.fine_tune_max_memory_mib) {
        let asked = spec.resources.memory_mib;
        if asked.is_none_or(|m| m > max) {
            let asked = asked.map_or("a whole device".to_string(), |m| format!("{m} MiB"));
            let reason = format!(
                "the fine-tune asks for {asked}; this tenant's fine-tunes may hold {max} MiB (resources.memory_mib)"
            );
            return Ok(Some((over(reason), None)));
        }
    }
    if let Some(max) = limits.max_queued_items {
        let queued = sched.store.queued_items(tenant).await?;
        if queued >= max || queued + keys > max {
            let reason = format!("{queued} items of this tenant are waiting or running; its max_queued_items is {max}: submit again when they have run");
            return Ok(Some((over(reason), Some(30_000))));
        }
    }
    if let (fleet_protocol::job::Priority::Interactive, Some(max)) =
        (valid.request.priority, limits.interactive_jobs_per_minute)
    {
        let now = now_ms();
        let minute = now / 60_000;
        let key = format!("fleet:quota:interactive:{tenant}:{minute}");
        let n = sched.store.count_in_window(&key, 120).await?;
        if n > u64::from(max) {
            let reason = format!("{max} interactive jobs a minute is this tenant's limit: submit as batch, or as interactive in a moment");
            return Ok(Some((over(reason), Some(60_000 - now % 60_000))));
        }
    }
    Ok(None)
}

async fn reject(sched: &Scheduler, events: &Channel, tenant: &TenantId, id: &str, rejection: Rejection) -> Disposition {
    reject_after(sched, events, tenant, id, rejection, None).await
}

/// Rejects, saying when a submission may pass (`retry_after_ms`, for quotas that pass).
async fn reject_after(
    sched: &Scheduler,
    events: &Channel,
    tenant: &TenantId,
    id: &str,
    rejection: Rejection,
    retry_after_ms: Option<u64>,
) -> Disposition {
    tracing::info!(tenant = %tenant, job = id, code = %rejection.code, reason = %rejection.reason, "job rejected");
    metrics::JOBS.with_label_values(&["rejected"]).inc();
    if let Err(e) = sched.store.reject(tenant, id, &rejection).await {
        return Disposition::Retry(format!("job store: {e}"));
    }
    let mut message = event(tenant.as_str(), id, "rejected");
    message.code = Some(rejection.code);
    message.reason = Some(rejection.reason);
    message.retry_after_ms = retry_after_ms;
    sched.publish_event(events, message).await;
    Disposition::Ack
}

async fn cancel(sched: &Scheduler, events: &Channel, tenant: &TenantId, body: &[u8]) -> Disposition {
    let request: CancelRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "malformed cancellation ignored");
            return Disposition::Park(format!("malformed cancellation: {e}"));
        }
    };
    if !is_valid_id(&request.cancel) {
        // Never a routing key word (an id of 256 bytes cannot even be sent): refused under
        // `unknown`, as rejected submissions without a usable id are.
        let shown: String = request.cancel.chars().take(64).collect();
        tracing::info!(tenant = %tenant, id = %shown.escape_debug(), "cancellation of an invalid id refused");
        let mut message = event(tenant.as_str(), "unknown", "cancel_refused");
        message.code = Some("invalid".into());
        message.reason = Some(format!(
            "cannot cancel {:?}{}: a job id is 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'",
            shown,
            if shown.len() < request.cancel.len() { "..." } else { "" }
        ));
        sched.publish_event(events, message).await;
        return Disposition::Ack;
    }
    match sched.store.apply(tenant, &request.cancel, JobEvent::Cancel).await {
        Ok(record) => {
            tracing::info!(tenant = %tenant, job = %request.cancel, "job cancelled");
            let progress = sched.store.progress(tenant, &request.cancel).await.unwrap_or_default();
            sched.terminal_event(events, &record, progress).await;
            Disposition::Ack
        }
        Err(e) if e.is_retryable() => Disposition::Retry(e.to_string()),
        Err(e) => {
            tracing::info!(tenant = %tenant, job = %request.cancel, error = %e, "cancellation refused");
            let mut message = event(tenant.as_str(), &request.cancel, "cancel_refused");
            message.reason = Some(e.to_string());
            sched.publish_event(events, message).await;
            Disposition::Ack
        }
    }
}

/// Answers a copy of a dead letter (from `fleet.jobs.dead`). A submission the broker
/// dead-lettered before the fleet recorded it (the scheduler failed on it at every
/// delivery, or an operator's policy dropped it) is rejected with the reason, so its tenant
/// hears what became of it; the message itself stays in `fleet.dead` for an operator. Any
/// other dead letter needs nothing here.
pub async fn dead_lettered(sched: &Scheduler, events: &Channel, body: &[u8], props: &BasicProperties) -> Disposition {
    let queue = header_str(props, "x-first-death-queue");
    let is_cancel = props.kind().as_ref().is_some_and(|k| k.as_str() == CANCEL_TYPE);
    let tenant = props.user_id().as_ref().and_then(|u| TenantId::new(u.as_str()).ok());
    let (Some(tenant), false, Some(INTAKE_QUEUE)) = (tenant, is_cancel, queue.as_deref()) else {
        return Disposition::Ack;
    };
    let id = submitted_id(body, props);
    match sched.store.get(&tenant, &id).await {
        // Recorded before it died (a redelivery after the record): the job goes on.
        Ok(Some(_)) => Disposition::Ack,
        Ok(None) => {
            let why = header_str(props, "x-first-death-reason").unwrap_or_else(|| "dead-lettered".into());
            let reason = format!(
                "the fleet could not take this submission ({why}: it failed at each of its deliveries); \
                 it is kept in {} for an operator, and a new submission with the same id may pass",
                fleet_queue::DEAD_QUEUE
            );
            tracing::warn!(tenant = %tenant, job = %id, %why, "a dead-lettered submission is rejected");
            reject(sched, events, &tenant, &id, Rejection { code: "dead_lettered".into(), reason }).await
        }
        Err(e) => Disposition::Retry(format!("job store: {e}")),
    }
}

/// The id a rejected submission is filed under: the message id the submitter set (clients
/// set it to the job id and follow it), else the body's `id`, else `unknown`.
fn submitted_id(body: &[u8], props: &BasicProperties) -> String {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .filter(|id| is_valid_id(id));
    props
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .filter(|id| is_valid_id(id))
        .or(from_body)
        .unwrap_or_else(|| "unknown".to_string())
}
