//! What a worker tells the fleet about itself: registration and heartbeats, written to
//! `fleet:worker:<id>` in Redis with a TTL of three periods (so a silent worker drops out of
//! the fleet view on its own), and the NVML readings they carry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// This host's name (from `/etc/hostname`; `host` when unreadable): in heartbeats and in the
/// id of a scheduler's lead.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// One reading of one device. A field NVML does not support on the device is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSample {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Stable device id.
    pub uuid: String,
    /// Memory, MiB.
    pub memory_total_mib: u64,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Memory free, MiB.
    pub memory_free_mib: u64,
    /// GPU utilisation over the last sample period, percent.
    pub gpu_util_pct: Option<u32>,
    /// Memory controller utilisation, percent.
    pub memory_util_pct: Option<u32>,
    /// Core temperature, Celsius.
    pub temperature_c: Option<u32>,
    /// Power draw, watts.
    pub power_w: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_w: Option<f64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Active clock throttle reasons (empty when none).
    pub throttle_reasons: Vec<String>,
    /// Volatile corrected ECC errors.
    pub ecc_corrected: Option<u64>,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected: Option<u64>,
    /// Compute processes on the device: (pid, MiB used where known).
    pub processes: Vec<(u32, Option<u64>)>,
}

/// One device a worker drives, as the dispatcher places work on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDevice {
    /// Position in the worker's device list: what a task's lease names.
    pub index: u32,
    /// The libtorch device (`cpu`, `cuda:0`, ...).
    pub spec: String,
    /// Memory the worker may use on it, MiB: the GPU's total from NVML, or the declared
    /// capacity of a CPU device.
    pub memory_total_mib: u64,
    /// Of which free now, MiB (NVML's free memory; on a CPU device, the total less the warm
    /// models' footprint).
    pub memory_free_mib: u64,
    /// Models warm on it (`name@version`), least recently used first.
    pub warm_models: Vec<String>,
    /// Memory those models hold, MiB: the worker evicts them to load another.
    #[serde(default)]
    pub warm_mib: u64,
    /// Tasks it is running now.
    pub running: u32,
    /// Task slots per priority lane.
    pub slots: usize,
    /// Fine-tunes it holds (running or waiting for their slot).
    #[serde(default)]
    pub training: Vec<TrainingHold>,
}

/// A fine-tune a device holds, as placement and preemption see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingHold {
    /// Task id (`<tenant>/<job>/<task>`).
    pub task: String,
    /// It holds the whole device: nothing else runs there.
    pub whole_device: bool,
    /// The memory share it declared, MiB (0 with a whole device).
    pub memory_mib: u64,
    /// Interactive work may preempt it.
    pub preemptible: bool,
}

/// How often a worker beats.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// How long a heartbeat stays readable: three periods.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);

/// What a worker says about itself on every beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Worker software version.
    pub version: String,
    /// `active`, `cordoned`, `draining` or `drained`.
    pub state: String,
    /// The libtorch device the engines run on (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// NVML readings, one per GPU (empty without NVML).
    pub gpus: Vec<DeviceSample>,
    /// Why there are no GPU readings, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_absent: Option<String>,
    /// Task slots per priority lane and device: the declared capacity.
    pub slots: usize,
    /// The devices it drives (excluded devices are not listed).
    #[serde(default)]
    pub devices: Vec<WorkerDevice>,
    /// Models loaded and kept warm (`name@version`).
    pub warm_models: Vec<String>,
    /// Tasks in hand (`<tenant>/<job>/<task>`).
    pub in_flight: Vec<String>,
    /// When the worker started (ms since the epoch).
    pub started_at_ms: u64,
    /// When this beat was written.
    pub at_ms: u64,
}

/// What an operator asked a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Take work.
    Run,
    /// Take nothing new; tasks in hand finish.
    Cordon,
    /// Take nothing new, finish what is in hand, report `drained`.
    Drain,
}

impl Order {
    /// Parses a stored order (anything else means run).
    pub fn parse(stored: Option<&str>) -> Order {
        match stored {
            Some("cordon") => Order::Cordon,
            Some("drain") => Order::Drain,
            _ => Order::Run,
        }
    }
}
