//! The matting fine-tune: a TorchScript matting model trained on a tenant's image + mask
//! pairs in two phases (all samples, then those whose masks the phase-1 model agrees with),
//! with validation IoU / MAE after each phase.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fleet_imaging::resize::{resize_gray, resize_rgb};
use fleet_protocol::fine_tune::{Hyper, Sample};
use fleet_protocol::manifest::{AlphaKind, EmbeddingSpec, ModelManifest, ModelRef};
use fleet_protocol::DeviceSpec;
use image::{GrayImage, RgbImage};
use tch::{Device, IValue, Kind, Tensor};
use tokio::sync::mpsc;

use crate::checkpoint::{load_trainable, save_checkpoint, write_provenance, CheckpointState, Phase2};
use crate::data::{flip, pick_batch, split};
use crate::progress::{Event, Steps, TrainOutcome, Trained};

/// One sample ready to train on.
#[derive(Clone)]
pub struct Loaded {
    pub line: usize,
    pub sample: Sample,
    pub rgb: RgbImage,
    pub mask: GrayImage,
}

/// The training itself, on a blocking thread.
pub struct TrainJob {
    pub samples: Vec<Loaded>,
    pub hyper: Hyper,
    pub base_dir: PathBuf,
    pub device: DeviceSpec,
    pub work: PathBuf,
    pub resume: Option<CheckpointState>,
    pub output: ModelRef,
    pub parent: ModelRef,
    pub stop: std::sync::Arc<AtomicBool>,
    pub yield_now: std::sync::Arc<AtomicBool>,
}

/// A sample as tensors at its bucket's size.
pub struct Prepared {
    pub index: usize,
    pub input: Tensor,
    pub target: Tensor,
}

impl TrainJob {
    pub fn train(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        let started = Instant::now();
        let device = fleet_engine::runtime::resolve_device(self.device).map_err(|e| e.to_string())?;
        let manifest =
            ModelManifest::from_json(&std::fs::read(self.base_dir.join("manifest.json")).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let h = &self.hyper;
        let total = h.total_steps();

        // Validation split and mask-quality scores, both from the seed and the base model.
        let (val_idx, train_idx) = split(self.samples.len(), h);
        let base = fleet_engine::model::LoadedModel::load(&self.base_dir, device).map_err(|e| e.to_string())?;
        let base_validation = validate_loaded(&base, &self.samples, &val_idx)?;
        drop(base);

        let (_vs, mut module, mut optimizer) =
            load_trainable(&manifest, &self.base_dir, &self.work, self.resume.is_some(), device)?;
        let (mut phase1_validation, mut phase2, start) = match &self.resume {
            Some(s) => (s.phase1_validation, s.phase2.clone(), s.step),
            None => (None, None, 0),
        };

        let prepared = prepare_training(&self.samples, &train_idx, h, &manifest);
        let all_train: Vec<usize> = (0..prepared.len()).collect();
        let mut phase2_set: Vec<usize> = match &phase2 {
            Some(p) => (0..prepared.len()).filter(|&k| p.kept.contains(&prepared[k].1.index)).collect(),
            None => Vec::new(),
        };

        let mut steps = Steps::new(self.resume.as_ref(), total, started, events);
        let train_started = Instant::now();
        module.set_train();
        for step in start..total {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("stopped: a checkpoint could not be saved under the lease".into());
            }
            if self.yield_now.load(std::sync::atomic::Ordering::Relaxed) {
                // Every step so far is reported and saved: the next holder starts here.
                steps.report(step, if step < h.steps_phase1 { 1 } else { 2 }, None)?;
                if step > start {
                    let state = CheckpointState {
                        step,
                        history: steps.history.clone(),
                        phase1_validation,
                        phase2: phase2.clone(),
                        seed: h.seed,
                    };
                    self.checkpoint(&module, &optimizer, &state, events)?;
                }
                return Ok(Trained::Yielded(step));
            }
            let (phase, step_in_phase, phase_steps) = if step < h.steps_phase1 {
                (1u8, step, h.steps_phase1)
            } else {
                (2u8, step - h.steps_phase1, h.steps_phase2)
            };
            if step >= h.steps_phase1 && phase2.is_none() {
                // Phase 1 is over: score every training mask against what the model learnt
                // from all of them, and keep the best for phase 2.
                module.set_eval();
                let chosen = choose_phase2(&module, &manifest, &self.samples, &train_idx, h.quality_threshold, device)?;
                phase2_set = (0..prepared.len()).filter(|&k| chosen.kept.contains(&prepared[k].1.index)).collect();
                tracing::info!(
                    kept = chosen.kept.len(),
                    dropped = chosen.dropped.len(),
                    threshold = h.quality_threshold,
                    "mask-quality filter: phase 2 trains on the best samples only"
                );
                phase2 = Some(chosen);
                phase1_validation = Some(validate_module(&module, &manifest, &self.samples, &val_idx, device)?);
                module.set_train();
                let (iou, mae) = phase1_validation.expect("just set");
                steps.report(step, 1, Some((1, iou, mae)))?;
            }
            let set = if phase == 1 || phase2_set.is_empty() { &all_train } else { &phase2_set };
            let lr = crate::schedule::learning_rate(h, phase_steps, step_in_phase);
            let (inputs, targets) = step_batch(&prepared, set, h, step, device);
            optimizer.zero_grad();
            let alpha = forward(&module, &manifest, &inputs)?;
            let loss = matting_loss(&alpha, &targets, manifest.matting_output().alpha);
            loss.backward();
            optimizer.step(lr, h.weight_decay);
            steps.record(step, phase, loss.double_value(&[]), lr)?;
            let done = step + 1;
            if done % h.checkpoint_every == 0 && done < total {
                let state = CheckpointState {
                    step: done,
                    history: steps.history.clone(),
                    phase1_validation,
                    phase2: phase2.clone(),
                    seed: h.seed,
                };
                self.checkpoint(&module, &optimizer, &state, events)?;
            }
            steps.report_due(done, phase)?;
        }
        let loop_seconds = train_started.elapsed().as_secs_f64();
        module.set_eval();
        let final_validation = validate_module(&module, &manifest, &self.samples, &val_idx, device)?;
        if h.steps_phase2 == 0 {
            phase1_validation = Some(final_validation);
        }
        let train_seconds = train_started.elapsed().as_secs_f64();
        let (iou, mae) = final_validation;
        steps.report(total, if h.steps_phase2 > 0 { 2 } else { 1 }, Some((2, iou, mae)))?;
        let history = steps.history;

        // The model folder: trained module, the base's embedder, manifest, embeddings, curve.
        let dir = self.work.join("model");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        module.save(dir.join("model.pt")).map_err(|e| e.to_string())?;
        let mut out = manifest.clone();
        out.name = self.output.name.clone();
        out.version = self.output.version.clone();
        out.file = "model.pt".into();
        // The saved module keeps its weights as parameters: `file` itself fine-tunes again.
        out.trainable_file = None;
        if let EmbeddingSpec::Model { file, .. } = &manifest.matting_output().embedding {
            std::fs::copy(self.base_dir.join(file), dir.join(file)).map_err(|e| e.to_string())?;
        }
        let phase2 = phase2.unwrap_or_else(|| Phase2 { kept: train_idx.clone(), dropped: Vec::new(), scored: 0 });
        let phases = serde_json::json!([
            {"phase": 1, "steps": h.steps_phase1, "samples": train_idx.len(),
             "validation": phase1_validation.map(|(iou, mae)| serde_json::json!({"iou": iou, "mae": mae}))},
            {"phase": 2, "steps": h.steps_phase2, "samples": phase2.kept.len(),
             "validation": (h.steps_phase2 > 0).then(|| serde_json::json!({"iou": iou, "mae": mae}))},
        ]);
        out.training = serde_json::json!({
            "parent": self.parent.to_string(),
            "samples": {"train": train_idx.len(), "validation": val_idx.len(), "phase2": phase2.kept.len()},
            "hyper": h,
            "phases": phases,
        });
        out.metrics = Some(fleet_protocol::manifest::Metrics {
            iou,
            mae,
            samples: val_idx.len(),
            dataset: "held-out split of the fine-tune data set".into(),
        });
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&out).expect("manifest serialises"))
            .map_err(|e| e.to_string())?;
        // Embeddings of every training sample through the new model, with its contributor.
        let trained = fleet_engine::model::LoadedModel::load(&dir, device).map_err(|e| e.to_string())?;
        let mut lines = String::new();
        for &i in &train_idx {
            let s = &self.samples[i];
            let embedding = embed(&trained, &s.rgb)?;
            lines.push_str(
                &serde_json::json!({
                    "image": s.sample.image, "contributor": s.sample.contributor, "licence": s.sample.licence,
                    "embedding": embedding,
                })
                .to_string(),
            );
            lines.push('\n');
        }
        write_provenance(&dir, &lines, &history, h)?;
        let report = serde_json::json!({
            "samples": train_idx.len() + val_idx.len(),
            "filter": {
                "threshold": h.quality_threshold,
                "scored_by": "the model after phase 1",
                "scored": phase2.scored,
                "kept": phase2.kept.iter().map(|&i| self.samples[i].line).collect::<Vec<_>>(),
                "dropped": phase2.dropped,
            },
            "validation_lines": val_idx.iter().map(|&i| self.samples[i].line).collect::<Vec<_>>(),
            "phases": phases,
            "base_validation": {"iou": base_validation.0, "mae": base_validation.1},
            "resumed_from": self.resume.as_ref().map(|s| s.step),
            "steps": total,
            "train_seconds": train_seconds,
            "loop_seconds": loop_seconds,
        });
        Ok(Trained::Done(TrainOutcome { dir, report }))
    }

    /// Writes a checkpoint, has the task upload it and waits for it.
    pub fn checkpoint(
        &self,
        module: &tch::TrainableCModule,
        optimizer: &crate::adamw::AdamW,
        state: &CheckpointState,
        events: &mpsc::Sender<Event>,
    ) -> Result<(), String> {
        save_checkpoint(&self.work, module, optimizer, state, events)
    }
}

/// The training samples as tensors at their aspect-ratio bucket's size, with their bucket.
pub fn prepare_training(
    samples: &[Loaded],
    train_idx: &[usize],
    h: &Hyper,
    manifest: &ModelManifest,
) -> Vec<(usize, Prepared)> {
    let buckets = if manifest.input.fixed {
        vec![(manifest.input.width, manifest.input.height)]
    } else {
        fleet_engine::buckets::buckets(h.pixel_budget)
    };
    train_idx
        .iter()
        .map(|&i| {
            let s = &samples[i];
            let (w, hgt) = fleet_engine::buckets::nearest(&buckets, s.rgb.width(), s.rgb.height());
            let corrupt = crate::corrupt::chosen(i, h.corruption_ratio, h.seed);
            let p = prepare(s, i, (w, hgt), manifest, corrupt.then_some(h.seed));
            (buckets.iter().position(|b| *b == (w, hgt)).unwrap_or(0), p)
        })
        .collect()
}

/// The inputs and targets of step `step`: its batch from `set`, stacked on `device`, flipped
/// when the step says so.
pub fn step_batch(
    prepared: &[(usize, Prepared)],
    set: &[usize],
    h: &Hyper,
    step: u32,
    device: Device,
) -> (Tensor, Tensor) {
    let batch = pick_batch(prepared, set, h.batch_size as usize, h.seed, step);
    let stack = |part: fn(&Prepared) -> &Tensor| {
        Tensor::stack(&batch.iter().map(|&k| part(&prepared[k].1).shallow_clone()).collect::<Vec<_>>(), 0)
            .to_device(device)
    };
    let (inputs, targets) = (stack(|p| &p.input), stack(|p| &p.target));
    if flip(h.seed, step) {
        (inputs.flip([3]), targets.flip([3]))
    } else {
        (inputs, targets)
    }
}

/// A sample as normalised input `[3,H,W]` and target `[1,H,W]` at size `(w, h)`.
pub fn prepare(
    s: &Loaded,
    index: usize,
    (w, h): (u32, u32),
    manifest: &ModelManifest,
    corrupt_seed: Option<u64>,
) -> Prepared {
    let rgb = resize_rgb(&s.rgb, w, h);
    let mask = resize_gray(&s.mask, w, h);
    let raw =
        Tensor::from_slice(rgb.as_raw()).view([h as i64, w as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
    let raw = match corrupt_seed {
        Some(seed) => crate::corrupt::corrupt(&raw, 0.08, seed ^ index as u64),
        None => raw,
    };
    let spec = &manifest.input;
    let scale = f64::from(spec.scale) * 255.0;
    let mean = Tensor::from_slice(&spec.mean).view([3, 1, 1]);
    let std = Tensor::from_slice(&spec.std).view([3, 1, 1]);
    let input = ((raw * scale) - mean) / std;
    let target = Tensor::from_slice(mask.as_raw()).view([1, h as i64, w as i64]).to_kind(Kind::Float) / 255.0;
    Prepared { index, input, target }
}

/// The alpha output `[B,1,H,W]` of the module (logits or probability, per the manifest).
pub fn forward(module: &tch::TrainableCModule, manifest: &ModelManifest, inputs: &Tensor) -> Result<Tensor, String> {
    let out = module.forward_is(&[IValue::Tensor(inputs.shallow_clone())]).map_err(|e| format!("forward: {e}"))?;
    match (out, manifest.matting_output().alpha_index) {
        (IValue::Tensor(t), None) => Ok(t),
        (IValue::Tuple(items), Some(i)) => match items.into_iter().nth(i) {
            Some(IValue::Tensor(t)) => Ok(t),
            _ => Err(format!("output {i} is not a tensor")),
        },
        (_, index) => Err(format!("the module's output does not match the manifest (alpha_index {index:?})")),
    }
}

/// Binary cross-entropy plus soft-IoU loss against the target alpha.
pub fn matting_loss(alpha: &Tensor, target: &Tensor, kind: AlphaKind) -> Tensor {
    let (bce, prob) = match kind {
        AlphaKind::Logits => (
            alpha.binary_cross_entropy_with_logits::<Tensor>(target, None, None, tch::Reduction::Mean),
            alpha.sigmoid(),
        ),
        AlphaKind::Probability => {
            let p = alpha.clamp(1e-6, 1.0 - 1e-6);
            (p.binary_cross_entropy::<Tensor>(target, None, tch::Reduction::Mean), p)
        }
    };
    let inter = (&prob * target).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
    let union = (&prob + target - &prob * target).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
    let soft_iou = (inter + 1.0) / (union + 1.0);
    let iou_loss: Tensor = 1.0 - soft_iou;
    bce + iou_loss.mean(Kind::Float)
}

/// Scores every training mask against the module's own alpha (at the model's input size)
/// and keeps those at or above `threshold` for phase 2.
pub fn choose_phase2(
    module: &tch::TrainableCModule,
    manifest: &ModelManifest,
    samples: &[Loaded],
    train_idx: &[usize],
    threshold: f64,
    device: Device,
) -> Result<Phase2, String> {
    let mut scores = Vec::with_capacity(train_idx.len());
    for &i in train_idx {
        let (alpha, (w, h)) = module_alpha(module, manifest, &samples[i].rgb, device)?;
        let mask = resize_gray(&samples[i].mask, w, h);
        scores.push(crate::quality::mask_quality(&alpha, mask.as_raw(), w as usize, h as usize));
    }
    let (kept, dropped) = crate::quality::split_by_quality(&scores, threshold);
    Ok(Phase2 {
        kept: kept.iter().map(|&k| train_idx[k]).collect(),
        dropped: dropped
            .iter()
            .map(|(k, reason)| {
                let s = &samples[train_idx[*k]];
                serde_json::json!({"line": s.line, "image": s.sample.image, "score": scores[*k].score, "reason": reason})
            })
            .collect(),
        scored: scores.len(),
    })
}

/// The module's alpha in [0,1] for one image at the model's input size, and that size.
pub fn module_alpha(
    module: &tch::TrainableCModule,
    manifest: &ModelManifest,
    rgb: &RgbImage,
    device: Device,
) -> Result<(Vec<f32>, (u32, u32)), String> {
    let _guard = tch::no_grad_guard();
    let spec = &manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    fleet_engine::preprocess::normalize_into(rgb, spec, &mut buf);
    let x = Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]).to_device(device);
    let alpha = forward(module, manifest, &x)?;
    let alpha = match manifest.matting_output().alpha {
        AlphaKind::Logits => alpha.sigmoid(),
        AlphaKind::Probability => alpha,
    };
    let (h, w) = (alpha.size()[2], alpha.size()[3]);
    let values = Vec::<f32>::try_from(alpha.flatten(0, -1).to_device(Device::Cpu)).map_err(|e| e.to_string())?;
    Ok((values, (w as u32, h as u32)))
}

/// The base or trained model's alpha for one image, at the model's output size.
pub fn infer_alpha(model: &fleet_engine::model::LoadedModel, rgb: &RgbImage) -> Result<(Vec<u8>, (u32, u32)), String> {
    let spec = &model.manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    fleet_engine::preprocess::normalize_into(rgb, spec, &mut buf);
    let batch = Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]);
    let out = model.forward(&batch).map_err(|e| e.to_string())?;
    Ok((out.alphas.into_iter().next().unwrap_or_default(), out.alpha_size))
}

pub fn embed(model: &fleet_engine::model::LoadedModel, rgb: &RgbImage) -> Result<Vec<f32>, String> {
    let spec = &model.manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    fleet_engine::preprocess::normalize_into(rgb, spec, &mut buf);
    let batch = Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]);
    let out = model.forward(&batch).map_err(|e| e.to_string())?;
    Ok(out.embeddings.into_iter().next().unwrap_or_default())
}

/// Held-out IoU (alpha > 0.5 against mask > 0.5) and MAE of a loaded model.
pub fn validate_loaded(
    model: &fleet_engine::model::LoadedModel,
    samples: &[Loaded],
    idx: &[usize],
) -> Result<(f64, f64), String> {
    let mut pairs = Vec::new();
    for &i in idx {
        let (alpha, (w, h)) = infer_alpha(model, &samples[i].rgb)?;
        let mask = resize_gray(&samples[i].mask, w, h);
        pairs.push((alpha.iter().map(|&a| a as f32 / 255.0).collect::<Vec<_>>(), mask.into_raw()));
    }
    Ok(iou_mae(&pairs))
}

/// The same figures for the module being trained, at the model's input size.
pub fn validate_module(
    module: &tch::TrainableCModule,
    manifest: &ModelManifest,
    samples: &[Loaded],
    idx: &[usize],
    device: Device,
) -> Result<(f64, f64), String> {
    let mut pairs = Vec::new();
    for &i in idx {
        let (alpha, (w, h)) = module_alpha(module, manifest, &samples[i].rgb, device)?;
        pairs.push((alpha, resize_gray(&samples[i].mask, w, h).into_raw()));
    }
    Ok(iou_mae(&pairs))
}

pub fn iou_mae(pairs: &[(Vec<f32>, Vec<u8>)]) -> (f64, f64) {
    let (mut iou, mut mae) = (0.0, 0.0);
    for (pred, mask) in pairs {
        let (mut inter, mut union, mut err) = (0u64, 0u64, 0.0f64);
        for (&p, &m) in pred.iter().zip(mask) {
            let (a, b) = (p > 0.5, m > 127);
            inter += u64::from(a && b);
            union += u64::from(a || b);
            err += (f64::from(p) - f64::from(m) / 255.0).abs();
        }
        iou += if union == 0 { 1.0 } else { inter as f64 / union as f64 };
        mae += err / pred.len().max(1) as f64;
    }
    let n = pairs.len().max(1) as f64;
    (iou / n, mae / n)
}

impl crate::progress::Trainer for TrainJob {
    fn stop_flag(&self) -> std::sync::Arc<AtomicBool> {
        self.stop.clone()
    }

    fn run(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        self.train(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_and_mae_of_a_perfect_and_an_inverted_prediction() {
        let mask = vec![0u8, 0, 255, 255];
        let perfect = vec![0.0f32, 0.0, 1.0, 1.0];
        let inverted = vec![1.0f32, 1.0, 0.0, 0.0];
        assert_eq!(iou_mae(&[(perfect, mask.clone())]), (1.0, 0.0));
        assert_eq!(iou_mae(&[(inverted, mask)]), (0.0, 1.0));
    }
}
