use tch::{Device, Kind, Tensor};

use super::*;
use crate::diffusion::schedule::NoiseSchedule;
use crate::EngineError;

/// The exact denoiser of data drawn from N(mu, s^2) per value, mu per sample taken from the
/// conditioning embedding (`[B]`): `E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) /
/// (a s^2 + 1 - a)`, or the matching v.
struct Gaussian {
    schedule: NoiseSchedule,
    s: f64,
    prediction: Prediction,
}

impl Denoiser for Gaussian {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor, EngineError> {
        let ts = Vec::<i64>::try_from(t).map_err(|e| EngineError::Forward { reason: e.to_string() })?;
        let a: Vec<f32> = ts.iter().map(|&t| self.schedule.alpha_bar(t as usize) as f32).collect();
        let a = Tensor::from_slice(&a).view([-1, 1, 1, 1]);
        let mu = cond.embedding.view([-1, 1, 1, 1]);
        let var = &a * (self.s * self.s) + (1.0f64 - &a);
        let eps = (1.0f64 - &a).sqrt() * (x_t - a.sqrt() * &mu) / var;
        Ok(match self.prediction {
            Prediction::Epsilon => eps,
            Prediction::V => {
                let x0 = (x_t - (1.0f64 - &a).sqrt() * &eps) / a.sqrt();
                a.sqrt() * &eps - (1.0f64 - &a).sqrt() * x0
            }
        })
    }
}

fn cond(mu: f32, n: usize) -> Conditioning {
    Conditioning { concat: None, embedding: Tensor::from_slice(&vec![mu; n]) }
}

fn options(sampler: SamplerKind, steps: usize, seeds: Vec<u64>) -> SampleOptions<'static> {
    SampleOptions {
        sampler,
        steps,
        spacing: Spacing::Trailing,
        shape: vec![1, 16, 16],
        seeds,
        guidance: None,
        clip: None,
        device: Device::Cpu,
    }
}

fn mean_std(x: &Tensor) -> (f64, f64) {
    (x.mean(Kind::Double).double_value(&[]), x.std(true).double_value(&[]))
}

const MU: f32 = 0.5;
const S: f64 = 0.6;

/// Where the probability-flow ODE takes each starting value for data N(MU, S^2): the flow
/// of a Gaussian is affine, `x0 = mu + s (x_T - sqrt(a_T) mu) / sqrt(a_T s^2 + 1 - a_T)`.
fn exact_flow(schedule: &NoiseSchedule, steps: usize, seeds: &[u64]) -> Tensor {
    let t = schedule.timesteps(steps, Spacing::Trailing)[0];
    let a = schedule.alpha_bar(t);
    let noise = Tensor::stack(&seeds.iter().map(|s| seeded_noise(&[1, 16, 16], *s)).collect::<Vec<_>>(), 0);
    (noise - a.sqrt() * f64::from(MU)) * (S / (a * S * S + 1.0 - a).sqrt()) + f64::from(MU)
}

#[test]
fn ddim_and_euler_follow_the_exact_flow_of_a_gaussian_at_first_order() {
    let seeds: Vec<u64> = (0..16).collect();
    let schedule = NoiseSchedule::stable_diffusion();
    let run = |prediction, sampler, steps| {
        let denoiser = Gaussian { schedule: schedule.clone(), s: S, prediction };
        sample(&denoiser, &schedule, &cond(MU, seeds.len()), &options(sampler, steps, seeds.clone())).unwrap()
    };
    let ddim = SamplerKind::Ddim { eta: 0.0 };
    for steps in [8, 50, 200, 1000] {
        let x = run(Prediction::Epsilon, ddim, steps);
        assert_eq!(x.size(), [16, 1, 16, 16]);
        let err = (&x - exact_flow(&schedule, steps, &seeds)).abs().max().double_value(&[]);
        eprintln!("DDIM {steps} steps: largest error against the exact flow {err:.4}");
        // First order: the error falls as 1 / steps (about 6-8 / steps here, at |z| up to 4).
        assert!(err * steps as f64 > 2.0 && err * (steps as f64) < 10.0, "{steps} steps: error {err:.4}");
        if steps == 1000 {
            assert!(err < 0.01, "{err}");
        }
        // A v-predicting denoiser gives the same samples, and so does Euler: deterministic DDIM
        // is Euler's method in sigma space.
        let v = run(Prediction::V, ddim, steps);
        assert!(x.allclose(&v, 1e-4, 1e-4, false), "{steps} steps: v-prediction differs");
        let euler = run(Prediction::Epsilon, SamplerKind::Euler, steps);
        assert!(x.allclose(&euler, 1e-4, 1e-4, false), "{steps} steps: Euler differs from DDIM");
    }
}

#[test]
fn stochastic_ddim_draws_from_the_gaussian() {
    let seeds: Vec<u64> = (0..64).collect();
    let denoiser = Gaussian { schedule: NoiseSchedule::stable_diffusion(), s: S, prediction: Prediction::Epsilon };
    let opts = options(SamplerKind::Ddim { eta: 1.0 }, 500, seeds.clone());
    let x = sample(&denoiser, &denoiser.schedule, &cond(MU, seeds.len()), &opts).unwrap();
    let (mean, std) = mean_std(&x);
    eprintln!("eta 1, 500 steps: mean {mean:.4} std {std:.4}");
    assert!((mean - f64::from(MU)).abs() < 0.03 && (std - S).abs() < 0.03, "mean {mean:.3} std {std:.3}");
}

#[test]
fn pure_noise_does_not_pass_for_the_data() {
    // The check above can fail: the noise the samplers start from is far from N(0.5, 0.36).
    let x = Tensor::stack(&(0..16).map(|s| seeded_noise(&[1, 16, 16], s)).collect::<Vec<_>>(), 0);
    let (mean, std) = mean_std(&x);
    assert!(mean.abs() < 0.05 && (std - 1.0).abs() < 0.05, "standard normal: {mean} {std}");
}

#[test]
fn the_same_seed_gives_the_same_result_alone_or_in_a_batch() {
    let denoiser = Gaussian { schedule: NoiseSchedule::stable_diffusion(), s: S, prediction: Prediction::Epsilon };
    for sampler in [SamplerKind::Ddim { eta: 1.0 }, SamplerKind::Euler] {
        let batch = sample(&denoiser, &denoiser.schedule, &cond(MU, 3), &options(sampler, 10, vec![7, 8, 9])).unwrap();
        let alone = sample(&denoiser, &denoiser.schedule, &cond(MU, 1), &options(sampler, 10, vec![8])).unwrap();
        let again = sample(&denoiser, &denoiser.schedule, &cond(MU, 1), &options(sampler, 10, vec![8])).unwrap();
        assert!(alone.equal(&again), "{sampler:?}: same seed, same output");
        assert!(batch.get(1).unsqueeze(0).allclose(&alone, 1e-6, 1e-6, false), "{sampler:?}: independent of the batch");
        assert!(!batch.get(0).equal(&batch.get(1)), "{sampler:?}: other seeds, other results");
    }
}

#[test]
fn guidance_extrapolates_from_the_unconditional_prediction() {
    // Unconditional data N(0, s^2), conditional N(0.3, s^2): guided by g the sampler follows
    // the flow of N(g 0.3, s^2); g = 1 is the conditional model alone, in one pass.
    let denoiser = Gaussian { schedule: NoiseSchedule::stable_diffusion(), s: S, prediction: Prediction::Epsilon };
    let seeds: Vec<u64> = (100..116).collect();
    let (c, u) = (cond(0.3, seeds.len()), cond(0.0, seeds.len()));
    let steps = 1000;
    let t = denoiser.schedule.timesteps(steps, Spacing::Trailing)[0];
    let a = denoiser.schedule.alpha_bar(t);
    for scale in [1.0, 2.5] {
        let mut opts = options(SamplerKind::Ddim { eta: 0.0 }, steps, seeds.clone());
        opts.guidance = Some(Guidance { scale, uncond: &u });
        let x = sample(&denoiser, &denoiser.schedule, &c, &opts).unwrap();
        let mu = 0.3 * scale;
        let noise = Tensor::stack(&seeds.iter().map(|s| seeded_noise(&[1, 16, 16], *s)).collect::<Vec<_>>(), 0);
        let exact = (noise - a.sqrt() * mu) * (S / (a * S * S + 1.0 - a).sqrt()) + mu;
        let err = (&x - &exact).abs().max().double_value(&[]);
        assert!(err < 0.01, "g {scale}: largest error {err:.4}");
    }
}

#[test]
fn a_call_without_results_or_steps_is_refused_for_good() {
    let denoiser = Gaussian { schedule: NoiseSchedule::stable_diffusion(), s: S, prediction: Prediction::Epsilon };
    for opts in [options(SamplerKind::Euler, 10, vec![]), options(SamplerKind::Euler, 0, vec![1])] {
        let err = sample(&denoiser, &denoiser.schedule, &cond(MU, 1), &opts).unwrap_err();
        assert!(matches!(err, EngineError::InvalidRequest { .. }) && !err.is_retryable(), "{err}");
    }
}
