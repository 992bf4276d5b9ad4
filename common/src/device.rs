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

#[cfg(test)]
mod tests {
    use super::*;

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
