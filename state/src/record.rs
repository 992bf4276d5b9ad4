//! What the store keeps: job and task records, and the updates a report or a takeover makes.

use serde::{Deserialize, Serialize};

use fleet_protocol::job::Priority;
use fleet_protocol::message::{ItemFailureReport, Progress};
use fleet_protocol::state::{InvalidTransition, JobState, TaskState};

/// What the store keeps per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Submitting tenant.
    pub tenant: String,
    /// Client idempotency key.
    pub id: String,
    /// Interactive or batch.
    pub priority: Priority,
    /// Where the job is.
    pub state: JobState,
    /// `name@version` of the model.
    pub model: String,
    /// The request as published (JSON).
    pub request: serde_json::Value,
    /// Milliseconds since the epoch when it was accepted.
    pub accepted_at_ms: u64,
    /// Items that produced outputs.
    pub succeeded_items: u64,
    /// Items that failed.
    pub failed_items: u64,
    /// Why it failed, for job-level failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// W3C trace context of the job, passed on to its tasks.
    #[serde(default)]
    pub traceparent: String,
    /// When it reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// What the store keeps per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where the task is.
    pub state: TaskState,
    /// Items in it.
    pub items: u32,
    /// The worker of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why the latest failed attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the worker started the latest attempt (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// The job's priority, for the backlog counts (absent in records made before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// A task's outcome, counted once when it reaches a terminal state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutcome {
    /// Items with outputs.
    pub succeeded: u64,
    /// Items that failed, with reasons.
    pub failures: Vec<ItemFailureReport>,
}

/// What a report adds to a task besides its event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskNote<'a> {
    /// The worker of the attempt.
    pub worker: Option<&'a str>,
    /// Why the attempt failed.
    pub error: Option<&'a str>,
    /// When the worker started the attempt (ms since the epoch).
    pub started_at_ms: Option<u64>,
}

/// Whether a task update was written.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskUpdate {
    /// Written; the job's progress after it.
    Applied {
        /// The task now.
        record: TaskRecord,
        /// Whether this update ended the task.
        ended: bool,
        /// The job's counts after it.
        progress: Progress,
    },
    /// The state machine refused it (a repeated or stale report); nothing changed.
    Refused(InvalidTransition),
    /// The report was made under a lease that has since been taken over (its token is
    /// stale); nothing changed.
    Fenced,
}

/// What a task update does to the task's lease (see [`crate::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseOp {
    /// Nothing, and no fencing.
    #[default]
    None,
    /// Apply only while the lease carries `token`; keep the lease.
    Check {
        /// The reporter's token.
        token: u64,
    },
    /// Apply only while the lease carries `token` (any lease when `None`); then delete it.
    End {
        /// The reporter's token.
        token: Option<u64>,
    },
    /// Apply only while the lease carries `token`; then take the task from its worker and
    /// queue it for dispatch again, not before `not_before_ms`.
    Requeue {
        /// The token being taken over.
        token: u64,
        /// Earliest re-dispatch (ms since the epoch).
        not_before_ms: u64,
    },
}

/// Whether a create made a new job.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The job is new.
    New(JobRecord),
    /// A job with that tenant and id already exists; it is returned unchanged.
    Existing(JobRecord),
}
