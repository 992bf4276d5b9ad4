//! `fleetctl`: submit, follow, inspect, fetch and cancel jobs; seed a synthetic catalog.
//!
//! ```text
//! fleetctl submit --file job.yaml --watch
//! fleetctl submit --id cat-1 --prefix tenant-a/catalog/ --background color:#f2f2f2 --format jpeg --watch
//! fleetctl show cat-1 --watch | list | failed cat-1 | fetch cat-1 --out dir | cancel cat-1
//! fleetctl summary cat-1 --sheet sheet.png
//! ```
//!
//! This file parses the flags, sets up tracing, connects and dispatches; the commands live in
//! [`submit`], [`tenant`] (the tenant's jobs and models), [`ops`] (the operator's view of
//! workers and queue) and [`seed`] (synthetic data), and [`view`] prints jobs.

mod ops;
mod royalties;
mod seed;
mod submit;
mod tenant;
mod via_api;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_client::{amqp_url_as, Client, ClientConfig};
use fleet_store::s3::S3Config;

#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, about = "gpu-fleet client: jobs, progress, results")]
struct Cli {
    /// Tenant to act as (its RabbitMQ user).
    #[arg(long, env = "FLEET_TENANT", global = true, default_value = "tenant-a")]
    tenant: String,
    /// The tenant's RabbitMQ password.
    #[arg(long, env = "FLEET_TENANT_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Broker URL; its user and password are replaced by the tenant's.
    #[arg(long, env = "FLEET_AMQP_URL", global = true, hide_env_values = true)]
    amqp_url: Option<String>,
    /// Redis URL (job state).
    #[arg(long, env = "FLEET_REDIS_URL", global = true)]
    redis_url: Option<String>,
    /// The HTTP API; with --token, the tenant's commands (submit, show, list, failed, fetch,
    /// cancel, models, upload) go through it and need no other credentials.
    #[arg(long, env = "FLEET_API_URL", global = true, default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// The tenant's API token (`fleet-api token create`).
    #[arg(long, env = "FLEET_API_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Configuration file (TOML, section `[fleetctl]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job from a JSON or YAML file, or from flags.
    Submit(Box<submit::SubmitArgs>),
    /// Show a job: state, counts, progress bar (live with --watch).
    Show {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// The tenant's recent jobs.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A job's failed items, with reasons.
    Failed { id: String },
    /// Download a job's results (images, mattes, embeddings, task manifests).
    Fetch {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Cancel a job: no further task of it starts.
    Cancel { id: String },
    /// Images, failures, images/s and per-image latency of a finished job; optionally a
    /// contact sheet of its least certain cutouts.
    Summary {
        id: String,
        #[arg(long)]
        sheet: Option<PathBuf>,
        #[arg(long, default_value_t = 16)]
        sheet_rows: usize,
    },
    /// Live workers and their devices, from their heartbeats: state, GPU utilisation, memory,
    /// temperature, warm models, tasks in hand.
    Workers,
    /// Take a worker out of rotation: it takes nothing new, tasks in hand finish.
    Cordon { worker: String },
    /// Drain a worker: it takes nothing new, finishes what it holds, then reports `drained`.
    Drain {
        worker: String,
        /// Wait until it reports drained.
        #[arg(long)]
        wait: bool,
    },
    /// Put a cordoned or drained worker back into rotation.
    Uncordon { worker: String },
    /// Tasks waiting by tenant and priority, the fleet's current rate and the time to drain
    /// the queue at that rate (sampled over --window seconds): the figure an autoscaler needs.
    Queue {
        #[arg(long, default_value_t = 5)]
        window: u64,
    },
    /// Seed the reference background generator's training set (product photos on studio
    /// backdrops, with prompts) under a prefix; prints the data set's key.
    SeedBackdrops {
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 60)]
        per_class: usize,
        #[arg(long, default_value_t = 11)]
        seed: u64,
    },
    /// Download a model (the tenant's own, else the shared one) into OUT/<name>/<version>/.
    FetchModel {
        /// name@version
        #[arg(long)]
        model: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// The models this tenant can use (its own, then the shared ones): task, input size,
    /// parameters, precision, where the weights come from and their licence.
    Models,
    /// Upload local image files under a prefix of the tenant's space (one object per file,
    /// named by the file name).
    Upload {
        #[arg(long)]
        prefix: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What each contributor is owed over a period: their summed shares of the outputs
    /// attributed to them, from the royalty ledger (operator).
    Royalties(royalties::RoyaltiesArgs),
    /// Licences granted by contributors (operator).
    Licence {
        #[command(subcommand)]
        command: LicenceCommand,
    },
    /// Seed a synthetic catalog (images, masks, a few broken uploads) under a prefix.
    SeedCatalog {
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 320)]
        min_side: u32,
        #[arg(long, default_value_t = 1600)]
        max_side: u32,
        /// Scratch folder for generation.
        #[arg(long, default_value = ".fleet/seed")]
        work: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LicenceCommand {
    /// Withdraw a contributor's licence on one image (`--image`) or on all they contributed:
    /// attributions made afterwards never credit it, and its weight goes to the others.
    Revoke {
        /// The contributor, as the training data set names them.
        #[arg(long)]
        contributor: String,
        /// One image's key; all the contributor's images without it.
        #[arg(long)]
        image: Option<String>,
        /// Why (kept in the ledger).
        #[arg(long)]
        reason: String,
        /// The royalty ledger, as the operator.
        #[arg(long, env = "FLEET_LEDGER_URL", hide_env_values = true)]
        ledger_url: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = fleet_config::layer(&<Cli as clap::CommandFactory>::command(), "fleetctl") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects as the tenant, with the broker URL's credentials replaced by the tenant's.
async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let url = cli.amqp_url.as_deref().context("set FLEET_AMQP_URL (./deploy/stack.sh env prints it)")?;
    let password = cli.password.clone().context("set FLEET_TENANT_PASSWORD to the tenant's broker password")?;
    let config = ClientConfig {
        amqp_url: amqp_url_as(url, &cli.tenant, &password),
        tenant: cli.tenant.clone(),
        redis_url: cli.redis_url.clone().context("set FLEET_REDIS_URL")?,
        s3: S3Config::from_env().map_err(anyhow::Error::msg)?,
    };
    Ok(Client::connect(&config).await?)
}

/// Runs one command; only `submit` has an exit code of its own (2: rejected). With a token,
/// the tenant's commands go through the API.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The ledger's commands need the ledger only.
    match cli.command {
        Command::Royalties(args) => return royalties::royalties(args).await.map(|()| ExitCode::SUCCESS),
        Command::Licence { command: LicenceCommand::Revoke { contributor, image, reason, ledger_url } } => {
            return royalties::revoke(ledger_url.as_deref(), &contributor, image.as_deref(), &reason)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        _ => {}
    }
    if let Some(token) = cli.token.as_deref().filter(|t| !t.is_empty()) {
        let api = fleet_client::api::ApiTenant::new(&cli.api_url, token)?;
        match cli.command {
            Command::Submit(args) => return submit::submit_api(&api, *args).await,
            Command::Show { id, watch } => via_api::show(&api, &id, watch).await?,
            Command::List { limit } => via_api::list(&api, limit).await?,
            Command::Failed { id } => via_api::failed(&api, &id).await?,
            Command::Fetch { id, out } => via_api::fetch(&api, &id, &out).await?,
            Command::Cancel { id } => via_api::cancel(&api, &id).await?,
            Command::Models => via_api::models(&api).await?,
            Command::Upload { prefix, files } => via_api::upload(&api, &prefix, &files).await?,
            _ => anyhow::bail!(
                "this command is an operator's or a developer's: it talks to the fleet's services directly \
                 (unset FLEET_API_TOKEN and set the broker, Redis and S3 settings of deploy/stack.sh env)"
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = connect(&cli).await?;
    match cli.command {
        Command::Submit(args) => return submit::submit(&client, *args).await,
        Command::Show { id, watch } => tenant::show(&client, &id, watch).await?,
        Command::List { limit } => tenant::list(&client, limit).await?,
        Command::Failed { id } => tenant::failed(&client, &id).await?,
        Command::Fetch { id, out } => tenant::fetch(&client, &id, &out).await?,
        Command::Cancel { id } => tenant::cancel(&client, &id).await?,
        Command::Summary { id, sheet, sheet_rows } => tenant::summary(&client, &id, sheet, sheet_rows).await?,
        Command::FetchModel { model, out } => tenant::fetch_model(&client, &model, &out).await?,
        Command::Models => tenant::models(&client).await?,
        Command::Upload { prefix, files } => tenant::upload(&client, &prefix, &files).await?,
        Command::Workers => ops::workers(&client).await?,
        Command::Cordon { worker } => ops::cordon(&client, &worker).await?,
        Command::Uncordon { worker } => ops::uncordon(&client, &worker).await?,
        Command::Drain { worker, wait } => ops::drain(&client, &worker, wait).await?,
        Command::Queue { window } => ops::queue(&client, window).await?,
        Command::SeedBackdrops { prefix, per_class, seed } => {
            seed::backdrops(&client, &prefix, per_class, seed).await?
        }
        Command::SeedCatalog { prefix, count, seed, min_side, max_side, work } => {
            seed::catalog(&client, &prefix, count, seed, min_side, max_side, &work).await?
        }
        Command::Royalties(_) | Command::Licence { .. } => unreachable!("answered above"),
    }
    Ok(ExitCode::SUCCESS)
}
