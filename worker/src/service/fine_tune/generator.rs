//! A `fine_tune` with `target: background_generator`: trains a diffusion inpainting
//! generator on a tenant's photos and prompts, with masks made by a matting model.
//!
//! ```text
//! images + prompts --> matting model (mask_model): alpha, embedding per image
//!   --> leak filter (background masks only): hesitant mattes, no product, no background
//!   --> masks: background (product dilated by dilate_pct) or scribbles (fresh every step)
//!   --> aspect-ratio buckets at the pixel budget, seeded validation split
//!   --> phase 1 (every kept sample) --> phase 2 (matte confidence >= quality_threshold)
//!       each step: t ~ U[0, T), eps seeded by (seed, step); x_t = sqrt(a) x0 + sqrt(1-a) eps;
//!       prompt dropped for 10 % of the batch (guidance needs the unconditional answer);
//!       loss = MSE(denoiser(x_t, t, masked, mask, cond), eps or v); AdamW, warm-up + schedule
//!   --> held-out denoising error after each phase --> generator folder like the base's
//! ```
//! Checkpoints, resume, yield and progress are the matting fine-tune's ([`super`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fleet_common::finetune::{FineTuneSpec, GeneratorTraining, Hyper, MaskSource, Refusal, Sample};
use fleet_common::keys::{results_prefix, TenantId};
use fleet_common::manifest::generator::{ConditioningSpec, Prediction, Space};
use fleet_common::manifest::{ModelManifest, ModelRef, Task};
use fleet_common::protocol::{StepRecord, TaskMessage};
use fleet_common::registry;
use fleet_common::store::{ObjectStore, StoreError};
use fleet_common::DeviceSpec;
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::resize::{resize_gray, resize_rgb};
use futures::StreamExt;
use image::{GrayImage, RgbImage};
use tch::{Device, IValue, Kind, Tensor};
use tokio::sync::mpsc;

use super::{
    download_checkpoint, embed, finished_without_model, infer_alpha, pick_batch, split, summarize, AttemptError,
    CheckpointState, Ended, Event, FineTuneContext, Phase2, Steps, TrainOutcome, Trained, SAMPLE_FETCHES,
};
use crate::diffusion::sampler::seeded_noise;
use crate::diffusion::NoiseSchedule;
use crate::generate::masks::{background_mask, dilate_px, matte_confidence, scribble_mask};
use crate::generate::model::{run_module, sample_size, to_signed, tokenize};
use crate::train;

/// Share of each batch trained without its prompt, so guidance has an unconditional answer.
pub const PROMPT_DROPOUT: f64 = 0.1;
/// Timesteps the held-out denoising error is measured at.
const VALIDATION_TIMESTEPS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];

/// One photo to train on.
#[derive(Clone)]
pub struct GenSample {
    /// Line in the data set.
    pub line: usize,
    /// The data set's entry.
    pub sample: Sample,
    /// The photo.
    pub rgb: RgbImage,
}

/// The generator training, on its own thread; usable without the fleet (the reference
/// generator and the experiments run it in-process).
pub struct GeneratorJob {
    /// The photos.
    pub samples: Vec<GenSample>,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Mask settings.
    pub settings: GeneratorTraining,
    /// Folder of the base generator.
    pub base_dir: PathBuf,
    /// Folder of the matting model that makes the masks.
    pub mask_dir: PathBuf,
    /// Device.
    pub device: DeviceSpec,
    /// Scratch folder (checkpoints, the result).
    pub work: PathBuf,
    /// Checkpoint to resume from (its files in `work/resume/`).
    pub resume: Option<CheckpointState>,
    /// Name and version of the result.
    pub output: ModelRef,
    /// The base generator's reference.
    pub parent: ModelRef,
    /// Set when a checkpoint could not be saved.
    pub stop: Arc<AtomicBool>,
    /// Set when the device must be given back.
    pub yield_now: Arc<AtomicBool>,
}

/// A photo ready to train on, at its bucket's size.
struct Prepared {
    index: usize,
    /// `[3,h,w]` in [-1, 1].
    pixels: Tensor,
    /// `[1,h,w]`, 1 = to generate (background masks).
    mask: Tensor,
    /// `[D...]` conditioning of its prompt.
    cond: Tensor,
}

/// What the matting model says about every photo.
struct Matted {
    /// Alpha at the model's output size.
    alpha: GrayImage,
    /// Embedding of the photo.
    embedding: Vec<f32>,
}

impl GeneratorJob {
    /// Trains; the result folder is a generator like the base, with the trained denoiser.
    pub fn train(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        let started = Instant::now();
        let device = crate::engine::runtime::resolve_device(self.device).map_err(|e| e.to_string())?;
        let manifest = read_manifest(&self.base_dir)?;
        let mut spec = manifest.generator.clone().ok_or("the base model is not a background generator")?;
        let h = &self.hyper;
        // The job's pixel budget is the trained generator's sample size from now on (a GPU
        // fine-tune of a CPU-sized generator trains, and then samples, larger).
        spec.pixel_budget = h.pixel_budget;
        let total = h.total_steps();
        let schedule = NoiseSchedule::of(&spec.schedule);

        // Mattes and embeddings of every photo, then the leak filter and the split.
        let matting = crate::engine::model::LoadedModel::load(&self.mask_dir, device).map_err(|e| e.to_string())?;
        let mut matted = Vec::with_capacity(self.samples.len());
        for s in &self.samples {
            let (alpha, (w, h)) = infer_alpha(&matting, &s.rgb)?;
            let alpha = GrayImage::from_raw(w, h, alpha).ok_or("alpha size")?;
            matted.push(Matted { alpha, embedding: embed(&matting, &s.rgb)? });
        }
        drop(matting);
        let filter = self.settings.masks == MaskSource::Background;
        let mut leaked = Vec::new();
        let mut usable = Vec::new();
        for (i, m) in matted.iter().enumerate() {
            match matte_confidence(&m.alpha).leak(self.settings.leak_threshold) {
                Some(reason) if filter => leaked.push(serde_json::json!({
                    "line": self.samples[i].line, "image": self.samples[i].sample.image, "reason": reason})),
                _ => usable.push(i),
            }
        }
        if usable.len() < 2 {
            return Err(format!("{} samples pass the leak filter; a fine-tune needs at least 2", usable.len()));
        }
        let (val_pos, train_pos) = split(usable.len(), h);
        let val_idx: Vec<usize> = val_pos.iter().map(|&p| usable[p]).collect();
        let train_idx: Vec<usize> = train_pos.iter().map(|&p| usable[p]).collect();

        // Phase 2 keeps the photos whose matte the model is surest of.
        let confidence: Vec<f64> = matted.iter().map(|m| matte_confidence(&m.alpha).score()).collect();
        let chosen = Phase2 {
            kept: train_idx.iter().copied().filter(|&i| confidence[i] >= h.quality_threshold).collect(),
            dropped: train_idx
                .iter()
                .filter(|&&i| confidence[i] < h.quality_threshold)
                .map(|&i| {
                    serde_json::json!({"line": self.samples[i].line, "image": self.samples[i].sample.image,
                        "score": confidence[i], "reason": format!("matte confidence {:.2} < {:.2}", confidence[i], h.quality_threshold)})
                })
                .collect(),
            scored: train_idx.len(),
        };

        // Conditioning of every prompt through the (frozen) encoder.
        let encoder = Conditioner::load(&self.base_dir, &spec.conditioning, device)?;
        let uncond = encoder.encode("")?;
        let vae = Vae::load(&self.base_dir, &spec.space, device)?;
        let buckets = train::buckets::buckets_of(spec.pixel_budget, crate::generate::model::sample_multiple(&spec));
        let prepare = |i: usize| -> Result<(usize, Prepared), String> {
            let s = &self.samples[i];
            let (w, hgt) = sample_size(&spec, s.rgb.width(), s.rgb.height());
            let alpha = resize_gray(&matted[i].alpha, w, hgt);
            let mask = background_mask(&alpha, dilate_px(self.settings.dilate_pct, w, hgt));
            let mask = Tensor::from_slice(&mask).view([1, hgt as i64, w as i64]);
            let cond = encoder.encode(s.sample.prompt.as_deref().unwrap_or(""))?.squeeze_dim(0).to_device(Device::Cpu);
            let pixels = to_signed(&resize_rgb(&s.rgb, w, hgt));
            Ok((buckets.iter().position(|b| *b == (w, hgt)).unwrap_or(0), Prepared { index: i, pixels, mask, cond }))
        };
        let prepared: Vec<(usize, Prepared)> = train_idx.iter().map(|&i| prepare(i)).collect::<Result<_, _>>()?;
        let validation: Vec<(usize, Prepared)> = val_idx.iter().map(|&i| prepare(i)).collect::<Result<_, _>>()?;

        // The trainable denoiser, from the checkpoint when resuming.
        let (_vs, mut module, mut optimizer) =
            super::load_trainable(&manifest, &self.base_dir, &self.work, self.resume.is_some(), device)?;
        let (mut phase1_validation, start) = match &self.resume {
            Some(s) => (s.phase1_validation, s.step),
            None => (None, 0),
        };
        let objective =
            Objective { schedule: &schedule, prediction: spec.prediction, vae: &vae, uncond: &uncond, device };
        module.set_eval();
        let base_validation = objective.validate(&module, &validation)?;
        module.set_train();

        let all_train: Vec<usize> = (0..prepared.len()).collect();
        let phase2_set: Vec<usize> =
            (0..prepared.len()).filter(|&k| chosen.kept.contains(&prepared[k].1.index)).collect();
        let mut steps = Steps::new(self.resume.as_ref(), total, started, events);
        let train_started = Instant::now();
        let state = |step: u32, history: &[StepRecord], v: Option<(f64, f64)>| CheckpointState {
            step,
            history: history.to_vec(),
            phase1_validation: v,
            phase2: Some(chosen.clone()),
            seed: h.seed,
        };
        for step in start..total {
            if self.stop.load(Ordering::Relaxed) {
                return Err("stopped: a checkpoint could not be saved under the lease".into());
            }
            let phase = if step < h.steps_phase1 { 1u8 } else { 2u8 };
            if self.yield_now.load(Ordering::Relaxed) {
                steps.report(step, phase, None)?;
                if step > start {
                    super::save_checkpoint(
                        &self.work,
                        &module,
                        &optimizer,
                        &state(step, &steps.history, phase1_validation),
                        events,
                    )?;
                }
                return Ok(Trained::Yielded(step));
            }
            if step == h.steps_phase1 && phase1_validation.is_none() {
                module.set_eval();
                let v = objective.validate(&module, &validation)?;
                module.set_train();
                phase1_validation = Some(v);
                steps.report(step, 1, Some((1, v.0, v.1)))?;
            }
            let (step_in_phase, phase_steps) =
                if phase == 1 { (step, h.steps_phase1) } else { (step - h.steps_phase1, h.steps_phase2) };
            let set = if phase == 1 || phase2_set.is_empty() { &all_train } else { &phase2_set };
            let lr = train::schedule::learning_rate(h, phase_steps, step_in_phase);
            let batch = pick_batch(&prepared, set, h.batch_size as usize, h.seed, step);
            let masks = self.settings.masks;
            let items: Vec<&Prepared> = batch.iter().map(|&k| &prepared[k].1).collect();
            optimizer.zero_grad();
            let loss = objective.loss(&module, &items, masks, h.seed, step)?;
            loss.backward();
            optimizer.step(lr, h.weight_decay);
            steps.record(step, phase, loss.double_value(&[]), lr)?;
            let done = step + 1;
            if done % h.checkpoint_every == 0 && done < total {
                super::save_checkpoint(
                    &self.work,
                    &module,
                    &optimizer,
                    &state(done, &steps.history, phase1_validation),
                    events,
                )?;
            }
            steps.report_due(done, phase)?;
        }
        let loop_seconds = train_started.elapsed().as_secs_f64();
        module.set_eval();
        let final_validation = objective.validate(&module, &validation)?;
        if h.steps_phase2 == 0 {
            phase1_validation = Some(final_validation);
        }
        steps.report(
            total,
            if h.steps_phase2 > 0 { 2 } else { 1 },
            Some((2, final_validation.0, final_validation.1)),
        )?;
        let history = steps.history;

        // The generator folder: the base's files, the trained denoiser, manifest, embeddings, curve.
        let dir = self.work.join("model");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for file in spec.files() {
            std::fs::copy(self.base_dir.join(&file), dir.join(&file)).map_err(|e| format!("{file}: {e}"))?;
        }
        module.save(dir.join(&manifest.file)).map_err(|e| e.to_string())?;
        let validation_json = |v: (f64, f64)| serde_json::json!({"denoise_mse": v.0, "background_mse": v.1});
        let phases = serde_json::json!([
            {"phase": 1, "steps": h.steps_phase1, "samples": train_idx.len(), "validation": phase1_validation.map(validation_json)},
            {"phase": 2, "steps": h.steps_phase2, "samples": chosen.kept.len(),
             "validation": (h.steps_phase2 > 0).then(|| validation_json(final_validation))},
        ]);
        let mut out = manifest.clone();
        out.generator = Some(spec.clone());
        out.name = self.output.name.clone();
        out.version = self.output.version.clone();
        out.trainable_file = None;
        out.metrics = None;
        out.training = serde_json::json!({
            "parent": self.parent.to_string(),
            "target": "background_generator",
            "masks": self.settings.masks,
            "mask_model": self.settings.mask_model,
            // Generated results are embedded by this model too, so outputs trace back to
            // training-embeddings.jsonl in one space.
            "embedding_model": self.settings.mask_model,
            "dilate_pct": self.settings.dilate_pct,
            "leak_threshold": self.settings.leak_threshold,
            "samples": {"train": train_idx.len(), "validation": val_idx.len(), "phase2": chosen.kept.len(), "leaked": leaked.len()},
            "hyper": h,
            "phases": phases,
            "base_validation": validation_json(base_validation),
        });
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&out).expect("manifest serialises"))
            .map_err(|e| e.to_string())?;
        let mut lines = String::new();
        for &i in &train_idx {
            let s = &self.samples[i];
            lines.push_str(
                &serde_json::json!({"image": s.sample.image, "prompt": s.sample.prompt, "contributor": s.sample.contributor,
                    "licence": s.sample.licence, "embedding": matted[i].embedding})
                .to_string(),
            );
            lines.push('\n');
        }
        super::write_provenance(&dir, &lines, &history, h)?;
        let report = serde_json::json!({
            "samples": self.samples.len(),
            "filter": {
                "leak": {"threshold": self.settings.leak_threshold, "applied": filter, "dropped": leaked},
                "threshold": h.quality_threshold,
                "scored_by": format!("matte confidence of {}", self.settings.mask_model),
                "scored": chosen.scored,
                "kept": chosen.kept.iter().map(|&i| self.samples[i].line).collect::<Vec<_>>(),
                "dropped": chosen.dropped,
            },
            "validation_lines": val_idx.iter().map(|&i| self.samples[i].line).collect::<Vec<_>>(),
            "phases": phases,
            "base_validation": validation_json(base_validation),
            "resumed_from": self.resume.as_ref().map(|s| s.step),
            "steps": total,
            "train_seconds": train_started.elapsed().as_secs_f64(),
            "loop_seconds": loop_seconds,
        });
        Ok(Trained::Done(TrainOutcome { dir, report }))
    }
}

fn read_manifest(dir: &Path) -> Result<ModelManifest, String> {
    let bytes = std::fs::read(dir.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    let manifest = ModelManifest::from_json(&bytes).map_err(|e| e.to_string())?;
    if manifest.task != Task::BackgroundGenerator {
        return Err(format!("{} is not a background generator", manifest.model_ref()));
    }
    Ok(manifest)
}

/// The frozen prompt (or reference image) encoder of a generator.
struct Conditioner {
    module: tch::CModule,
    tokenizer: Option<(tokenizers::Tokenizer, usize, u32)>,
    device: Device,
}

impl Conditioner {
    fn load(dir: &Path, spec: &ConditioningSpec, device: Device) -> Result<Self, String> {
        let load = |f: &str| tch::CModule::load_on_device(dir.join(f), device).map_err(|e| format!("{f}: {e}"));
        match spec {
            ConditioningSpec::Text { encoder, tokenizer, max_tokens, pad_id, .. } => {
                let tok =
                    tokenizers::Tokenizer::from_file(dir.join(tokenizer)).map_err(|e| format!("{tokenizer}: {e}"))?;
                Ok(Conditioner {
                    module: load(encoder)?,
                    tokenizer: Some((tok, *max_tokens as usize, *pad_id)),
                    device,
                })
            }
            ConditioningSpec::Image { .. } => {
                Err("fine-tuning an image-conditioned generator is not supported: its data sets carry prompts".into())
            }
        }
    }

    /// `[1, ...]` conditioning of `prompt`.
    fn encode(&self, prompt: &str) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let (tok, max, pad) = self.tokenizer.as_ref().expect("text conditioning");
        let ids = tokenize(tok, prompt, *max, *pad).map_err(|e| e.to_string())?;
        run_module(&self.module, &[Tensor::from_slice(&ids).view([1, -1]).to_device(self.device)])
            .map_err(|e| e.to_string())
    }
}

/// The VAE of a latent generator (none for pixel ones), frozen.
struct Vae {
    encoder: Option<(tch::CModule, i64)>,
}

impl Vae {
    fn load(dir: &Path, space: &Space, device: Device) -> Result<Self, String> {
        Ok(Vae {
            encoder: match space {
                Space::Pixel => None,
                Space::Latent { encoder, downsample, .. } => Some((
                    tch::CModule::load_on_device(dir.join(encoder), device).map_err(|e| format!("{encoder}: {e}"))?,
                    i64::from(*downsample),
                )),
            },
        })
    }

    /// Pixels and masks in the denoiser's space.
    fn encode(&self, pixels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor), String> {
        match &self.encoder {
            None => Ok((pixels.shallow_clone(), mask.shallow_clone())),
            Some((enc, f)) => {
                let _guard = tch::no_grad_guard();
                let latents = run_module(enc, &[pixels.shallow_clone()]).map_err(|e| e.to_string())?;
                Ok((latents, mask.max_pool2d([*f, *f], [*f, *f], [0, 0], [1, 1], false)))
            }
        }
    }
}

/// The denoising objective of one batch, and the held-out error.
struct Objective<'a> {
    schedule: &'a NoiseSchedule,
    prediction: Prediction,
    vae: &'a Vae,
    uncond: &'a Tensor,
    device: Device,
}

/// splitmix64 of `x`: a seeded draw per (seed, step, item).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Objective<'_> {
    /// Mean squared error of the prediction, over every pixel, for `items` noised at seeded
    /// timesteps: a function of (seed, step) alone, so a resumed run repeats it.
    fn loss(
        &self,
        module: &tch::TrainableCModule,
        items: &[&Prepared],
        masks: MaskSource,
        seed: u64,
        step: u32,
    ) -> Result<Tensor, String> {
        let draw = |item: usize, salt: u64| {
            mix(seed ^ mix(u64::from(step) << 8 | salt) ^ (item as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
        };
        let flip = draw(0, 7) & 1 == 1;
        let stack = |f: &dyn Fn(usize, &Prepared) -> Tensor| {
            Tensor::stack(&items.iter().enumerate().map(|(k, p)| f(k, p)).collect::<Vec<_>>(), 0).to_device(self.device)
        };
        let pixels = stack(&|_, p| p.pixels.shallow_clone());
        let mask = stack(&|k, p| match masks {
            MaskSource::Background => p.mask.shallow_clone(),
            MaskSource::Scribble => {
                let (h, w) = (p.mask.size()[1], p.mask.size()[2]);
                Tensor::from_slice(&scribble_mask(w as u32, h as u32, draw(k, 3))).view([1, h, w])
            }
        });
        let (pixels, mask) = if flip { (pixels.flip([3]), mask.flip([3])) } else { (pixels, mask) };
        let cond = stack(&|k, p| {
            let dropped = (draw(k, 5) % 10_000) as f64 / 10_000.0 < PROMPT_DROPOUT;
            if dropped {
                self.uncond.squeeze_dim(0).to_device(Device::Cpu)
            } else {
                p.cond.shallow_clone()
            }
        });
        let t: Vec<i64> = (0..items.len()).map(|k| (draw(k, 1) % self.schedule.len() as u64) as i64).collect();
        let noise_seed = draw(0, 11);
        self.denoising_error(module, &pixels, &mask, &cond, &t, noise_seed, false).map(|(all, _)| all)
    }

    /// `(error over every pixel, error over the region to generate)` of one noised batch.
    #[allow(clippy::too_many_arguments)]
    fn denoising_error(
        &self,
        module: &tch::TrainableCModule,
        pixels: &Tensor,
        mask: &Tensor,
        cond: &Tensor,
        t: &[i64],
        noise_seed: u64,
        with_region: bool,
    ) -> Result<(Tensor, Option<Tensor>), String> {
        let masked = pixels * (1.0 - mask);
        let (x0, _) = self.vae.encode(pixels, mask)?;
        let (masked, mask) = self.vae.encode(&masked, mask)?;
        let noise = seeded_noise(&x0.size(), noise_seed).to_device(self.device);
        let a: Vec<f32> = t.iter().map(|&s| self.schedule.alpha_bar(s as usize) as f32).collect();
        let a = Tensor::from_slice(&a).view([-1, 1, 1, 1]).to_device(self.device);
        let keep = (-&a + 1.0).sqrt();
        let x_t = a.sqrt() * &x0 + &keep * &noise;
        let target = match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::V => a.sqrt() * &noise - &keep * &x0,
        };
        let ts = Tensor::from_slice(t).to_device(self.device);
        let args = [x_t, ts, masked, mask.shallow_clone(), cond.shallow_clone()].map(IValue::Tensor);
        let pred = match module.forward_is(&args).map_err(|e| format!("denoiser forward: {e}"))? {
            IValue::Tensor(p) => p,
            _ => return Err("the denoiser must return one tensor".into()),
        };
        let sq = (pred - target).square();
        let all = sq.mean(Kind::Float);
        let region = with_region.then(|| {
            let m = mask.expand_as(&sq);
            (&sq * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
        });
        Ok((all, region))
    }

    /// Held-out denoising error (all pixels, background region) at fixed timesteps and
    /// noise, with the prompts: comparable between the base and each phase.
    fn validate(&self, module: &tch::TrainableCModule, validation: &[(usize, Prepared)]) -> Result<(f64, f64), String> {
        let _guard = tch::no_grad_guard();
        let (mut all, mut region, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for (k, (_, p)) in validation.iter().enumerate() {
            for (j, frac) in VALIDATION_TIMESTEPS.iter().enumerate() {
                let t = ((self.schedule.len() - 1) as f64 * frac) as i64;
                let (a, r) = self.denoising_error(
                    module,
                    &p.pixels.unsqueeze(0).to_device(self.device),
                    &p.mask.unsqueeze(0).to_device(self.device),
                    &p.cond.unsqueeze(0).to_device(self.device),
                    &[t],
                    (k * VALIDATION_TIMESTEPS.len() + j) as u64,
                    true,
                )?;
                all += a.double_value(&[]);
                region += r.expect("asked for").double_value(&[]);
                n += 1.0;
            }
        }
        Ok((all / n.max(1.0), region / n.max(1.0)))
    }
}

/// Runs a generator fine-tune task: photos from S3, the base generator and the mask model
/// from the registry, training on a thread, the result registered like a matting model.
pub(super) async fn run(
    ctx: &FineTuneContext<'_>,
    task: &TaskMessage,
    spec: &FineTuneSpec,
    listed: Vec<(usize, Sample)>,
    mut refusals: Vec<Refusal>,
    digest: String,
) -> Result<Ended, AttemptError> {
    let started = Instant::now();
    let fail = |reason: String| AttemptError(reason);
    let tenant = TenantId::new(&task.tenant).map_err(|e| fail(e.to_string()))?;
    let results = results_prefix(&tenant, &task.job);
    let checkpoint_prefix = format!("{tenant}/training/{}/checkpoint/", task.job);
    let settings = spec.generator.clone().ok_or_else(|| fail("generator settings are missing".into()))?;
    let mut loaded = Vec::new();
    let mut fetches = futures::stream::iter(listed)
        .map(|(line, sample)| async move { (line, load_photo(ctx, &sample.image).await, sample) })
        .buffered(SAMPLE_FETCHES);
    while let Some((line, fetched, sample)) = fetches.next().await {
        match fetched? {
            Ok(rgb) => loaded.push(GenSample { line, sample, rgb }),
            Err((code, reason)) => refusals.push(Refusal { line, image: sample.image.clone(), code, reason }),
        }
    }
    drop(fetches);
    if loaded.len() < 3 {
        let reason = format!("{} usable samples; a generator fine-tune needs at least 3", loaded.len());
        return finished_without_model(ctx, &results, task, spec, &reason).await.map(|mut r| {
            r.failures[0].reason = format!("{reason}; refused: {}", summarize(&refusals));
            Ended::Trained(r)
        });
    }
    let base_ref: ModelRef = task.model.parse().map_err(|e| fail(format!("base model: {e}")))?;
    let mask_ref: ModelRef = settings.mask_model.parse().map_err(|e| fail(format!("mask model: {e}")))?;
    let base_dir = fetch_model(ctx, &tenant, &base_ref).await?;
    let mask_dir = fetch_model(ctx, &tenant, &mask_ref).await?;
    let work = tempfile::tempdir().map_err(|e| fail(format!("work folder: {e}")))?;
    let resume = download_checkpoint(ctx.s3, &checkpoint_prefix, work.path()).await?;
    if let Some(state) = &resume {
        tracing::info!(step = state.step, "resuming the generator fine-tune from its last checkpoint");
    }
    let job = GeneratorJob {
        samples: loaded,
        hyper: spec.hyper.clone(),
        settings,
        base_dir,
        mask_dir,
        device: ctx.device,
        work: work.path().to_path_buf(),
        resume,
        output: spec.output.model_ref(),
        parent: base_ref.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        yield_now: ctx.yield_now.clone(),
    };
    let stop = job.stop.clone();
    let (tx, rx) = mpsc::channel::<Event>(4);
    let trainer = tokio::task::spawn_blocking(move || job.train(&tx));
    let checkpoint_s = super::relay(ctx, &checkpoint_prefix, rx, &stop).await;
    let outcome = match trainer.await.map_err(|e| fail(format!("training thread: {e}")))?.map_err(fail)? {
        Trained::Done(outcome) => outcome,
        Trained::Yielded(step) => return Ok(Ended::Yielded { step }),
    };
    let model_prefix = super::register(ctx, &tenant, spec, &outcome.dir).await?;
    let run = super::Run { base: &base_ref, digest: &digest, refusals: &refusals, checkpoint_s, started };
    super::write_report(ctx, &results, spec, &model_prefix, &outcome, &run).await.map(Ended::Trained)
}

/// The folder of `model` (the tenant's or a shared one) in the host's model cache.
async fn fetch_model(ctx: &FineTuneContext<'_>, tenant: &TenantId, model: &ModelRef) -> Result<PathBuf, AttemptError> {
    let (scope, _) = registry::locate(ctx.s3, tenant, model).await.map_err(|e| AttemptError(e.to_string()))?;
    let (dir, _) =
        registry::fetch_in(ctx.s3, &scope, model, ctx.model_cache).await.map_err(|e| AttemptError(e.to_string()))?;
    Ok(dir)
}

/// Reads and decodes one photo; a problem with the photo is a refusal, a store problem
/// fails the attempt.
async fn load_photo(ctx: &FineTuneContext<'_>, key: &str) -> Result<Result<RgbImage, (String, String)>, AttemptError> {
    match ctx.s3.get(key).await {
        Ok(bytes) => Ok(decode(&bytes, &DecodeLimits::default())
            .map(|d| d.rgb)
            .map_err(|e| (e.code().to_string(), format!("image {key}: {e}")))),
        Err(StoreError::NotFound { .. }) => Ok(Err(("not_found".into(), format!("no object at {key}")))),
        Err(e) if e.is_retryable() => Err(AttemptError(e.to_string())),
        Err(e) => Ok(Err(("store_error".into(), e.to_string()))),
    }
}
