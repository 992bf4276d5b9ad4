//! Which compute device a worker runs its models on, as written in config: `cpu`,
//! `cuda:N`, or `auto` (the first CUDA device when one is usable, else the CPU).

use std::fmt;
use std::str::FromStr;

/// A device as configured, before anyone checks that it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device if CUDA is usable, otherwise the CPU.
    #[default]
    Auto,
    /// The CPU, whatever else the host has.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

/// A device string that is not `cpu`, `auto`, `cuda` or `cuda:N`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown device {given:?}: expected cpu, auto, cuda or cuda:N")]
pub struct DeviceSpecError {
    /// What the configuration said.
    pub given: String,
}

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => return Ok(DeviceSpec::Auto),
            "cpu" => return Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => return Ok(DeviceSpec::Cuda(0)),
            _ => {}
        }
        lower
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| DeviceSpecError { given: s.to_string() })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The devices a worker drives. `requested` is `auto` (every CUDA device the host has, or
/// the CPU without one) or a comma-separated list of `cpu` / `cuda:N` / `auto`; `exclude`
/// is a comma-separated list taken out of it (a device under repair, one kept for another
/// service). `cuda_devices` is how many CUDA devices libtorch sees. Repeats count once.
pub fn select_devices(requested: &str, exclude: &str, cuda_devices: usize) -> Result<Vec<DeviceSpec>, String> {
    let parse = |list: &str| -> Result<Vec<DeviceSpec>, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse().map_err(|e: DeviceSpecError| e.to_string()))
            .collect()
    };
    let mut chosen = Vec::new();
    for spec in parse(requested)? {
        let expanded = match spec {
            DeviceSpec::Auto if cuda_devices > 0 => (0..cuda_devices).map(DeviceSpec::Cuda).collect(),
            DeviceSpec::Auto => vec![DeviceSpec::Cpu],
            DeviceSpec::Cuda(n) if n >= cuda_devices => {
                return Err(format!("{spec} was asked for but this host has {cuda_devices} CUDA device(s)"))
            }
            other => vec![other],
        };
        for d in expanded {
            if !chosen.contains(&d) {
                chosen.push(d);
            }
        }
    }
    let excluded = parse(exclude)?;
    chosen.retain(|d| !excluded.contains(d));
    if chosen.is_empty() {
        return Err(format!("no device left to run on (asked for {requested:?}, excluded {exclude:?})"));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_drives_every_gpu_it_is_given_less_the_excluded_ones() {
        use DeviceSpec::*;
        assert_eq!(select_devices("auto", "", 0), Ok(vec![Cpu]));
        assert_eq!(select_devices("auto", "", 4), Ok(vec![Cuda(0), Cuda(1), Cuda(2), Cuda(3)]));
        assert_eq!(select_devices("auto", "cuda:1, cuda:3", 4), Ok(vec![Cuda(0), Cuda(2)]));
        assert_eq!(select_devices("cuda:1,cuda:1,cpu", "", 2), Ok(vec![Cuda(1), Cpu]));
        assert!(select_devices("cuda:2", "", 2).unwrap_err().contains("2 CUDA device"));
        assert!(select_devices("auto", "cpu", 0).unwrap_err().contains("no device left"));
        assert!(select_devices("cuda:0", "tpu", 1).is_err(), "an unknown exclusion is an error, not ignored");
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("AUTO".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["", "cuda:", "cuda:x", "tpu", "cuda:-1"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string().parse(), Ok(DeviceSpec::Cuda(2)));
    }
}
