//! `fleetctl submit`: its flags, the job they make (through [`fleet_client::job_body`]) and
//! the submission, answered with accepted, duplicate or rejected (exit code 2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fleet_client::api::ApiTenant;
use fleet_client::job_body::{self, Generation};
use fleet_client::{Client, Submitted};

use crate::view::{draw, print_view};

/// The flags of `fleetctl submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// Job file (JSON or YAML) with id, priority, kind and spec.
    #[arg(long, conflicts_with_all = ["prefix", "manifest", "keys"])]
    file: Option<PathBuf>,
    /// Job id (idempotency key); generated when absent.
    #[arg(long)]
    id: Option<String>,
    /// Every object under this prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// An object listing one key per line.
    #[arg(long)]
    manifest: Option<String>,
    /// Explicit keys.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// transparent | color:#rrggbb | blur[:PCT] | image:KEY | generate:PROMPT
    #[arg(long, default_value = "color:#ffffff")]
    background: String,
    /// Background generator of `generate:PROMPT`.
    #[arg(long, default_value = "bg-gen-ref@1.0.0")]
    generator: String,
    /// Generated results per image.
    #[arg(long, default_value_t = 1)]
    results: u32,
    /// fast | quality (generated backgrounds).
    #[arg(long, default_value = "quality")]
    sampling: String,
    /// Seed of the first generated result.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// png | jpeg[:Q] | webp
    #[arg(long, default_value = "jpeg:90")]
    format: String,
    /// Longest output side.
    #[arg(long)]
    max_side: Option<u32>,
    /// Matting model, name@version: isnet-general@1.0.0 is IS-Net (1024 px, AGPL-3.0 weights),
    /// matting-ref@1.0.0 the fast reference model; `fleetctl models` lists them all.
    #[arg(long, default_value = "isnet-general@1.0.0")]
    model: String,
    /// interactive | batch
    #[arg(long, default_value = "batch")]
    priority: String,
    /// Images per task.
    #[arg(long)]
    shard_size: Option<u32>,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
    /// Return once the broker holds the job (queued for a scheduler, which need not be
    /// running yet), without waiting for the scheduler's answer.
    #[arg(long, conflicts_with = "watch")]
    no_wait: bool,
    /// Give up watching after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

/// Submits the job of `args` (from its file, else from its flags); prints its id on stdout
/// and the scheduler's answer on stderr, then follows it with `--watch`.
pub(crate) async fn submit(client: &Client, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (id, body) = body(&args)?;
    let bytes = serde_json::to_vec(&body)?;
    if args.no_wait {
        client.publish(&id, &bytes).await?;
        eprintln!("job {id} queued for the scheduler (follow it with: fleetctl show {id} --watch)");
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    match client.submit(&id, &bytes, Duration::from_secs(30)).await? {
        Submitted::Rejected(r) => {
            eprintln!("job {id} rejected ({}): {}", r.code, r.reason);
            return Ok(ExitCode::from(2));
        }
        Submitted::Duplicate => eprintln!("job {id} already exists: following the existing job"),
        Submitted::Accepted => eprintln!("job {id} accepted"),
    }
    println!("{id}");
    if args.watch {
        let view = client.wait(&id, Duration::from_secs(args.timeout), |v| draw(v, true)).await?;
        eprintln!();
        print_view(&view);
    }
    Ok(ExitCode::SUCCESS)
}

/// The job of `args` (from its file, else from its flags) with its id.
fn body(args: &SubmitArgs) -> anyhow::Result<(String, serde_json::Value)> {
    let mut body = match &args.file {
        Some(path) => job_body::read_file(path)?,
        None => job_from_flags(args)?,
    };
    let id = job_body::set_id(&mut body, args.id.as_deref());
    Ok((id, body))
}

/// `submit` through the HTTP API: the same job and answers; `--no-wait` is what the API
/// does when no scheduler answers in time (202).
pub(crate) async fn submit_api(api: &ApiTenant, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (id, body) = body(&args)?;
    match api.submit(&body).await? {
        (_, Submitted::Rejected(r)) => {
            eprintln!("job {id} rejected ({}): {}", r.code, r.reason);
            return Ok(ExitCode::from(2));
        }
        (_, Submitted::Duplicate) => eprintln!("job {id} already exists: following the existing job"),
        (_, Submitted::Accepted) => eprintln!("job {id} submitted"),
    }
    println!("{id}");
    if args.watch {
        let view = api.wait(&id, Duration::from_secs(args.timeout), |v| draw(v, true)).await?;
        eprintln!();
        print_view(&view);
    }
    Ok(ExitCode::SUCCESS)
}

/// A `background_replace` job from the flags, without its id.
fn job_from_flags(args: &SubmitArgs) -> anyhow::Result<serde_json::Value> {
    let input = job_body::input(args.prefix.as_deref(), args.manifest.as_deref(), &args.keys)?;
    let generation =
        Generation { model: &args.generator, results: args.results, sampling: &args.sampling, seed: args.seed };
    let background = job_body::background(&args.background, &generation)?;
    let output = job_body::output(&args.format, args.max_side)?;
    Ok(job_body::background_replace(&args.priority, input, background, output, &args.model, args.shard_size))
}
