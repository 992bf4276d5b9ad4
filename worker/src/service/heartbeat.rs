//! Building the worker's heartbeat ([`fleet_protocol::heartbeat`]): identity, NVML readings,
//! the devices it drives (memory, warm models, tasks running), tasks in hand and state. The
//! service writes one every period and renews its leases right after.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use fleet_protocol::heartbeat::{DeviceSample, Heartbeat, Order, TrainingHold, WorkerDevice};
use fleet_protocol::message::now_ms;
use fleet_protocol::DeviceSpec;

use crate::nvml::Gpus;

/// A lease the worker holds on a task.
pub struct HeldLease {
    /// Its fencing token.
    pub token: u64,
    /// Set when a renewal finds the lease taken over.
    pub lost: Arc<AtomicBool>,
    /// Set when the scheduler asks for the task back (a preemption): a fine-tune checkpoints
    /// and yields.
    pub preempt: Arc<AtomicBool>,
}

/// The parts of a heartbeat that change while the worker runs.
#[derive(Default)]
pub struct Live {
    /// Tasks running.
    pub in_flight: Mutex<BTreeSet<String>>,
    /// Leases held, by task id: running tasks and those waiting for a slot.
    pub leases: Mutex<HashMap<String, HeldLease>>,
    /// Set once the worker has finished everything it held after a cordon or drain.
    pub drained: AtomicBool,
    /// Fine-tunes held, by task id: the device index and what they hold there.
    pub training: Mutex<HashMap<String, (u32, TrainingHold)>>,
}

impl Live {
    /// The fine-tunes held on device `index`.
    pub fn training_on(&self, index: u32) -> Vec<TrainingHold> {
        let held = self.training.lock().expect("training table");
        let mut on: Vec<TrainingHold> = held.values().filter(|(d, _)| *d == index).map(|(_, h)| h.clone()).collect();
        on.sort_by(|a, b| a.task.cmp(&b.task));
        on
    }
}

/// What a device reports on one beat.
pub struct DeviceState {
    /// The device.
    pub spec: DeviceSpec,
    /// Memory the worker may use on it (GPU: total less a margin; CPU: declared), MiB.
    pub memory_mib: f64,
    /// Warm models, least recently used first.
    pub warm: Vec<String>,
    /// Memory the warm models take, MiB.
    pub warm_mib: f64,
    /// Tasks running on it.
    pub running: u32,
    /// Fine-tunes it holds.
    pub training: Vec<TrainingHold>,
}

/// Builds the current heartbeat.
pub fn beat(base: &Heartbeat, gpus: &Gpus, live: &Live, order: Order, devices: &[DeviceState]) -> Heartbeat {
    let (samples, absent) = match gpus {
        Gpus::Absent(reason) => (Vec::new(), Some(reason.clone())),
        present => match present.sample() {
            Ok(samples) => (samples, None),
            Err(e) => (Vec::new(), Some(e)),
        },
    };
    let drained = live.drained.load(std::sync::atomic::Ordering::Relaxed);
    let state = match (order, drained) {
        (Order::Run, _) => "active",
        (Order::Cordon, _) => "cordoned",
        (Order::Drain, false) => "draining",
        (Order::Drain, true) => "drained",
    };
    let devices: Vec<WorkerDevice> =
        devices.iter().enumerate().map(|(i, d)| device_report(i as u32, d, &samples, base.slots)).collect();
    let mut warm_models: Vec<String> = devices.iter().flat_map(|d| d.warm_models.iter().cloned()).collect();
    warm_models.dedup();
    Heartbeat {
        state: state.to_string(),
        gpus: samples,
        telemetry_absent: absent,
        warm_models,
        devices,
        in_flight: live.in_flight.lock().expect("in-flight set").iter().cloned().collect(),
        at_ms: now_ms(),
        ..base.clone()
    }
}

/// A device's memory as the dispatcher sees it: a GPU's free memory from NVML (bounded by
/// what the worker may use), a CPU device's declared capacity less its warm models.
fn device_report(index: u32, d: &DeviceState, samples: &[DeviceSample], slots: usize) -> WorkerDevice {
    let gpu = match d.spec {
        DeviceSpec::Cuda(n) => samples.iter().find(|s| s.index as usize == n),
        _ => None,
    };
    let budget = d.memory_mib.max(0.0) as u64;
    // Memory shares declared by fine-tunes count as taken even before training allocates.
    let shares: f64 = d.training.iter().map(|t| t.memory_mib as f64).sum();
    let by_budget = (d.memory_mib - d.warm_mib - shares).max(0.0) as u64;
    let (total, free) = match gpu {
        Some(g) => (budget.min(g.memory_total_mib), by_budget.min(g.memory_free_mib)),
        None => (budget, by_budget),
    };
    WorkerDevice {
        index,
        spec: d.spec.to_string(),
        memory_total_mib: total,
        memory_free_mib: free,
        warm_models: d.warm.clone(),
        warm_mib: d.warm_mib.round() as u64,
        running: d.running,
        slots,
        training: d.training.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, total: u64, free: u64) -> DeviceSample {
        DeviceSample {
            index,
            name: "test".into(),
            uuid: format!("GPU-{index}"),
            memory_total_mib: total,
            memory_used_mib: total - free,
            memory_free_mib: free,
            gpu_util_pct: None,
            memory_util_pct: None,
            temperature_c: None,
            power_w: None,
            power_limit_w: None,
            sm_clock_mhz: None,
            throttle_reasons: Vec::new(),
            ecc_corrected: None,
            ecc_uncorrected: None,
            processes: Vec::new(),
        }
    }

    #[test]
    fn device_memory_comes_from_nvml_on_a_gpu_and_from_the_declared_capacity_on_a_cpu() {
        let state = |spec, warm_mib| DeviceState {
            spec,
            memory_mib: 20_000.0,
            warm: vec![],
            warm_mib,
            running: 0,
            training: Vec::new(),
        };
        let samples = [gpu(0, 81_559, 70_000), gpu(1, 24_000, 3_000)];
        let on_gpu0 = device_report(0, &state(DeviceSpec::Cuda(0), 500.0), &samples, 2);
        assert_eq!((on_gpu0.memory_total_mib, on_gpu0.memory_free_mib), (20_000, 19_500), "bounded by the budget");
        let on_gpu1 = device_report(1, &state(DeviceSpec::Cuda(1), 500.0), &samples, 2);
        assert_eq!((on_gpu1.memory_total_mib, on_gpu1.memory_free_mib), (20_000, 3_000), "NVML's free memory wins");
        let on_cpu = device_report(0, &state(DeviceSpec::Cpu, 1_500.0), &samples, 2);
        assert_eq!((on_cpu.memory_total_mib, on_cpu.memory_free_mib), (20_000, 18_500));
        assert_eq!(on_cpu.spec, "cpu");
        let share = TrainingHold { task: "t/ft/0".into(), whole_device: false, memory_mib: 4_000, preemptible: true };
        let training = DeviceState { training: vec![share.clone()], ..state(DeviceSpec::Cpu, 1_500.0) };
        let on_cpu = device_report(0, &training, &samples, 2);
        assert_eq!(on_cpu.memory_free_mib, 14_500, "a fine-tune's declared share is taken");
        assert_eq!(on_cpu.training, [share]);
    }
}
