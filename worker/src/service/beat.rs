//! The heartbeat loop: every period it reads the operator's order, writes the heartbeat that
//! [`super::heartbeat`] builds, records the GPU readings as metrics and renews the leases the
//! worker holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fleet_protocol::heartbeat::{Heartbeat, Order};
use fleet_protocol::message::now_ms;
use fleet_telemetry::metrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::host_name;
use super::{heartbeat, Worker};

/// Writes a heartbeat every period, reading the operator's order for the worker on each beat
/// and passing it on through `order`. When `shutdown` is cancelled it beats at once, reporting
/// a drain, and goes on beating (renewing the leases of the tasks still running) until
/// `tasks` is closed and empty, which `run` lets happen only once the broker sessions have
/// ended; then it removes the heartbeat.
pub(super) async fn beat_until(
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    order: watch::Sender<Order>,
    tasks: TaskTracker,
) {
    let gpus = crate::nvml::Gpus::probe();
    let base = base_heartbeat(&worker, host_name());
    // The order the last beat reported: the operator's, or a drain once shutting down.
    let mut reported = *order.borrow();
    loop {
        // Shutting down, the worker drains whatever the operator says: no need to ask.
        let stopping = shutdown.is_cancelled();
        let now = if stopping { Order::Drain } else { operator_order(&worker, &order).await };
        if reported != now {
            tracing::info!(order = ?now, "operator order");
            reported = now;
        }
        let beat = heartbeat::beat(&base, &gpus, &worker.live, now, &device_states(&worker));
        record_gpus(&beat);
        if let Err(e) = worker.jobs.put_heartbeat(&beat).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
        renew_leases(&worker).await;
        tokio::select! {
            _ = tasks.wait() => break,
            _ = shutdown.cancelled(), if !stopping => {}
            _ = tokio::time::sleep(fleet_protocol::heartbeat::HEARTBEAT_PERIOD) => {}
        }
    }
    if let Err(e) = worker.jobs.remove_heartbeat(&worker.config.id).await {
        tracing::warn!(error = %e, "heartbeat not removed; it expires by itself");
    }
}

/// Reads the operator's order for the worker (the last one if Redis cannot say) and passes it
/// on through `order`, which carries the operator's order alone: shutdown is the token's.
async fn operator_order(worker: &Worker, order: &watch::Sender<Order>) -> Order {
    let ordered = match worker.jobs.worker_order(&worker.config.id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "operator order unreadable; keeping the last one");
            *order.borrow()
        }
    };
    order.send_if_modified(|current| std::mem::replace(current, ordered) != ordered);
    ordered
}

/// The parts of the heartbeat that stay the same while the worker runs.
fn base_heartbeat(worker: &Worker, host: String) -> Heartbeat {
    Heartbeat {
        id: worker.config.id.clone(),
        host,
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: "active".into(),
        device: worker.devices.iter().map(|d| d.config.spec.to_string()).collect::<Vec<_>>().join(","),
        gpus: Vec::new(),
        telemetry_absent: None,
        slots: worker.config.slots,
        devices: Vec::new(),
        warm_models: Vec::new(),
        in_flight: Vec::new(),
        started_at_ms: now_ms(),
        at_ms: 0,
    }
}

/// What each device holds and runs now.
fn device_states(worker: &Worker) -> Vec<heartbeat::DeviceState> {
    worker
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| heartbeat::DeviceState {
            spec: d.config.spec,
            memory_mib: d.config.memory_mib,
            warm: d.models.warm(),
            warm_mib: d.models.used_mib(),
            running: d.running.load(Ordering::Relaxed),
            training: worker.live.training_on(i as u32),
        })
        .collect()
}

/// Sets the GPU gauges from a beat's NVML readings, under dcgm-exporter's names and labels.
fn record_gpus(beat: &Heartbeat) {
    metrics::GPU_THROTTLED.reset();
    for g in &beat.gpus {
        let gpu = g.index.to_string();
        let labels = [gpu.as_str(), g.uuid.as_str(), beat.host.as_str(), g.name.as_str()];
        let readings = [
            (&metrics::GPU_UTIL, g.gpu_util_pct.map(f64::from)),
            (&metrics::GPU_MEM_COPY_UTIL, g.memory_util_pct.map(f64::from)),
            (&metrics::GPU_FB_USED, Some(g.memory_used_mib as f64)),
            (&metrics::GPU_FB_FREE, Some(g.memory_free_mib as f64)),
            (&metrics::GPU_TEMP, g.temperature_c.map(f64::from)),
            (&metrics::GPU_POWER, g.power_w),
            (&metrics::GPU_SM_CLOCK, g.sm_clock_mhz.map(f64::from)),
        ];
        for (gauge, value) in readings {
            if let Some(v) = value {
                gauge.with_label_values(&labels).set(v);
            }
        }
        for reason in &g.throttle_reasons {
            metrics::GPU_THROTTLED.with_label_values(&[&gpu, &g.uuid, &beat.host, reason]).set(1.0);
        }
    }
}

/// Renews every lease the worker holds; a lease it no longer holds (the scheduler took the
/// task over while the worker was silent) is marked lost, so its task writes nothing more and
/// reports nothing; a lease the scheduler asks back is marked preempted (a fine-tune then
/// checkpoints and yields).
async fn renew_leases(worker: &Worker) {
    let held: Vec<(String, u64)> = {
        let leases = worker.live.leases.lock().expect("lease table");
        leases.iter().map(|(id, l)| (id.clone(), l.token)).collect()
    };
    match worker.jobs.renew_leases(&worker.config.id, &held).await {
        Ok(renewal) => {
            let leases = worker.live.leases.lock().expect("lease table");
            for id in renewal.lost {
                if let Some(lease) = leases.get(&id) {
                    if !lease.lost.swap(true, Ordering::Relaxed) {
                        tracing::warn!(task = %id, token = lease.token,
                            "lease lost: the scheduler took the task over; abandoning it");
                    }
                }
            }
            for id in renewal.preempt {
                if let Some(lease) = leases.get(&id) {
                    if !lease.preempt.swap(true, Ordering::Relaxed) {
                        tracing::info!(task = %id, token = lease.token,
                            "preempted for interactive work: checkpointing and giving the device back");
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "leases not renewed; retrying on the next beat"),
    }
}
