//! The messages between scheduler, workers and clients, in one place. Messages carry S3 keys,
//! never image bytes.
//!
//! ```text
//! scheduler --TaskMessage--> fleet.tasks.{interactive,batch} --> scheduler's dispatcher
//! dispatcher --TaskMessage + lease header--> fleet.worker.<id> --> worker
//! worker    --Report (started | completed | attempt_failed | skipped | released), with the
//!             lease token--> fleet.reports.<priority> --> scheduler
//! scheduler --JobEventMessage--> fleet.events "job.<tenant>.<job>.<kind>" --> anyone bound
//! client    --CancelRequest (type "cancel")--> fleet.jobs "cancel" --> scheduler
//! ```

use serde::{Deserialize, Serialize};

use crate::job::{BackgroundSpec, OutputSpec, Priority};

/// AMQP `type` property of a cancellation.
pub const CANCEL_TYPE: &str = "cancel";
/// Header that carries the W3C trace context (`00-<trace>-<span>-01`).
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header of a dispatched task that carries its lease: `<token>:<attempt>:<device>`.
pub const LEASE_HEADER: &str = "x-fleet-lease";

/// The lease a dispatched task carries: who may report on it, and on which device it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Fencing token: increases with every grant fleet-wide; a report with an older token
    /// than the task's lease is ignored.
    pub token: u64,
    /// Attempt number (grants of this task so far, from 1).
    pub attempt: u32,
    /// Index of the worker's device the task was placed on.
    pub device: u32,
}

impl LeaseGrant {
    /// The header value.
    pub fn header(&self) -> String {
        format!("{}:{}:{}", self.token, self.attempt, self.device)
    }

    /// Parses a header value.
    pub fn parse(value: &str) -> Option<LeaseGrant> {
        let mut parts = value.split(':').map(str::parse::<u64>);
        let (token, attempt, device) = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
        (parts.next().is_none()).then_some(LeaseGrant { token, attempt: attempt as u32, device: device as u32 })
    }
}

/// One shard of a job, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    /// Owner of the job (checked again by the worker against every key).
    pub tenant: String,
    /// Job id.
    pub job: String,
    /// Task number within the job, from 0.
    pub task: u32,
    /// Interactive or batch.
    pub priority: Priority,
    /// `name@version` of the matting model.
    pub model: String,
    /// Input keys of this shard.
    pub keys: Vec<String>,
    /// The new background.
    pub background: BackgroundSpec,
    /// Result encoding.
    pub output: OutputSpec,
    /// A shadow under the product, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::job::ShadowSpec>,
    /// When the job was accepted (ms since the epoch), for queueing-delay figures.
    pub accepted_at_ms: u64,
    /// A fine-tune's spec (its one task trains; `keys` then holds the data set key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<crate::fine_tune::FineTuneSpec>,
    /// Licences the tenant may fine-tune on (its policy's `allowed_licences`); `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_licences: Option<Vec<String>>,
}

impl TaskMessage {
    /// A stable id: `<tenant>/<job>/<task>`.
    pub fn id(&self) -> String {
        task_id(&self.tenant, &self.job, self.task)
    }
}

/// `<tenant>/<job>/<task>`.
pub fn task_id(tenant: &str, job: &str, task: u32) -> String {
    format!("{tenant}/{job}/{task:06}")
}

/// An item that produced no output, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailureReport {
    /// Input key.
    pub key: String,
    /// Stable code: `not_found`, `corrupt`, `too_large`, `unsupported_format`, `invalid_key`,
    /// `task_failed`, ...
    pub code: String,
    /// Readable reason.
    pub reason: String,
}

/// What a failed attempt tells the scheduler to do next: the worker knows why its attempt
/// failed, and only it can tell an outage from an error that no retry can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureKind {
    /// The same attempt may pass later (the object store or Redis was unreachable, the
    /// device ran out of memory): dispatched again after a backoff, at least `retry_after_ms`
    /// when given, until the task's attempts run out.
    Retryable {
        /// The least wait before the next attempt, if the failure knows one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// No attempt can pass (a model that breaks its contract, a task that does not parse):
    /// the task fails now, every item with the reason, and no more device time is granted.
    Permanent,
    /// The worker lost the task's lease while it ran (taken over after a pause): nothing
    /// it did counts, and the task's new holder carries on.
    Fenced,
}

impl FailureKind {
    /// A retryable failure with no wait of its own.
    pub const RETRY: FailureKind = FailureKind::Retryable { retry_after_ms: None };
}

/// A report that names no kind (from a worker older than the kinds) asks for a retry.
impl Default for FailureKind {
    fn default() -> Self {
        FailureKind::RETRY
    }
}

/// What a worker tells the scheduler about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// The worker began an attempt.
    Started {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// Attempt number (lease grants of the task so far).
        attempt: u32,
        /// The lease's fencing token.
        token: u64,
        /// Worker id.
        worker: String,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Every item has its outputs written or its failure reason; the task manifest is written.
    Completed {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// Attempt number.
        attempt: u32,
        /// The lease's fencing token.
        token: u64,
        /// Worker id.
        worker: String,
        /// Items with outputs.
        succeeded: u64,
        /// Items without, with reasons.
        failures: Vec<ItemFailureReport>,
        /// Key of the per-task manifest.
        manifest: String,
        /// When the attempt started and ended (ms since the epoch).
        started_at_ms: u64,
        /// When it ended.
        finished_at_ms: u64,
    },
    /// The attempt failed as a whole; what happens next is the failure's [`FailureKind`]:
    /// dispatched again after a backoff until its attempts run out, failed at once, or
    /// ignored because the worker had lost the lease.
    AttemptFailed {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// Attempt number.
        attempt: u32,
        /// The lease's fencing token.
        token: u64,
        /// Worker id.
        worker: String,
        /// Why.
        reason: String,
        /// What the scheduler does with it; a worker that names none asks for a retry.
        #[serde(default)]
        failure: FailureKind,
    },
    /// The worker did not run the task because its job is cancelled.
    Skipped {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// The lease's fencing token.
        token: u64,
    },
    /// How a fine-tune is going: every step since the last report, with its learning rate.
    Training {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// The lease's fencing token.
        token: u64,
        /// The figures.
        progress: TrainingProgress,
    },
    /// The worker gives the task back: unstarted (it is draining), or a fine-tune that saved
    /// a checkpoint and yielded its device (preempted or drained). Dispatch it elsewhere now,
    /// without counting an attempt against it.
    Released {
        /// Tenant.
        tenant: String,
        /// Job id.
        job: String,
        /// Task number.
        task: u32,
        /// The lease's fencing token.
        token: u64,
        /// Worker id.
        worker: String,
        /// For a fine-tune that yielded: the step of the checkpoint it resumes from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_step: Option<u32>,
    },
}

impl Report {
    /// `(tenant, job, task)` the report is about.
    pub fn task_ref(&self) -> (&str, &str, u32) {
        match self {
            Report::Started { tenant, job, task, .. }
            | Report::Completed { tenant, job, task, .. }
            | Report::AttemptFailed { tenant, job, task, .. }
            | Report::Skipped { tenant, job, task, .. }
            | Report::Training { tenant, job, task, .. }
            | Report::Released { tenant, job, task, .. } => (tenant, job, *task),
        }
    }

    /// The report's kind, as serialised.
    pub fn kind(&self) -> &'static str {
        match self {
            Report::Started { .. } => "started",
            Report::Completed { .. } => "completed",
            Report::AttemptFailed { .. } => "attempt_failed",
            Report::Skipped { .. } => "skipped",
            Report::Training { .. } => "training",
            Report::Released { .. } => "released",
        }
    }

    /// The fencing token of the lease the report was made under.
    pub fn token(&self) -> u64 {
        match self {
            Report::Started { token, .. }
            | Report::Completed { token, .. }
            | Report::AttemptFailed { token, .. }
            | Report::Skipped { token, .. }
            | Report::Training { token, .. }
            | Report::Released { token, .. } => *token,
        }
    }
}

/// One optimiser step of a fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step, from 0, counted over both phases.
    pub step: u32,
    /// 1 or 2.
    pub phase: u8,
    /// Training loss of the step's batch.
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
}

/// Where a fine-tune is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingProgress {
    /// Steps done.
    pub step: u32,
    /// Steps asked for, both phases.
    pub total_steps: u32,
    /// Phase of the last step.
    pub phase: u8,
    /// Steps since the previous report.
    pub steps: Vec<StepRecord>,
    /// Steps per second over the last report's span.
    pub steps_per_s: f64,
    /// Seconds left at that rate.
    pub eta_s: f64,
    /// The checkpoint step this attempt resumed from, if it resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u32>,
    /// Held-out figures after a phase ended: `(phase, IoU, MAE)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<(u8, f64, f64)>,
}

/// Counts of a job's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Tasks created so far.
    pub tasks_total: u64,
    /// Tasks in a terminal state.
    pub tasks_done: u64,
    /// Items in created tasks.
    pub items_total: u64,
    /// Items with outputs.
    pub items_succeeded: u64,
    /// Items failed.
    pub items_failed: u64,
    /// Whether every task has been created (the totals are final).
    pub sharded: bool,
}

impl Progress {
    /// Whether every task of a fully sharded job has ended.
    pub fn all_done(&self) -> bool {
        self.sharded && self.tasks_done >= self.tasks_total
    }
}

/// What happened to a job, as published on `fleet.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventMessage {
    /// Tenant.
    pub tenant: String,
    /// Job id.
    pub job: String,
    /// `accepted`, `rejected`, `queued`, `progress`, `succeeded`,
    /// `succeeded_with_item_errors`, `failed`, `cancelled`.
    pub kind: String,
    /// Per job, increasing: events of one job can be put back in order.
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Counts, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Why (rejections, job failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rejection code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A rejection over a quota that passes with time: when to submit again (ms from now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The id was already taken: this submission made no new job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Failed items (at most [`EVENT_FAILURES_MAX`]; the full list is in the job store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ItemFailureReport>,
    /// A fine-tune's steps, learning rates, losses, throughput and ETA (`progress` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingProgress>,
}

impl JobEventMessage {
    /// The event with counts attached.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// Most failed items listed in one event.
pub const EVENT_FAILURES_MAX: usize = 100;

/// Routing key of a job event: `job.<tenant>.<job word>.<kind>`, exactly four words.
pub fn event_routing_key(tenant: &str, job: &str, kind: &str) -> String {
    format!("job.{tenant}.{}.{kind}", event_job_word(job))
}

/// A job id as one word of a routing key: `.` (a topic separator) becomes `~`, which no job
/// id holds, so two ids never share a word (`a.b` -> `a~b`, `a_b` stays `a_b`).
pub fn event_job_word(job: &str) -> String {
    job.replace('.', "~")
}

/// A request to cancel a job, published by its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// The job id.
    pub cancel: String,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A new W3C `traceparent` for a job (random trace and span ids).
pub fn new_traceparent() -> String {
    format!("00-{:032x}-{:016x}-01", random_u128(), random_u128() as u64)
}

/// A child `traceparent`: same trace, new span id.
pub fn child_traceparent(parent: &str) -> String {
    match trace_id(parent) {
        Some(trace) => format!("00-{trace}-{:016x}-01", random_u128() as u64),
        None => new_traceparent(),
    }
}

/// The trace id of a `traceparent`, if well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (version == "00" && hex(trace, 32) && hex(span, 16) && trace != "0".repeat(32)).then_some(trace)
}

fn random_u128() -> u128 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        out = (out << 64) | h.finish() as u128;
    }
    out.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_well_formed_and_children_keep_the_trace() {
        let parent = new_traceparent();
        let trace = trace_id(&parent).expect("a new traceparent parses").to_string();
        let child = child_traceparent(&parent);
        assert_eq!(trace_id(&child), Some(trace.as_str()));
        assert_ne!(child, parent, "a child has its own span id");
        assert_ne!(trace_id(&new_traceparent()), Some(trace.as_str()), "new jobs get new traces");
        for bad in ["", "00-abc-def-01", &format!("01-{trace}-0000000000000001-01"), "00-zz"] {
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn event_keys_have_four_words_whatever_the_job_id() {
        assert_eq!(event_routing_key("tenant-a", "cat.2026.11", "progress"), "job.tenant-a.cat~2026~11.progress");
        assert_eq!(event_routing_key("t", "j", "accepted").split('.').count(), 4);
        assert_ne!(event_routing_key("t", "a.b", "accepted"), event_routing_key("t", "a_b", "accepted"));
    }

    #[test]
    fn reports_round_trip_with_their_tag() {
        let report = Report::Skipped { tenant: "t".into(), job: "j".into(), task: 3, token: 9 };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"report\":\"skipped\""), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap().task_ref(), ("t", "j", 3));
        assert!(serde_json::from_str::<CancelRequest>(r#"{"cancel":"x","extra":1}"#).is_err());
    }

    #[test]
    fn lease_headers_round_trip_and_refuse_garbage() {
        let grant = LeaseGrant { token: 123_456_789_012, attempt: 3, device: 1 };
        assert_eq!(LeaseGrant::parse(&grant.header()), Some(grant));
        for bad in ["", "1:2", "1:2:3:4", "a:1:1", "-1:1:1"] {
            assert_eq!(LeaseGrant::parse(bad), None, "{bad:?}");
        }
    }
}
