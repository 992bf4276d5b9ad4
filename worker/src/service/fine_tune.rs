//! A `fine_tune` task on a worker: the data set from S3, the base model from the registry,
//! training on a thread of its own, checkpoints to S3 under the task's lease, and the
//! trained model registered in the tenant's own registry. This file trains matting models;
//! `target: background_generator` goes to [`generator`], which shares the checkpoints,
//! progress relay and registration below.
//!
//! ```text
//! data set (JSON lines) --> refusals (no licence, no contributor, bad key, unreadable,
//!                          mask not matching its image)
//!   --> samples (image + mask) --> validation split (seeded)
//!   --> [resume from <tenant>/training/<job>/checkpoint/ if there is one]
//!   --> phase 1 (every sample) --> mask-quality scores of every training mask against the
//!       phase-1 model --> phase 2 (score >= threshold only); each phase: linear warm-up +
//!       schedule, AdamW, aspect-ratio buckets at the pixel budget
//!        every `checkpoint_every` steps: module + optimiser + state --> S3 (lease checked)
//!        progress reports: every step's loss and learning rate
//!   --> validation IoU / MAE after each phase --> model.pt (TorchScript, parameters)
//!   --> <tenant>/models/<name>/<version>/ : model, manifest (parent, data digest, counts,
//!       hyper-parameters, metrics), training-set embeddings with contributors, loss curve
//!   --> <tenant>/results/<job>/fine-tune.json : the whole report
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fleet_common::finetune::{parse_dataset, FineTuneSpec, Hyper, Refusal, Sample, Target};
use fleet_common::keys::{results_prefix, TenantId};
use fleet_common::manifest::{AlphaKind, EmbeddingSpec, ModelManifest, ModelRef};
use fleet_common::protocol::{Report, StepRecord, TaskMessage, TrainingProgress};
use fleet_common::registry::{self, Scope};
use fleet_common::store::s3::S3Store;
use fleet_common::store::{ObjectStore, StoreError};
use fleet_common::DeviceSpec;
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::resize::{resize_gray, resize_rgb};
use futures::StreamExt;
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, IValue, Kind, Tensor};
use tokio::sync::mpsc;

use super::task::{AttemptError, Fence, TaskResult};
use crate::train;

pub mod bench;
pub mod generator;

/// Samples fetched from S3 at once.
const SAMPLE_FETCHES: usize = 8;

/// What the training thread tells the task.
pub enum Event {
    /// Steps since the last event.
    Progress(TrainingProgress),
    /// A checkpoint is written locally in the folder; upload it and answer.
    Checkpoint { dir: PathBuf, step: u32, done: std::sync::mpsc::SyncSender<Result<(), String>> },
}

/// The state saved with a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps done (the next step to run).
    step: u32,
    /// Losses and learning rates so far, for the curve and the report.
    history: Vec<StepRecord>,
    /// Validation after phase 1, if phase 1 ended.
    phase1_validation: Option<(f64, f64)>,
    /// Phase 2's samples and the filter's report, once phase 1 ended.
    phase2: Option<Phase2>,
    /// The job's seed (the data order and augmentations follow from it and the step).
    seed: u64,
}

/// The samples phase 2 trains on, chosen by mask quality after phase 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase2 {
    /// Sample indices kept.
    kept: Vec<usize>,
    /// What was dropped and why (line, image, score, reason).
    dropped: Vec<serde_json::Value>,
    /// Samples scored.
    scored: usize,
}

/// One sample ready to train on.
#[derive(Clone)]
struct Loaded {
    line: usize,
    sample: Sample,
    rgb: RgbImage,
    mask: GrayImage,
}

/// Everything a task needs to run a fine-tune.
pub struct FineTuneContext<'a> {
    /// The object store.
    pub s3: &'a S3Store,
    /// Where models are cached on this host.
    pub model_cache: &'a Path,
    /// The device the lease placed it on.
    pub device: DeviceSpec,
    /// The task's lease.
    pub fence: &'a Fence<'a>,
    /// Sends a report (progress) to the scheduler.
    pub progress: &'a (dyn Fn(TrainingProgress) -> futures::future::BoxFuture<'a, ()> + Sync),
    /// Set when the fine-tune must give its device back (preempted, or the worker drains):
    /// it saves a checkpoint at the next step boundary and stops.
    pub yield_now: std::sync::Arc<AtomicBool>,
}

/// How a fine-tune attempt ended.
pub enum Ended {
    /// Trained and registered; its one item is the model.
    Trained(TaskResult),
    /// Saved a checkpoint at `step` and gave the device back; it resumes from there.
    Yielded {
        /// The checkpoint's step.
        step: u32,
    },
}

/// Runs the fine-tune of `task`; its one item is the registered model.
pub async fn run(ctx: &FineTuneContext<'_>, task: &TaskMessage, spec: &FineTuneSpec) -> Result<Ended, AttemptError> {
    let started = Instant::now();
    let tenant = TenantId::new(&task.tenant).map_err(|e| AttemptError(e.to_string()))?;
    let results = results_prefix(&tenant, &task.job);
    let checkpoint_prefix = format!("{tenant}/training/{}/checkpoint/", task.job);
    let fail = |reason: String| AttemptError(reason);

    // The data set: refusals are reported, never trained on.
    let text = match ctx.s3.get(&spec.data).await {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| fail(format!("data set {} is not UTF-8: {e}", spec.data)))?,
        Err(StoreError::NotFound { .. }) => {
            return finished_without_model(ctx, &results, task, spec, "no data set at that key")
                .await
                .map(Ended::Trained)
        }
        Err(e) => return Err(fail(format!("data set: {e}"))),
    };
    let digest = sha256_hex(text.as_bytes());
    let (listed, mut refusals) = parse_dataset(&text, &tenant, spec.target);
    if spec.target == Target::BackgroundGenerator {
        return generator::run(ctx, task, spec, listed, refusals, digest).await;
    }
    // Fetched and decoded eight samples at a time, in data-set order.
    let mut loaded = Vec::new();
    let mut fetches = futures::stream::iter(listed)
        .map(|(line, sample)| async move { (line, load_sample(ctx.s3, &sample).await, sample) })
        .buffered(SAMPLE_FETCHES);
    while let Some((line, fetched, sample)) = fetches.next().await {
        match fetched? {
            Ok((rgb, mask)) => loaded.push(Loaded { line, sample, rgb, mask }),
            Err((code, reason)) => refusals.push(Refusal { line, image: sample.image.clone(), code, reason }),
        }
    }
    drop(fetches);
    let min_samples = 2;
    if loaded.len() < min_samples {
        let reason = format!("{} usable samples; a fine-tune needs at least {min_samples}", loaded.len());
        return finished_without_model(ctx, &results, task, spec, &reason).await.map(|mut r| {
            r.failures[0].reason = format!("{reason}; refused: {}", summarize(&refusals));
            Ended::Trained(r)
        });
    }

    // The base model and the checkpoint to resume from, if any.
    let base_ref: ModelRef = task.model.parse().map_err(|e| fail(format!("base model: {e}")))?;
    let (scope, _) = registry::locate(ctx.s3, &tenant, &base_ref).await.map_err(|e| fail(e.to_string()))?;
    let (base_dir, _) =
        registry::fetch_in(ctx.s3, &scope, &base_ref, ctx.model_cache).await.map_err(|e| fail(e.to_string()))?;
    let work = tempfile::tempdir().map_err(|e| fail(format!("work folder: {e}")))?;
    let resume = download_checkpoint(ctx.s3, &checkpoint_prefix, work.path()).await?;
    if let Some(state) = &resume {
        tracing::info!(step = state.step, "resuming the fine-tune from its last checkpoint");
    }

    // Training runs on its own thread; the task uploads its checkpoints and relays progress.
    let (tx, rx) = mpsc::channel::<Event>(4);
    let job = TrainJob {
        samples: loaded,
        hyper: spec.hyper.clone(),
        base_dir: base_dir.clone(),
        device: ctx.device,
        work: work.path().to_path_buf(),
        resume,
        output: spec.output.model_ref(),
        parent: base_ref.clone(),
        stop: std::sync::Arc::new(AtomicBool::new(false)),
        yield_now: ctx.yield_now.clone(),
    };
    let stop = job.stop.clone();
    let trainer = tokio::task::spawn_blocking(move || job.train(&tx));
    let checkpoint_s = relay(ctx, &checkpoint_prefix, rx, &stop).await;
    let outcome = match trainer.await.map_err(|e| fail(format!("training thread: {e}")))?.map_err(fail)? {
        Trained::Done(outcome) => outcome,
        Trained::Yielded(step) => return Ok(Ended::Yielded { step }),
    };

    let model_prefix = register(ctx, &tenant, spec, &outcome.dir).await?;
    let run = Run { base: &base_ref, digest: &digest, refusals: &refusals, checkpoint_s, started };
    write_report(ctx, &results, spec, &model_prefix, &outcome, &run).await.map(Ended::Trained)
}

/// What a fine-tune's report says about the run around the training itself.
struct Run<'a> {
    base: &'a ModelRef,
    digest: &'a str,
    refusals: &'a [Refusal],
    checkpoint_s: f64,
    started: Instant,
}

/// Writes `<results>fine-tune.json` under the lease; its one item is the registered model.
async fn write_report(
    ctx: &FineTuneContext<'_>,
    results: &str,
    spec: &FineTuneSpec,
    model_prefix: &str,
    outcome: &TrainOutcome,
    run: &Run<'_>,
) -> Result<TaskResult, AttemptError> {
    let report = serde_json::json!({
        "model": model_prefix,
        "model_ref": spec.output.model_ref().to_string(),
        "target": spec.target,
        "parent": run.base.to_string(),
        "data": {"key": spec.data, "sha256": run.digest, "accepted": outcome.report["samples"], "refused": run.refusals},
        "filter": outcome.report["filter"],
        "phases": outcome.report["phases"],
        "base_validation": outcome.report["base_validation"],
        "resumed_from": outcome.report["resumed_from"],
        "steps": outcome.report["steps"],
        "hyper": spec.hyper,
        "generator": spec.generator,
        "train_seconds": outcome.report["train_seconds"],
        "checkpoint_seconds": run.checkpoint_s,
        "seconds": run.started.elapsed().as_secs_f64(),
    });
    let key = format!("{results}fine-tune.json");
    ctx.fence.check().await?;
    put(ctx.s3, &key, serde_json::to_vec_pretty(&report).expect("a report serialises"), "application/json").await?;
    Ok(TaskResult { succeeded: 1, failures: Vec::new(), manifest: key })
}

/// Relays the training thread's events until it ends: progress to the scheduler,
/// checkpoints to S3 under the lease (a failed upload sets `stop`). Returns the seconds
/// spent uploading checkpoints.
async fn relay(
    ctx: &FineTuneContext<'_>,
    checkpoint_prefix: &str,
    mut rx: mpsc::Receiver<Event>,
    stop: &std::sync::Arc<AtomicBool>,
) -> f64 {
    let mut checkpoint_s = 0.0;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Progress(progress) => (ctx.progress)(progress).await,
            Event::Checkpoint { dir, step, done } => {
                let t = Instant::now();
                let uploaded = upload_checkpoint(ctx, checkpoint_prefix, &dir).await;
                checkpoint_s += t.elapsed().as_secs_f64();
                if let Err(e) = &uploaded {
                    tracing::warn!(step, error = %e, "checkpoint not saved; stopping");
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                } else {
                    tracing::info!(step, ms = t.elapsed().as_millis() as u64, "checkpoint saved");
                }
                let _ = done.send(uploaded.map_err(|e| e.0));
            }
        }
    }
    checkpoint_s
}

/// Registers the trained model folder in the tenant's space under the lease: extra files
/// first, the model's files and manifest last. Returns the model's prefix.
async fn register(
    ctx: &FineTuneContext<'_>,
    tenant: &TenantId,
    spec: &FineTuneSpec,
    dir: &Path,
) -> Result<String, AttemptError> {
    ctx.fence.check().await?;
    let scope = Scope::Tenant(tenant.clone());
    let model_prefix = scope.prefix(&spec.output.model_ref());
    for (file, content_type) in [("training-embeddings.jsonl", "application/x-ndjson"), ("loss-curve.png", "image/png")]
    {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| AttemptError(format!("{file}: {e}")))?;
        put(ctx.s3, &format!("{model_prefix}{file}"), bytes, content_type).await?;
    }
    registry::publish_in(ctx.s3, &scope, dir).await.map_err(|e| AttemptError(format!("registering the model: {e}")))?;
    Ok(model_prefix)
}

/// A fine-tune that cannot train: its one item fails with `reason`.
async fn finished_without_model(
    ctx: &FineTuneContext<'_>,
    results: &str,
    task: &TaskMessage,
    spec: &FineTuneSpec,
    reason: &str,
) -> Result<TaskResult, AttemptError> {
    let key = format!("{results}fine-tune.json");
    let report = serde_json::json!({"model": null, "data": {"key": spec.data}, "reason": reason});
    ctx.fence.check().await?;
    put(ctx.s3, &key, serde_json::to_vec_pretty(&report).expect("a report serialises"), "application/json").await?;
    let failure = fleet_common::protocol::ItemFailureReport {
        key: spec.data.clone(),
        code: "no_model".into(),
        reason: format!("fine-tune of {} trained nothing: {reason}", task.model),
    };
    Ok(TaskResult { succeeded: 0, failures: vec![failure], manifest: key })
}

fn summarize(refusals: &[Refusal]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for r in refusals {
        *counts.entry(r.code.as_str()).or_insert(0) += 1;
    }
    counts.iter().map(|(c, n)| format!("{n} {c}")).collect::<Vec<_>>().join(", ")
}

/// Reads and decodes one sample; a problem with the sample itself is a refusal, a store
/// problem fails the attempt.
async fn load_sample(
    s3: &S3Store,
    sample: &Sample,
) -> Result<Result<(RgbImage, GrayImage), (String, String)>, AttemptError> {
    let limits = DecodeLimits::default();
    let mut fetched = Vec::new();
    let Some(mask_key) = &sample.mask else {
        return Ok(Err(("no_mask".into(), "a matting fine-tune needs a mask per image".into())));
    };
    for key in [&sample.image, mask_key] {
        match s3.get(key).await {
            Ok(bytes) => fetched.push(bytes),
            Err(StoreError::NotFound { .. }) => return Ok(Err(("not_found".into(), format!("no object at {key}")))),
            Err(e) if e.is_retryable() => return Err(AttemptError(e.to_string())),
            Err(e) => return Ok(Err(("store_error".into(), e.to_string()))),
        }
    }
    let rgb = match decode(&fetched[0], &limits) {
        Ok(d) => d.rgb,
        Err(e) => return Ok(Err((e.code().to_string(), format!("image {}: {e}", sample.image)))),
    };
    let mask = match image::load_from_memory(&fetched[1]) {
        Ok(m) => m.to_luma8(),
        Err(e) => return Ok(Err(("corrupt".into(), format!("mask {mask_key}: {e}")))),
    };
    if mask.dimensions() != rgb.dimensions() {
        let (mw, mh) = mask.dimensions();
        let (iw, ih) = rgb.dimensions();
        return Ok(Err(("mask_mismatch".into(), format!("mask is {mw}x{mh} but its image is {iw}x{ih}"))));
    }
    Ok(Ok((rgb, mask)))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn put(s3: &S3Store, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), AttemptError> {
    s3.put(key, bytes, content_type).await.map_err(|e| AttemptError(format!("writing {key}: {e}")))
}

const CHECKPOINT_FILES: [&str; 3] = ["module.pt", "optimizer.pt", "state.json"];

/// Uploads a checkpoint under the lease: files first, `state.json` last (its presence means a
/// complete checkpoint).
async fn upload_checkpoint(ctx: &FineTuneContext<'_>, prefix: &str, dir: &Path) -> Result<(), AttemptError> {
    ctx.fence.check().await?;
    for file in CHECKPOINT_FILES {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| AttemptError(format!("checkpoint {file}: {e}")))?;
        put(ctx.s3, &format!("{prefix}{file}"), bytes, "application/octet-stream").await?;
    }
    Ok(())
}

/// The last checkpoint of the job, downloaded into `dir`, if there is one.
async fn download_checkpoint(s3: &S3Store, prefix: &str, dir: &Path) -> Result<Option<CheckpointState>, AttemptError> {
    let state = match s3.get(&format!("{prefix}state.json")).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(AttemptError(format!("checkpoint: {e}"))),
    };
    let state: CheckpointState =
        serde_json::from_slice(&state).map_err(|e| AttemptError(format!("checkpoint state: {e}")))?;
    let resume = dir.join("resume");
    std::fs::create_dir_all(&resume).map_err(|e| AttemptError(e.to_string()))?;
    for file in ["module.pt", "optimizer.pt"] {
        let bytes =
            s3.get(&format!("{prefix}{file}")).await.map_err(|e| AttemptError(format!("checkpoint {file}: {e}")))?;
        std::fs::write(resume.join(file), bytes).map_err(|e| AttemptError(e.to_string()))?;
    }
    Ok(Some(state))
}

/// The training itself, on a blocking thread.
struct TrainJob {
    samples: Vec<Loaded>,
    hyper: Hyper,
    base_dir: PathBuf,
    device: DeviceSpec,
    work: PathBuf,
    resume: Option<CheckpointState>,
    output: ModelRef,
    parent: ModelRef,
    stop: std::sync::Arc<AtomicBool>,
    yield_now: std::sync::Arc<AtomicBool>,
}

/// How the training thread ended.
pub enum Trained {
    /// Every step ran.
    Done(TrainOutcome),
    /// A checkpoint at this step was saved and training stopped to give the device back.
    Yielded(u32),
}

/// What training produced: a model folder ready to register, and its report.
pub struct TrainOutcome {
    /// The model folder, ready to register.
    pub dir: PathBuf,
    /// What happened, for the job's report.
    pub report: serde_json::Value,
}

/// A sample as tensors at its bucket's size.
struct Prepared {
    index: usize,
    input: Tensor,
    target: Tensor,
}

impl TrainJob {
    fn train(self, events: &mpsc::Sender<Event>) -> Result<Trained, String> {
        let started = Instant::now();
        let device = crate::engine::runtime::resolve_device(self.device).map_err(|e| e.to_string())?;
        let manifest =
            ModelManifest::from_json(&std::fs::read(self.base_dir.join("manifest.json")).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let h = &self.hyper;
        let total = h.total_steps();

        // Validation split and mask-quality scores, both from the seed and the base model.
        let (val_idx, train_idx) = split(self.samples.len(), h);
        let base = crate::engine::model::LoadedModel::load(&self.base_dir, device).map_err(|e| e.to_string())?;
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
            let lr = train::schedule::learning_rate(h, phase_steps, step_in_phase);
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
        out.metrics = Some(fleet_common::manifest::Metrics {
            iou,
            mae,
            samples: val_idx.len(),
            dataset: "held-out split of the fine-tune data set".into(),
        });
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&out).expect("manifest serialises"))
            .map_err(|e| e.to_string())?;
        // Embeddings of every training sample through the new model, with its contributor.
        let trained = crate::engine::model::LoadedModel::load(&dir, device).map_err(|e| e.to_string())?;
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
    fn checkpoint(
        &self,
        module: &tch::TrainableCModule,
        optimizer: &train::adamw::AdamW,
        state: &CheckpointState,
        events: &mpsc::Sender<Event>,
    ) -> Result<(), String> {
        save_checkpoint(&self.work, module, optimizer, state, events)
    }
}

/// The trainable module (the base's `trainable_file`, else its `file`; the checkpoint's when
/// `resumed`) and its AdamW state, with the variable store that holds them.
fn load_trainable(
    manifest: &ModelManifest,
    base_dir: &Path,
    work: &Path,
    resumed: bool,
    device: Device,
) -> Result<(nn::VarStore, tch::TrainableCModule, train::adamw::AdamW), String> {
    let module_path = if resumed {
        work.join("resume/module.pt")
    } else {
        base_dir.join(manifest.trainable_file.as_deref().unwrap_or(&manifest.file))
    };
    let vs = nn::VarStore::new(device);
    let module = tch::TrainableCModule::load(&module_path, vs.root())
        .map_err(|e| format!("loading {}: {e}", module_path.display()))?;
    let mut optimizer = train::adamw::AdamW::new(vs.trainable_variables());
    if resumed {
        optimizer.load(work.join("resume/optimizer.pt")).map_err(|e| format!("optimiser state: {e}"))?;
    }
    Ok((vs, module, optimizer))
}

/// Writes a checkpoint locally under `work`, has the task upload it under the lease, and
/// waits for it.
fn save_checkpoint(
    work: &Path,
    module: &tch::TrainableCModule,
    optimizer: &train::adamw::AdamW,
    state: &CheckpointState,
    events: &mpsc::Sender<Event>,
) -> Result<(), String> {
    let dir = work.join(format!("checkpoint-{}", state.step));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    module.save(dir.join("module.pt")).map_err(|e| e.to_string())?;
    optimizer.save(dir.join("optimizer.pt")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("state.json"), serde_json::to_vec(state).expect("state serialises"))
        .map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    events
        .blocking_send(Event::Checkpoint { dir: dir.clone(), step: state.step, done: tx })
        .map_err(|_| "the task stopped listening")?;
    rx.recv().map_err(|_| "the task stopped listening")??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes what a trained model keeps beside it: `training-embeddings.jsonl` (one JSON line
/// per training sample) and `loss-curve.png` (loss and learning rate per step, phases marked).
fn write_provenance(dir: &Path, lines: &str, history: &[StepRecord], h: &Hyper) -> Result<(), String> {
    std::fs::write(dir.join("training-embeddings.jsonl"), lines).map_err(|e| e.to_string())?;
    let loss: Vec<(u32, f64)> = history.iter().map(|r| (r.step, r.loss)).collect();
    let lrs: Vec<(u32, f64)> = history.iter().map(|r| (r.step, r.lr)).collect();
    let boundary = (h.steps_phase2 > 0).then_some(h.steps_phase1);
    std::fs::write(dir.join("loss-curve.png"), train::curve::curve_png(&loss, &lrs, boundary))
        .map_err(|e| e.to_string())
}

/// The bookkeeping of a training loop: every step's record, progress reports (every 500 ms,
/// at the end, and whenever the loop asks) and the history a checkpoint keeps.
struct Steps<'a> {
    /// Every step so far; a resumed run starts with its checkpoint's.
    history: Vec<StepRecord>,
    pending: Vec<StepRecord>,
    last_report: Instant,
    resumed_from: Option<u32>,
    started: Instant,
    start: u32,
    total: u32,
    events: &'a mpsc::Sender<Event>,
}

impl<'a> Steps<'a> {
    fn new(resume: Option<&CheckpointState>, total: u32, started: Instant, events: &'a mpsc::Sender<Event>) -> Self {
        Steps {
            history: resume.map(|s| s.history.clone()).unwrap_or_default(),
            pending: Vec::new(),
            last_report: Instant::now(),
            resumed_from: resume.map(|s| s.step),
            started,
            start: resume.map_or(0, |s| s.step),
            total,
            events,
        }
    }

    /// Reports every step not reported yet, as at `step` of `phase`, with `validation`.
    fn report(&mut self, step: u32, phase: u8, validation: Option<(u8, f64, f64)>) -> Result<(), String> {
        self.last_report = Instant::now();
        let batch = std::mem::take(&mut self.pending);
        let p = progress(step, self.total, phase, batch, &mut self.resumed_from, self.started, self.start, validation);
        self.events.blocking_send(Event::Progress(p)).map_err(|_| "the task stopped listening".to_string())
    }

    /// Records a step's loss; a loss that is not finite stops training with the advice.
    fn record(&mut self, step: u32, phase: u8, loss: f64, lr: f64) -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("training diverged at step {step} (loss {loss}); lower the learning rate"));
        }
        let record = StepRecord { step, phase, loss, lr };
        self.history.push(record);
        self.pending.push(record);
        Ok(())
    }

    /// Reports once 500 ms have passed since the last report, or when `done` is the last step.
    fn report_due(&mut self, done: u32, phase: u8) -> Result<(), String> {
        if self.last_report.elapsed().as_millis() >= 500 || done == self.total {
            self.report(done, phase, None)
        } else {
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn progress(
    step: u32,
    total: u32,
    phase: u8,
    steps: Vec<StepRecord>,
    resumed_from: &mut Option<u32>,
    started: Instant,
    start: u32,
    validation: Option<(u8, f64, f64)>,
) -> TrainingProgress {
    let done = step.saturating_sub(start).max(1) as f64;
    let rate = done / started.elapsed().as_secs_f64().max(1e-6);
    TrainingProgress {
        step,
        total_steps: total,
        phase,
        steps,
        steps_per_s: rate,
        eta_s: total.saturating_sub(step) as f64 / rate,
        // Said once, in the first report after a resume.
        resumed_from: resumed_from.take(),
        validation,
    }
}

/// The seeded validation and training split of `n` samples (indices).
fn split(n: usize, h: &Hyper) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, h.seed);
    let n_val = ((n as f64 * h.validation_fraction).ceil() as usize).clamp(1, n - 1);
    let (val_idx, train_idx) = order.split_at(n_val);
    (val_idx.to_vec(), train_idx.to_vec())
}

/// The training samples as tensors at their aspect-ratio bucket's size, with their bucket.
fn prepare_training(
    samples: &[Loaded],
    train_idx: &[usize],
    h: &Hyper,
    manifest: &ModelManifest,
) -> Vec<(usize, Prepared)> {
    let buckets = train::buckets::buckets(h.pixel_budget);
    train_idx
        .iter()
        .map(|&i| {
            let s = &samples[i];
            let (w, hgt) = train::buckets::nearest(&buckets, s.rgb.width(), s.rgb.height());
            let corrupt = train::corrupt::chosen(i, h.corruption_ratio, h.seed);
            let p = prepare(s, i, (w, hgt), manifest, corrupt.then_some(h.seed));
            (buckets.iter().position(|b| *b == (w, hgt)).unwrap_or(0), p)
        })
        .collect()
}

/// The inputs and targets of step `step`: its batch from `set`, stacked on `device`, flipped
/// when the step says so.
fn step_batch(prepared: &[(usize, Prepared)], set: &[usize], h: &Hyper, step: u32, device: Device) -> (Tensor, Tensor) {
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

/// Deterministic shuffle (Fisher-Yates with a splitmix sequence).
fn shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..items.len()).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether step `step` flips its batch horizontally (an augmentation that never changes
/// which pixels are the object).
fn flip(seed: u64, step: u32) -> bool {
    let mut state = seed ^ (u64::from(step) << 1) ^ 0x5851_f42d_4c95_7f2d;
    splitmix(&mut state) & 1 == 1
}

/// The batch of step `step`: one bucket (chosen in proportion to its samples), then
/// `size` samples of it; a function of the seed and the step alone, so a resumed run sees
/// exactly the batches the interrupted one would have.
fn pick_batch<T>(prepared: &[(usize, T)], set: &[usize], size: usize, seed: u64, step: u32) -> Vec<usize> {
    let mut state = seed ^ (u64::from(step).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let anchor = set[(splitmix(&mut state) % set.len() as u64) as usize];
    let bucket = prepared[anchor].0;
    let same: Vec<usize> = set.iter().copied().filter(|&k| prepared[k].0 == bucket).collect();
    (0..size).map(|_| same[(splitmix(&mut state) % same.len() as u64) as usize]).collect()
}

/// A sample as normalised input `[3,H,W]` and target `[1,H,W]` at size `(w, h)`.
fn prepare(
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
        Some(seed) => train::corrupt::corrupt(&raw, 0.08, seed ^ index as u64),
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
fn forward(module: &tch::TrainableCModule, manifest: &ModelManifest, inputs: &Tensor) -> Result<Tensor, String> {
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
fn matting_loss(alpha: &Tensor, target: &Tensor, kind: AlphaKind) -> Tensor {
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
fn choose_phase2(
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
        scores.push(train::quality::mask_quality(&alpha, mask.as_raw(), w as usize, h as usize));
    }
    let (kept, dropped) = train::quality::split_by_quality(&scores, threshold);
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
fn module_alpha(
    module: &tch::TrainableCModule,
    manifest: &ModelManifest,
    rgb: &RgbImage,
    device: Device,
) -> Result<(Vec<f32>, (u32, u32)), String> {
    let _guard = tch::no_grad_guard();
    let spec = &manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    crate::engine::preprocess::normalize_into(rgb, spec, &mut buf);
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
fn infer_alpha(model: &crate::engine::model::LoadedModel, rgb: &RgbImage) -> Result<(Vec<u8>, (u32, u32)), String> {
    let spec = &model.manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    crate::engine::preprocess::normalize_into(rgb, spec, &mut buf);
    let batch = Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]);
    let out = model.forward(&batch).map_err(|e| e.to_string())?;
    Ok((out.alphas.into_iter().next().unwrap_or_default(), out.alpha_size))
}

fn embed(model: &crate::engine::model::LoadedModel, rgb: &RgbImage) -> Result<Vec<f32>, String> {
    let spec = &model.manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    crate::engine::preprocess::normalize_into(rgb, spec, &mut buf);
    let batch = Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]);
    let out = model.forward(&batch).map_err(|e| e.to_string())?;
    Ok(out.embeddings.into_iter().next().unwrap_or_default())
}

/// Held-out IoU (alpha > 0.5 against mask > 0.5) and MAE of a loaded model.
fn validate_loaded(
    model: &crate::engine::model::LoadedModel,
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
fn validate_module(
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

fn iou_mae(pairs: &[(Vec<f32>, Vec<u8>)]) -> (f64, f64) {
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

/// Whether a report should still be made for this lease.
pub fn report_for(task: &TaskMessage, token: u64, progress: TrainingProgress) -> Report {
    Report::Training { tenant: task.tenant.clone(), job: task.job.clone(), task: task.task, token, progress }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_order_is_a_function_of_seed_and_step() {
        let prepared: Vec<(usize, Prepared)> = (0..10)
            .map(|i| {
                (
                    i % 2,
                    Prepared {
                        index: i,
                        input: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                        target: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                    },
                )
            })
            .collect();
        let set: Vec<usize> = (0..10).collect();
        let a: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 7, s)).collect();
        let b: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 7, s)).collect();
        assert_eq!(a, b, "a resumed run sees the same batches");
        for batch in &a {
            let bucket = prepared[batch[0]].0;
            assert!(batch.iter().all(|&k| prepared[k].0 == bucket), "one bucket per batch: {batch:?}");
        }
        let other: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 8, s)).collect();
        assert_ne!(a, other, "another seed, other batches");
        let mut order: Vec<usize> = (0..50).collect();
        shuffle(&mut order, 3);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(order, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn iou_and_mae_of_a_perfect_and_an_inverted_prediction() {
        let mask = vec![0u8, 0, 255, 255];
        let perfect = vec![0.0f32, 0.0, 1.0, 1.0];
        let inverted = vec![1.0f32, 1.0, 0.0, 0.0];
        assert_eq!(iou_mae(&[(perfect, mask.clone())]), (1.0, 0.0));
        assert_eq!(iou_mae(&[(inverted, mask)]), (0.0, 1.0));
    }
}
