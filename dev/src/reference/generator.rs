//! The project's own background generator, since no weights can be downloaded: a small
//! pixel-space inpainting denoiser with a prompt encoder over the synthetic backdrops'
//! vocabulary (`bg-gen-base`, untrained, from `dev/python/export_generator.py`), trained
//! by the generator fine-tune's own training code on synthetic product photos with
//! background masks from the reference matting model (`bg-gen-ref`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fleet_protocol::fine_tune::{GeneratorTraining, Hyper, MaskSource, Sample, Schedule};
use fleet_protocol::manifest::generator::{
    BetaSchedule, ConditioningSpec, GeneratorSpec, Prediction, ScheduleSpec, Space,
};
use fleet_protocol::manifest::{InputSpec, ModelManifest, ModelRef, Task};
use fleet_protocol::DeviceSpec;
use fleet_synth::backdrop::PROMPT_WORDS;

use fleet_train::generator::{GenSample, GeneratorJob};
use fleet_train::progress::{Event, TrainOutcome, Trained};

use crate::error::{DevError, IoAt, JsonWhat, Result};

/// The untrained generator's name.
pub const BASE_NAME: &str = "bg-gen-base";
/// The trained reference generator's name.
pub const NAME: &str = "bg-gen-ref";
/// Version of both; bump when the architecture, data or training change.
pub const VERSION: &str = "1.0.0";
/// Pixels per sample on the CPU (32 x 32 square).
pub const PIXEL_BUDGET: u32 = 1024;
/// Channels of the denoiser's first stage.
pub const WIDTH: u32 = 32;
/// Length of the prompt embedding.
pub const COND_DIM: u32 = 32;
/// Tokens per prompt.
pub const MAX_TOKENS: u32 = 8;

const SCRIPT: &str = include_str!("../../python/export_generator.py");

/// How the reference generator is trained.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Photos per backdrop class.
    pub per_class: usize,
    /// Seed of the photos and the training.
    pub seed: u64,
    /// Steps of phase 1 and phase 2.
    pub steps: (u32, u32),
    /// Batch size.
    pub batch: u32,
    /// Background or scribble masks.
    pub masks: MaskSource,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { per_class: 60, seed: 11, steps: (4000, 600), batch: 16, masks: MaskSource::Background }
    }
}

/// `MODELS/<name>/<version>`.
pub fn dir_of(models_root: &Path, name: &str) -> PathBuf {
    models_root.join(name).join(VERSION)
}

/// The generator section of the reference generator.
fn spec() -> GeneratorSpec {
    GeneratorSpec {
        // v-prediction on Stable Diffusion's schedule: well conditioned at both ends, so a
        // small model trained briefly still samples cleanly in a few steps.
        prediction: Prediction::V,
        schedule: ScheduleSpec {
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            train_steps: 1000,
        },
        space: Space::Pixel,
        conditioning: ConditioningSpec::Text {
            encoder: "text_encoder.pt".into(),
            tokenizer: "tokenizer.json".into(),
            max_tokens: MAX_TOKENS,
            pad_id: 0,
            negative_prompt: true,
        },
        pixel_budget: PIXEL_BUDGET,
        multiple_of: 4,
        clip_sample: Some(1.0),
        // Measured: stronger guidance over-saturates this small model (EXPERIMENTS.md).
        guidance: Some(5.0),
    }
}

/// Writes the untrained generator into `dir` (atomically), unless it is there.
pub fn ensure_base(python: &Path, models_root: &Path) -> Result<PathBuf> {
    let dir = dir_of(models_root, BASE_NAME);
    if complete(&dir) {
        return Ok(dir);
    }
    let parent = dir.parent().expect("a model folder has a parent");
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = tempfile::Builder::new().prefix(".building-").tempdir_in(parent).at(parent)?;
    let mut script =
        tempfile::Builder::new().prefix("export_generator-").suffix(".py").tempfile().at(&std::env::temp_dir())?;
    script.write_all(SCRIPT.as_bytes()).at(script.path())?;
    script.flush().at(script.path())?;
    let output = Command::new(python)
        .arg(script.path())
        .arg(tmp.path())
        .args(["--vocab", &PROMPT_WORDS.join(","), "--seed", "5"])
        .args(["--width", &WIDTH.to_string(), "--cond-dim", &COND_DIM.to_string()])
        .output()
        .map_err(|cause| DevError::PythonStart { python: python.to_path_buf(), cause })?;
    if !output.status.success() {
        return Err(DevError::Exporter {
            script: "export_generator.py",
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).what("export_generator.py report")?;
    let parameters = report["parameters"].as_u64().unwrap_or(0);
    let manifest = ModelManifest {
        name: BASE_NAME.into(),
        version: VERSION.into(),
        task: Task::BackgroundGenerator,
        file: "denoiser.pt".into(),
        trainable_file: None,
        input: InputSpec { height: 32, width: 32, scale: 1.0 / 127.5, mean: [1.0; 3], std: [1.0; 3], fixed: false },
        output: None,
        generator: Some(spec()),
        parameters,
        // Activations of a guided batch of 8 at 32 x 32, with room for the sampler.
        memory_per_image_mib: 4.0,
        weights_mib: parameters as f64 * 4.0 / (1024.0 * 1024.0),
        training: serde_json::json!({"state": "untrained: seeded initial weights", "vocabulary": PROMPT_WORDS}),
        metrics: None,
        precision: Default::default(),
        max_batch: None,
        memory_measured: None,
        source: None,
        training_set: None,
    };
    let manifest_path = tmp.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).what("encoding the manifest")?)
        .at(&manifest_path)?;
    ModelManifest::from_json(&std::fs::read(&manifest_path).at(&manifest_path)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp.keep(), &dir).at(&dir)?;
    Ok(dir)
}

/// Whether `dir` holds a manifest and every file it names.
fn complete(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else { return false };
    let Ok(manifest) = ModelManifest::from_json(&bytes) else { return false };
    fleet_store::registry::model_files(&manifest).iter().all(|f| dir.join(f).exists())
}

/// The synthetic training photos ([`fleet_synth::training_photos`]) as a data set's samples,
/// with the keys `./fleet` uploads them under.
pub fn photos(per_class: usize, seed: u64) -> Vec<GenSample> {
    fleet_synth::training_photos(per_class, seed)
        .into_iter()
        .enumerate()
        .map(|(n, p)| GenSample {
            line: n + 1,
            sample: Sample {
                image: format!("synthetic/backdrops/{}", p.name),
                mask: None,
                prompt: Some(p.prompt),
                contributor: Some(p.contributor),
                licence: Some(LICENCE.into()),
            },
            rgb: p.image,
        })
        .collect()
}

/// Licence of the synthetic photos (the project made them).
pub const LICENCE: &str = "cc0-1.0";

/// Trains `base` on synthetic photos with `cfg`, in this process; the result is a generator
/// folder (in a scratch folder under `work`) named `output`.
pub fn train(
    base: &Path,
    matting: &Path,
    cfg: &GeneratorConfig,
    output: ModelRef,
    work: &Path,
) -> Result<TrainOutcome> {
    let hyper = reference_hyper(cfg.steps, cfg.batch, cfg.seed);
    let job = GeneratorJob {
        samples: photos(cfg.per_class, cfg.seed),
        hyper,
        settings: GeneratorTraining {
            mask_model: format!("{}@{}", super::train::NAME, super::train::VERSION),
            masks: cfg.masks,
            dilate_pct: 4.0,
            leak_threshold: 0.35,
        },
        base_dir: base.to_path_buf(),
        mask_dir: matting.to_path_buf(),
        device: DeviceSpec::Auto,
        work: work.to_path_buf(),
        resume: None,
        output,
        parent: ModelRef { name: BASE_NAME.into(), version: VERSION.into() },
        stop: Arc::new(AtomicBool::new(false)),
        yield_now: Arc::new(AtomicBool::new(false)),
    };
    match run_local(job)? {
        Trained::Done(outcome) => Ok(outcome),
        Trained::Yielded(step) => Err(DevError::Yielded { step }),
    }
}

/// Runs a generator training on this thread, logging its progress; checkpoints stay local.
pub fn run_local(job: GeneratorJob) -> Result<Trained> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(4);
    let listener = std::thread::spawn(move || {
        let mut last = 0;
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Progress(p) => {
                    if p.step >= last + 100 || p.step == p.total_steps || p.validation.is_some() {
                        last = p.step;
                        let loss = p.steps.last().map(|s| s.loss);
                        tracing::info!(step = p.step, total = p.total_steps, loss = ?loss, steps_per_s = p.steps_per_s,
                            validation = ?p.validation, "training the generator");
                    }
                }
                Event::Checkpoint { done, .. } => {
                    let _ = done.send(Ok(()));
                }
            }
        }
    });
    let trained = job.train(&tx).map_err(DevError::Training);
    drop(tx);
    let _ = listener.join();
    trained
}

/// The reference generator in `MODELS/bg-gen-ref/<version>`, trained once and cached; the
/// untrained base beside it.
pub fn ensure_reference_generator(python: &Path, models_root: &Path, matting: &Path) -> Result<PathBuf> {
    let base = ensure_base(python, models_root)?;
    let dir = dir_of(models_root, NAME);
    if complete(&dir) {
        tracing::info!(dir = %dir.display(), "reference generator is cached");
        return Ok(dir);
    }
    tracing::info!(dir = %dir.display(), "training the reference generator (once per version)");
    let parent = dir.parent().expect("a model folder has a parent");
    std::fs::create_dir_all(parent).at(parent)?;
    let work = tempfile::Builder::new().prefix(".training-").tempdir_in(parent).at(parent)?;
    let started = std::time::Instant::now();
    let outcome = train(
        &base,
        matting,
        &GeneratorConfig::default(),
        ModelRef { name: NAME.into(), version: VERSION.into() },
        work.path(),
    )?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), report = %outcome.report["phases"], "reference generator trained");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&outcome.dir, &dir).at(&dir)?;
    Ok(dir)
}

/// One arm of the masks experiment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Arm {
    /// Scribble or background masks.
    pub masks: MaskSource,
    /// Samples dropped by the leak filter.
    pub leaked: usize,
    /// Held-out denoising error after training, over the whole image and the background.
    pub validation: serde_json::Value,
    /// Training seconds.
    pub train_seconds: f64,
    /// The automatic check in quality mode.
    pub evaluation: crate::generate::evaluate::Evaluation,
}

/// EXPERIMENTS.md's experiment: the same base, data, steps and seed trained once on
/// scribble masks (general inpainting: the naive method) and once on background masks
/// (the advanced one), each checked on `photos` held-out photos.
pub fn masks_experiment(python: &Path, models_root: &Path, cfg: &GeneratorConfig, photos: usize) -> Result<Vec<Arm>> {
    let matting = super::train::ensure_reference_model(models_root)?;
    let base = ensure_base(python, models_root)?;
    let device = fleet_engine::resolve_device(DeviceSpec::Auto)?;
    let matting_model = fleet_engine::model::LoadedModel::load(&matting, device)?;
    let classifier = crate::generate::classifier::BackdropClassifier::standard();
    let mut arms = Vec::new();
    for masks in [MaskSource::Scribble, MaskSource::Background] {
        let work = tempfile::tempdir().at(&std::env::temp_dir())?;
        let name = format!("experiment-{}", if masks == MaskSource::Scribble { "scribble" } else { "background" });
        let started = std::time::Instant::now();
        let outcome = train(
            &base,
            &matting,
            &GeneratorConfig { masks, ..cfg.clone() },
            ModelRef { name, version: VERSION.into() },
            work.path(),
        )?;
        let train_seconds = started.elapsed().as_secs_f64();
        let generator = fleet_engine::generate::Generator::load(&outcome.dir, device)?;
        let opts = fleet_engine::generate::GenerateOptions {
            prompt: None,
            negative_prompt: None,
            reference: None,
            seed: 1,
            steps: 30,
            guidance: generator.spec.guidance.unwrap_or(7.5),
            results: 1,
            sampler: fleet_engine::diffusion::SamplerKind::Euler,
            dilate_pct: 2.0,
        };
        let evaluation =
            crate::generate::evaluate::evaluate(&generator, &matting_model, &classifier, photos, &opts, None)?;
        tracing::info!(?masks, ?evaluation, "experiment arm done");
        let phases = &outcome.report["phases"];
        arms.push(Arm {
            masks,
            leaked: outcome.report["filter"]["leak"]["dropped"].as_array().map_or(0, Vec::len),
            validation: phases[1]["validation"].clone(),
            train_seconds,
            evaluation,
        });
    }
    Ok(arms)
}

/// The experiment's table, as EXPERIMENTS.md shows it.
pub fn markdown(arms: &[Arm]) -> String {
    let mut s = String::from(
        "| masks | object expansion (mean, % of image) | growth (mean, % of image) | results grown > 2 % | \
         backdrop asked for recognised | product pixels kept | success rate | held-out background MSE | \
         leak-filtered | train s |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for a in arms {
        let e = &a.evaluation;
        s.push_str(&format!(
            "| {:?} | {:+.2} | {:.2} | {:.0} % | {:.0} % | {:.0} % | **{:.0} %** | {:.4} | {} | {:.0} |\n",
            a.masks,
            e.expansion_mean_pct,
            e.growth_mean_pct,
            100.0 * e.expanded_share,
            100.0 * e.class_accuracy,
            100.0 * e.foreground_exact,
            100.0 * e.success_rate,
            a.validation["background_mse"].as_f64().unwrap_or(f64::NAN),
            a.leaked,
            a.train_seconds,
        ));
    }
    s
}

/// The reference generator's training settings for `steps` (phase 1, phase 2), as every
/// experiment trains it: AdamW 2e-3, 50 warm-up steps, cosine, 10 % held out.
pub fn reference_hyper(steps: (u32, u32), batch: u32, seed: u64) -> Hyper {
    Hyper {
        steps_phase1: steps.0,
        steps_phase2: steps.1,
        batch_size: batch,
        lr: 2e-3,
        warmup_steps: 50.min(steps.0),
        schedule: Schedule::Cosine,
        validation_fraction: 0.1,
        seed,
        pixel_budget: PIXEL_BUDGET,
        quality_threshold: 0.75,
        checkpoint_every: 100_000,
        ..Hyper::default()
    }
}
