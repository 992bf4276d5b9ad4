//! The noise schedule of a denoiser (its training `betas`), and the timesteps a sampler
//! visits: `alpha_bar(t) = prod_{s <= t} (1 - beta_s)`, `x_t = sqrt(alpha_bar) x_0 +
//! sqrt(1 - alpha_bar) eps`.

use serde::{Deserialize, Serialize};

pub use fleet_protocol::manifest::generator::BetaSchedule;

/// Which training timesteps a run of `n` steps visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    /// Every `T / n`-th timestep counted down from the last (`T - 1`): starts at pure noise,
    /// best for few steps.
    Trailing,
    /// Every `T / n`-th timestep counted up from 0 (diffusers' "leading").
    Leading,
}

/// A trained noise schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `alpha_bar(t)` for `t` in `0..T`.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// The schedule of `steps` training timesteps with betas from `beta_start` to `beta_end`.
    pub fn new(kind: BetaSchedule, beta_start: f64, beta_end: f64, steps: usize) -> Self {
        let steps = steps.max(2);
        let betas = (0..steps).map(|i| {
            let f = i as f64 / (steps - 1) as f64;
            match kind {
                BetaSchedule::Linear => beta_start + f * (beta_end - beta_start),
                BetaSchedule::ScaledLinear => (beta_start.sqrt() + f * (beta_end.sqrt() - beta_start.sqrt())).powi(2),
            }
        });
        let mut prod = 1.0;
        let alphas_cumprod = betas
            .map(|b| {
                prod *= 1.0 - b;
                prod
            })
            .collect();
        NoiseSchedule { alphas_cumprod }
    }

    /// The schedule a manifest declares.
    pub fn of(spec: &fleet_protocol::manifest::generator::ScheduleSpec) -> Self {
        NoiseSchedule::new(spec.beta_schedule, spec.beta_start, spec.beta_end, spec.train_steps as usize)
    }

    /// Stable Diffusion's schedule: scaled linear, 0.00085 to 0.012, 1,000 steps.
    pub fn stable_diffusion() -> Self {
        NoiseSchedule::new(BetaSchedule::ScaledLinear, 0.00085, 0.012, 1000)
    }

    /// Training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether it has no timestep (never, when built by [`new`](Self::new)).
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `alpha_bar(t)`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t.min(self.len() - 1)]
    }

    /// Noise level of timestep `t` in the variance-exploding view: `sqrt((1 - a) / a)`.
    pub fn sigma(&self, t: usize) -> f64 {
        let a = self.alpha_bar(t);
        ((1.0 - a) / a).sqrt()
    }

    /// The `n` timesteps a run visits, from the noisiest down, each once.
    pub fn timesteps(&self, n: usize, spacing: Spacing) -> Vec<usize> {
        let total = self.len();
        let n = n.clamp(1, total);
        let ratio = total as f64 / n as f64;
        let mut ts: Vec<usize> = match spacing {
            Spacing::Trailing => {
                (0..n).map(|i| ((total as f64 - i as f64 * ratio).round() as usize).saturating_sub(1)).collect()
            }
            Spacing::Leading => (0..n).rev().map(|i| (i as f64 * ratio).floor() as usize).collect(),
        };
        ts.dedup();
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_diffusion_schedule_matches_its_published_end_points() {
        let s = NoiseSchedule::stable_diffusion();
        assert_eq!(s.len(), 1000);
        // diffusers: alphas_cumprod[0] = 1 - 0.00085, alphas_cumprod[999] ~= 0.00466.
        assert!((s.alpha_bar(0) - 0.99915).abs() < 1e-9);
        assert!((s.alpha_bar(999) - 0.004_66).abs() < 5e-5, "{}", s.alpha_bar(999));
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]), "noise only grows");
    }

    #[test]
    fn trailing_steps_start_at_the_last_timestep_and_leading_ones_end_at_zero() {
        let s = NoiseSchedule::stable_diffusion();
        assert_eq!(s.timesteps(4, Spacing::Trailing), [999, 749, 499, 249]);
        assert_eq!(s.timesteps(4, Spacing::Leading), [750, 500, 250, 0]);
        let many = s.timesteps(5000, Spacing::Trailing);
        assert_eq!(many.len(), 1000, "never more steps than the schedule has");
        assert!(many.windows(2).all(|w| w[1] < w[0]));
    }
}
