//! `fleet-api`: serve the tenants' HTTP API, or manage its tokens from the operator's shell.
//!
//! ```text
//! fleet-api serve --listen 127.0.0.1:8080
//! fleet-api token create --tenant tenant-a --name catalog-sync   # prints the token once
//! fleet-api token create --operator --name ops
//! fleet-api token list | fleet-api token revoke <id>
//! ```

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_api::webhooks::RetryPolicy;
use fleet_api::{ApiConfig, AppState, Role, TokenStore};
use fleet_protocol::keys::TenantId;
use fleet_store::s3::S3Config;

#[derive(Debug, Parser)]
#[command(name = "fleet-api", version, about = "gpu-fleet HTTP API for tenants")]
struct Cli {
    /// Redis URL (tokens, job state, webhooks).
    #[arg(long, env = "FLEET_REDIS_URL", global = true, hide_env_values = true)]
    redis_url: Option<String>,
    /// Configuration file (TOML, section `[api]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API.
    Serve(Box<ServeArgs>),
    /// Create, list and revoke API tokens (operators, with Redis access).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FLEET_API_ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The API's broker URL (its own user, tagged `impersonator`).
    #[arg(long, env = "FLEET_API_AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Seconds a submission waits for the scheduler's answer before answering 202.
    #[arg(long, env = "FLEET_API_ANSWER_TIMEOUT_S", default_value_t = 10)]
    answer_timeout_s: u64,
    /// Seconds presigned URLs work.
    #[arg(long, env = "FLEET_API_URL_TTL_S", default_value_t = 900)]
    url_ttl_s: u64,
    /// The royalty ledger (PostgreSQL, a reader's role), for `GET /v1/royalties`.
    #[arg(long, env = "FLEET_LEDGER_URL", hide_env_values = true)]
    ledger_url: Option<String>,
    /// Attempts per webhook delivery.
    #[arg(long, env = "FLEET_API_WEBHOOK_ATTEMPTS", default_value_t = 8)]
    webhook_attempts: u32,
    /// Milliseconds before the second attempt (doubling after each).
    #[arg(long, env = "FLEET_API_WEBHOOK_BACKOFF_MS", default_value_t = 1000)]
    webhook_backoff_ms: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (shown once: only its hash is kept).
    Create {
        /// The tenant it acts for.
        #[arg(long, conflicts_with = "operator", required_unless_present = "operator")]
        tenant: Option<String>,
        /// An operator token instead.
        #[arg(long)]
        operator: bool,
        /// A name for people.
        #[arg(long)]
        name: String,
    },
    /// Every token (id, role, tenant, name, created, revoked).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

fn main() -> ExitCode {
    // Logs to stderr; spans over OTLP too where OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _traces = fleet_telemetry::traces::init("fleet-api", "info");
    if let Err(e) = fleet_config::layer(&<Cli as clap::CommandFactory>::command(), "api") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let redis_url = cli.redis_url.context("set FLEET_REDIS_URL (deploy/stack.sh env prints it)")?;
    match cli.command {
        Command::Serve(args) => serve(redis_url, *args).await,
        Command::Token { command } => token(&redis_url, command).await,
    }
}

async fn serve(redis_url: String, args: ServeArgs) -> anyhow::Result<()> {
    let config = ApiConfig {
        amqp_url: args.amqp_url,
        redis_url,
        s3: S3Config::from_env().map_err(anyhow::Error::msg)?,
        answer_timeout: Duration::from_secs(args.answer_timeout_s),
        url_ttl: Duration::from_secs(args.url_ttl_s),
        webhooks: RetryPolicy {
            attempts: args.webhook_attempts.max(1),
            first_backoff: Duration::from_millis(args.webhook_backoff_ms),
            timeout: Duration::from_secs(10),
        },
        ledger_url: args.ledger_url,
    };
    let state = AppState::connect(&config).await?;
    let listener = fleet_api::bind(&args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "fleet-api listening");
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("fleet-api: stopping; finishing requests in hand");
        on_signal.cancel();
    });
    fleet_api::serve(listener, state, config.webhooks, stop).await?;
    Ok(())
}

async fn token(redis_url: &str, command: TokenCommand) -> anyhow::Result<()> {
    let tokens = TokenStore::connect(redis_url).await?;
    match command {
        TokenCommand::Create { tenant, operator, name } => {
            let tenant = tenant.map(|t| TenantId::new(&t)).transpose()?;
            let role = if operator { Role::Operator } else { Role::Tenant };
            let (token, info) = tokens.create(role, tenant.as_ref(), &name).await?;
            eprintln!(
                "token {} for {} ({name}): shown once, keep it",
                info.id,
                info.tenant.as_deref().unwrap_or("operators")
            );
            println!("{token}");
        }
        TokenCommand::List => {
            println!("{:<16}  {:<8}  {:<12}  {:<20}  {:>13}  REVOKED", "ID", "ROLE", "TENANT", "NAME", "CREATED_MS");
            for t in tokens.list().await? {
                let role = if t.role == Role::Operator { "operator" } else { "tenant" };
                let revoked = t.revoked_ms.map_or("-".to_string(), |ms| ms.to_string());
                println!(
                    "{:<16}  {role:<8}  {:<12}  {:<20}  {:>13}  {revoked}",
                    t.id,
                    t.tenant.as_deref().unwrap_or("-"),
                    t.name,
                    t.created_ms
                );
            }
        }
        TokenCommand::Revoke { id } => match tokens.revoke(&id).await? {
            Some(_) => println!("token {id} revoked"),
            None => anyhow::bail!("no token {id}"),
        },
    }
    Ok(())
}
