//! The fine-tune benchmark: the fleet's training loop (the one a `fine_tune` task runs, with
//! its schedule, progress events and checkpoints) against a bare tch loop over the same
//! in-memory batches, in the same process, and the cost of its checkpoints.
//!
//! ```text
//! synthetic samples --> buckets at the pixel budget --> the same batches, step by step
//!   bare:   forward, loss, backward, tch AdamW step
//!   fleet:  TrainJob (schedule, AdamW with checkpointable state, progress events)
//!   fleet + checkpoints every N steps, uploaded to S3 (or written to disk without S3)
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::fine_tune::{Hyper, Sample, Schedule};
use fleet_protocol::manifest::{ModelManifest, ModelRef};
use fleet_protocol::DeviceSpec;
use fleet_store::s3::S3Store;
use fleet_store::ObjectStore;
use tch::nn::{self, OptimizerConfig};
use tokio::sync::mpsc;

use fleet_train::data::split;
use fleet_train::matting::{forward, matting_loss, prepare_training, step_batch, Loaded, TrainJob};
use fleet_train::progress::{Event, Trained};

use crate::error::{DevError, IoAt, Result};

/// What to measure.
pub struct BenchTrain {
    /// The model folder to fine-tune (the reference model's).
    pub model_dir: PathBuf,
    /// Where it runs.
    pub device: DeviceSpec,
    /// Synthetic samples in memory.
    pub samples: usize,
    /// Optimiser steps per run.
    pub steps: u32,
    /// Samples per step.
    pub batch: u32,
    /// Pixels per training image.
    pub pixel_budget: u32,
    /// Checkpoint period of the checkpointed run.
    pub checkpoint_every: u32,
    /// Where checkpoints go; a local folder without it.
    pub s3: Option<S3Store>,

    /// Rounds of the three loops; the median round is reported.
    pub repeats: usize,
}

/// The figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchTrainReport {
    /// Steps per second of the bare tch loop.
    pub bare_steps_per_s: f64,
    /// Steps per second of the fleet's loop without checkpoints.
    pub fleet_steps_per_s: f64,
    /// Steps per second of the fleet's loop with checkpoints.
    pub checkpointed_steps_per_s: f64,
    /// Fleet against bare: the median of the rounds' ratios.
    pub fleet_vs_bare: f64,
    /// The lowest and highest round's ratio.
    pub fleet_vs_bare_range: (f64, f64),
    /// Checkpoint time as a share of the checkpointed run's training time.
    pub checkpoint_overhead: f64,
    /// Seconds spent writing and uploading checkpoints in the checkpointed run.
    pub checkpoint_seconds: f64,
    /// Checkpoints written in the checkpointed run.
    pub checkpoints: u32,
}

fn samples(count: usize) -> Vec<Loaded> {
    (0..count)
        .map(|i| {
            let s = fleet_synth::render_sample(31, i as u64, 96, 192);
            Loaded {
                line: i + 1,
                sample: Sample {
                    image: format!("bench/images/{i}.png"),
                    mask: Some(format!("bench/masks/{i}.png")),
                    prompt: None,
                    contributor: Some(format!("contributor-{}", i % 7)),
                    licence: Some("cc0".into()),
                },
                rgb: s.image,
                mask: s.alpha,
            }
        })
        .collect()
}

impl BenchTrain {
    fn hyper(&self, checkpoint_every: u32) -> Hyper {
        Hyper {
            steps_phase1: self.steps,
            steps_phase2: 0,
            batch_size: self.batch,
            lr: 1e-3,
            warmup_steps: 10.min(self.steps),
            schedule: Schedule::Cosine,
            pixel_budget: self.pixel_budget,
            validation_fraction: 0.1,
            checkpoint_every,
            seed: 1,
            ..Hyper::default()
        }
    }

    /// Runs every loop `repeats` times, interleaved (so drift on a shared machine hits all
    /// three alike), and reports the median round of each and the per-round ratios.
    pub fn run(&self) -> Result<BenchTrainReport> {
        let manifest_path = self.model_dir.join("manifest.json");
        let manifest = ModelManifest::from_json(&std::fs::read(&manifest_path).at(&manifest_path)?)?;
        let loaded = samples(self.samples);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| DevError::Threads { what: "tokio runtime", cause: e.to_string() })?;
        let mut rounds = Vec::new();
        for round in 0..self.repeats.max(1) {
            // Both loops train on a thread of their own, as a worker's fine-tune does.
            let b = std::thread::scope(|scope| scope.spawn(|| self.bare(&manifest, &loaded)).join())
                .map_err(|_| DevError::Panicked { what: "bare loop" })??;
            let (f, _, _) = self.fleet(&rt, &loaded, self.steps + 1)?;
            let c = self.fleet(&rt, &loaded, self.checkpoint_every)?;
            eprintln!(
                "round {round}: bare {b:.2} steps/s, fleet {f:.2} ({:.1} %), fleet + checkpoints {:.2} ({} in {:.2} s)",
                100.0 * f / b,
                c.0,
                c.2,
                c.1
            );
            rounds.push((b, f, c));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratios: Vec<f64> = rounds.iter().map(|(b, f, _)| f / b).collect();
        let checkpointed = median(rounds.iter().map(|r| r.2 .0).collect());
        let (_, _, c) = rounds.iter().find(|r| r.2 .0 == checkpointed).expect("a median round");
        let train_s = f64::from(self.steps) / c.0;
        Ok(BenchTrainReport {
            bare_steps_per_s: median(rounds.iter().map(|r| r.0).collect()),
            fleet_steps_per_s: median(rounds.iter().map(|r| r.1).collect()),
            checkpointed_steps_per_s: c.0,
            fleet_vs_bare: median(ratios.clone()),
            fleet_vs_bare_range: (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            ),
            checkpoint_overhead: c.1 / train_s,
            checkpoint_seconds: c.1,
            checkpoints: c.2,
        })
    }

    /// The bare loop: the same split, buckets, batches and flips, the same loss; tch's AdamW.
    fn bare(&self, manifest: &ModelManifest, loaded: &[Loaded]) -> Result<f64> {
        let device = fleet_engine::runtime::resolve_device(self.device)?;
        let h = self.hyper(self.steps + 1);
        let vs = nn::VarStore::new(device);
        let trainable = manifest.trainable_file.clone().unwrap_or_else(|| manifest.file.clone());
        let mut module = tch::TrainableCModule::load(self.model_dir.join(trainable), vs.root())?;
        let mut opt = nn::AdamW { wd: h.weight_decay, ..Default::default() }.build(&vs, h.lr)?;
        let (_, train_idx) = split(loaded.len(), &h);
        let prepared = prepare_training(loaded, &train_idx, &h, manifest);
        let set: Vec<usize> = (0..prepared.len()).collect();
        module.set_train();
        let started = Instant::now();
        for step in 0..self.steps {
            let (inputs, targets) = step_batch(&prepared, &set, &h, step, device);
            opt.zero_grad();
            let alpha = forward(&module, manifest, &inputs).map_err(DevError::Training)?;
            let loss = matting_loss(&alpha, &targets, manifest.matting_output().alpha);
            loss.backward();
            opt.step();
            let _ = loss.double_value(&[]);
        }
        Ok(f64::from(self.steps) / started.elapsed().as_secs_f64())
    }

    /// The fleet's loop; returns (steps/s of the loop, seconds spent on checkpoints,
    /// checkpoints written).
    fn fleet(&self, rt: &tokio::runtime::Runtime, loaded: &[Loaded], checkpoint_every: u32) -> Result<(f64, f64, u32)> {
        let work = tempfile::tempdir().at(&std::env::temp_dir())?;
        let job = TrainJob {
            samples: loaded.to_vec(),
            hyper: self.hyper(checkpoint_every),
            base_dir: self.model_dir.clone(),
            device: self.device,
            work: work.path().to_path_buf(),
            resume: None,
            output: ModelRef { name: "bench".into(), version: "1".into() },
            parent: ModelRef { name: "base".into(), version: "1".into() },
            stop: Arc::new(AtomicBool::new(false)),
            yield_now: Arc::new(AtomicBool::new(false)),
        };
        let (tx, mut rx) = mpsc::channel::<Event>(4);
        let trainer = std::thread::spawn(move || job.train(&tx));
        let sink = work.path().join("uploaded");
        let (checkpoint_s, checkpoints) = rt.block_on(async {
            let (mut seconds, mut count) = (0f64, 0u32);
            while let Some(event) = rx.recv().await {
                if let Event::Checkpoint { dir, step, done } = event {
                    let t = Instant::now();
                    let stored = self.store(&dir, &sink, step).await;
                    seconds += t.elapsed().as_secs_f64();
                    count += 1;
                    let _ = done.send(stored.map_err(|e| e.to_string()));
                }
            }
            (seconds, count)
        });
        let outcome = match trainer.join().map_err(|_| DevError::Panicked { what: "training thread" })? {
            Ok(Trained::Done(outcome)) => outcome,
            Ok(Trained::Yielded(step)) => return Err(DevError::Yielded { step }),
            Err(e) => return Err(DevError::Training(e)),
        };
        let loop_s = outcome.report["loop_seconds"].as_f64().unwrap_or(f64::NAN);
        // The checkpoint time is inside the loop's time: training waits for each upload.
        Ok((f64::from(self.steps) / loop_s, checkpoint_s, checkpoints))
    }

    async fn store(&self, dir: &Path, sink: &Path, step: u32) -> Result<()> {
        for file in fleet_train::checkpoint::CHECKPOINT_FILES {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).at(&path)?;
            match &self.s3 {
                Some(s3) => {
                    s3.put(&format!("bench/training/checkpoint/{file}"), bytes, "application/octet-stream").await?
                }
                None => {
                    std::fs::create_dir_all(sink).at(sink)?;
                    let path = sink.join(format!("{step}-{file}"));
                    std::fs::write(&path, bytes).at(&path)?;
                }
            }
        }
        Ok(())
    }
}
