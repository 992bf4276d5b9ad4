//! Commands of the `fleet-worker` binary: make a synthetic catalog, build the reference
//! model, run the engine over a folder, benchmark it, and report the devices.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleet_common::{DeviceSpec, ModelRef};
use fleet_imaging::composite::CompositeOptions;
use fleet_imaging::decode::DecodeLimits;
use fleet_synth::{write_catalog, CatalogSpec};

use crate::engine::{Engine, EngineOptions, InferenceThread};
use crate::options::{parse_background, parse_format, parse_morphology};
use crate::reference::{self, train};

/// Command line of the worker's engine.
#[derive(Debug, Parser)]
#[command(name = "fleet-worker", version, about = "gpu-fleet worker: background-replacement engine")]
pub struct Cli {
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
    /// Run the engine over every image in a folder, with a contact sheet.
    RunFolder {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// transparent | color:#rrggbb | image:PATH | blur[:PCT]
        #[arg(long, default_value = "transparent")]
        background: String,
        /// png | jpeg[:Q] | webp
        #[arg(long, default_value = "png")]
        format: String,
        /// none | open:R | close:R
        #[arg(long, default_value = "none")]
        morphology: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Turn off edge colour decontamination.
        #[arg(long)]
        no_decontaminate: bool,
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
    /// Print what libtorch sees: version, CUDA devices, threads.
    DeviceInfo,
    /// Print one NVML reading of every GPU as JSON (or why NVML is absent).
    GpuInfo,
    /// Publish a model folder from the local registry into the S3 registry (manifest last);
    /// without --model, the reference model, built first if it is not cached.
    PublishModel {
        /// Root of the local model registry.
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        /// Model as name@version; the reference model by default.
        #[arg(long)]
        model: Option<String>,
    },
    /// Run as a fleet worker: take tasks from RabbitMQ until SIGTERM, then drain.
    Serve(ServeArgs),
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
struct ServeArgs {
    /// RabbitMQ URL of the worker's user.
    #[arg(long, env = "FLEET_AMQP_URL")]
    amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "FLEET_REDIS_URL")]
    redis_url: String,
    /// Local cache of registry models.
    #[arg(long, env = "FLEET_MODEL_DIR")]
    models: PathBuf,
    /// Devices to drive: `auto` (every CUDA device, or the CPU without one) or a list such
    /// as `cuda:0,cuda:1` or `cpu`.
    #[arg(long, alias = "devices", default_value = "auto", env = "FLEET_DEVICE")]
    device: String,
    /// Devices left alone, e.g. `cuda:1` (under repair, or kept for another service).
    #[arg(long, default_value = "", env = "FLEET_EXCLUDE_DEVICES")]
    exclude_devices: String,
    /// Tasks run at once per device and priority lane.
    #[arg(long, default_value_t = 2, env = "FLEET_WORKER_SLOTS")]
    slots: usize,
    /// engine: the real work; noop: report items done without work (dispatch benchmark).
    #[arg(long, value_enum, default_value = "engine")]
    executor: crate::service::Executor,
    /// Device memory the warm models may hold per device, MiB; least recently used models are
    /// evicted past it, and the dispatcher places work against it. Default: each GPU's memory
    /// less 2 GiB as NVML reports it; on a CPU, half the host's memory.
    #[arg(long, env = "FLEET_MODEL_MEMORY_MIB")]
    model_memory_mib: Option<f64>,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9461.
    #[arg(long, env = "FLEET_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// With the noop executor: milliseconds each task pretends to work (0: none).
    #[arg(long, default_value_t = 0)]
    noop_ms: u64,
    /// Worker id; host name and process id by default.
    #[arg(long, env = "FLEET_WORKER_ID")]
    id: Option<String>,
    /// CPU threads for the engine's CPU stages and libtorch's CPU kernels; all cores by
    /// default. Set it when several workers share a host, so they do not oversubscribe it.
    #[arg(long, env = "FLEET_CPU_THREADS")]
    threads: Option<usize>,
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

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
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
            let python = crate::reference::trainable::python();
            let dir = if base_only {
                crate::reference::generator::ensure_base(&python, &models)?
            } else {
                let matting = train::ensure_reference_model(&models)?;
                crate::reference::generator::ensure_reference_generator(&python, &models, &matting)?
            };
            println!("{}", std::fs::read_to_string(dir.join("manifest.json"))?);
        }
        Command::GeneratorExperiment { models, per_class, steps, photos } => {
            anyhow::ensure!(steps.len() == 2, "--steps takes two numbers: phase 1, phase 2");
            let cfg = crate::reference::generator::GeneratorConfig {
                per_class,
                steps: (steps[0], steps[1]),
                ..Default::default()
            };
            let python = crate::reference::trainable::python();
            let arms = crate::reference::generator::masks_experiment(&python, &models, &cfg, photos)?;
            println!("{}", crate::reference::generator::markdown(&arms));
            println!("{}", serde_json::to_string_pretty(&arms)?);
        }
        Command::GeneratorCheck { generator, models, photos, save } => {
            let device = crate::engine::resolve_device(fleet_common::DeviceSpec::Auto)?;
            let matting = crate::engine::model::LoadedModel::load(&train::ensure_reference_model(&models)?, device)?;
            let generator = crate::generate::Generator::load(&generator, device)?;
            let classifier = crate::generate::classifier::BackdropClassifier::standard();
            for (mode, sampler, steps, guidance) in [
                ("fast", crate::diffusion::SamplerKind::Ddim { eta: 0.0 }, 8, generator.spec.guidance.unwrap_or(5.0)),
                ("quality", crate::diffusion::SamplerKind::Euler, 30, generator.spec.guidance.unwrap_or(7.5)),
            ] {
                let opts = crate::generate::GenerateOptions {
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
                let e = crate::generate::evaluate::evaluate(
                    &generator,
                    &matting,
                    &classifier,
                    photos,
                    &opts,
                    save.as_deref(),
                )?;
                println!("{}", serde_json::json!({"mode": mode, "evaluation": e}));
            }
        }
        Command::BenchGenerate { models, rounds, steps, results, photos, side } => {
            let device = crate::engine::resolve_device(fleet_common::DeviceSpec::Auto)?;
            let dir = crate::reference::generator::dir_of(&models, crate::reference::generator::NAME);
            let generator = crate::generate::Generator::load(&dir, device)?;
            let b = crate::generate::bench::run(&generator, rounds, steps, results, photos, side)?;
            println!("{}", crate::generate::bench::markdown(&b, generator.sample_size(side, side), side));
            println!("{}", serde_json::to_string_pretty(&b)?);
        }
        Command::RunFolder { model, input, output, background, format, morphology, batch, no_decontaminate } => {
            let limits = DecodeLimits::default();
            let opts = EngineOptions {
                batch_size: batch,
                composite: CompositeOptions {
                    background: parse_background(&background, &limits).map_err(anyhow::Error::msg)?,
                    decontaminate: !no_decontaminate,
                    ..Default::default()
                },
                morphology: parse_morphology(&morphology).map_err(anyhow::Error::msg)?,
                format: parse_format(&format).map_err(anyhow::Error::msg)?,
                limits,
                preview_height: Some(crate::folder::SHEET_ROW_HEIGHT),
                max_side: None,
                generate: None,
            };
            opts.validate().map_err(anyhow::Error::msg)?;
            let engine = model.start()?;
            let summary = crate::folder::run_folder(&engine, &input, &output, &opts)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Bench { model, images, batches } => {
            let engine = model.start()?;
            let cfg = crate::bench::BenchConfig { batch_sizes: batches, images, ..Default::default() };
            let rows = crate::bench::run(&engine, &cfg)?;
            let sample = crate::bench::make_inputs(16, cfg.size);
            let one_core = crate::bench::cpu_stages_one_core(&engine, &sample, cfg.format)?;
            let device = format!("{:?}", engine.inference().device());
            println!("{}", crate::bench::markdown(&rows, &one_core, &cfg, &device, rayon::current_num_threads()));
        }
        Command::DeviceInfo => device_info(),
        Command::GpuInfo => match crate::telemetry::Gpus::probe() {
            crate::telemetry::Gpus::Absent(reason) => println!("{reason}"),
            gpus => println!("{}", serde_json::to_string_pretty(&gpus.sample().map_err(anyhow::Error::msg)?)?),
        },
        Command::PublishModel { models, model } => {
            let dir = match model {
                Some(m) => {
                    let r: ModelRef = m.parse()?;
                    models.join(&r.name).join(&r.version)
                }
                None => train::ensure_reference_model(&models)?,
            };
            let s3 = fleet_common::store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?;
            let store = fleet_common::store::s3::S3Store::new(&s3);
            let manifest = runtime()?.block_on(fleet_common::registry::publish(&store, &dir))?;
            println!("published {} to models/{}/{}/", manifest.model_ref(), manifest.name, manifest.version);
        }
        Command::Serve(args) => serve(args)?,
        Command::BenchPrefix { model, prefix, batch, threads } => {
            if let Some(threads) = threads {
                set_cpu_threads(threads)?;
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
            let s3 =
                fleet_common::store::s3::S3Config::from_env().ok().map(|c| fleet_common::store::s3::S3Store::new(&c));
            let bench = crate::service::fine_tune::bench::BenchTrain {
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
    use fleet_common::store::ObjectStore;
    let s3 = fleet_common::store::s3::S3Store::new(
        &fleet_common::store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?,
    );
    let items = runtime()?.block_on(async {
        let keys = fleet_common::store::list_all(&s3, prefix).await?;
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            items.push(crate::engine::InputItem { bytes: s3.get(&key).await?, id: key });
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

/// Caps the CPU threads of the engine's stages (rayon) and of libtorch's CPU kernels.
fn set_cpu_threads(threads: usize) -> anyhow::Result<()> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(threads as i32);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        set_cpu_threads(threads)?;
    }
    let cuda_devices = if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 };
    let specs = fleet_common::device::select_devices(&args.device, &args.exclude_devices, cuda_devices)
        .map_err(anyhow::Error::msg)?;
    let mut gpu_memory_mib = std::collections::HashMap::new();
    match crate::telemetry::Gpus::probe() {
        crate::telemetry::Gpus::Absent(reason) => tracing::warn!(%reason, "no GPU telemetry"),
        gpus => {
            for d in gpus.sample().map_err(anyhow::Error::msg)? {
                tracing::info!(index = d.index, name = %d.name, memory_total_mib = d.memory_total_mib,
                    memory_free_mib = d.memory_free_mib, temperature_c = ?d.temperature_c, "GPU seen through NVML");
                gpu_memory_mib.insert(d.index as usize, d.memory_total_mib.saturating_sub(2048) as f64);
            }
        }
    }
    let host_mib = host_memory_mib().unwrap_or(8192.0);
    let devices: Vec<crate::service::DeviceConfig> = specs
        .into_iter()
        .map(|spec| {
            let memory_mib = args.model_memory_mib.unwrap_or(match spec {
                fleet_common::DeviceSpec::Cuda(n) => gpu_memory_mib.get(&n).copied().unwrap_or(host_mib / 2.0),
                _ => host_mib / 2.0,
            });
            tracing::info!(device = %spec, memory_mib = memory_mib.round(), "driving device");
            crate::service::DeviceConfig { spec, memory_mib }
        })
        .collect();
    let host = crate::service::host_name();
    let config = crate::service::WorkerConfig {
        id: args.id.unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        amqp_url: args.amqp_url,
        redis_url: args.redis_url,
        s3: fleet_common::store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?,
        model_cache: args.models,
        devices,
        slots: args.slots,
        executor: args.executor,
        noop_task_time: std::time::Duration::from_millis(args.noop_ms),
        metrics_addr: args.metrics_addr,
    };
    runtime()?.block_on(crate::service::run(config, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stop signal: draining");
    }))
}

/// The host's memory from `/proc/meminfo`, MiB.
fn host_memory_mib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn device_info() {
    println!("libtorch threads: {}", tch::get_num_threads());
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
}
