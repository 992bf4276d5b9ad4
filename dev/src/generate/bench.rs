//! The generator benchmark: denoiser steps per second through the worker's sampler
//! (conditioning, guidance, the DDIM update, host-seeded noise) against a bare tch loop that
//! calls the same TorchScript denoiser on the same tensors, in the same run, rounds
//! interleaved; then whole photos per second in fast and quality mode.

use std::time::Instant;

use fleet_synth::backdrop::{render_scene, Backdrop};
use image::GrayImage;
use tch::{Kind, Tensor};

use fleet_engine::diffusion::{self, Conditioning, Guidance, SampleOptions, SamplerKind, Spacing};
use fleet_engine::generate::model::{run_module, ScriptDenoiser};
use fleet_engine::generate::{GenerateOptions, Generator};

use crate::error::Result;

/// One benchmark run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateBench {
    /// Device.
    pub device: String,
    /// Results per call (the batch, doubled by guidance).
    pub results: u32,
    /// Steps per call.
    pub steps: u32,
    /// Denoiser steps/s through the sampler, per round.
    pub sampler_steps_per_s: Vec<f64>,
    /// Denoiser steps/s of the bare loop, per round.
    pub bare_steps_per_s: Vec<f64>,
    /// Median of sampler / bare per round.
    pub ratio_median: f64,
    /// Photos per second, fast mode (DDIM, 8 steps, guidance 5), one result each.
    pub fast_images_per_s: f64,
    /// Photos per second, quality mode (Euler, 30 steps, guidance 7.5), one result each.
    pub quality_images_per_s: f64,
    /// Results per second in quality mode with `results` results per photo.
    pub quality_results_per_s_batched: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `rounds` interleaved rounds of `steps` steps with `results` results, then the
/// per-photo figures over `photos` photos of `side` x `side` pixels.
pub fn run(
    generator: &Generator,
    rounds: usize,
    steps: u32,
    results: u32,
    photos: usize,
    side: u32,
) -> Result<GenerateBench> {
    let _guard = tch::no_grad_guard();
    let device = generator.device();
    let (w, h) = generator.sample_size(side, side);
    let c = generator.channels();
    let n = i64::from(results);
    let concat = Tensor::cat(
        &[
            Tensor::zeros([n, c, i64::from(h), i64::from(w)], (Kind::Float, device)),
            Tensor::ones([n, 1, i64::from(h), i64::from(w)], (Kind::Float, device)),
        ],
        1,
    );
    let cond_embedding = generator.encode(Some("studio wood surface"), None)?.repeat([n, 1]);
    let uncond_embedding = generator.encode(Some(""), None)?.repeat([n, 1]);
    let cond = Conditioning { concat: Some(concat.shallow_clone()), embedding: cond_embedding.shallow_clone() };
    let uncond = Conditioning { concat: Some(concat.shallow_clone()), embedding: uncond_embedding.shallow_clone() };
    let forward = |inputs: &[Tensor]| run_module(generator.denoiser(), inputs);
    let denoiser = ScriptDenoiser { forward: &forward, prediction: generator.spec.prediction, channels: c };
    let timesteps = generator.schedule.timesteps(steps as usize, Spacing::Trailing);
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut sampler_rates = Vec::new();
    let mut bare_rates = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds + 1 {
        // The sampler, as the worker runs it.
        sync();
        let t0 = Instant::now();
        let _ = diffusion::sample(
            &denoiser,
            &generator.schedule,
            &cond,
            &SampleOptions {
                sampler: SamplerKind::Ddim { eta: 0.0 },
                steps: steps as usize,
                spacing: Spacing::Trailing,
                shape: vec![c, i64::from(h), i64::from(w)],
                seeds: (0..u64::from(results)).collect(),
                guidance: Some(Guidance { scale: 3.0, uncond: &uncond }),
                clip: generator.spec.clip_sample,
                device,
            },
        )?;
        sync();
        let sampler_s = t0.elapsed().as_secs_f64();
        // The bare loop: the same module on the same tensors, the guided pair in one batch.
        let both_concat = Tensor::cat(&[&concat, &concat], 0);
        let masked = both_concat.narrow(1, 0, c);
        let mask = both_concat.narrow(1, c, 1);
        let embedding = Tensor::cat(&[&uncond_embedding, &cond_embedding], 0);
        let mut x = Tensor::randn([n, c, i64::from(h), i64::from(w)], (Kind::Float, device));
        sync();
        let t0 = Instant::now();
        for &t in &timesteps {
            let ts = Tensor::full([2 * n], t as i64, (Kind::Int64, device));
            let out = generator.denoiser().forward_ts(&[
                Tensor::cat(&[&x, &x], 0),
                ts,
                masked.shallow_clone(),
                mask.shallow_clone(),
                embedding.shallow_clone(),
            ])?;
            let halves = out.chunk(2, 0);
            let pred = &halves[0] + (&halves[1] - &halves[0]) * 3.0;
            x -= pred * 0.01;
        }
        sync();
        let bare_s = t0.elapsed().as_secs_f64();
        if round > 0 {
            // Round 0 warms both paths up.
            let (a, b) = (f64::from(steps) / sampler_s, f64::from(steps) / bare_s);
            sampler_rates.push(a);
            bare_rates.push(b);
            ratios.push(a / b);
        }
    }
    let scene = |i: usize| render_scene(Backdrop::ALL[i % 6], side, side, 77 + i as u64, 3_000 + i as u64);
    let per_photo = |sampler: SamplerKind, steps: u32, guidance: f32, results: u32| -> Result<f64> {
        let mut total = 0.0;
        for i in 0..photos {
            let s = scene(i);
            let alpha: GrayImage = s.alpha;
            let opts = GenerateOptions {
                prompt: Some(s.prompt),
                negative_prompt: None,
                reference: None,
                seed: i as u64,
                steps,
                guidance,
                results,
                sampler,
                dilate_pct: 2.0,
            };
            let t0 = Instant::now();
            let _ = generator.backgrounds(&s.image, &alpha, &opts)?;
            sync();
            total += t0.elapsed().as_secs_f64();
        }
        Ok(photos as f64 / total)
    };
    let g = generator.spec.guidance;
    let fast = per_photo(SamplerKind::Ddim { eta: 0.0 }, 8, g.unwrap_or(5.0), 1)?;
    let quality = per_photo(SamplerKind::Euler, 30, g.unwrap_or(7.5), 1)?;
    let batched = per_photo(SamplerKind::Euler, 30, g.unwrap_or(7.5), results)? * f64::from(results);
    Ok(GenerateBench {
        device: format!("{device:?}").to_lowercase(),
        results,
        steps,
        ratio_median: median(ratios),
        sampler_steps_per_s: sampler_rates,
        bare_steps_per_s: bare_rates,
        fast_images_per_s: fast,
        quality_images_per_s: quality,
        quality_results_per_s_batched: batched,
    })
}

/// The figures as a Markdown table for BENCHMARKS.md.
pub fn markdown(b: &GenerateBench, sample: (u32, u32), photo_side: u32) -> String {
    let rates = |v: &[f64]| v.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ");
    format!(
        "| device | what | figure |\n| --- | --- | --- |\n\
         | {d} | sampler steps/s ({n} results x 2 for guidance, {w}x{h} samples, {s} steps), per round | {a} |\n\
         | {d} | bare tch loop steps/s, same tensors, per round | {b} |\n\
         | {d} | **sampler / bare, median round** | **{r:.1} %** |\n\
         | {d} | fast mode (DDIM 8 steps, the model's guidance), {p}x{p} photos/s, 1 result | {f:.2} |\n\
         | {d} | quality mode (Euler 30 steps, the model's guidance), {p}x{p} photos/s, 1 result | {q:.2} |\n\
         | {d} | quality mode, results/s with {n} results per photo in one batch | {qb:.2} |\n",
        d = b.device,
        n = b.results,
        w = sample.0,
        h = sample.1,
        s = b.steps,
        a = rates(&b.sampler_steps_per_s),
        b = rates(&b.bare_steps_per_s),
        r = 100.0 * b.ratio_median,
        p = photo_side,
        f = b.fast_images_per_s,
        q = b.quality_images_per_s,
        qb = b.quality_results_per_s_batched,
    )
}
