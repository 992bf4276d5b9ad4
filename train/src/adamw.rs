//! AdamW on a list of libtorch parameters, with its whole state in our hands so a job can
//! checkpoint it and resume bit-identically on another worker. `tch::nn::Optimizer` keeps
//! its moments inside libtorch where they cannot be saved, so a resumed job would restart
//! its moments from zero and take a different path.
//!
//! The update is libtorch's AdamW (decoupled weight decay, bias correction), step for step:
//!
//! ```text
//! p  *= 1 - lr * wd
//! m   = beta1 * m + (1 - beta1) * g
//! v   = beta2 * v + (1 - beta2) * g * g
//! p  -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```

use std::path::Path;

use tch::{Device, Kind, Tensor};

/// Decay of the first moment.
pub const BETA1: f64 = 0.9;
/// Decay of the second moment.
pub const BETA2: f64 = 0.999;
/// Added to the denominator so a parameter with no gradient yet does not divide by zero.
pub const EPS: f64 = 1e-8;

/// Why an optimiser checkpoint could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be written or read (disk full, missing, truncated).
    #[error("optimiser state at {path} cannot be read or written: {reason}")]
    Io {
        /// File that was accessed.
        path: String,
        /// What libtorch said.
        reason: String,
    },
    /// The file was read but belongs to other parameters (another model or another recipe).
    #[error("optimiser state at {path} does not fit these parameters: {reason}")]
    Mismatch {
        /// File that was read.
        path: String,
        /// What differs.
        reason: String,
    },
}

impl CheckpointError {
    /// Whether trying again may succeed: a mismatched checkpoint stays mismatched.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::Io { .. })
    }
}

/// AdamW over a fixed list of parameters (e.g. `VarStore::trainable_variables()`).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Updates per parameter, as libtorch counts them: a parameter without a gradient at a
    /// step is left alone and its bias correction does not advance.
    param_steps: Vec<i64>,
    steps: u64,
}

impl AdamW {
    /// An optimiser with zero moments over `params` (shallow clones sharing their storage).
    pub fn new(params: Vec<Tensor>) -> Self {
        let zeros = |p: &Tensor| tch::no_grad(|| p.zeros_like());
        let exp_avg = params.iter().map(zeros).collect();
        let exp_avg_sq = params.iter().map(zeros).collect();
        let param_steps = vec![0; params.len()];
        AdamW { params, exp_avg, exp_avg_sq, param_steps, steps: 0 }
    }

    /// Calls to [`step`](Self::step) so far, restored by [`load`](Self::load).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters this optimiser updates.
    pub fn parameters(&self) -> &[Tensor] {
        &self.params
    }

    /// Clears the gradients of every parameter, before the next backward pass.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Applies one update from the gradients of the last backward pass.
    pub fn step(&mut self, lr: f64, weight_decay: f64) {
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let grad = self.params[i].grad();
                if !grad.defined() {
                    continue;
                }
                self.param_steps[i] += 1;
                let t = self.param_steps[i] as f64;
                let p = &mut self.params[i];
                let m = &mut self.exp_avg[i];
                let v = &mut self.exp_avg_sq[i];
                // In place where libtorch allows it: few kernels and two temporaries per
                // parameter, so the optimiser costs what libtorch's own AdamW does.
                let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                let _ = m.lerp_(&grad, 1.0 - BETA1);
                let _ = v.lerp_(&grad.square(), 1.0 - BETA2);
                let bias_correction1 = 1.0 - BETA1.powf(t);
                let bias_correction2 = 1.0 - BETA2.powf(t);
                // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), as p += m / denom with
                // denom = (sqrt(v) / sqrt(bc2) + eps) * (-bc1 / lr).
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bias_correction2.sqrt());
                let _ = denom.g_add_scalar_(EPS);
                let _ = denom.g_mul_scalar_(-bias_correction1 / lr);
                let _ = p.addcdiv_(m, &denom);
            }
        });
        self.steps += 1;
    }

    /// Writes the step counts and both moments of every parameter to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let mut named: Vec<(String, Tensor)> = vec![
            ("steps".into(), Tensor::from_slice(&[self.steps as i64])),
            ("param_steps".into(), Tensor::from_slice(&self.param_steps)),
        ];
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            named.push((format!("exp_avg.{i}"), m.to_device(Device::Cpu)));
            named.push((format!("exp_avg_sq.{i}"), v.to_device(Device::Cpu)));
        }
        Tensor::save_multi(&named, path)
            .map_err(|e| CheckpointError::Io { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Restores the state written by [`save`](Self::save) for the same list of parameters;
    /// on error the optimiser is left as it was.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let shown = || path.display().to_string();
        let mismatch = |reason: String| CheckpointError::Mismatch { path: shown(), reason };
        let loaded = Tensor::load_multi_with_device(path, Device::Cpu)
            .map_err(|e| CheckpointError::Io { path: shown(), reason: e.to_string() })?;
        let mut by_name: std::collections::HashMap<String, Tensor> = loaded.into_iter().collect();
        let mut take = |name: &str| by_name.remove(name).ok_or_else(|| mismatch(format!("no tensor `{name}`")));
        let ints = |t: Tensor, name: &str| {
            Vec::<i64>::try_from(&t.to_kind(Kind::Int64)).map_err(|e| mismatch(format!("`{name}`: {e}")))
        };
        let steps = ints(take("steps")?, "steps")?;
        let param_steps = ints(take("param_steps")?, "param_steps")?;
        let n = self.params.len();
        if steps.len() != 1 || steps[0] < 0 || param_steps.len() != n {
            return Err(mismatch(format!("saved for {} parameters, these are {n}", param_steps.len())));
        }
        let mut moments = Vec::with_capacity(n);
        for (i, p) in self.params.iter().enumerate() {
            let (m, v) = (take(&format!("exp_avg.{i}"))?, take(&format!("exp_avg_sq.{i}"))?);
            if m.size() != p.size() || v.size() != p.size() {
                return Err(mismatch(format!("parameter {i} is {:?}, its moments {:?}", p.size(), m.size())));
            }
            moments.push((m, v));
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(mismatch(format!("unexpected tensor `{extra}`: saved for more parameters")));
        }
        tch::no_grad(|| {
            for (i, (m, v)) in moments.iter().enumerate() {
                self.exp_avg[i].copy_(m);
                self.exp_avg_sq[i].copy_(v);
            }
        });
        self.param_steps = param_steps;
        self.steps = steps[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
