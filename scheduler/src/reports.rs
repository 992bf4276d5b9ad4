//! What workers report, applied to the task state machine under the task's lease. A report
//! made under a lease that was since taken over (a stale fencing token) changes nothing, and
//! a report the state machine refuses (a repeated completion, a start for an attempt already
//! superseded) changes nothing, so every task is counted once.

use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{now_ms, FailureKind, ItemFailureReport, Report, TaskMessage};
use fleet_protocol::state::TaskEvent;
use fleet_queue::MAX_ATTEMPTS;
use fleet_state::{JobStoreError, LeaseOp, TaskNote, TaskOutcome, TaskUpdate};
use lapin::Channel;

use crate::context::Scheduler;

/// Base of the wait before a failed task is dispatched again (times the attempt number).
const RETRY_BACKOFF_MS: u64 = 250;

/// Applies one report; `Err` means try again later (Redis trouble).
pub async fn handle(sched: &Scheduler, events: &Channel, report: Report) -> Result<(), JobStoreError> {
    let (tenant, job, task) = report.task_ref();
    let Ok(tenant) = TenantId::new(tenant) else {
        tracing::warn!(tenant, "report for an invalid tenant ignored");
        return Ok(());
    };
    let job = job.to_string();
    let token = report.token();
    if let Report::Training { progress, .. } = &report {
        return training(sched, events, &tenant, &job, task, token, progress).await;
    }
    let none = TaskOutcome::default();
    // The lease ends with any of these: the tenant's task no longer runs; a completion's
    // measured time is charged to its fair share in place of the estimate.
    let weight = sched.config.tenants.limits(tenant.as_str()).weight();
    let id = fleet_protocol::message::task_id(tenant.as_str(), &job, task);
    match &report {
        Report::Completed { succeeded, failures, started_at_ms, finished_at_ms, .. } => {
            let items = succeeded + failures.len() as u64;
            let ms = finished_at_ms.saturating_sub(*started_at_ms);
            sched.usage.ended(tenant.as_str(), &id, items, Some(ms), weight);
        }
        Report::AttemptFailed { .. } | Report::Skipped { .. } | Report::Released { .. } => {
            sched.usage.ended(tenant.as_str(), &id, 1, None, weight)
        }
        Report::Started { .. } | Report::Training { .. } => {}
    }
    let update = match &report {
        Report::Started { attempt, worker, at_ms, .. } => {
            let event = TaskEvent::Start { attempt: *attempt };
            let note = TaskNote { worker: Some(worker), started_at_ms: Some(*at_ms), ..Default::default() };
            let update =
                sched.store.update_task(&tenant, &job, task, event, &none, note, LeaseOp::Check { token }).await?;
            if matches!(update, TaskUpdate::Applied { .. }) {
                sched.job_started(&tenant, &job).await;
            }
            update
        }
        Report::Completed { succeeded, failures, worker, .. } => {
            let outcome = TaskOutcome { succeeded: *succeeded, failures: failures.clone() };
            let note = TaskNote { worker: Some(worker), ..Default::default() };
            let lease = LeaseOp::End { token: Some(token) };
            sched.store.update_task(&tenant, &job, task, TaskEvent::Complete, &outcome, note, lease).await?
        }
        Report::AttemptFailed { worker, reason, attempt, failure, .. } => {
            attempt_failed(sched, &tenant, &job, task, token, worker, reason, *attempt, *failure).await?
        }
        Report::Skipped { .. } => {
            let lease = LeaseOp::End { token: Some(token) };
            sched.store.update_task(&tenant, &job, task, TaskEvent::Cancel, &none, TaskNote::default(), lease).await?
        }
        Report::Training { .. } => unreachable!("handled above"),
        Report::Released { worker, checkpoint_step, .. } => {
            match checkpoint_step {
                Some(step) => tracing::info!(job = %job, task, worker = %worker, step,
                    "fine-tune yielded its device at a checkpoint; it resumes from there when a device is free"),
                None => tracing::info!(job = %job, task, worker = %worker,
                    "task given back unstarted; dispatching it elsewhere"),
            }
            let lease = LeaseOp::Requeue { token, not_before_ms: 0 };
            let note = TaskNote { worker: Some(worker), ..Default::default() };
            let update = sched.store.update_task(&tenant, &job, task, TaskEvent::LeaseLost, &none, note, lease).await?;
            if matches!(update, TaskUpdate::Applied { .. }) {
                // Given back, not lost: the grant does not count toward the limit on workers
                // dying with the task.
                let id = fleet_protocol::message::task_id(tenant.as_str(), &job, task);
                sched.store.forgive_grant(&id).await?;
            }
            update
        }
    };
    let event = match (&report, &update) {
        (_, TaskUpdate::Fenced) => "stale_report",
        (_, TaskUpdate::Refused(_)) => "stale_report",
        (Report::Started { .. }, _) => "started",
        (Report::Completed { .. }, _) => "completed",
        (Report::AttemptFailed { failure: FailureKind::Fenced, .. }, _) => "stale_report",
        (Report::AttemptFailed { .. }, TaskUpdate::Applied { ended: true, .. }) => "dead_lettered",
        (Report::AttemptFailed { .. }, _) => "retried",
        (Report::Skipped { .. }, _) => "skipped",
        (Report::Released { checkpoint_step: Some(_), .. }, _) => "yielded",
        (Report::Released { .. }, _) => "released",
        (Report::Training { .. }, _) => "training",
    };
    fleet_telemetry::metrics::TASKS.with_label_values(&[event]).inc();
    if matches!(update, TaskUpdate::Fenced) {
        tracing::info!(job = %job, task, token, report = report.kind(),
            "report under a lease that was taken over ignored (stale token)");
    }
    if !matches!(report, Report::Started { .. }) && matches!(update, TaskUpdate::Applied { .. }) {
        sched.capacity_freed.notify_one();
    }
    after_update(sched, events, &tenant, &job, task, update).await;
    Ok(())
}

/// Applies a failed attempt as its [`FailureKind`] says: a retryable failure is dispatched
/// again after a backoff (at least its own `retry_after_ms`) until the attempts run out; a
/// permanent one fails the task now, every item with the reason; a fenced one changes
/// nothing (the worker had lost the lease, and the task's new holder carries on).
#[allow(clippy::too_many_arguments)]
async fn attempt_failed(
    sched: &Scheduler,
    tenant: &TenantId,
    job: &str,
    task: u32,
    token: u64,
    worker: &str,
    reason: &str,
    attempt: u32,
    failure: FailureKind,
) -> Result<TaskUpdate, JobStoreError> {
    let permanent = match failure {
        FailureKind::Fenced => {
            tracing::info!(job, task, attempt, worker, reason, "attempt failed after its lease was lost; ignored");
            return Ok(TaskUpdate::Fenced);
        }
        FailureKind::Permanent => true,
        FailureKind::Retryable { .. } => false,
    };
    tracing::warn!(job, task, attempt, worker, reason, permanent, "task attempt failed");
    // A permanent failure ends the task at this attempt; a retryable one at the last allowed.
    let max_attempts = if permanent { attempt } else { MAX_ATTEMPTS };
    let event = TaskEvent::Error { max_attempts };
    let note = TaskNote { worker: Some(worker), error: Some(reason), ..Default::default() };
    let outcome = if attempt >= max_attempts {
        let id = fleet_protocol::message::task_id(tenant.as_str(), job, task);
        let keys = match sched.store.lease(&id).await? {
            Some(lease) => serde_json::from_str::<TaskMessage>(&lease.body).map(|m| m.keys).unwrap_or_default(),
            None => Vec::new(),
        };
        let reason = if permanent {
            format!("task failed and cannot pass on a retry: {reason}")
        } else {
            format!("task failed {MAX_ATTEMPTS} attempts; last error: {reason}")
        };
        failed_items(&keys, &reason)
    } else {
        TaskOutcome::default()
    };
    let backoff_ms = RETRY_BACKOFF_MS * u64::from(attempt.min(8));
    let retry_after_ms = match failure {
        FailureKind::Retryable { retry_after_ms } => retry_after_ms.unwrap_or(0),
        _ => 0,
    };
    let lease = LeaseOp::Requeue { token, not_before_ms: now_ms() + backoff_ms.max(retry_after_ms) };
    sched.store.update_task(tenant, job, task, event, &outcome, note, lease).await
}

/// Publishes a fine-tune's progress as a `progress` event, unless the report comes from a
/// lease that was taken over.
async fn training(
    sched: &Scheduler,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    task: u32,
    token: u64,
    progress: &fleet_protocol::message::TrainingProgress,
) -> Result<(), JobStoreError> {
    let id = fleet_protocol::message::task_id(tenant.as_str(), job, task);
    if sched.store.lease_token(&id).await? != Some(token) {
        fleet_telemetry::metrics::TASKS.with_label_values(&["stale_report"]).inc();
        tracing::info!(job, task, token, "training progress under a lease that was taken over ignored");
        return Ok(());
    }
    // The latest figures, for `fleetctl show` (the full step list is in the events).
    let mut latest = progress.clone();
    latest.steps = latest.steps.last().copied().into_iter().collect();
    let key = fleet_state::schema::training_key(tenant.as_str(), job);
    sched.store.put_note(&key, &serde_json::to_string(&latest).expect("progress serialises"), 7 * 24 * 3600).await?;
    let counts = sched.store.progress(tenant, job).await?;
    let mut message = crate::context::event(tenant.as_str(), job, "progress").with_progress(counts);
    message.training = Some(progress.clone());
    sched.publish_event(events, message).await;
    Ok(())
}

/// Every key of a task failed with `reason`.
pub fn failed_items(keys: &[String], reason: &str) -> TaskOutcome {
    let failures = keys
        .iter()
        .map(|key| ItemFailureReport { key: key.clone(), code: "task_failed".into(), reason: reason.to_string() })
        .collect();
    TaskOutcome { succeeded: 0, failures }
}

/// Records a task the broker dead-lettered from its queue (past the delivery limit before
/// it could be dispatched): every item of it fails with the last error.
pub async fn dead_lettered(sched: &Scheduler, events: &Channel, message: &TaskMessage) -> Result<(), JobStoreError> {
    let Ok(tenant) = TenantId::new(&message.tenant) else { return Ok(()) };
    let last = sched.store.task(&tenant, &message.job, message.task).await?.and_then(|t| t.last_error);
    let reason = format!(
        "task dead-lettered by the broker; last error: {}",
        last.as_deref().unwrap_or("the task was returned to its queue too many times")
    );
    tracing::warn!(job = %message.job, task = message.task, %reason, "task dead-lettered");
    let outcome = failed_items(&message.keys, &reason);
    fleet_telemetry::metrics::TASKS.with_label_values(&["dead_lettered"]).inc();
    let lease = LeaseOp::End { token: None };
    let update = sched
        .store
        .update_task(&tenant, &message.job, message.task, TaskEvent::DeadLetter, &outcome, TaskNote::default(), lease)
        .await?;
    after_update(sched, events, &tenant, &message.job, message.task, update).await;
    Ok(())
}

/// Publishes progress after an update, and the job's terminal event once its last task ended.
pub async fn after_update(
    sched: &Scheduler,
    events: &Channel,
    tenant: &TenantId,
    job: &str,
    task: u32,
    update: TaskUpdate,
) {
    match update {
        TaskUpdate::Applied { ended: true, progress, .. } => {
            sched.progress_event(events, tenant.as_str(), job, progress).await;
            sched.finalize_if_done(events, tenant, job, progress).await;
        }
        TaskUpdate::Applied { .. } => {}
        TaskUpdate::Refused(refused) => {
            tracing::debug!(job, task, %refused, "stale or repeated report ignored");
        }
        TaskUpdate::Fenced => {}
    }
}
