//! Splitting a job into tasks, one page of input at a time, so the scheduler never holds a
//! whole listing: a key list is walked by index, a prefix by S3 listing pages, a manifest
//! object by ranged reads of [`MANIFEST_CHUNK`] bytes. After each page's tasks are recorded
//! and confirmed by the broker, the cursor is saved in Redis; a scheduler that dies midway
//! resumes from it. Task numbers follow from the cursor, so a resumed page makes the same
//! tasks again, and the job store counts each task once. At shutdown splitting pauses after
//! the page in hand, its cursor saved, and the next scheduler resumes it.

mod page;

use fleet_protocol::fine_tune::FineTuneSpec;
use fleet_protocol::job::{BackgroundReplaceSpec, JobKindName, JobRequest, OutputFormatName, Priority};
use fleet_protocol::keys::{is_own_output, TenantId};
use fleet_protocol::message::{child_traceparent, TaskMessage, TRACEPARENT_HEADER};
use fleet_protocol::state::{JobEvent, JobState};
use fleet_queue::{publish_all, string_headers, task_queue, Outgoing, TASKS_EXCHANGE};
use fleet_state::{JobRecord, JobStoreError};
use futures::future::try_join_all;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::page::{read_page, Cursor, Page, PageError, MANIFEST_CHUNK};
use crate::context::{event, Scheduler};
use crate::error::SchedulerError;

/// Confirm-mode channels for publishing tasks, one per priority: confirms come back in order
/// per channel, so an interactive task never waits for a batch page's confirms.
pub struct TaskChannels {
    /// For interactive tasks.
    pub interactive: Channel,
    /// For batch tasks.
    pub batch: Channel,
}

impl TaskChannels {
    /// The channel for `priority`.
    pub fn for_priority(&self, priority: fleet_protocol::job::Priority) -> &Channel {
        match priority {
            fleet_protocol::job::Priority::Interactive => &self.interactive,
            fleet_protocol::job::Priority::Batch => &self.batch,
        }
    }
}

/// Where splitting sends a job's tasks and events, and what pauses it.
#[derive(Clone, Copy)]
pub struct Outlets<'a> {
    /// Channels for the tasks.
    pub tasks: &'a TaskChannels,
    /// Channel for job events.
    pub events: &'a Channel,
    /// Cancelled at shutdown: splitting pauses once the page in hand is out and its cursor saved.
    pub stop: &'a CancellationToken,
}

/// A cursor with the number of the next task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCursor {
    /// Number of the next task.
    pub next_task: u32,
    /// Position in the input.
    pub position: Cursor,
}

impl ShardCursor {
    /// As stored in Redis.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a cursor serialises")
    }
}

/// Splits the job from its saved cursor to the end of its input, then ends the job if every
/// task is already done. Stops early, leaving the cursor for a later resume, on broker or
/// store trouble, and at shutdown (`out.stop`); stops for good when the job is cancelled.
/// `known` is the record and cursor when the caller has them (a job just accepted); a
/// resumed job reads both from Redis.
pub async fn shard_job(
    sched: &Scheduler,
    out: Outlets<'_>,
    tenant: &TenantId,
    job: &str,
    known: Option<(JobRecord, ShardCursor)>,
) {
    if let Err(e) = try_shard(sched, out, tenant, job, known).await {
        tracing::warn!(tenant = %tenant, job, error = %e, "splitting paused; it resumes from the saved cursor");
    }
}

async fn try_shard(
    sched: &Scheduler,
    out: Outlets<'_>,
    tenant: &TenantId,
    job: &str,
    known: Option<(JobRecord, ShardCursor)>,
) -> Result<(), SchedulerError> {
    let (record, cursor) = match known {
        Some(known) => known,
        None => {
            let Some(record) = sched.store.get(tenant, job).await? else {
                // A cursor saved for a submission whose record was never written.
                sched.store.finish_sharding(tenant, job).await?;
                return Ok(());
            };
            let cursors = sched.store.cursors().await?;
            match cursors.into_iter().find(|(t, j, _)| t == tenant.as_str() && j == job) {
                Some((_, _, json)) => (record, serde_json::from_str::<ShardCursor>(&json)?),
                None => return Ok(()),
            }
        }
    };
    let span = tracing::info_span!("shard", tenant = %tenant, job, trace_id = trace_of(&record));
    fleet_telemetry::traces::follow(&span, &record.traceparent);
    split(sched, out, tenant, job, record, cursor).instrument(span).await
}

/// Publishes the job's tasks page by page from `cursor`, saving the cursor after each page.
async fn split(
    sched: &Scheduler,
    out: Outlets<'_>,
    tenant: &TenantId,
    job: &str,
    record: JobRecord,
    mut cursor: ShardCursor,
) -> Result<(), SchedulerError> {
    let Outlets { tasks, events, stop } = out;
    let request: JobRequest = serde_json::from_value(record.request.clone())?;
    if request.kind == JobKindName::FineTune {
        return split_fine_tune(sched, out, tenant, job, record, &request).await;
    }
    let spec: BackgroundReplaceSpec = serde_json::from_value(request.spec.clone())?;
    let shard_size = spec.shard_size.unwrap_or(sched.config.default_shard_size).max(1);
    // The first page goes out on the state the caller knows; later pages check for a cancel.
    let mut state = Some(record.state);
    loop {
        if cursor.next_task > 0 {
            state = sched.store.get(tenant, job).await?.map(|r| r.state);
        }
        if state.is_none_or(|s| s.is_terminal()) {
            tracing::info!("job ended before it was fully split; no more tasks");
            sched.store.finish_sharding(tenant, job).await?;
            return Ok(());
        }
        let mut page = match read_page(&sched.s3, &spec.input, &cursor.position, shard_size).await {
            Ok(page) => page,
            Err(PageError::Input(reason)) => {
                fail_job(sched, events, tenant, job, reason).await?;
                return Ok(());
            }
            Err(PageError::Store(e)) => return Err(e.into()),
        };
        // A prefix over the tenant's results lists this job's own outputs as they are
        // written: they are never its input, or the job would grow as it runs.
        page.keys.retain(|key| !is_own_output(tenant, job, key));
        let first = cursor.next_task;
        let messages = make_tasks(&record, &spec, &page.keys, shard_size, first);
        cursor.next_task += messages.len() as u32;
        if record.priority == Priority::Batch {
            // A tenant's batch tasks enter the shared queue a window at a time (fair share),
            // however large the page. Stopped midway, the page is made again on resume: tasks
            // already out are published again and counted once, as after a crash.
            let window = sched.config.queue_window.max(1) as usize;
            let mut rest = messages;
            while !rest.is_empty() {
                if !wait_for_window(sched, tenant, stop).await {
                    tracing::debug!(next_task = first, "splitting paused for shutdown at the saved cursor");
                    return Ok(());
                }
                let slice: Vec<TaskMessage> = rest.drain(..window.min(rest.len())).collect();
                // Counted before they go out: the dispatcher may take them before the
                // publish returns.
                let count = slice.len() as u32;
                sched.usage.published(tenant.as_str(), count);
                let sent = publish_tasks(sched, tasks.for_priority(record.priority), tenant, &record, slice).await;
                // Tasks that ended before a resume are not sent again: no dispatcher will
                // take them, so they hold no place in the window.
                sched.usage.unpublished(tenant.as_str(), count - sent.as_ref().map_or(0, |&n| n));
                sent?;
            }
        } else {
            publish_tasks(sched, tasks.for_priority(record.priority), tenant, &record, messages).await?;
        }
        if let Some(max) = sched.config.tenants.limits(tenant.as_str()).max_job_items {
            let items = sched.store.progress(tenant, job).await?.items_total;
            if items > max {
                let reason = format!("the job's input holds more than {max} items, this tenant's max_job_items");
                fail_job(sched, events, tenant, job, reason).await?;
                return Ok(());
            }
        }
        if state == Some(JobState::Accepted) {
            sched.store.apply(tenant, job, JobEvent::Queued).await?;
            let progress = sched.store.progress(tenant, job).await?;
            sched.publish_event(events, event(tenant.as_str(), job, "queued").with_progress(progress)).await;
        }
        match page.next {
            Some(next) => {
                cursor.position = next;
                sched.store.save_cursor(tenant, job, &cursor.to_json()).await?;
                if stop.is_cancelled() {
                    tracing::debug!(next_task = cursor.next_task, "splitting paused for shutdown at the saved cursor");
                    return Ok(());
                }
            }
            None => break,
        }
    }
    let progress = sched.store.finish_sharding(tenant, job).await?;
    tracing::info!(tasks = progress.tasks_total, items = progress.items_total, "job split into tasks");
    sched.finalize_if_done(events, tenant, job, progress).await;
    Ok(())
}

/// Waits until `tenant` has fewer than the queue window of batch tasks published and not yet
/// sent on by the dispatcher; false when `stop` came first.
async fn wait_for_window(sched: &Scheduler, tenant: &TenantId, stop: &CancellationToken) -> bool {
    loop {
        // Registered before the check, so a take between the two is not missed.
        let taken = sched.usage.taken_any.notified();
        if sched.usage.may_publish(tenant.as_str(), sched.config.queue_window) {
            return true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = taken => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

/// A fine-tune is one task that trains; its item is the model it registers.
async fn split_fine_tune(
    sched: &Scheduler,
    Outlets { tasks, events, .. }: Outlets<'_>,
    tenant: &TenantId,
    job: &str,
    record: JobRecord,
    request: &JobRequest,
) -> Result<(), SchedulerError> {
    let spec: FineTuneSpec = serde_json::from_value(request.spec.clone())?;
    let message = TaskMessage {
        tenant: record.tenant.clone(),
        job: record.id.clone(),
        task: 0,
        priority: record.priority,
        model: record.model.clone(),
        keys: vec![spec.data.clone()],
        background: fleet_protocol::job::BackgroundSpec::Transparent,
        output: fleet_protocol::job::OutputSpec { format: OutputFormatName::Png, quality: 90, max_side: None },
        shadow: None,
        accepted_at_ms: record.accepted_at_ms,
        fine_tune: Some(spec),
        allowed_licences: sched.config.tenants.limits(tenant.as_str()).allowed_licences,
    };
    publish_tasks(sched, tasks.for_priority(record.priority), tenant, &record, vec![message]).await?;
    if record.state == JobState::Accepted {
        sched.store.apply(tenant, job, JobEvent::Queued).await?;
        let progress = sched.store.progress(tenant, job).await?;
        sched.publish_event(events, event(tenant.as_str(), job, "queued").with_progress(progress)).await;
    }
    let progress = sched.store.finish_sharding(tenant, job).await?;
    sched.finalize_if_done(events, tenant, job, progress).await;
    Ok(())
}

fn trace_of(record: &JobRecord) -> &str {
    fleet_protocol::message::trace_id(&record.traceparent).unwrap_or("")
}

async fn fail_job(
    sched: &Scheduler,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    reason: String,
) -> Result<(), JobStoreError> {
    tracing::info!(%reason, "job failed while splitting");
    match sched.store.apply_with_reason(tenant, job, JobEvent::Fail, Some(reason)).await {
        Ok(record) => {
            let progress = sched.store.finish_sharding(tenant, job).await?;
            sched.terminal_event(events, &record, progress).await;
        }
        Err(e) => {
            tracing::info!(error = %e, "job already ended");
            sched.store.finish_sharding(tenant, job).await?;
        }
    }
    Ok(())
}

/// The tasks of one page: shards of `shard_size` keys numbered from `first`.
pub fn make_tasks(
    record: &JobRecord,
    spec: &BackgroundReplaceSpec,
    keys: &[String],
    shard_size: u32,
    first: u32,
) -> Vec<TaskMessage> {
    keys.chunks(shard_size as usize)
        .zip(first..)
        .map(|(chunk, task)| TaskMessage {
            tenant: record.tenant.clone(),
            job: record.id.clone(),
            task,
            priority: record.priority,
            model: record.model.clone(),
            keys: chunk.to_vec(),
            background: spec.background.clone(),
            output: spec.output.clone(),
            shadow: spec.shadow,
            accepted_at_ms: record.accepted_at_ms,
            allowed_licences: None,
            fine_tune: None,
        })
        .collect()
}

/// Records each task (once) and publishes those not already ended, waiting for the broker
/// to confirm them all; how many it published.
async fn publish_tasks(
    sched: &Scheduler,
    channel: &Channel,
    tenant: &TenantId,
    record: &JobRecord,
    messages: Vec<TaskMessage>,
) -> Result<u32, SchedulerError> {
    let existing = try_join_all(
        messages.iter().map(|m| sched.store.create_task(tenant, &m.job, m.task, m.keys.len() as u32, record.priority)),
    )
    .await?;
    let (_, routing_key) = task_queue(record.priority);
    // Each task names the shard span as its parent (or a new child id of the job's, without
    // an exporter).
    let parent = fleet_telemetry::traces::traceparent_of(&tracing::Span::current());
    let outgoing: Vec<Outgoing> = messages
        .into_iter()
        .zip(existing)
        .filter(|(_, existing)| existing.as_ref().is_none_or(|t| !t.state.is_terminal()))
        .map(|(message, _)| {
            let traceparent = parent.clone().unwrap_or_else(|| child_traceparent(&record.traceparent));
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(message.id().into())
                .with_headers(string_headers(&[(TRACEPARENT_HEADER, &traceparent)]));
            (routing_key.to_string(), serde_json::to_vec(&message).expect("a task serialises"), props)
        })
        .collect();
    let count = outgoing.len() as u64;
    publish_all(channel, TASKS_EXCHANGE, outgoing).await?;
    fleet_telemetry::metrics::TASKS.with_label_values(&["dispatched"]).inc_by(count);
    Ok(count as u32)
}

#[cfg(test)]
mod tests;
