//! The job and task state machines, in one file. The scheduler applies every change through
//! [`JobState::apply`] and [`TaskState::apply`], so an impossible transition (a result for a
//! cancelled job, a second completion) is refused instead of written.
//!
//! ```text
//!  job:   accepted --queued--> queued --task started--> running --all tasks ended--> succeeded
//!            |                   |                        |                     \--> succeeded_with_item_errors
//!            |                   |                        |                      \-> failed
//!            +---------cancel----+--------cancel----------+--> cancelled
//!            +---------fail------+--------fail------------+--> failed
//!
//!  task:  pending --dispatch(n)--> dispatched(n) --start(n)--> running(n) --done--> succeeded
//!                                      |                      |  \--error, n < max--> pending (retry)
//!                                      |                      |   \-error, n = max--> dead_lettered
//!                                      +--lease lost----------+--> pending (redo elsewhere)
//!         pending(n-1) | dispatched | running(m < n) --start(n)--> running(n)   (broker redelivery)
//!         pending(n >= 1) --done--> succeeded       (a retry's completion overtook its start)
//!         any non-terminal --dead letter--> dead_lettered
//!         any non-terminal --cancel--> cancelled
//! ```
//!
//! Attempt numbers are the broker's: a task message's `x-delivery-count` plus one. RabbitMQ
//! redelivers a task by itself when a worker dies or hands it back, so a `start` may arrive
//! for a later attempt than the one recorded; an older or repeated attempt is refused.
//!
//! Terminal states (`succeeded`, `succeeded_with_item_errors`, `failed`, `cancelled`,
//! `dead_lettered`) accept no event.

use serde::{Deserialize, Serialize};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded durably; not yet split into tasks.
    Accepted,
    /// Split into tasks; none started.
    Queued,
    /// At least one task started.
    Running,
    /// Every item produced its outputs.
    Succeeded,
    /// Every task ended and some items failed (each with its reason).
    SucceededWithItemErrors,
    /// The job could not be done (every item failed, or a job-level error).
    Failed,
    /// Stopped on request; no further task starts.
    Cancelled,
}

/// What can happen to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// Its tasks were created and queued.
    Queued,
    /// A worker started one of its tasks.
    TaskStarted,
    /// Every task reached a terminal state; counts of items.
    TasksEnded {
        /// Items that produced outputs.
        succeeded: u64,
        /// Items that failed.
        failed: u64,
    },
    /// The submitter cancelled it.
    Cancel,
    /// A job-level error.
    Fail,
}

/// A transition the state machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event} to a {what} in state {state}")]
pub struct InvalidTransition {
    /// `job` or `task`.
    pub what: &'static str,
    /// The state it was in.
    pub state: String,
    /// The event refused.
    pub event: String,
}

impl JobState {
    /// Whether no event can change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::SucceededWithItemErrors | JobState::Failed | JobState::Cancelled)
    }

    /// The state after `event`, or the refusal.
    pub fn apply(self, event: JobEvent) -> Result<JobState, InvalidTransition> {
        use JobState::*;
        let next = match (self, event) {
            (s, _) if s.is_terminal() => None,
            (Accepted, JobEvent::Queued) => Some(Queued),
            (Queued | Running, JobEvent::TaskStarted) => Some(Running),
            (Queued | Running, JobEvent::TasksEnded { succeeded, failed }) => Some(match (succeeded, failed) {
                (_, 0) => Succeeded,
                (0, _) => Failed,
                _ => SucceededWithItemErrors,
            }),
            (_, JobEvent::Cancel) => Some(Cancelled),
            (_, JobEvent::Fail) => Some(Failed),
            _ => None,
        };
        next.ok_or_else(|| InvalidTransition { what: "job", state: format!("{self:?}"), event: format!("{event:?}") })
    }
}

/// Where a task (one shard of a job) is. Attempts count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TaskState {
    /// Waiting for a worker.
    Pending {
        /// Attempts already made.
        attempts: u32,
    },
    /// Sent to a worker, not yet started.
    Dispatched {
        /// This attempt's number.
        attempt: u32,
    },
    /// A worker is on it.
    Running {
        /// This attempt's number.
        attempt: u32,
    },
    /// Done; its items' outcomes are recorded.
    Succeeded,
    /// Failed its last allowed attempt; its items are reported failed.
    DeadLettered,
    /// Its job was cancelled.
    Cancelled,
}

/// What can happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Handed to a worker.
    Dispatch,
    /// A worker began attempt `attempt` (counting from 1).
    Start {
        /// The attempt's number.
        attempt: u32,
    },
    /// The worker finished it (item failures are not task failures).
    Complete,
    /// The attempt failed as a whole; retried while attempts remain.
    Error {
        /// Attempts allowed in all.
        max_attempts: u32,
    },
    /// The worker's lease expired (worker dead): redo it without counting a failure.
    LeaseLost,
    /// The broker dead-lettered it after its delivery limit.
    DeadLetter,
    /// The job was cancelled.
    Cancel,
}

impl TaskState {
    /// A new task.
    pub const NEW: TaskState = TaskState::Pending { attempts: 0 };

    /// Whether no event can change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::DeadLettered | TaskState::Cancelled)
    }

    /// The state after `event`, or the refusal.
    pub fn apply(self, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
        use TaskState::*;
        let next = match (self, event) {
            (s, _) if s.is_terminal() => None,
            (Pending { attempts }, TaskEvent::Dispatch) => Some(Dispatched { attempt: attempts + 1 }),
            (Pending { attempts }, TaskEvent::Start { attempt }) if attempt > attempts => Some(Running { attempt }),
            (Dispatched { attempt: a }, TaskEvent::Start { attempt }) if attempt >= a => Some(Running { attempt }),
            (Running { attempt: a }, TaskEvent::Start { attempt }) if attempt > a => Some(Running { attempt }),
            (Dispatched { .. } | Running { .. }, TaskEvent::Complete) => Some(Succeeded),
            // A retry's completion can overtake the report of its start.
            (Pending { attempts }, TaskEvent::Complete) if attempts >= 1 => Some(Succeeded),
            (Dispatched { attempt } | Running { attempt }, TaskEvent::Error { max_attempts }) => {
                Some(if attempt >= max_attempts { DeadLettered } else { Pending { attempts: attempt } })
            }
            // A lost lease is the worker's fault, not the task's: the attempt is not counted.
            (Dispatched { attempt } | Running { attempt }, TaskEvent::LeaseLost) => {
                Some(Pending { attempts: attempt.saturating_sub(1) })
            }
            // Granted again after a failure, lost before its start was reported.
            (Pending { attempts }, TaskEvent::LeaseLost) => Some(Pending { attempts }),
            (_, TaskEvent::DeadLetter) => Some(DeadLettered),
            (_, TaskEvent::Cancel) => Some(Cancelled),
            _ => None,
        };
        next.ok_or_else(|| InvalidTransition { what: "task", state: format!("{self:?}"), event: format!("{event:?}") })
    }
}

#[cfg(test)]
mod tests;
