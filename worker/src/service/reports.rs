//! Reports to the scheduler: built here for the attempts that fail or give their task back,
//! published on a confirm-mode channel per priority and retried until the broker confirms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_protocol::job::Priority;
use fleet_protocol::message::{LeaseGrant, Report, TaskMessage, TRACEPARENT_HEADER};
use fleet_queue::{confirmed_channel, publish_confirmed, reports_queue, AmqpError};
use lapin::{BasicProperties, Channel, Connection};

use super::attempt::Handback;
use super::failure::AttemptError;
use super::Worker;

/// Confirm-mode channels for reports, one per priority: confirms come back in order per
/// channel, so an interactive task's report never waits behind a batch backlog's.
pub(super) struct Reports {
    interactive: Channel,
    batch: Channel,
}

impl Reports {
    /// Opens the two channels on a broker session's connection.
    pub(super) async fn open(connection: &Connection) -> Result<Self, AmqpError> {
        Ok(Reports { interactive: confirmed_channel(connection).await?, batch: confirmed_channel(connection).await? })
    }
}

/// Publishes a report and waits for the broker's confirm; while the broker is away it waits
/// for the next session (the lease is renewed meanwhile). A task whose lease was lost
/// reports nothing.
pub(super) async fn report_to_scheduler(
    worker: &Worker,
    lost: &AtomicBool,
    priority: Priority,
    report: &Report,
) -> Result<(), Handback> {
    let body = serde_json::to_vec(report).expect("a report serialises");
    let mut wait = Duration::from_millis(100);
    loop {
        if lost.load(Ordering::Relaxed) {
            return Err(Handback::Fenced);
        }
        let channels = worker.reports.read().await.clone();
        if let Some(channels) = channels {
            let channel = match priority {
                Priority::Interactive => &channels.interactive,
                Priority::Batch => &channels.batch,
            };
            let mut props = BasicProperties::default().with_content_type("application/json".into());
            // The report hangs beneath the span that makes it (the task's).
            if let Some(traceparent) = fleet_telemetry::traces::traceparent_of(&tracing::Span::current()) {
                props = props.with_headers(fleet_queue::string_headers(&[(TRACEPARENT_HEADER, &traceparent)]));
            }
            match publish_confirmed(channel, "", reports_queue(priority), &body, props).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, report = report.kind(), "report not confirmed; retrying"),
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// The attempt failed: the scheduler retries the task or fails it, as the failure's kind says.
pub(super) fn failed(worker: &Worker, task: &TaskMessage, lease: &LeaseGrant, failure: AttemptError) -> Report {
    Report::AttemptFailed {
        tenant: task.tenant.clone(),
        job: task.job.clone(),
        task: task.task,
        attempt: lease.attempt,
        token: lease.token,
        worker: worker.config.id.clone(),
        reason: failure.reason,
        failure: failure.kind,
    }
}

/// The task given back: unstarted, or a fine-tune at its checkpoint `checkpoint_step`.
pub(super) fn released(
    worker: &Worker,
    task: &TaskMessage,
    lease: &LeaseGrant,
    checkpoint_step: Option<u32>,
) -> Report {
    Report::Released {
        tenant: task.tenant.clone(),
        job: task.job.clone(),
        task: task.task,
        token: lease.token,
        worker: worker.config.id.clone(),
        checkpoint_step,
    }
}
