//! Splitting a job into tasks, one page of input at a time, so the scheduler never holds a
//! whole listing: a key list is walked by index, a prefix by S3 listing pages, a manifest
//! object by ranged reads of [`MANIFEST_CHUNK`] bytes. After each page's tasks are recorded
//! and confirmed by the broker, the cursor is saved in Redis; a scheduler that dies midway
//! resumes from it. Task numbers follow from the cursor, so a resumed page makes the same
//! tasks again, and the job store counts each task once.

use fleet_protocol::fine_tune::FineTuneSpec;
use fleet_protocol::job::{BackgroundReplaceSpec, InputSpec, JobKindName, JobRequest, OutputFormatName};
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{child_traceparent, TaskMessage, TRACEPARENT_HEADER};
use fleet_protocol::state::{JobEvent, JobState};
use fleet_queue::{publish_all, string_headers, task_queue, Outgoing, TASKS_EXCHANGE};
use fleet_state::JobRecord;
use fleet_store::ObjectStore;
use futures::future::try_join_all;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::context::{event, Scheduler};

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

/// Bytes of a manifest read per page.
pub const MANIFEST_CHUNK: u64 = 1 << 20;
/// Most keys S3 returns per listing page.
const LIST_PAGE_MAX: u32 = 1000;

/// Where splitting a job's input has got to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cursor {
    /// Index of the next key of an explicit list.
    Keys {
        /// Next index.
        next: usize,
    },
    /// Continuation of a prefix listing (`None` before the first page).
    Prefix {
        /// Opaque listing token.
        token: Option<String>,
    },
    /// Byte offset of the next unread line of a manifest.
    Manifest {
        /// Byte offset.
        offset: u64,
    },
}

impl Cursor {
    /// The start of an input.
    pub fn start(input: &InputSpec) -> Cursor {
        match input {
            InputSpec::Keys(_) => Cursor::Keys { next: 0 },
            InputSpec::Prefix(_) => Cursor::Prefix { token: None },
            InputSpec::Manifest(_) => Cursor::Manifest { offset: 0 },
        }
    }
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

/// Why a page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The job's input is unusable (missing or malformed manifest): the job fails with this.
    #[error("{0}")]
    Input(String),
    /// The store failed: try again later from the same cursor.
    #[error("{0}")]
    Store(String),
}

/// One page of input keys, and the cursor after it (`None` at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Keys, in input order.
    pub keys: Vec<String>,
    /// Where the next page starts.
    pub next: Option<Cursor>,
}

/// Reads the page of `input` at `cursor`. Manifest lines are trimmed; blank lines and lines
/// starting with `#` are skipped. Keys are not checked here: the worker checks each against
/// the tenant and fails bad ones as items, with the reason.
pub async fn read_page<S: ObjectStore>(
    s3: &S,
    input: &InputSpec,
    cursor: &Cursor,
    shard_size: u32,
) -> Result<Page, PageError> {
    let store = |e: fleet_store::StoreError| PageError::Store(e.to_string());
    match (input, cursor) {
        (InputSpec::Keys(keys), Cursor::Keys { next }) => {
            let start = (*next).min(keys.len());
            let end = (start + page_len(shard_size)).min(keys.len());
            let next = (end < keys.len()).then_some(Cursor::Keys { next: end });
            Ok(Page { keys: keys[start..end].to_vec(), next })
        }
        (InputSpec::Prefix(prefix), Cursor::Prefix { token }) => {
            let page = s3.list_page(prefix, token.clone(), page_len(shard_size)).await.map_err(store)?;
            Ok(Page { keys: page.keys, next: page.next.map(|t| Cursor::Prefix { token: Some(t) }) })
        }
        (InputSpec::Manifest(key), Cursor::Manifest { offset }) => {
            let chunk = match s3.get_range(key, *offset, MANIFEST_CHUNK).await {
                Ok(chunk) => chunk,
                Err(fleet_store::StoreError::NotFound { .. }) => {
                    return Err(PageError::Input(format!("manifest {key}: no object at that key")))
                }
                Err(e) => return Err(store(e)),
            };
            let at_end = (chunk.len() as u64) < MANIFEST_CHUNK;
            let usable = if at_end {
                chunk.len()
            } else {
                match chunk.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None => {
                        return Err(PageError::Input(format!(
                            "manifest {key}: a line at byte {offset} is over {MANIFEST_CHUNK} bytes"
                        )))
                    }
                }
            };
            let text = std::str::from_utf8(&chunk[..usable]).map_err(|e| {
                PageError::Input(format!(
                    "manifest {key}: not UTF-8 near byte {}: {e}",
                    offset + e.valid_up_to() as u64
                ))
            })?;
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            let next = (!at_end).then_some(Cursor::Manifest { offset: offset + usable as u64 });
            Ok(Page { keys, next })
        }
        _ => Err(PageError::Input(format!("cursor {cursor:?} does not fit the job's input"))),
    }
}

/// Keys per page: whole shards, about a listing page's worth.
fn page_len(shard_size: u32) -> usize {
    let shard = shard_size.max(1);
    (shard * (LIST_PAGE_MAX / shard).max(1)) as usize
}

/// Splits the job from its saved cursor to the end of its input, then ends the job if every
/// task is already done. Stops early, leaving the cursor for a later resume, on broker or
/// store trouble; stops for good when the job is cancelled.
/// `known` is the record and cursor when the caller has them (a job just accepted); a
/// resumed job reads both from Redis.
pub async fn shard_job(
    sched: &Scheduler,
    tasks: &TaskChannels,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    known: Option<(JobRecord, ShardCursor)>,
) {
    if let Err(e) = try_shard(sched, tasks, events, tenant, job, known).await {
        tracing::warn!(tenant = %tenant, job, error = %e, "splitting paused; it resumes from the saved cursor");
    }
}

async fn try_shard(
    sched: &Scheduler,
    tasks: &TaskChannels,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    known: Option<(JobRecord, ShardCursor)>,
) -> anyhow::Result<()> {
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
    split(sched, tasks, events, tenant, job, record, cursor).instrument(span).await
}

async fn split(
    sched: &Scheduler,
    tasks: &TaskChannels,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    record: JobRecord,
    mut cursor: ShardCursor,
) -> anyhow::Result<()> {
    let request: JobRequest = serde_json::from_value(record.request.clone())?;
    if request.kind == JobKindName::FineTune {
        return split_fine_tune(sched, tasks, events, tenant, job, record, &request).await;
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
        let page = match read_page(&sched.s3, &spec.input, &cursor.position, shard_size).await {
            Ok(page) => page,
            Err(PageError::Input(reason)) => {
                fail_job(sched, events, tenant, job, reason).await?;
                return Ok(());
            }
            Err(PageError::Store(reason)) => anyhow::bail!(reason),
        };
        let first = cursor.next_task;
        let messages = make_tasks(&record, &spec, &page.keys, shard_size, first);
        cursor.next_task += messages.len() as u32;
        publish_tasks(sched, tasks.for_priority(record.priority), tenant, &record, messages).await?;
        if state == Some(JobState::Accepted) {
            sched.store.apply(tenant, job, JobEvent::Queued).await?;
            let progress = sched.store.progress(tenant, job).await?;
            sched.publish_event(events, event(tenant.as_str(), job, "queued").with_progress(progress)).await;
        }
        match page.next {
            Some(next) => {
                cursor.position = next;
                sched.store.save_cursor(tenant, job, &cursor.to_json()).await?;
            }
            None => break,
        }
    }
    let progress = sched.store.finish_sharding(tenant, job).await?;
    tracing::info!(tasks = progress.tasks_total, items = progress.items_total, "job split into tasks");
    sched.finalize_if_done(events, tenant, job, progress).await;
    Ok(())
}

/// A fine-tune is one task that trains; its item is the model it registers.
async fn split_fine_tune(
    sched: &Scheduler,
    tasks: &TaskChannels,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    record: JobRecord,
    request: &JobRequest,
) -> anyhow::Result<()> {
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
) -> anyhow::Result<()> {
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
            fine_tune: None,
        })
        .collect()
}

/// Records each task (once) and publishes those not already ended, waiting for the broker
/// to confirm them all.
async fn publish_tasks(
    sched: &Scheduler,
    channel: &Channel,
    tenant: &TenantId,
    record: &JobRecord,
    messages: Vec<TaskMessage>,
) -> anyhow::Result<()> {
    let existing =
        try_join_all(messages.iter().map(|m| sched.store.create_task(tenant, &m.job, m.task, m.keys.len() as u32)))
            .await?;
    let (_, routing_key) = task_queue(record.priority);
    let outgoing: Vec<Outgoing> = messages
        .into_iter()
        .zip(existing)
        .filter(|(_, existing)| existing.as_ref().is_none_or(|t| !t.state.is_terminal()))
        .map(|(message, _)| {
            let traceparent = child_traceparent(&record.traceparent);
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
    Ok(())
}

#[cfg(test)]
mod tests;
