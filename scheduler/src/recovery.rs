//! Recovery of tasks from workers that stopped: leases not renewed for three heartbeat
//! periods are taken over (a new token fences the silent worker out) and their tasks go back
//! to their priority queue; so do tasks whose attempt failed, after their backoff, and tasks
//! a draining worker gave back.
//!
//! ```text
//! every 250 ms: fleet:leases expired --> LeaseLost (fenced by the old token) --> fleet:requeue
//!               fleet:requeue due    --> fleet.tasks.<priority> --> the dispatcher again
//! ```
//!
//! A task taken over [`MAX_GRANTS`] times (its workers keep dying on it) fails its items
//! instead of going round again.
//!
//! Leases expire by Redis's clock alone (the lease scripts read `TIME`), so clock skew between
//! hosts moves none. After Redis was unreachable from here, or restarted, nothing is taken
//! over until a whole lease life has passed with Redis answering: the workers could not renew
//! during the outage either, and do so as soon as it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{new_traceparent, now_ms, TaskMessage, TRACEPARENT_HEADER};
use fleet_protocol::state::TaskEvent;
use fleet_queue::{publish_confirmed, string_headers, task_queue, TASKS_EXCHANGE};
use fleet_state::lease::{LeaseRecord, LEASE_TTL, MAX_GRANTS};
use fleet_state::{JobStoreError, LeaseOp, TaskNote, TaskOutcome, TaskUpdate};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

use crate::context::Scheduler;
use crate::error::SchedulerError;
use crate::reports::{after_update, failed_items};

/// How often expired leases and due re-dispatches are looked for.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(250);
/// Sweeps between two prunings of the job lists (finished jobs past their retention).
const PRUNE_EVERY: u64 = 40;
/// Jobs pruned at most per pruning.
const PRUNE_MAX: usize = 1_000;
/// Leases taken over per sweep at most.
const SWEEP_MAX: usize = 512;

/// Sweeps until publishing fails (the broker session ended), or until `stop` is cancelled,
/// letting the sweep in hand finish.
pub async fn run(
    sched: Arc<Scheduler>,
    tasks: Channel,
    events: Channel,
    stop: CancellationToken,
) -> Result<(), SchedulerError> {
    // Redis has answered every sweep since this instant.
    let mut answering_since = Instant::now();
    let mut sweeps = 0u64;
    loop {
        sweeps += 1;
        if sweeps.is_multiple_of(PRUNE_EVERY) {
            match sched.store.prune_expired(PRUNE_MAX).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "finished jobs past their retention left the job lists"),
                Err(e) => tracing::warn!(error = %e, "retention index unreadable"),
            }
        }
        let now = now_ms();
        let settled = answering_since.elapsed() >= LEASE_TTL;
        let expired = if settled { sched.store.expired_leases(SWEEP_MAX).await } else { Ok(Vec::new()) };
        match expired {
            Ok(expired) => {
                for lease in expired {
                    if let Err(e) = take_over(&sched, &events, &lease, now).await {
                        tracing::warn!(error = %e, task = %lease.id, "lease not taken over; next sweep tries again");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expired leases unreadable");
                answering_since = Instant::now();
            }
        }
        match sched.store.requeue_due(now).await {
            Ok(due) => {
                for lease in due {
                    requeue(&sched, &tasks, &lease).await?;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-dispatch list unreadable");
                answering_since = Instant::now();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SWEEP_PERIOD) => {}
        }
    }
}

/// Takes an expired lease from its worker: the task goes back to the queue (or fails, past
/// [`MAX_GRANTS`]); a report the old holder makes later carries a stale token and is ignored.
async fn take_over(sched: &Scheduler, events: &Channel, lease: &LeaseRecord, now: u64) -> Result<(), JobStoreError> {
    let parsed = serde_json::from_str::<TaskMessage>(&lease.body)
        .map_err(|e| e.to_string())
        .and_then(|m| TenantId::new(&m.tenant).map(|t| (m, t)).map_err(|e| e.to_string()));
    let (message, tenant) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // Nothing can be dispatched from it: drop the lease rather than retry forever.
            tracing::warn!(task = %lease.id, error = %e, "expired lease with an unreadable task dropped");
            sched.store.end_lease(&lease.id, lease.token).await?;
            return Ok(());
        }
    };
    let silent_ms = now.saturating_sub(lease.expires_ms.saturating_sub(LEASE_TTL.as_millis() as u64));
    let error = format!("worker {} stopped renewing its lease ({silent_ms} ms silent)", lease.worker);
    let note = TaskNote { error: Some(&error), ..Default::default() };
    let (event, outcome, op) = if lease.grants >= MAX_GRANTS {
        let reason = format!("the task's worker was lost {} times; last: {error}", lease.grants);
        (TaskEvent::DeadLetter, failed_items(&message.keys, &reason), LeaseOp::End { token: Some(lease.token) })
    } else {
        (TaskEvent::LeaseLost, TaskOutcome::default(), LeaseOp::Requeue { token: lease.token, not_before_ms: 0 })
    };
    let update = match sched.store.update_task(&tenant, &message.job, message.task, event, &outcome, note, op).await {
        Ok(update) => update,
        Err(JobStoreError::NotFound { .. }) => {
            // The task has no record (its job expired, or was never recorded): nothing can be
            // dispatched again, and a lease kept would hold its device's slot for ever.
            tracing::warn!(task = %lease.id, worker = %lease.worker, "expired lease of a task with no record dropped");
            sched.store.end_lease(&lease.id, lease.token).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match &update {
        TaskUpdate::Applied { .. } => {
            let weight = sched.config.tenants.limits(tenant.as_str()).weight();
            sched.usage.ended(tenant.as_str(), &lease.id, message.keys.len() as u64, None, weight);
            fleet_telemetry::metrics::TASKS.with_label_values(&["lease_takeover"]).inc();
            tracing::warn!(task = %lease.id, worker = %lease.worker, silent_ms, token = lease.token, taken_at_ms = now,
                "lease taken over: the worker went silent; dispatching the task again");
            sched.capacity_freed.notify_one();
        }
        TaskUpdate::Fenced => {}
        TaskUpdate::Refused(refused) => {
            // The task ended meanwhile: only the lease is left to clear.
            tracing::debug!(task = %lease.id, %refused, "expired lease of a finished task cleared");
            sched.store.end_lease(&lease.id, lease.token).await?;
        }
    }
    after_update(sched, events, &tenant, &message.job, message.task, update).await;
    Ok(())
}

/// Sends a task taken back from its worker to its priority queue again.
async fn requeue(sched: &Scheduler, tasks: &Channel, lease: &LeaseRecord) -> Result<(), SchedulerError> {
    let Ok(message) = serde_json::from_str::<TaskMessage>(&lease.body) else {
        tracing::warn!(task = %lease.id, "unreadable task body; dropped from the re-dispatch list");
        sched.store.requeued(&lease.id).await?;
        return Ok(());
    };
    let (_, routing_key) = task_queue(message.priority);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(lease.id.clone().into())
        .with_headers(string_headers(&[(TRACEPARENT_HEADER, &new_traceparent())]));
    publish_confirmed(tasks, TASKS_EXCHANGE, routing_key, lease.body.as_bytes(), props).await?;
    sched.store.requeued(&lease.id).await?;
    tracing::info!(task = %lease.id, "task back in its queue");
    Ok(())
}
