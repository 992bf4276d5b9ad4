//! What workers report, applied to the task state machine. A report the state machine
//! refuses (a repeated completion from a redelivered task, a start for an attempt already
//! superseded) changes nothing, so every task is counted once.

use fleet_common::amqp::MAX_ATTEMPTS;
use fleet_common::jobstore::{JobStoreError, TaskNote, TaskOutcome, TaskUpdate};
use fleet_common::keys::TenantId;
use fleet_common::protocol::{ItemFailureReport, Report, TaskMessage};
use fleet_common::state::TaskEvent;
use lapin::Channel;

use crate::context::Scheduler;

/// Applies one report; `Err` means try again later (Redis trouble).
pub async fn handle(sched: &Scheduler, events: &Channel, report: Report) -> Result<(), JobStoreError> {
    let (tenant, job, task) = report.task_ref();
    let Ok(tenant) = TenantId::new(tenant) else {
        tracing::warn!(tenant, "report for an invalid tenant ignored");
        return Ok(());
    };
    let job = job.to_string();
    let update = match &report {
        Report::Started { attempt, worker, at_ms, .. } => {
            let event = TaskEvent::Start { attempt: *attempt };
            let none = TaskOutcome::default();
            let note = TaskNote { worker: Some(worker), started_at_ms: Some(*at_ms), ..Default::default() };
            let update = sched.store.update_task(&tenant, &job, task, event, &none, note).await?;
            if matches!(update, TaskUpdate::Applied { .. }) {
                sched.job_started(&tenant, &job).await;
            }
            update
        }
        Report::Completed { succeeded, failures, worker, .. } => {
            let outcome = TaskOutcome { succeeded: *succeeded, failures: failures.clone() };
            let note = TaskNote { worker: Some(worker), ..Default::default() };
            sched.store.update_task(&tenant, &job, task, TaskEvent::Complete, &outcome, note).await?
        }
        Report::AttemptFailed { worker, reason, attempt, .. } => {
            tracing::warn!(job = %job, task, attempt, worker = %worker, reason = %reason, "task attempt failed");
            // The broker redelivers until its limit, then dead-letters: the scheduler only
            // records the reason here and never ends the task on a report alone.
            let event = TaskEvent::Error { max_attempts: u32::MAX };
            let none = TaskOutcome::default();
            let note = TaskNote { worker: Some(worker), error: Some(reason), ..Default::default() };
            sched.store.update_task(&tenant, &job, task, event, &none, note).await?
        }
        Report::Skipped { .. } => {
            let none = TaskOutcome::default();
            sched.store.update_task(&tenant, &job, task, TaskEvent::Cancel, &none, TaskNote::default()).await?
        }
    };
    let event = match (&report, &update) {
        (_, TaskUpdate::Refused(_)) => "stale_report",
        (Report::Started { .. }, _) => "started",
        (Report::Completed { .. }, _) => "completed",
        (Report::AttemptFailed { .. }, _) => "retried",
        (Report::Skipped { .. }, _) => "skipped",
    };
    fleet_common::metrics::TASKS.with_label_values(&[event]).inc();
    after_update(sched, events, &tenant, &job, task, update).await;
    Ok(())
}

/// Records a task the broker dead-lettered after [`MAX_ATTEMPTS`] attempts: every item of it
/// fails with the last attempt's error.
pub async fn dead_lettered(sched: &Scheduler, events: &Channel, message: &TaskMessage) -> Result<(), JobStoreError> {
    let Ok(tenant) = TenantId::new(&message.tenant) else { return Ok(()) };
    let last = sched.store.task(&tenant, &message.job, message.task).await?.and_then(|t| t.last_error);
    let reason = format!(
        "task failed {MAX_ATTEMPTS} attempts; last error: {}",
        last.as_deref().unwrap_or("worker stopped or crashed during the attempt")
    );
    tracing::warn!(job = %message.job, task = message.task, %reason, "task dead-lettered");
    let failures = message
        .keys
        .iter()
        .map(|key| ItemFailureReport { key: key.clone(), code: "task_failed".into(), reason: reason.clone() })
        .collect();
    let outcome = TaskOutcome { succeeded: 0, failures };
    fleet_common::metrics::TASKS.with_label_values(&["dead_lettered"]).inc();
    let update = sched
        .store
        .update_task(&tenant, &message.job, message.task, TaskEvent::DeadLetter, &outcome, TaskNote::default())
        .await?;
    after_update(sched, events, &tenant, &message.job, message.task, update).await;
    Ok(())
}

async fn after_update(
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
    }
}
