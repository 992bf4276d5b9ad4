//! GPU telemetry through NVML (`nvml-wrapper`, which loads `libnvidia-ml` at run time): per
//! device memory, utilisation, temperature, power, SM clock, throttle reasons, ECC error
//! counts and the processes using it. Where NVML is absent (no driver, a CPU host, CI) the
//! worker runs on the CPU and says so; nothing here fails the worker.

pub use fleet_protocol::heartbeat::DeviceSample;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

const MIB: u64 = 1024 * 1024;

/// NVML, or why it is not there.
pub enum Gpus {
    /// NVML loaded and initialised (boxed: the handle is large).
    Nvml(Box<Nvml>),
    /// No NVML: the reason, for the logs and the worker's registration.
    Absent(String),
}

impl Gpus {
    /// Loads NVML if the host has it.
    pub fn probe() -> Gpus {
        match Nvml::init() {
            Ok(nvml) => Gpus::Nvml(Box::new(nvml)),
            Err(e) => Gpus::Absent(format!("NVML unavailable ({e}): running on the CPU")),
        }
    }

    /// A reading of every device (empty when NVML is absent).
    pub fn sample(&self) -> Result<Vec<DeviceSample>, String> {
        let Gpus::Nvml(nvml) = self else { return Ok(Vec::new()) };
        let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
        (0..count).map(|i| sample_device(nvml, i)).collect()
    }
}

fn sample_device(nvml: &Nvml, index: u32) -> Result<DeviceSample, String> {
    let device = nvml.device_by_index(index).map_err(|e| format!("NVML device {index}: {e}"))?;
    let memory = device.memory_info().map_err(|e| format!("NVML device {index} memory: {e}"))?;
    let utilization = device.utilization_rates().ok();
    let throttle_reasons = device
        .current_throttle_reasons()
        .map(|r| r.iter_names().map(|(name, _)| name.to_lowercase()).collect())
        .unwrap_or_default();
    let processes = device
        .running_compute_processes()
        .map(|ps| {
            ps.into_iter()
                .map(|p| {
                    let used = match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes / MIB),
                        UsedGpuMemory::Unavailable => None,
                    };
                    (p.pid, used)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DeviceSample {
        index,
        name: device.name().unwrap_or_default(),
        uuid: device.uuid().unwrap_or_default(),
        memory_total_mib: memory.total / MIB,
        memory_used_mib: memory.used / MIB,
        memory_free_mib: memory.free / MIB,
        gpu_util_pct: utilization.as_ref().map(|u| u.gpu),
        memory_util_pct: utilization.as_ref().map(|u| u.memory),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        power_w: device.power_usage().ok().map(|mw| mw as f64 / 1e3),
        power_limit_w: device.enforced_power_limit().ok().map(|mw| mw as f64 / 1e3),
        sm_clock_mhz: device.clock_info(Clock::SM).ok(),
        throttle_reasons,
        ecc_corrected: device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile).ok(),
        ecc_uncorrected: device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile).ok(),
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_fails_and_readings_are_consistent() {
        match Gpus::probe() {
            Gpus::Absent(reason) => {
                assert!(reason.contains("NVML unavailable"), "{reason}");
                assert!(Gpus::Absent(reason).sample().unwrap().is_empty());
            }
            gpus @ Gpus::Nvml(_) => {
                for d in gpus.sample().unwrap() {
                    assert!(d.memory_used_mib <= d.memory_total_mib, "{d:?}");
                    assert!(d.memory_free_mib <= d.memory_total_mib, "{d:?}");
                    assert!(d.gpu_util_pct.is_none_or(|u| u <= 100), "{d:?}");
                }
            }
        }
    }
}
