//! From delivery to task: decode a delivery and its lease, hold the lease (a guard: the
//! heartbeats renew it while it lives), wait for a slot on the device's lane, run the attempt
//! and let the lease go, also when the attempt panics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fleet_protocol::heartbeat::TrainingHold;
use fleet_protocol::message::{trace_id, LeaseGrant, TaskMessage, LEASE_HEADER, TRACEPARENT_HEADER};
use fleet_queue::header_str;
use lapin::message::Delivery;
use tracing::Instrument;

use super::attempt::handle;
use super::failure::AttemptError;
use super::heartbeat::HeldLease;
use super::hold::LeaseHold;
use super::intake::Intake;
use super::lanes::{InFlight, Running};
use super::reports::{failed, released, report_to_scheduler};
use super::Worker;

/// A task received under a lease, waiting for a slot on its device.
pub(super) struct Accepted {
    task: TaskMessage,
    lease: LeaseGrant,
    traceparent: String,
}

/// Reads a delivery and its lease.
pub(super) fn accept(delivery: Delivery) -> Option<Accepted> {
    let task: TaskMessage = match serde_json::from_slice(&delivery.data) {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable task dropped; its lease expires and the scheduler sees to it");
            return None;
        }
    };
    let Some(lease) = header_str(&delivery.properties, LEASE_HEADER).as_deref().and_then(LeaseGrant::parse) else {
        tracing::warn!(task = %task.id(), "task without a lease dropped");
        return None;
    };
    let traceparent = header_str(&delivery.properties, TRACEPARENT_HEADER).unwrap_or_default();
    Some(Accepted { task, lease, traceparent })
}

impl Accepted {
    /// Holds the lease, waits for a slot on the task's device lane and runs the attempt (or
    /// gives the task back if the worker stops taking work first: cordon, drain or shutdown).
    /// The hold ends with this call, however it ends.
    pub(super) async fn run(self, worker: &Worker, mut intake: Intake) {
        let Accepted { task, lease, traceparent } = self;
        let lost = Arc::new(AtomicBool::new(false));
        let preempt = Arc::new(AtomicBool::new(false));
        let held = HeldLease { token: lease.token, lost: lost.clone(), preempt: preempt.clone() };
        let training = task.fine_tune.as_ref().map(|ft| {
            let hold = TrainingHold {
                task: task.id(),
                whole_device: ft.resources.whole_device(),
                memory_mib: ft.resources.memory_mib.unwrap_or(0),
                preemptible: ft.resources.preemptible,
            };
            (lease.device, hold)
        });
        let _hold = LeaseHold::hold(&worker.live, task.id(), held, training);
        let span = tracing::info_span!("task", tenant = %task.tenant, job = %task.job, task = task.task,
            attempt = lease.attempt, token = lease.token, trace_id = trace_id(&traceparent).unwrap_or(""),
            "messaging.system" = "rabbitmq");
        fleet_telemetry::traces::follow(&span, &traceparent);
        async {
            let Some(device) = worker.devices.get(lease.device as usize) else {
                let reason = format!("placed on device {} but this worker has {}", lease.device, worker.devices.len());
                let report = failed(worker, &task, &lease, AttemptError::retry(reason));
                let _ = report_to_scheduler(worker, &lost, task.priority, &report).await;
                return;
            };
            // Wait for a slot on the device's lane, unless told to stop taking work.
            let permit = tokio::select! {
                biased;
                _ = intake.closed() => None,
                permit = device.lane(task.priority).clone().acquire_owned() => permit.ok(),
            };
            let Some(permit) = permit else {
                let report = released(worker, &task, &lease, None);
                let _ = report_to_scheduler(worker, &lost, task.priority, &report).await;
                return;
            };
            let held = InFlight::hold(&worker.live, task.id());
            // A fine-tune runs for hours: on cordon, drain or shutdown it checkpoints and yields
            // rather than holding the worker until it ends.
            let yield_on_drain = task.fine_tune.is_some().then(|| {
                let (mut intake, preempt) = (intake.clone(), preempt.clone());
                tokio::spawn(async move {
                    intake.closed().await;
                    preempt.store(true, Ordering::Relaxed);
                })
            });
            let running = Running::on(device);
            handle(worker, device, &task, &lease, &lost, &preempt).await;
            drop(running);
            if let Some(watch) = yield_on_drain {
                watch.abort();
            }
            drop(held);
            drop(permit);
        }
        .instrument(span)
        .await;
    }
}
