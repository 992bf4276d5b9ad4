//! `fleet-dev`: the developers' tools beside the fleet: synthetic catalogs, the reference
//! models (built and checked here, never in the service), the benchmarks behind
//! BENCHMARKS.md and the experiments behind EXPERIMENTS.md.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleet_dev::reference::{self, train};
use fleet_engine::{Engine, EngineOptions, InferenceThread};
use fleet_imaging::composite::CompositeOptions;
use fleet_protocol::{DeviceSpec, ModelRef};
use fleet_synth::{write_catalog, CatalogSpec};

/// Command line of the developers' tools.
#[derive(Debug, Parser)]
#[command(name = "fleet-dev", version, about = "gpu-fleet developer tools: reference models, benchmarks, experiments")]
struct Cli {
    /// Configuration file (TOML, section `[dev]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic product-photo catalog (images, masks, catalog.json).
    Catalog {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 320)]
        min_side: u32,
        #[arg(long, default_value_t = 1600)]
        max_side: u32,
    },
    /// Build the reference matting model into MODELS/matting-ref/<version>, unless cached.
    ReferenceModel {
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        /// Optimiser steps of a build (the reference model's own: 720); fewer for a quick
        /// check of the build path, never for the model the fleet serves.
        #[arg(long)]
        steps: Option<usize>,
        /// Synthetic training images of a build (6000).
        #[arg(long)]
        samples: Option<usize>,
    },
    /// Write the untrained generator MODELS/bg-gen-base/<version>; without --base-only, also
    /// train the reference generator MODELS/bg-gen-ref/<version> here, in this process, with
    /// the generator fine-tune's training code (`./fleet` trains it through the fleet's own
    /// fine_tune job instead). Both cached.
    ReferenceGenerator {
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        #[arg(long)]
        base_only: bool,
    },
    /// EXPERIMENTS.md: the reference generator trained on scribble masks and on background
    /// masks with the same budget, each checked on held-out photos; prints the table.
    GeneratorExperiment {
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        /// Photos per backdrop class in the training set.
        #[arg(long, default_value_t = 60)]
        per_class: usize,
        /// Steps of phase 1 and of phase 2.
        #[arg(long, value_delimiter = ',', default_value = "4000,600")]
        steps: Vec<u32>,
        /// Held-out photos each model is checked on.
        #[arg(long, default_value_t = 120)]
        photos: usize,
    },
    /// EXPERIMENTS.md: the reference generator trained on a small set of photos plain and
    /// with corruption (Ambient Diffusion masks), same data, steps and seed; each one's
    /// generated backgrounds matched to their nearest training photo against the
    /// train-vs-train baseline (Somepalli et al.), and checked on held-out photos.
    MemorisationExperiment {
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        /// Photos per backdrop class given to the training (six classes; the leak filter and
        /// the validation split leave about 55 %).
        #[arg(long, default_value_t = 3)]
        per_class: usize,
        /// Steps of phase 1 and of phase 2.
        #[arg(long, value_delimiter = ',', default_value = "2000,0")]
        steps: Vec<u32>,
        /// Batch size.
        #[arg(long, default_value_t = 16)]
        batch: u32,
        /// corruption_ratio of the corrupted arm.
        #[arg(long, default_value_t = 0.5)]
        corruption: f64,
        /// Backgrounds sampled per arm and matched to the training photos.
        #[arg(long, default_value_t = 120)]
        samples: usize,
        /// Held-out photos of each arm's quality check.
        #[arg(long, default_value_t = 60)]
        photos: usize,
        /// Seed of the photos and the training.
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// Write each arm's most similar generated backgrounds beside their nearest training
        /// photo here.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Check a background generator on held-out synthetic photos (product kept, expansion,
    /// backdrop recognised) in fast and quality mode; prints the figures as JSON.
    GeneratorCheck {
        /// The generator's folder.
        #[arg(long)]
        generator: PathBuf,
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        #[arg(long, default_value_t = 60)]
        photos: usize,
        /// Write each input beside its result here (named by the class asked for and seen).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Fail (exit non-zero) when the backdrop asked for is recognised in fewer than this
        /// share of fast-mode results: the acceptance check a trained generator must pass.
        #[arg(long)]
        min_class_accuracy: Option<f64>,
    },
    /// Benchmark the reference generator: sampler steps/s against a bare tch loop (rounds
    /// interleaved), photos/s in fast and quality mode; prints a table for BENCHMARKS.md.
    BenchGenerate {
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 30)]
        steps: u32,
        /// Results per photo (the sampler's batch).
        #[arg(long, default_value_t = 4)]
        results: u32,
        #[arg(long, default_value_t = 12)]
        photos: usize,
        /// Side of the square test photos.
        #[arg(long, default_value_t = 256)]
        side: u32,
    },
    /// A matting model's quality: IoU and MAE on the synthetic held-out catalog, and the
    /// uncertainty score (share of pixels neither clear foreground nor background) of each
    /// photo given, most uncertain first. Prints JSON.
    EvalModel {
        #[command(flatten)]
        model: ModelArgs,
        /// Held-out synthetic images.
        #[arg(long, default_value_t = 60)]
        samples: usize,
        /// Catalog seed of the held-out set (by default the one the reference model's
        /// manifest figures come from).
        #[arg(long, default_value_t = fleet_dev::reference::train::EVAL_SEED)]
        seed: u64,
        /// Real photos to score.
        #[arg(long, value_delimiter = ',')]
        photos: Vec<PathBuf>,
    },
    /// Benchmark the engine on ~1 MP images at batch sizes 1, 8 and 32.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 64)]
        images: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batches: Vec<usize>,
    },
    /// The engine alone, in this process, over every object under an S3 prefix (downloaded
    /// first, not timed): the reference the fleet's catalog throughput is compared with.
    BenchPrefix {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// CPU threads for the CPU stages and libtorch; all cores by default.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The fine-tune benchmark: the fleet's training loop against a bare tch loop over the
    /// same in-memory batches, and the checkpoint overhead (checkpoints go to S3 when the
    /// FLEET_S3_* variables are set, to a local folder otherwise).
    BenchTrain {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 48)]
        samples: usize,
        #[arg(long, default_value_t = 150)]
        steps: u32,
        #[arg(long, default_value_t = 8)]
        batch: u32,
        #[arg(long, default_value_t = 16_384)]
        pixel_budget: u32,
        #[arg(long, default_value_t = 50)]
        checkpoint_every: u32,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
}

#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// Root of the local model registry (MODELS/<name>/<version>/).
    #[arg(long, env = "FLEET_MODEL_DIR")]
    models: PathBuf,
    /// Model as name@version; the reference model by default.
    #[arg(long)]
    model: Option<String>,
    /// cpu | cuda:N | auto
    #[arg(long, default_value = "auto", env = "FLEET_DEVICE")]
    device: String,
}

impl ModelArgs {
    fn start(&self) -> anyhow::Result<Engine> {
        let device: DeviceSpec = self.device.parse()?;
        let dir = match &self.model {
            Some(m) => {
                let r: ModelRef = m.parse()?;
                self.models.join(&r.name).join(&r.version)
            }
            None => reference::model_dir(&self.models),
        };
        let inference = InferenceThread::start(&dir, device)?;
        tracing::info!(model = %inference.manifest().model_ref(), device = ?inference.device(), "model loaded");
        Ok(Engine::new(inference))
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = fleet_config::layer(&<Cli as clap::CommandFactory>::command(), "dev") {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one command.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Catalog { out, count, seed, min_side, max_side } => {
            anyhow::ensure!(min_side >= 16 && min_side <= max_side, "need 16 <= min-side <= max-side");
            let spec =
                CatalogSpec { seed, count, min_long_side: min_side, max_long_side: max_side, ..Default::default() };
            let summary = write_catalog(&out, &spec)?;
            println!("wrote {} images to {}", summary.count, out.display());
        }
        Command::ReferenceModel { models, steps, samples } => {
            let mut cfg = train::TrainConfig::default();
            if let Some(steps) = steps {
                anyhow::ensure!(steps >= 1, "--steps must be at least 1");
                cfg.steps = steps;
                cfg.warmup_steps = cfg.warmup_steps.min(steps);
            }
            if let Some(samples) = samples {
                anyhow::ensure!(samples >= cfg.batch as usize, "--samples must be at least one batch ({})", cfg.batch);
                cfg.samples = samples;
                cfg.eval_samples = cfg.eval_samples.min(samples);
            }
            let dir = train::ensure_reference_model_with(&models, &cfg)?;
            println!("{}", std::fs::read_to_string(dir.join("manifest.json"))?);
        }
        Command::ReferenceGenerator { models, base_only } => {
            let python = fleet_dev::reference::trainable::python();
            let dir = if base_only {
                fleet_dev::reference::generator::ensure_base(&python, &models)?
            } else {
                let matting = train::ensure_reference_model(&models)?;
                fleet_dev::reference::generator::ensure_reference_generator(&python, &models, &matting)?
            };
            println!("{}", std::fs::read_to_string(dir.join("manifest.json"))?);
        }
        Command::GeneratorExperiment { models, per_class, steps, photos } => {
            anyhow::ensure!(steps.len() == 2, "--steps takes two numbers: phase 1, phase 2");
            let cfg = fleet_dev::reference::generator::GeneratorConfig {
                per_class,
                steps: (steps[0], steps[1]),
                ..Default::default()
            };
            let python = fleet_dev::reference::trainable::python();
            let arms = fleet_dev::reference::generator::masks_experiment(&python, &models, &cfg, photos)?;
            println!("{}", fleet_dev::reference::generator::markdown(&arms));
            println!("{}", serde_json::to_string_pretty(&arms)?);
        }
        Command::MemorisationExperiment {
            models,
            per_class,
            steps,
            batch,
            corruption,
            samples,
            photos,
            seed,
            save,
        } => {
            anyhow::ensure!(steps.len() == 2, "--steps takes two numbers: phase 1, phase 2");
            anyhow::ensure!((0.0..=0.9).contains(&corruption), "--corruption is a share in 0..=0.9");
            let cfg = fleet_dev::generate::memorise::MemoriseConfig {
                per_class,
                seed,
                steps: (steps[0], steps[1]),
                batch,
                corruption,
                samples,
                photos,
                save,
            };
            let python = fleet_dev::reference::trainable::python();
            let report = fleet_dev::generate::memorise::memorise_experiment(&python, &models, &cfg)?;
            println!("{}", fleet_dev::generate::memorise::markdown(&report));
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::GeneratorCheck { generator, models, photos, save, min_class_accuracy } => {
            let device = fleet_engine::resolve_device(fleet_protocol::DeviceSpec::Auto)?;
            let matting = fleet_engine::model::LoadedModel::load(&train::ensure_reference_model(&models)?, device)?;
            let generator = fleet_engine::generate::Generator::load(&generator, device)?;
            let classifier = fleet_dev::generate::classifier::BackdropClassifier::standard();
            for (mode, sampler, steps, guidance) in [
                (
                    "fast",
                    fleet_engine::diffusion::SamplerKind::Ddim { eta: 0.0 },
                    8,
                    generator.spec.guidance.unwrap_or(5.0),
                ),
                ("quality", fleet_engine::diffusion::SamplerKind::Euler, 30, generator.spec.guidance.unwrap_or(7.5)),
            ] {
                let opts = fleet_engine::generate::GenerateOptions {
                    prompt: None,
                    negative_prompt: None,
                    reference: None,
                    seed: 1,
                    steps,
                    guidance,
                    results: 1,
                    sampler,
                    dilate_pct: 2.0,
                };
                let save = save.as_ref().map(|d| d.join(mode));
                let e = fleet_dev::generate::evaluate::evaluate(
                    &generator,
                    &matting,
                    &classifier,
                    photos,
                    &opts,
                    save.as_deref(),
                )?;
                println!("{}", serde_json::json!({"mode": mode, "evaluation": e}));
                if let (Some(min), "fast") = (min_class_accuracy, mode) {
                    anyhow::ensure!(
                        e.class_accuracy >= min,
                        "the generator draws the backdrop asked for in {:.2} of {photos} held-out photos; \
                         {min:.2} is needed",
                        e.class_accuracy
                    );
                }
            }
        }
        Command::BenchGenerate { models, rounds, steps, results, photos, side } => {
            let device = fleet_engine::resolve_device(fleet_protocol::DeviceSpec::Auto)?;
            let dir = fleet_dev::reference::generator::dir_of(&models, fleet_dev::reference::generator::NAME);
            let generator = fleet_engine::generate::Generator::load(&dir, device)?;
            let b = fleet_dev::generate::bench::run(&generator, rounds, steps, results, photos, side)?;
            println!("{}", fleet_dev::generate::bench::markdown(&b, generator.sample_size(side, side), side));
            println!("{}", serde_json::to_string_pretty(&b)?);
        }
        Command::EvalModel { model, samples, seed, photos } => {
            let engine = model.start()?;
            let inference = engine.inference();
            let started = std::time::Instant::now();
            let synthetic = fleet_dev::reference::eval::evaluate(
                inference,
                seed,
                samples,
                fleet_dev::reference::train::EVAL_LONG_SIDE,
            )?;
            let seconds = started.elapsed().as_secs_f64();
            let mut scored = Vec::new();
            for path in &photos {
                let rgb = image::open(path)?.to_rgb8();
                let spec = &inference.manifest().input;
                let mut input = vec![0.0f32; 3 * (spec.width * spec.height) as usize];
                fleet_engine::preprocess::normalize_into(&rgb, spec, &mut input);
                let out = inference.infer(input, 1)?.output;
                let (h, w) = out.alpha_size;
                let alpha = image::GrayImage::from_raw(w, h, out.alphas[0].clone()).expect("alpha matches its size");
                let alpha = fleet_imaging::resize::resize_gray(&alpha, rgb.width(), rgb.height());
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                scored.push((name, fleet_imaging::matte::uncertainty(&alpha)));
            }
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            let report = serde_json::json!({
                "model": inference.manifest().model_ref().to_string(),
                "device": format!("{:?}", inference.device()),
                "synthetic": {"iou": synthetic.iou, "mae": synthetic.mae, "worst_iou": synthetic.worst_iou,
                              "samples": synthetic.samples, "seed": seed, "seconds": seconds},
                "photos_by_uncertainty": scored.iter().map(|(n, u)| serde_json::json!({"photo": n, "uncertainty": u}))
                    .collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Bench { model, images, batches } => {
            let engine = model.start()?;
            let cfg = fleet_dev::bench::BenchConfig { batch_sizes: batches, images, ..Default::default() };
            let rows = fleet_dev::bench::run(&engine, &cfg)?;
            let sample = fleet_dev::bench::make_inputs(16, cfg.size);
            let one_core = fleet_dev::bench::cpu_stages_one_core(&engine, &sample, cfg.format)?;
            let device = format!("{:?}", engine.inference().device());
            println!("{}", fleet_dev::bench::markdown(&rows, &one_core, &cfg, &device, rayon::current_num_threads()));
        }
        Command::BenchPrefix { model, prefix, batch, threads } => {
            if let Some(threads) = threads {
                fleet_engine::set_cpu_threads(threads)?;
            }
            bench_prefix(&model, &prefix, batch)?
        }
        Command::BenchTrain { model, samples, steps, batch, pixel_budget, checkpoint_every, repeats } => {
            let model_dir = match &model.model {
                Some(m) => {
                    let r: ModelRef = m.parse()?;
                    model.models.join(&r.name).join(&r.version)
                }
                None => reference::model_dir(&model.models),
            };
            let s3 = fleet_store::s3::S3Config::from_env().ok().map(|c| fleet_store::s3::S3Store::new(&c));
            let bench = fleet_dev::bench_train::BenchTrain {
                model_dir,
                device: model.device.parse()?,
                samples,
                steps,
                batch,
                pixel_budget,
                checkpoint_every,
                s3,
                repeats,
            };
            let r = bench.run()?;
            println!("| device | steps | batch | pixels | bare tch steps/s | fleet steps/s | fleet / bare (median round, range) | with checkpoints every {checkpoint_every} steps | checkpoint overhead |");
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            println!(
                "| {} | {steps} | {batch} | {pixel_budget} | {:.2} | {:.2} | {:.1} % ({:.1} to {:.1} %) | {:.2} steps/s ({} checkpoints to {}, {:.2} s) | {:.1} % |",
                model.device,
                r.bare_steps_per_s,
                r.fleet_steps_per_s,
                100.0 * r.fleet_vs_bare,
                100.0 * r.fleet_vs_bare_range.0,
                100.0 * r.fleet_vs_bare_range.1,
                r.checkpointed_steps_per_s,
                r.checkpoints,
                if bench.s3.is_some() { "S3" } else { "local disk" },
                r.checkpoint_seconds,
                100.0 * r.checkpoint_overhead
            );
        }
    }
    Ok(())
}

fn bench_prefix(model: &ModelArgs, prefix: &str, batch: usize) -> anyhow::Result<()> {
    use fleet_store::ObjectStore;
    let s3 = fleet_store::s3::S3Store::new(&fleet_store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?);
    let items = runtime()?.block_on(async {
        let keys = fleet_store::list_all(&s3, prefix).await?;
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            items.push(fleet_engine::InputItem { bytes: s3.get(&key).await?, id: key });
        }
        anyhow::Ok(items)
    })?;
    let engine = model.start()?;
    let opts = EngineOptions {
        batch_size: batch,
        composite: CompositeOptions {
            background: fleet_imaging::composite::Background::Color([242, 242, 242]),
            ..Default::default()
        },
        format: fleet_imaging::encode::OutputFormat::Jpeg { quality: 90 },
        ..Default::default()
    };
    let count = items.len();
    let started = std::time::Instant::now();
    let mut ok = 0usize;
    engine.process_stream(items.into_iter(), &opts, |r| ok += r.is_ok() as usize)?;
    let secs = started.elapsed().as_secs_f64();
    println!("in-process engine: {ok} of {count} images in {secs:.2} s = {:.2} images/s", ok as f64 / secs);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
