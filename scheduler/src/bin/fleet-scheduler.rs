//! `fleet-scheduler`: runs the scheduler until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use fleet_scheduler::Config;

/// Command line of the scheduler; every option can come from the environment.
#[derive(Debug, Parser)]
#[command(name = "fleet-scheduler", version, about = "gpu-fleet scheduler")]
struct Cli {
    /// RabbitMQ URL of the scheduler's own user (`FLEET_SCHEDULER_AMQP_URL` of deploy/stack.sh env).
    #[arg(long, env = "FLEET_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// Redis URL of the scheduler's own user (AOF on, noeviction).
    #[arg(long, env = "FLEET_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Configuration file (TOML, section `[scheduler]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// Check the configuration (file, environment, flags, tenants file), print the settings
    /// and exit without connecting.
    #[arg(long)]
    check_config: bool,
    /// Images per task when a job does not say.
    #[arg(long, env = "FLEET_SHARD_SIZE", default_value_t = 32)]
    shard_size: u32,
    /// Least time between two progress events of one job, in milliseconds.
    #[arg(long, env = "FLEET_PROGRESS_INTERVAL_MS", default_value_t = 250)]
    progress_interval_ms: u64,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9460.
    #[arg(long, env = "FLEET_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Placement: `spread` (least loaded device first) or `pack` (fill a device before the next).
    #[arg(long, env = "FLEET_PLACEMENT", default_value = "spread", value_parser = ["spread", "pack"])]
    placement: String,
    /// Device memory kept free on every device, MiB.
    #[arg(long, env = "FLEET_HEADROOM_MIB", default_value_t = 1024)]
    headroom_mib: u64,
    /// Devices at or over this temperature get no new tasks, Celsius.
    #[arg(long, env = "FLEET_MAX_TEMPERATURE_C", default_value_t = 87)]
    max_temperature_c: u32,
    /// Prefer devices where a task's model is already warm (`false` only to measure what it saves).
    #[arg(long, env = "FLEET_WARM_AFFINITY", default_value_t = true, action = clap::ArgAction::Set)]
    warm_affinity: bool,
    /// Tenants' quotas and weights (TOML, see deploy/tenants.example.toml); none: weight 1
    /// each, no limits.
    #[arg(long, env = "FLEET_TENANTS_FILE")]
    tenants: Option<std::path::PathBuf>,
    /// Batch tasks of one tenant waiting in the shared queue and the dispatcher at most; the
    /// rest wait in their job.
    #[arg(long, env = "FLEET_QUEUE_WINDOW", default_value_t = 256)]
    queue_window: u32,
    /// How long a finished job's records stay in Redis, seconds (30 days); its results stay
    /// in S3. An id can be submitted again once its job's records are gone.
    #[arg(long, env = "FLEET_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    retention_secs: u64,
}

/// The tenants file, parsed and checked; its errors name the file and the key.
fn tenants(path: Option<&std::path::Path>) -> anyhow::Result<fleet_protocol::tenancy::Policies> {
    let Some(path) = path else { return Ok(Default::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    fleet_protocol::tenancy::Policies::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn main() -> std::process::ExitCode {
    // Logs to stderr; spans over OTLP too where OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _traces = fleet_telemetry::traces::init("fleet-scheduler", "info");
    if let Err(e) = fleet_config::layer(&<Cli as clap::CommandFactory>::command(), "scheduler") {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if cli.check_config {
        return match tenants(cli.tenants.as_deref()) {
            Ok(t) => {
                eprintln!(
                    "configuration ok: shard_size={} progress_interval_ms={} placement={} headroom_mib={} \
                     max_temperature_c={} warm_affinity={} queue_window={} retention_secs={} tenants={} \
                     ({} with their own limits) config={}",
                    cli.shard_size,
                    cli.progress_interval_ms,
                    cli.placement,
                    cli.headroom_mib,
                    cli.max_temperature_c,
                    cli.warm_affinity,
                    cli.queue_window,
                    cli.retention_secs,
                    cli.tenants.as_deref().map_or("none".into(), |p| p.display().to_string()),
                    t.tenants.len(),
                    cli.config.as_deref().map_or("none".into(), |p| p.display().to_string()),
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        let s3 = fleet_store::s3::S3Config::from_env().map_err(anyhow::Error::msg)?;
        let tenants = tenants(cli.tenants.as_deref())?;
        let config = Config {
            amqp_url: cli.amqp_url.context("set FLEET_AMQP_URL (the scheduler's broker user; deploy/stack.sh env)")?,
            redis_url: cli
                .redis_url
                .context("set FLEET_REDIS_URL (the scheduler's Redis user; deploy/stack.sh env)")?,
            s3,
            default_shard_size: cli.shard_size,
            progress_interval: std::time::Duration::from_millis(cli.progress_interval_ms),
            metrics_addr: cli.metrics_addr,
            placement: fleet_scheduler::placement::Policy {
                headroom_mib: cli.headroom_mib,
                max_temperature_c: cli.max_temperature_c,
                prefer_warm: cli.warm_affinity,
                strategy: if cli.placement == "pack" {
                    fleet_scheduler::placement::Strategy::Pack
                } else {
                    fleet_scheduler::placement::Strategy::Spread
                },
                ..Default::default()
            },
            tenants,
            queue_window: cli.queue_window.max(1),
            retention: std::time::Duration::from_secs(cli.retention_secs.max(1)),
        };
        fleet_scheduler::run(config, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
