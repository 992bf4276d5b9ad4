//! One dispatch round's bookkeeping: the tasks it took, what each needs, the devices it saw,
//! which tasks were placed and granted leases, and which deliveries to settle or leave waiting.

use fleet_protocol::message::{LeaseGrant, LEASE_HEADER, TRACEPARENT_HEADER};
use fleet_queue::{string_headers, worker_queue, Outgoing};
use fleet_state::lease::Grant;
use fleet_state::JobStoreError;
use lapin::BasicProperties;

use super::Waiting;
use crate::placement::{Decision, DeviceView, TaskNeed};

/// A task placed on a device this round (indices into the round's tasks and devices).
#[derive(Clone, Copy)]
pub(super) struct Placed {
    /// Index of the task.
    pub(super) task: usize,
    /// Index of the device.
    pub(super) device: usize,
    /// Memory reserved for its model (0 when warm or already loading there).
    pub(super) need_mib: u64,
    /// Whether its model was warm there.
    pub(super) warm: bool,
}

/// A placed task whose lease was granted, on its way to its worker.
pub(super) struct Granted {
    /// Where it goes.
    pub(super) placed: Placed,
    /// The lease's fencing token.
    pub(super) token: u64,
}

/// One round: the tasks taken, what they need, the devices seen and what became of each
/// task (by its index in `tasks`).
pub(super) struct Round {
    /// The deliveries taken off the queues.
    pub(super) tasks: Vec<Waiting>,
    /// What each task needs of a device.
    pub(super) needs: Vec<TaskNeed>,
    /// The devices seen at the start of the round.
    pub(super) devices: Vec<DeviceView>,
    /// When leases were granted, ms since the epoch.
    pub(super) now: u64,
    /// Deliveries to acknowledge (`true`) or dead-letter (`false`).
    pub(super) settled: Vec<(usize, bool)>,
    /// Tasks that wait, with why.
    pub(super) unplaced: Vec<(usize, Vec<String>)>,
}

/// Lease store outcome of one placed task; `None` when its tenant is unreadable.
pub(super) type GrantResult = Option<Result<Grant, JobStoreError>>;

impl Round {
    /// The placed tasks of `decisions`; the others are noted as waiting, with why.
    pub(super) fn placed(&mut self, decisions: Vec<(usize, Decision)>) -> Vec<Placed> {
        let mut placed = Vec::new();
        for (task, decision) in decisions {
            match decision {
                Decision::Placed { index, need_mib, warm } => {
                    placed.push(Placed { task, device: index, need_mib, warm })
                }
                Decision::Unplaced { reasons } => self.unplaced.push((task, reasons)),
            }
        }
        placed
    }

    /// The messages to send for the leases granted, and the tasks they carry. A task whose
    /// lease was refused waits; a duplicate of a task that ended or that a live worker holds
    /// is acknowledged, and one whose tenant is unreadable dead-lettered.
    pub(super) fn sort_grants(&mut self, placed: &[Placed], grants: Vec<GrantResult>) -> (Vec<Outgoing>, Vec<Granted>) {
        let mut outgoing: Vec<Outgoing> = Vec::new();
        let mut granted = Vec::new();
        for (&p, grant) in placed.iter().zip(grants) {
            let w = &self.tasks[p.task];
            match grant {
                None => self.settled.push((p.task, false)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, task = %w.message.id(), "lease not granted; the task waits");
                    self.unplaced.push((p.task, vec![format!("lease store: {e}")]));
                }
                Some(Ok(Grant::Granted { token, grants })) => {
                    let device = &self.devices[p.device];
                    let lease = LeaseGrant { token, attempt: grants, device: device.device };
                    let span = tracing::info_span!("dispatch", task = %w.message.id(), worker = %device.worker,
                        device = device.device, token, attempt = grants, warm = p.warm,
                        "messaging.system" = "rabbitmq", "messaging.destination.name" = %worker_queue(&device.worker));
                    fleet_telemetry::traces::follow(&span, &w.traceparent);
                    let traceparent =
                        fleet_telemetry::traces::traceparent_of(&span).unwrap_or_else(|| w.traceparent.clone());
                    let props = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_message_id(w.message.id().into())
                        .with_headers(string_headers(&[
                            (TRACEPARENT_HEADER, &traceparent),
                            (LEASE_HEADER, &lease.header()),
                        ]));
                    outgoing.push((worker_queue(&device.worker), w.delivery.data.clone(), props));
                    granted.push(Granted { placed: p, token });
                }
                Some(Ok(Grant::Ended | Grant::Held | Grant::Gone)) => {
                    // A second copy of a task that ended or that a live worker holds.
                    fleet_telemetry::metrics::TASKS.with_label_values(&["duplicate"]).inc();
                    self.settled.push((p.task, true));
                }
            }
        }
        (outgoing, granted)
    }
}
