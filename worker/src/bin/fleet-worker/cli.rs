//! Commands of the `fleet-worker` binary: serve as a fleet worker, run the engine over a
//! folder, publish a model to the registry, and report the devices. Reference models,
//! benchmarks and experiments are `fleet-dev`'s.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleet_engine::options::{parse_background, parse_format, parse_morphology};
use fleet_engine::{Engine, EngineOptions, InferenceThread};
use fleet_imaging::composite::CompositeOptions;
use fleet_imaging::decode::DecodeLimits;
use fleet_protocol::ModelRef;

/// The model a command runs when none is named: the reference matting model.
pub const DEFAULT_MODEL: &str = "matting-ref@1.0.0";

/// Command line of the worker.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-worker",
    version,
    about = "gpu-fleet worker: takes tasks from the fleet, or runs the engine over a folder"
)]
pub struct Cli {
    /// Configuration file (TOML, section `[worker]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Print what libtorch sees: version, CUDA devices, threads.
    DeviceInfo,
    /// Print one NVML reading of every GPU as JSON (or why NVML is absent).
    GpuInfo,
    /// Publish a model folder from the local registry (MODELS/<name>/<version>/) into the S3
    /// registry, manifest last.
    PublishModel {
        /// Root of the local model registry.
        #[arg(long, env = "FLEET_MODEL_DIR")]
        models: PathBuf,
        /// Model as name@version.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
    },
    /// Run as a fleet worker: take tasks from RabbitMQ until SIGTERM, then drain.
    Serve(ServeArgs),
    /// Write a test certificate chain and key for content credentials (a CA and a leaf it
    /// signed) into a folder, as chain.pem and key.pem: for tests and the dev stack only.
    MakeTestSigner {
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
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
    executor: fleet_worker::service::Executor,
    /// Device memory the warm models may hold per device, MiB; least recently used models are
    /// evicted past it, and the dispatcher places work against it. Default: each GPU's memory
    /// less 2 GiB as NVML reports it; on a CPU, half the host's memory.
    #[arg(long, env = "FLEET_MODEL_MEMORY_MIB")]
    model_memory_mib: Option<f64>,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9461.
    #[arg(long, env = "FLEET_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The royalty ledger (PostgreSQL, the worker's writer role): outputs of models with a
    /// registered training set are recorded there once each, and revoked licences are read
    /// from it. Without it attributions are still written beside outputs, marked unchecked.
    #[arg(long, env = "FLEET_LEDGER_URL")]
    ledger_url: Option<String>,
    /// Content credentials: the certificate chain (PEM, leaf first) that signs a C2PA
    /// manifest into every result image; with --signing-key. Without both, results are
    /// written unsigned.
    #[arg(long, env = "FLEET_SIGNING_CHAIN", requires = "signing_key")]
    signing_chain: Option<PathBuf>,
    /// The signing certificate's private key (PEM, PKCS#8).
    #[arg(long, env = "FLEET_SIGNING_KEY", requires = "signing_chain")]
    signing_key: Option<PathBuf>,
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
    /// Model as name@version.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// cpu | cuda:N | auto
    #[arg(long, default_value = "auto", env = "FLEET_DEVICE")]
    device: String,
}

impl ModelArgs {
    fn start(&self) -> anyhow::Result<Engine> {
        let model: ModelRef = self.model.parse()?;
        let inference =
            InferenceThread::start(&self.models.join(&model.name).join(&model.version), self.device.parse()?)?;
        tracing::info!(model = %inference.manifest().model_ref(), device = ?inference.device(), "model loaded");
        Ok(Engine::new(inference))
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
                preview_height: Some(fleet_engine::folder::SHEET_ROW_HEIGHT),
                max_side: None,
                generate: None,
                batch_linger: std::time::Duration::ZERO,
            };
            opts.validate().map_err(anyhow::Error::msg)?;
            let engine = model.start()?;
            let summary = fleet_engine::folder::run_folder(&engine, &input, &output, &opts)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::DeviceInfo => device_info(),
        Command::GpuInfo => match fleet_worker::nvml::Gpus::probe() {
            fleet_worker::nvml::Gpus::Absent(reason) => println!("{reason}"),
            gpus => println!("{}", serde_json::to_string_pretty(&gpus.sample().map_err(anyhow::Error::msg)?)?),
        },
        Command::PublishModel { models, model } => {
            let r: ModelRef = model.parse()?;
            let dir = models.join(&r.name).join(&r.version);
            anyhow::ensure!(
                dir.join("manifest.json").exists(),
                "no model {r} in {} (build the reference model with `fleet-dev reference-model`)",
                models.display()
            );
            let s3 = fleet_store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?;
            let store = fleet_store::s3::S3Store::new(&s3);
            let manifest = runtime()?.block_on(fleet_store::registry::publish(&store, &dir))?;
            println!("published {} to models/{}/{}/", manifest.model_ref(), manifest.name, manifest.version);
        }
        Command::Serve(args) => serve(args)?,
        Command::MakeTestSigner { out } => {
            std::fs::create_dir_all(&out)?;
            let (chain, key) = fleet_credentials::make_test_signer(&out)?;
            println!("{}\n{}", chain.display(), key.display());
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        fleet_engine::set_cpu_threads(threads)?;
    }
    let cuda_devices = if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 };
    let specs = fleet_protocol::device::select_devices(&args.device, &args.exclude_devices, cuda_devices)
        .map_err(anyhow::Error::msg)?;
    let mut gpu_memory_mib = std::collections::HashMap::new();
    match fleet_worker::nvml::Gpus::probe() {
        fleet_worker::nvml::Gpus::Absent(reason) => tracing::warn!(%reason, "no GPU telemetry"),
        gpus => {
            for d in gpus.sample().map_err(anyhow::Error::msg)? {
                tracing::info!(index = d.index, name = %d.name, memory_total_mib = d.memory_total_mib,
                    memory_free_mib = d.memory_free_mib, temperature_c = ?d.temperature_c, "GPU seen through NVML");
                gpu_memory_mib.insert(d.index as usize, d.memory_total_mib.saturating_sub(2048) as f64);
            }
        }
    }
    let host_mib = host_memory_mib().unwrap_or(8192.0);
    let devices: Vec<fleet_worker::service::DeviceConfig> = specs
        .into_iter()
        .map(|spec| {
            let memory_mib = args.model_memory_mib.unwrap_or(match spec {
                fleet_protocol::DeviceSpec::Cuda(n) => gpu_memory_mib.get(&n).copied().unwrap_or(host_mib / 2.0),
                _ => host_mib / 2.0,
            });
            tracing::info!(device = %spec, memory_mib = memory_mib.round(), "driving device");
            fleet_worker::service::DeviceConfig { spec, memory_mib }
        })
        .collect();
    let host = fleet_worker::service::host_name();
    let config = fleet_worker::service::WorkerConfig {
        id: args.id.unwrap_or_else(|| format!("{host}-{}", std::process::id())),
        amqp_url: args.amqp_url,
        redis_url: args.redis_url,
        s3: fleet_store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?,
        model_cache: args.models,
        devices,
        slots: args.slots,
        executor: args.executor,
        noop_task_time: std::time::Duration::from_millis(args.noop_ms),
        metrics_addr: args.metrics_addr,
        ledger_url: args.ledger_url,
        signer: match (&args.signing_chain, &args.signing_key) {
            (Some(chain), Some(key)) => {
                let signer = fleet_credentials::Signer::from_pem_files(chain, key)?;
                tracing::info!(algorithm = %signer.algorithm(), subject = signer.subject(), "results carry signed content credentials");
                Some(std::sync::Arc::new(signer))
            }
            _ => None,
        },
    };
    let stopped = runtime()?.block_on(fleet_worker::service::run(config, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stop signal: draining");
    }));
    Ok(stopped?)
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
