//! A `fine_tune` with `target: background_generator`: trains a diffusion inpainting
//! generator on a tenant's photos and prompts, with masks made by a matting model.
//!
//! ```text
//! images + prompts --> matting model (mask_model): alpha, embedding per image
//!   --> leak filter (background masks only): hesitant mattes, no product, no background
//!   --> masks: background (product dilated by dilate_pct) or scribbles (fresh every step)
//!   --> aspect-ratio buckets at the pixel budget, seeded validation split
//!   --> corruption_ratio of the training photos seen only through a fixed pixel mask
//!       (Ambient Diffusion; see `components`)
//!   --> phase 1 (every kept sample) --> phase 2 (matte confidence >= quality_threshold)
//!       each step: t ~ U[0, T), eps seeded by (seed, step); x_t = sqrt(a) x0 + sqrt(1-a) eps;
//!       prompt dropped for 10 % of the batch (guidance needs the unconditional answer);
//!       loss = MSE(denoiser(x_t, t, masked, mask, cond), eps or v), on a corrupted photo's
//!       observed pixels only; AdamW, warm-up + schedule
//!   --> held-out denoising error after each phase --> generator folder like the base's
//! ```
//! Checkpoints, resume, yield and progress are the matting fine-tune's ([`crate::checkpoint`],
//! [`crate::progress`]).

mod components;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fleet_imaging::resize::{resize_gray, resize_rgb};
use fleet_protocol::fine_tune::{GeneratorTraining, Hyper, MaskSource, Sample};
use fleet_protocol::manifest::generator::{ConditioningSpec, Prediction, Space};
use fleet_protocol::manifest::{ModelManifest, ModelRef, Task};
use fleet_protocol::message::StepRecord;
use fleet_protocol::DeviceSpec;
use image::{GrayImage, RgbImage};
use tch::{Device, IValue, Kind, Tensor};
use tokio::sync::mpsc;

use fleet_engine::diffusion::sampler::seeded_noise;
use fleet_engine::diffusion::NoiseSchedule;
use fleet_engine::generate::masks::{background_mask, dilate_px, matte_confidence, scribble_mask};
use fleet_engine::generate::model::{run_module, sample_size, to_signed, tokenize};

use crate::checkpoint::{CheckpointState, Phase2};
use crate::data::{pick_batch, split};
use crate::matting::{embed, infer_alpha};
use crate::progress::{Event, Steps, TrainOutcome, Trained};
use components::{observed_mask, Conditioner, Objective, Vae};

/// Share of each batch trained without its prompt, so guidance has an unconditional answer.
pub const PROMPT_DROPOUT: f64 = 0.1;

/// Timesteps the held-out denoising error is measured at.
pub const VALIDATION_TIMESTEPS: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.9];

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
pub struct Prepared {
    /// Index in the job's samples.
    pub index: usize,
    /// `[3,h,w]` in [-1, 1]; 0 where `observed` drops the pixel.
    pub pixels: Tensor,
    /// `[1,h,w]`, 1 = to generate (background masks).
    pub mask: Tensor,
    /// `[D...]` conditioning of its prompt.
    pub cond: Tensor,
    /// `[1,h,w]`, 1 = a pixel there is: the Ambient Diffusion mask A of a corrupted photo,
    /// `None` for the others.
    pub observed: Option<Tensor>,
}

/// What the matting model says about every photo.
pub struct Matted {
    /// Alpha at the model's output size.
    pub alpha: GrayImage,
    /// Embedding of the photo.
    pub embedding: Vec<f32>,
}

impl GeneratorJob {
    /// Trains; the result folder is a generator like the base, with the trained denoiser.
    pub fn train(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        let started = Instant::now();
        let device = fleet_engine::runtime::resolve_device(self.device).map_err(|e| e.to_string())?;
        let manifest = read_manifest(&self.base_dir)?;
        let mut spec = manifest.generator.clone().ok_or("the base model is not a background generator")?;
        let h = &self.hyper;
        // The job's pixel budget is the trained generator's sample size from now on (a GPU
        // fine-tune of a CPU-sized generator trains, and then samples, larger).
        spec.pixel_budget = h.pixel_budget;
        let total = h.total_steps();
        let schedule = NoiseSchedule::of(&spec.schedule);
        if h.corruption_ratio > 0.0 && matches!(spec.space, Space::Latent { .. }) {
            return Err("corruption_ratio drops pixels, which a latent generator's denoiser never sees: \
                        set it to 0 for this base"
                .into());
        }

        // Mattes and embeddings of every photo, then the leak filter and the split.
        let matting = fleet_engine::model::LoadedModel::load(&self.mask_dir, device).map_err(|e| e.to_string())?;
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
        let buckets =
            fleet_engine::buckets::buckets_of(spec.pixel_budget, fleet_engine::generate::model::sample_multiple(&spec));
        // Training photos may be corrupted (Ambient Diffusion); held-out ones never are.
        let prepare = |i: usize, corruptible: bool| -> Result<(usize, Prepared), String> {
            let s = &self.samples[i];
            let (w, hgt) = sample_size(&spec, s.rgb.width(), s.rgb.height());
            let alpha = resize_gray(&matted[i].alpha, w, hgt);
            let mask = background_mask(&alpha, dilate_px(self.settings.dilate_pct, w, hgt));
            let mask = Tensor::from_slice(&mask).view([1, hgt as i64, w as i64]);
            let cond = encoder.encode(s.sample.prompt.as_deref().unwrap_or(""))?.squeeze_dim(0).to_device(Device::Cpu);
            let pixels = to_signed(&resize_rgb(&s.rgb, w, hgt));
            let ratio = if corruptible { h.corruption_ratio } else { 0.0 };
            let observed = observed_mask(i, w, hgt, ratio, h.seed);
            // The dropped pixels are gone from here on, not just left out of the loss.
            let pixels = match &observed {
                Some(a) => pixels * a,
                None => pixels,
            };
            let bucket = buckets.iter().position(|b| *b == (w, hgt)).unwrap_or(0);
            Ok((bucket, Prepared { index: i, pixels, mask, cond, observed }))
        };
        let prepared: Vec<(usize, Prepared)> = train_idx.iter().map(|&i| prepare(i, true)).collect::<Result<_, _>>()?;
        let validation: Vec<(usize, Prepared)> =
            val_idx.iter().map(|&i| prepare(i, false)).collect::<Result<_, _>>()?;
        let corrupted = prepared.iter().filter(|(_, p)| p.observed.is_some()).count();

        // The trainable denoiser, from the checkpoint when resuming.
        let (_vs, mut module, mut optimizer) =
            crate::checkpoint::load_trainable(&manifest, &self.base_dir, &self.work, self.resume.is_some(), device)?;
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
                    crate::checkpoint::save_checkpoint(
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
            let lr = crate::schedule::learning_rate(h, phase_steps, step_in_phase);
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
                crate::checkpoint::save_checkpoint(
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
            "samples": {"train": train_idx.len(), "validation": val_idx.len(), "phase2": chosen.kept.len(), "leaked": leaked.len(),
                        "corrupted": corrupted},
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
        crate::checkpoint::write_provenance(&dir, &lines, &history, h)?;
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
            "corruption": {"ratio": h.corruption_ratio, "corrupted": corrupted, "method": "ambient pixel dropping",
                           "drop": components::AMBIENT_DROP, "further": components::AMBIENT_FURTHER},
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

pub fn read_manifest(dir: &Path) -> Result<ModelManifest, String> {
    let bytes = std::fs::read(dir.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    let manifest = ModelManifest::from_json(&bytes).map_err(|e| e.to_string())?;
    if manifest.task != Task::BackgroundGenerator {
        return Err(format!("{} is not a background generator", manifest.model_ref()));
    }
    Ok(manifest)
}

impl crate::progress::Trainer for GeneratorJob {
    fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn run(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        self.train(events)
    }
}
