//! DDIM and Euler sampling with classifier-free guidance.
//!
//! Both run every result of a call in one batch on the device. Noise is drawn on the host
//! from a ChaCha stream per result (`seed + index`), so a result depends only on its seed,
//! the steps and the denoiser, not on how many results share its batch or on the device.
//!
//! - **DDIM** (Song et al.): `x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`, then
//!   `x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z`, with
//!   `s = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev)`; `eta = 0` is deterministic.
//! - **Euler** (Karras et al., diffusers' `EulerDiscreteScheduler`): in the variance-exploding
//!   view `x_sigma = x0 + sigma eps`, the model sees `x_sigma / sqrt(1 + sigma^2)`, and
//!   `x_next = x_sigma + eps (sigma_next - sigma)`, down to `sigma = 0`.
//!
//! With `clip`, the clean sample each step implies is clipped before the update (pixel
//! models).
//!
//! Guidance: `pred = uncond + g (cond - uncond)`, both halves in one forward pass; `g = 1`
//! skips the unconditional half.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::schedule::{NoiseSchedule, Spacing};
use super::{Conditioning, Denoiser, Prediction};
use crate::EngineError;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SamplerKind {
    /// DDIM with stochasticity `eta` (0: deterministic).
    Ddim {
        /// 0 = deterministic (probability-flow), 1 = DDPM-like.
        eta: f64,
    },
    /// Euler steps in sigma space (deterministic).
    Euler,
}

/// Classifier-free guidance: the scale and the unconditional conditioning.
pub struct Guidance<'a> {
    /// 1 = conditional only; above 1 pushes away from the unconditional prediction.
    pub scale: f64,
    /// The conditioning of the unconditional (or negative-prompt) half.
    pub uncond: &'a Conditioning,
}

/// One sampling call.
pub struct SampleOptions<'a> {
    /// Update rule.
    pub sampler: SamplerKind,
    /// Denoiser calls.
    pub steps: usize,
    /// Which timesteps the steps visit.
    pub spacing: Spacing,
    /// Shape of one result (`[C, H, W]`).
    pub shape: Vec<i64>,
    /// Seeds, one per result: the batch is `seeds.len()` results.
    pub seeds: Vec<u64>,
    /// Guidance, if any.
    pub guidance: Option<Guidance<'a>>,
    /// Range the predicted clean sample is clipped to at every step, `[-c, c]` (diffusers'
    /// `clip_sample_range`): pixel-space models need it, since at the noisiest timesteps
    /// `x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)` multiplies the denoiser's error by up to
    /// `1 / sqrt(a)`; latent models leave it off.
    pub clip: Option<f64>,
    /// Where the batch lives.
    pub device: Device,
}

/// Standard normal noise of `shape` from `seed`, drawn on the host (Box-Muller over a ChaCha
/// stream): identical on every device.
pub fn seeded_noise(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n as usize);
    while (values.len() as i64) < n {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        let r = (-2.0f64 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        values.push((r * theta.cos()) as f32);
        values.push((r * theta.sin()) as f32);
    }
    values.truncate(n as usize);
    Tensor::from_slice(&values).view(shape)
}

/// Noise for a batch: one seeded draw per result, stacked.
fn batch_noise(opts: &SampleOptions) -> Tensor {
    let parts: Vec<Tensor> = opts.seeds.iter().map(|s| seeded_noise(&opts.shape, *s)).collect();
    Tensor::stack(&parts, 0).to_device(opts.device)
}

/// The denoiser's (guided) epsilon for `x_t` at timestep `t`, whatever it predicts.
fn epsilon(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    x_t: &Tensor,
    t: usize,
    cond: &Conditioning,
    guidance: Option<&Guidance>,
) -> Result<Tensor, EngineError> {
    let batch = x_t.size()[0];
    let ts = |b: i64| Tensor::full([b], t as i64, (Kind::Int64, x_t.device()));
    let pred = match guidance {
        Some(g) if (g.scale - 1.0).abs() > f64::EPSILON => {
            let both = denoiser.predict(&Tensor::cat(&[x_t, x_t], 0), &ts(2 * batch), &cond.paired_with(g.uncond))?;
            let halves = both.chunk(2, 0);
            &halves[0] + (&halves[1] - &halves[0]) * g.scale
        }
        _ => denoiser.predict(x_t, &ts(batch), cond)?,
    };
    Ok(match denoiser.prediction() {
        Prediction::Epsilon => pred,
        Prediction::V => {
            // v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps give
            // eps = sqrt(a) v + sqrt(1 - a) x_t.
            let a = schedule.alpha_bar(t);
            pred * a.sqrt() + x_t * (1.0 - a).sqrt()
        }
    })
}

/// Samples `opts.seeds.len()` results from `denoiser` under `cond` (batched like the results).
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    cond: &Conditioning,
    opts: &SampleOptions,
) -> Result<Tensor, EngineError> {
    if opts.seeds.is_empty() {
        return Err(EngineError::invalid("no results asked for"));
    }
    if opts.steps < 1 {
        return Err(EngineError::invalid("at least one step is needed"));
    }
    let timesteps = schedule.timesteps(opts.steps, opts.spacing);
    let noise = batch_noise(opts);
    tch::no_grad(|| match opts.sampler {
        SamplerKind::Ddim { eta } => ddim(denoiser, schedule, cond, opts, &timesteps, noise, eta),
        SamplerKind::Euler => euler(denoiser, schedule, cond, opts, &timesteps, noise),
    })
}

fn ddim(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    cond: &Conditioning,
    opts: &SampleOptions,
    timesteps: &[usize],
    noise: Tensor,
    eta: f64,
) -> Result<Tensor, EngineError> {
    // Starting at the first timestep's marginal: x_T ~ N(0, 1) up to sqrt(a_T) x0, which the
    // schedules in use make negligible.
    let mut x = noise;
    // Fresh noise of later steps (eta > 0) comes from the seeds too, offset per step.
    let step_noise = |i: usize| {
        let parts: Vec<Tensor> = opts
            .seeds
            .iter()
            .map(|s| seeded_noise(&opts.shape, s.wrapping_add(0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i as u64 + 1))))
            .collect();
        Tensor::stack(&parts, 0).to_device(opts.device)
    };
    for (i, &t) in timesteps.iter().enumerate() {
        let a = schedule.alpha_bar(t);
        let a_prev = timesteps.get(i + 1).map_or(1.0, |&p| schedule.alpha_bar(p));
        let eps = epsilon(denoiser, schedule, &x, t, cond, opts.guidance.as_ref())?;
        let x0 = (&x - &eps * (1.0 - a).sqrt()) / a.sqrt();
        // Clipped, the clean sample decides the noise direction too (as diffusers does).
        let (x0, eps) = match opts.clip {
            Some(c) => {
                let x0 = x0.clamp(-c, c);
                let eps = (&x - &x0 * a.sqrt()) / (1.0 - a).sqrt();
                (x0, eps)
            }
            None => (x0, eps),
        };
        let s = eta * ((1.0 - a_prev) / (1.0 - a)).sqrt() * (1.0 - a / a_prev).max(0.0).sqrt();
        let dir = (1.0 - a_prev - s * s).max(0.0).sqrt();
        x = x0 * a_prev.sqrt() + eps * dir;
        if s > 0.0 {
            x += step_noise(i) * s;
        }
    }
    Ok(x)
}

fn euler(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    cond: &Conditioning,
    opts: &SampleOptions,
    timesteps: &[usize],
    noise: Tensor,
) -> Result<Tensor, EngineError> {
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| schedule.sigma(t)).chain([0.0]).collect();
    // x_sigma = x0 + sigma eps starts as pure noise of scale sigma_max (with the tiny signal
    // term dropped, as for DDIM).
    let mut x = noise * (sigmas[0] * sigmas[0] + 1.0).sqrt();
    for (i, &t) in timesteps.iter().enumerate() {
        let sigma = sigmas[i];
        let x_t = &x / (sigma * sigma + 1.0).sqrt();
        let eps = epsilon(denoiser, schedule, &x_t, t, cond, opts.guidance.as_ref())?;
        match opts.clip {
            // x = x0 + sigma eps: clip the clean sample, then step from it.
            Some(c) => {
                let x0 = (&x - &eps * sigma).clamp(-c, c);
                let eps = (&x - &x0) / sigma.max(1e-12);
                x = x0 + eps * sigmas[i + 1];
            }
            None => x += eps * (sigmas[i + 1] - sigma),
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests;
