//! Training the reference matting model on the synthetic catalog, tracing it to TorchScript
//! (plus a trainable copy, see `trainable`) and writing it with its manifest. Built once per version and cached: the demo and the
//! tests load the cached folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fleet_imaging::resize::{resize_gray, resize_rgb};
use fleet_protocol::manifest::{AlphaKind, EmbeddingSpec, InputSpec, Metrics, ModelManifest, OutputSpec, Task};
use fleet_protocol::DeviceSpec;
use fleet_synth::Scene;
use rayon::prelude::*;
use tch::nn::{self, OptimizerConfig};
use tch::{CModule, Device, Kind, Reduction, Tensor};

use super::eval::{evaluate, EvalReport};
use super::trainable::{self, TRAINABLE_FILE};
use super::unet::{UNet, EMBEDDING_DIM, WIDTHS};
use crate::error::{IoAt, JsonWhat, Result};
use fleet_engine::InferenceThread;

/// Registry name of the reference model.
pub const NAME: &str = "matting-ref";
/// Registry version; bump it whenever the recipe below changes, so caches rebuild.
pub const VERSION: &str = "1.0.0";
/// Seed of the held-out evaluation catalog (never used for training).
pub const EVAL_SEED: u64 = 0xE7A1;
/// TorchScript file of the embedding model, next to `model.pt`.
pub const EMBEDDING_FILE: &str = "embed.pt";
/// Long-side range of the held-out evaluation images.
pub const EVAL_LONG_SIDE: (u32, u32) = (320, 1600);

/// The training recipe.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Seed of the training catalog and of libtorch's RNG.
    pub seed: u64,
    /// Distinct synthetic training images.
    pub samples: usize,
    /// Square model input side.
    pub input_side: u32,
    /// Long side the scenes are rendered at before being resized to the input, as the engine resizes.
    pub render_long_side: u32,
    /// Images per optimiser step.
    pub batch: i64,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate (Adam).
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// Held-out images measured after training.
    pub eval_samples: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 1,
            samples: 6000,
            input_side: 128,
            render_long_side: 256,
            batch: 16,
            steps: 720,
            lr: 4e-3,
            warmup_steps: 60,
            eval_samples: 200,
        }
    }
}

/// Mean and std the reference model is trained with (and declares in its manifest).
const MEAN: [f32; 3] = [0.5, 0.5, 0.5];
const STD: [f32; 3] = [0.25, 0.25, 0.25];

/// Folder of the reference model inside a models root.
pub fn model_dir(models_root: &Path) -> PathBuf {
    models_root.join(NAME).join(VERSION)
}

/// Returns the cached reference model folder, training it first when it is missing. A
/// folder built before `trainable.pt` existed gets it added from its weights.
pub fn ensure_reference_model(models_root: &Path) -> Result<PathBuf> {
    ensure_reference_model_with(models_root, &TrainConfig::default())
}

/// [`ensure_reference_model`] with the training configuration of a build: the first-run check
/// builds through this same path with a shortened one.
pub fn ensure_reference_model_with(models_root: &Path, cfg: &TrainConfig) -> Result<PathBuf> {
    let dir = model_dir(models_root);
    if let Ok(bytes) = std::fs::read(dir.join("manifest.json")) {
        let complete = ["model.pt", EMBEDDING_FILE, "weights.safetensors"].iter().all(|f| dir.join(f).exists());
        let manifest = ModelManifest::from_json(&bytes);
        let trained = manifest.as_ref().map_or(0, |m| m.training["steps"].as_u64().unwrap_or(0));
        if trained < cfg.steps as u64 {
            // Builds before every step was required could stop early on a busy machine; a
            // model cut short gives poorer masks to everything built on it.
            tracing::warn!(dir = %dir.display(), trained, steps = cfg.steps, "cached reference model was cut short: rebuilding");
        } else if let (Ok(manifest), true) = (manifest, complete) {
            if !manifest.trainable_file.as_deref().is_some_and(|f| dir.join(f).exists()) {
                tracing::info!(dir = %dir.display(), "adding the trainable module to the cached reference model");
                trainable::add_in_place(&trainable::python(), &dir, manifest)?;
            }
            tracing::info!(dir = %dir.display(), "reference model is cached");
            return Ok(dir);
        }
    }
    tracing::info!(dir = %dir.display(), steps = cfg.steps, samples = cfg.samples,
        "building the reference model (once per version)");
    build(cfg, &dir)?;
    Ok(dir)
}

/// Trains, traces, evaluates and writes the model into `dir` (atomically: a temporary
/// sibling folder renamed into place, so a crash never leaves half a model).
pub fn build(cfg: &TrainConfig, dir: &Path) -> Result<ModelManifest> {
    let parent = dir.parent().expect("model dir has a parent");
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = tempfile::Builder::new().prefix(".building-").tempdir_in(parent).at(parent)?;
    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = UNet::new(&vs.root());
    let started = Instant::now();
    let (images, masks) = render_training_set(cfg);
    let render_s = started.elapsed().as_secs_f64();
    let summary = fit(cfg, &vs, &net, &images, &masks)?;
    vs.save(tmp.path().join("weights.safetensors"))?;
    let side = cfg.input_side as i64;
    // Weights go into the trace as constants; they must not carry autograd state.
    vs.freeze();
    let _no_grad = tch::no_grad_guard();
    let example = Tensor::zeros([1, 3, side, side], (Kind::Float, Device::Cpu));
    // tch traces each returned tensor as a separate graph output, which TorchScript cannot
    // save as one method, so the alpha and the embedding are traced as two modules.
    let mut alpha = CModule::create_by_tracing("MattingRef", "forward", &[example.shallow_clone()], &mut |xs| {
        vec![net.forward_t(&xs[0], false).logits.sigmoid()]
    })?;
    alpha.set_eval();
    alpha.save(tmp.path().join("model.pt"))?;
    let mut embed = CModule::create_by_tracing("MattingRefEmbedding", "forward", &[example], &mut |xs| {
        vec![net.forward_t(&xs[0], false).embedding]
    })?;
    embed.set_eval();
    embed.save(tmp.path().join(EMBEDDING_FILE))?;
    let trainable_path = tmp.path().join(TRAINABLE_FILE);
    trainable::export(&trainable::python(), tmp.path(), &trainable_path, cfg.input_side, cfg.input_side)?;
    let mut manifest = manifest(
        cfg,
        &vs,
        serde_json::json!({
            "dataset": format!("fleet-synth catalog, seed {}, {} images rendered at long side {} and resized to {}x{}", cfg.seed, cfg.samples, cfg.render_long_side, side, side),
            "steps": summary.steps,
            "batch": cfg.batch,
            "optimizer": "adam",
            "lr": cfg.lr,
            "schedule": format!("linear warm-up {} steps, cosine decay", cfg.warmup_steps),
            "loss": "binary cross-entropy + soft IoU",
            "final_loss": summary.final_loss,
            "render_seconds": render_s,
            "train_seconds": summary.seconds,
            "threads": tch::get_num_threads(),
        }),
    );
    let manifest_path = tmp.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).what("encoding the manifest")?)
        .at(&manifest_path)?;
    let report = measure(tmp.path(), cfg.eval_samples)?;
    manifest.metrics = Some(report.metrics());
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).what("encoding the manifest")?)
        .at(&manifest_path)?;
    tracing::info!(iou = report.iou, mae = report.mae, "reference model measured on held-out images");
    if dir.exists() {
        std::fs::remove_dir_all(dir).at(dir)?;
    }
    std::fs::rename(tmp.keep(), dir).at(dir)?;
    Ok(manifest)
}

fn measure(dir: &Path, samples: usize) -> Result<EvalReport> {
    let inference = InferenceThread::start(dir, DeviceSpec::Cpu)?;
    Ok(evaluate(&inference, EVAL_SEED, samples, EVAL_LONG_SIDE)?)
}

/// Renders the training catalog at its natural aspect ratio and resizes it to the model
/// input exactly as the engine will at inference time.
fn render_training_set(cfg: &TrainConfig) -> (Tensor, Tensor) {
    let side = cfg.input_side;
    let rendered: Vec<(Vec<u8>, Vec<u8>)> = (0..cfg.samples as u64)
        .into_par_iter()
        .map(|i| {
            let scene = Scene::generate(cfg.seed, i);
            let ar = scene.aspect_ratio();
            let long = cfg.render_long_side as f32;
            let (w, h) = if ar >= 1.0 { (long, long / ar) } else { (long * ar, long) };
            let sample = scene.render(w.round().max(8.0) as u32, h.round().max(8.0) as u32);
            let img = resize_rgb(&sample.image, side, side);
            let alpha = resize_gray(&sample.alpha, side, side);
            (img.into_raw(), alpha.into_raw())
        })
        .collect();
    let n = cfg.samples as i64;
    let s = side as i64;
    let (imgs, alphas): (Vec<Vec<u8>>, Vec<Vec<u8>>) = rendered.into_iter().unzip();
    let images = Tensor::from_slice(&imgs.concat()).view([n, s, s, 3]).permute([0, 3, 1, 2]).contiguous();
    let masks = Tensor::from_slice(&alphas.concat()).view([n, 1, s, s]);
    (images, masks)
}

struct FitSummary {
    steps: usize,
    final_loss: f64,
    seconds: f64,
}

fn fit(cfg: &TrainConfig, vs: &nn::VarStore, net: &UNet, images: &Tensor, masks: &Tensor) -> Result<FitSummary> {
    let mut opt = nn::Adam::default().build(vs, cfg.lr)?;
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
    let n = images.size()[0];
    let started = Instant::now();
    let mut smoothed = f64::NAN;
    let mut steps = 0;
    for step in 0..cfg.steps {
        opt.set_lr(learning_rate(cfg, step));
        let idx = Tensor::randint(n, [cfg.batch], (Kind::Int64, Device::Cpu));
        let mut x = (images.index_select(0, &idx).to_kind(Kind::Float) / 255.0 - &mean) / &std;
        let mut y = masks.index_select(0, &idx).to_kind(Kind::Float) / 255.0;
        if step % 2 == 1 {
            x = x.flip([3]);
            y = y.flip([3]);
        }
        let logits = net.forward_t(&x, true).logits;
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::Mean)
            + soft_iou_loss(&logits.sigmoid(), &y);
        opt.backward_step(&loss);
        let l = loss.double_value(&[]);
        smoothed = if smoothed.is_nan() { l } else { 0.95 * smoothed + 0.05 * l };
        steps = step + 1;
        if step % 100 == 0 {
            tracing::info!(
                step,
                loss = smoothed,
                lr = learning_rate(cfg, step),
                elapsed_s = started.elapsed().as_secs(),
                "training"
            );
        }
    }
    Ok(FitSummary { steps, final_loss: smoothed, seconds: started.elapsed().as_secs_f64() })
}

/// Linear warm-up to `lr`, then cosine decay to 5% of it at the last step.
pub fn learning_rate(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = (cfg.steps - cfg.warmup_steps).max(1) as f64;
    let t = (step - cfg.warmup_steps) as f64 / span;
    cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

fn soft_iou_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    let dims = [1i64, 2, 3];
    let inter = (pred * target).sum_dim_intlist(&dims[..], false, Kind::Float);
    let union = (pred + target - pred * target).sum_dim_intlist(&dims[..], false, Kind::Float);
    let ratio: Tensor = (inter + 1.0) / (union + 1.0);
    ratio.neg().mean(Kind::Float) + 1.0
}

fn manifest(cfg: &TrainConfig, vs: &nn::VarStore, training: serde_json::Value) -> ModelManifest {
    let parameters: i64 = vs.variables().values().map(Tensor::numel).map(|n| n as i64).sum();
    let side = cfg.input_side as f64;
    // Every activation of one forward pass at fp32, doubled for the temporaries libtorch
    // keeps alive between layers: an upper bound rather than a measurement.
    let mut floats = 3.0 * side * side;
    for (stage, &w) in WIDTHS[..4].iter().enumerate() {
        let px = side * side / 4f64.powi(stage as i32);
        floats += 2.0 * 2.0 * w as f64 * px; // encoder and decoder double convs
    }
    floats += 2.0 * WIDTHS[4] as f64 * side * side / 256.0;
    ModelManifest {
        name: NAME.to_string(),
        version: VERSION.to_string(),
        task: Task::Matting,
        file: "model.pt".to_string(),
        trainable_file: Some(TRAINABLE_FILE.to_string()),
        input: InputSpec {
            height: cfg.input_side,
            width: cfg.input_side,
            scale: 1.0 / 255.0,
            mean: MEAN,
            std: STD,
            fixed: false,
        },
        output: Some(OutputSpec {
            alpha: AlphaKind::Probability,
            alpha_index: None,
            embedding: EmbeddingSpec::Model { file: EMBEDDING_FILE.to_string(), dim: EMBEDDING_DIM as usize },
            postprocess: Default::default(),
        }),
        generator: None,
        parameters: parameters as u64,
        memory_per_image_mib: 2.0 * floats * 4.0 / (1024.0 * 1024.0),
        weights_mib: parameters as f64 * 4.0 / (1024.0 * 1024.0),
        training,
        metrics: None::<Metrics>,
        precision: Default::default(),
        max_batch: None,
        memory_measured: None,
        source: None,
        training_set: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TrainConfig {
        TrainConfig {
            samples: 24,
            input_side: 32,
            render_long_side: 48,
            batch: 4,
            steps: 3,
            warmup_steps: 2,
            eval_samples: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_tiny_build_traces_loads_and_records_its_metrics() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m").join("1");
        let manifest = build(&tiny(), &dir).unwrap();
        assert_eq!(manifest.training["steps"], 3);
        assert_eq!(manifest.trainable_file.as_deref(), Some(TRAINABLE_FILE));
        assert!(dir.join(TRAINABLE_FILE).is_file());
        assert_eq!(manifest.metrics.as_ref().map(|m| m.samples), Some(3));
        let reread = ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!((reread.output, reread.input), (manifest.output, manifest.input));
        // serde_json parses floats fast rather than exactly: a figure may come back 1 ulp off.
        let (again, first) = (reread.metrics.unwrap(), manifest.metrics.unwrap());
        assert!((again.iou - first.iou).abs() < 1e-12 && (again.mae - first.mae).abs() < 1e-12, "{again:?} {first:?}");
        assert_eq!((again.samples, again.dataset), (first.samples, first.dataset));
        let inference = InferenceThread::start(&dir, DeviceSpec::Cpu).unwrap();
        let out = inference.infer(vec![0.0; 2 * 3 * 32 * 32], 2).unwrap().output;
        assert_eq!((out.alphas.len(), out.alpha_size), (2, (32, 32)));
        assert_eq!(out.embeddings[0].len(), EMBEDDING_DIM as usize);
        assert!(!root.path().join("m").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".building")));
    }

    #[test]
    fn a_cached_model_trained_for_fewer_steps_than_asked_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let dir = model_dir(root.path());
        build(&tiny(), &dir).unwrap();
        let longer = TrainConfig { steps: tiny().steps + 2, ..tiny() };
        assert_eq!(ensure_reference_model_with(root.path(), &longer).unwrap(), dir);
        let manifest = ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest.training["steps"], longer.steps, "rebuilt with every step");
        // Asked again with the same steps, it is cached.
        let built = std::fs::read(dir.join("model.pt")).unwrap();
        ensure_reference_model_with(root.path(), &longer).unwrap();
        assert_eq!(std::fs::read(dir.join("model.pt")).unwrap(), built);
    }

    #[test]
    fn a_cached_folder_without_the_trainable_module_gets_it_without_retraining() {
        let root = tempfile::tempdir().unwrap();
        let dir = model_dir(root.path());
        build(&tiny(), &dir).unwrap();
        std::fs::remove_file(dir.join(TRAINABLE_FILE)).unwrap();
        let read_manifest = || ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let old = ModelManifest { trainable_file: None, ..read_manifest() };
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        let traced = std::fs::read(dir.join("model.pt")).unwrap();

        assert_eq!(ensure_reference_model_with(root.path(), &tiny()).unwrap(), dir);
        let added = read_manifest();
        assert_eq!(added.trainable_file.as_deref(), Some(TRAINABLE_FILE));
        assert!(dir.join(TRAINABLE_FILE).is_file());
        assert_eq!(added.training, old.training, "the model was not retrained");
        assert_eq!(std::fs::read(dir.join("model.pt")).unwrap(), traced);
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions();
        assert_eq!((mode(TRAINABLE_FILE), mode("manifest.json")), (mode("model.pt"), mode("model.pt")));
        let leftovers: Vec<_> = dir
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    }

    #[test]
    fn learning_rate_warms_up_linearly_then_decays() {
        let cfg = TrainConfig { lr: 1.0, warmup_steps: 10, steps: 110, ..Default::default() };
        assert!((learning_rate(&cfg, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&cfg, 4) - 0.5).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10) - 1.0).abs() < 1e-12);
        assert!(learning_rate(&cfg, 60) < learning_rate(&cfg, 30));
        assert!((learning_rate(&cfg, 110) - 0.05).abs() < 1e-9);
    }
}
