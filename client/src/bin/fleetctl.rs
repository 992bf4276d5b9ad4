//! `fleetctl`: submit, follow, inspect, fetch and cancel jobs; seed a synthetic catalog.
//!
//! ```text
//! fleetctl submit --file job.yaml --watch
//! fleetctl submit --id cat-1 --prefix tenant-a/catalog/ --background color:#f2f2f2 --format jpeg --watch
//! fleetctl show cat-1 --watch | list | failed cat-1 | fetch cat-1 --out dir | cancel cat-1
//! fleetctl summary cat-1 --sheet sheet.png
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_client::report::{job_contact_sheet, percentile, task_manifests};
use fleet_client::{amqp_url_as, catalog, Client, ClientConfig, JobView, Submitted};
use fleet_protocol::heartbeat::Order;
use fleet_protocol::keys::results_prefix;
use fleet_store::s3::S3Config;
use fleet_store::ObjectStore;
use fleet_synth::CatalogSpec;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job from a JSON or YAML file, or from flags.
    Submit(Box<SubmitArgs>),
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

#[derive(Debug, clap::Args)]
struct SubmitArgs {
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
    #[arg(long, default_value = "matting-ref@1.0.0")]
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

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let url = cli.amqp_url.as_deref().context("set FLEET_AMQP_URL (./deploy/stack.sh env prints it)")?;
    let password = cli.password.clone().context("set FLEET_TENANT_PASSWORD to the tenant's broker password")?;
    let config = ClientConfig {
        amqp_url: amqp_url_as(url, &cli.tenant, &password),
        tenant: cli.tenant.clone(),
        redis_url: cli.redis_url.clone().context("set FLEET_REDIS_URL")?,
        s3: S3Config::from_env().map_err(anyhow::Error::msg)?,
    };
    Client::connect(&config).await
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let client = connect(&cli).await?;
    match cli.command {
        Command::Submit(args) => return submit(&client, *args).await,
        Command::Show { id, watch } => {
            let view = if watch {
                let view = client.wait(&id, Duration::from_secs(24 * 3600), |v| draw(v, true)).await?;
                eprintln!();
                view
            } else {
                client.job(&id).await?.with_context(|| format!("no job {id}"))?
            };
            print_view(&view);
        }
        Command::List { limit } => {
            println!("{:<40} {:<28} {:>8} {:>8} {:>8}", "job", "state", "items", "ok", "failed");
            for id in client.list(limit).await? {
                if let Ok(Some(v)) = client.job(&id).await {
                    let p = v.progress;
                    println!(
                        "{:<40} {:<28} {:>8} {:>8} {:>8}",
                        id,
                        state(&v),
                        p.items_total,
                        p.items_succeeded,
                        p.items_failed
                    );
                }
            }
        }
        Command::Failed { id } => {
            for f in client.failures(&id).await? {
                println!("{}\t{}\t{}", f.key, f.code, f.reason);
            }
        }
        Command::Fetch { id, out } => {
            let prefix = results_prefix(client.tenant(), &id);
            let mut token = None;
            let mut count = 0;
            loop {
                let page = client.s3.list_page(&prefix, token, 1000).await?;
                for key in &page.keys {
                    let path = out.join(key.strip_prefix(&prefix).unwrap_or(key));
                    std::fs::create_dir_all(path.parent().expect("a file has a parent"))?;
                    std::fs::write(&path, client.s3.get(key).await?)?;
                    count += 1;
                }
                match page.next {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
            println!("fetched {count} objects into {}", out.display());
        }
        Command::Cancel { id } => {
            client.cancel(&id).await?;
            println!("cancellation of {id} sent");
        }
        Command::Summary { id, sheet, sheet_rows } => summary(&client, &id, sheet, sheet_rows).await?,
        Command::Workers => workers(&client).await?,
        Command::Cordon { worker } => {
            client.jobs.set_worker_order(&worker, Order::Cordon).await?;
            println!("{worker}: cordoned (takes nothing new; tasks in hand finish)");
        }
        Command::Uncordon { worker } => {
            client.jobs.set_worker_order(&worker, Order::Run).await?;
            println!("{worker}: back in rotation");
        }
        Command::Drain { worker, wait } => {
            client.jobs.set_worker_order(&worker, Order::Drain).await?;
            println!("{worker}: draining");
            if wait {
                loop {
                    let beats = client.jobs.heartbeats().await?;
                    match beats.iter().find(|b| b.id == worker) {
                        Some(b) if b.state == "drained" => {
                            println!("{worker}: drained");
                            break;
                        }
                        Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                        None => anyhow::bail!("{worker} has no heartbeat: not running"),
                    }
                }
            }
        }
        Command::Queue { window } => queue(&client, window).await?,
        Command::SeedBackdrops { prefix, per_class, seed } => {
            fleet_protocol::keys::check_tenant_prefix(client.tenant(), &prefix)?;
            println!("{}", catalog::seed_backdrops(&client.s3, &prefix, per_class, seed, "cc0-1.0").await?);
        }
        Command::FetchModel { model, out } => {
            let model: fleet_protocol::ModelRef = model.parse()?;
            let (scope, manifest) = fleet_store::registry::locate(&client.s3, client.tenant(), &model).await?;
            let cache = tempfile_dir(&out)?;
            let (dir, _) = fleet_store::registry::fetch_in(&client.s3, &scope, &model, &cache).await?;
            let dest = out.join(&model.name).join(&model.version);
            let staging = out.join(&model.name).join(format!(".{}-fetching", model.version));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging)?;
            for file in fleet_store::registry::model_files(&manifest) {
                std::fs::copy(dir.join(&file), staging.join(&file))?;
            }
            // What a fine-tune registers beside the model, when there.
            for extra in ["training-embeddings.jsonl", "loss-curve.png"] {
                if let Ok(bytes) = client.s3.get(&format!("{}{extra}", scope.prefix(&model))).await {
                    std::fs::write(staging.join(extra), bytes)?;
                }
            }
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&staging, &dest)?;
            let _ = std::fs::remove_dir_all(&cache);
            println!("{}", dest.display());
        }
        Command::SeedCatalog { prefix, count, seed, min_side, max_side, work } => {
            fleet_protocol::keys::check_tenant_prefix(client.tenant(), &prefix)?;
            let spec =
                CatalogSpec { seed, count, min_long_side: min_side, max_long_side: max_side, ..Default::default() };
            let started = Instant::now();
            let (seeded, fresh) = catalog::seed(&client.s3, &prefix, &spec, &work).await?;
            let verb = if fresh { "seeded" } else { "reusing" };
            println!(
                "{verb} {} images + {} broken uploads under {prefix}images/ ({:.1} s)",
                seeded.count,
                seeded.broken.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A scratch folder beside `out` (same file system, so the fetched files copy locally).
fn tempfile_dir(out: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = out.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn submit(client: &Client, args: SubmitArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut body: serde_json::Value = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml {
                serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))?
            } else {
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?
            }
        }
        None => job_from_flags(&args)?,
    };
    let id = match (body.get("id").and_then(|v| v.as_str()), &args.id) {
        (_, Some(id)) => id.clone(),
        (Some(id), None) => id.to_string(),
        (None, None) => format!("job-{}", fleet_protocol::message::now_ms()),
    };
    body["id"] = serde_json::Value::String(id.clone());
    let bytes = serde_json::to_vec(&body)?;
    if args.no_wait {
        client.publish(&id, &bytes).await?;
        eprintln!("job {id} queued for the scheduler (follow it with: fleetctl show {id} --watch)");
        println!("{id}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    match client.submit(&id, &bytes, Duration::from_secs(30)).await? {
        Submitted::Rejected(r) => {
            eprintln!("job {id} rejected ({}): {}", r.code, r.reason);
            return Ok(std::process::ExitCode::from(2));
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
    Ok(std::process::ExitCode::SUCCESS)
}

fn job_from_flags(args: &SubmitArgs) -> anyhow::Result<serde_json::Value> {
    let input = match (&args.prefix, &args.manifest, args.keys.is_empty()) {
        (Some(p), None, true) => serde_json::json!({"prefix": p}),
        (None, Some(m), true) => serde_json::json!({"manifest": m}),
        (None, None, false) => serde_json::json!({"keys": args.keys}),
        _ => anyhow::bail!("give exactly one of --prefix, --manifest, --keys (or --file)"),
    };
    let (mode, arg) = args.background.split_once(':').unwrap_or((&args.background, ""));
    let background = match mode {
        "transparent" => serde_json::json!({"mode": "transparent"}),
        "color" => serde_json::json!({"mode": "color", "color": arg}),
        "blur" if arg.is_empty() => serde_json::json!({"mode": "blur"}),
        "blur" => serde_json::json!({"mode": "blur", "strength_pct": arg.parse::<f32>()?}),
        "image" => serde_json::json!({"mode": "image", "key": arg}),
        "generate" => serde_json::json!({"mode": "generate", "model": args.generator, "prompt": arg,
                                         "results": args.results, "sampling": args.sampling, "seed": args.seed}),
        _ => anyhow::bail!("unknown background {:?}", args.background),
    };
    let (format, quality) = args.format.split_once(':').unwrap_or((&args.format, "90"));
    let mut output = serde_json::json!({"format": format, "quality": quality.parse::<u8>()?});
    if let Some(max) = args.max_side {
        output["max_side"] = max.into();
    }
    let mut spec = serde_json::json!({"input": input, "background": background, "output": output, "model": args.model});
    if let Some(shard) = args.shard_size {
        spec["shard_size"] = shard.into();
    }
    Ok(serde_json::json!({"priority": args.priority, "kind": "background_replace", "spec": spec}))
}

fn state(view: &JobView) -> String {
    serde_json::to_value(view.record.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One line: `[#####.....] 120/500 images  3 failed  running`.
fn draw(view: &JobView, overwrite: bool) {
    if let (Some(t), false) = (&view.training, view.record.state.is_terminal()) {
        let last = t.steps.last();
        let line = format!(
            "step {}/{} phase {}  loss {}  lr {}  {:.1} steps/s  ETA {:.0} s{}",
            t.step,
            t.total_steps,
            t.phase,
            last.map_or("-".into(), |s| format!("{:.4}", s.loss)),
            last.map_or("-".into(), |s| format!("{:.2e}", s.lr)),
            t.steps_per_s,
            t.eta_s,
            t.resumed_from.map_or(String::new(), |r| format!("  (resumed from step {r})"))
        );
        let mut err = std::io::stderr();
        let _ = if overwrite { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
        return;
    }
    let p = view.progress;
    let done = p.items_succeeded + p.items_failed;
    let total = p.items_total.max(done);
    let width = 40usize;
    let filled = if total == 0 { 0 } else { (done as usize * width / total as usize).min(width) };
    let more = if p.sharded { "" } else { "+" };
    let line = format!(
        "[{}{}] {done}/{total}{more} images  {} failed  {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        p.items_failed,
        state(view)
    );
    let mut err = std::io::stderr();
    let _ = if overwrite { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
    let _ = err.flush();
}

fn print_view(view: &JobView) {
    let r = &view.record;
    let p = view.progress;
    println!("job        {} (tenant {})", r.id, r.tenant);
    println!("state      {}", state(view));
    println!("model      {}", r.model);
    println!("priority   {:?}", r.priority);
    println!(
        "tasks      {}/{} ended{}",
        p.tasks_done,
        p.tasks_total,
        if p.sharded { "" } else { " (still splitting)" }
    );
    println!("items      {} total, {} succeeded, {} failed", p.items_total, p.items_succeeded, p.items_failed);
    if let Some(end) = r.finished_at_ms {
        println!("wall time  {:.1} s", end.saturating_sub(r.accepted_at_ms) as f64 / 1e3);
    }
    if let Some(reason) = &r.reason {
        println!("reason     {reason}");
    }
    if let Some(t) = &view.training {
        println!("training   step {}/{} (phase {}), {:.2} steps/s", t.step, t.total_steps, t.phase, t.steps_per_s);
        if let Some(s) = t.steps.last() {
            println!("           last loss {:.4} at learning rate {:.3e}", s.loss, s.lr);
        }
        println!("           report in <tenant>/results/{}/fine-tune.json", r.id);
    }
}

async fn summary(client: &Client, id: &str, sheet: Option<PathBuf>, rows: usize) -> anyhow::Result<()> {
    let view = client.job(id).await?.with_context(|| format!("no job {id}"))?;
    let manifests = task_manifests(&client.s3, client.tenant(), id).await?;
    let latencies: Vec<f64> = manifests.iter().flat_map(|m| m.items.iter().map(|i| i.latency_ms)).collect();
    let p = view.progress;
    let wall_s = view.record.finished_at_ms.map(|end| end.saturating_sub(view.record.accepted_at_ms) as f64 / 1e3);
    println!("job {id}: {}", state(&view));
    println!("images       {} ({} succeeded, {} failed)", p.items_total, p.items_succeeded, p.items_failed);
    if let Some(wall) = wall_s {
        println!("wall time    {wall:.1} s from acceptance to the last result");
        println!("throughput   {:.1} images/s", p.items_succeeded as f64 / wall.max(1e-3));
    }
    if let (Some(p50), Some(p95)) = (percentile(&latencies, 50.0), percentile(&latencies, 95.0)) {
        println!("latency      p50 {p50:.0} ms, p95 {p95:.0} ms per image (download + engine + upload)");
    }
    let failures = client.failures(id).await?;
    if !failures.is_empty() {
        println!("failures:");
        for f in &failures {
            println!("  {}  {}: {}", f.key, f.code, f.reason);
        }
    }
    if let Some(path) = sheet {
        match job_contact_sheet(&client.s3, &manifests, rows, 160).await? {
            Some(image) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                image.save(&path)?;
                println!("contact sheet {} (least certain cutouts first)", path.display());
            }
            None => println!("no results for a contact sheet"),
        }
    }
    Ok(())
}

async fn workers(client: &Client) -> anyhow::Result<()> {
    let beats = client.jobs.heartbeats().await?;
    let load = client.jobs.load().await?;
    println!(
        "{:<20} {:<9} {:<7} {:<26} {:>5} {:>15} {:>5} {:>7} {:>6} {:<24}",
        "worker", "state", "device", "gpu", "util", "memory MiB", "temp", "running", "leases", "warm models"
    );
    let now = fleet_protocol::message::now_ms();
    for b in &beats {
        let age = format!("{:.1}s ago", now.saturating_sub(b.at_ms) as f64 / 1e3);
        for d in &b.devices {
            let gpu = d
                .spec
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(|n| b.gpus.iter().find(|g| g.index == n));
            let pct = |v: Option<u32>| v.map_or("-".to_string(), |v| format!("{v}%"));
            let (name, util, temp) = match gpu {
                Some(g) => (
                    format!("{}: {}", g.index, g.name),
                    pct(g.gpu_util_pct),
                    g.temperature_c.map_or("-".to_string(), |t| format!("{t}C")),
                ),
                None if b.telemetry_absent.is_some() => ("no NVML: CPU".to_string(), "-".into(), "-".into()),
                None => ("-".to_string(), "-".into(), "-".into()),
            };
            let leases: u32 =
                ["interactive", "batch"].iter().filter_map(|p| load.get(&(b.id.clone(), d.index, p.to_string()))).sum();
            let warm = if d.warm_models.is_empty() { "-".to_string() } else { d.warm_models.join(",") };
            println!(
                "{:<20} {:<9} {:<7} {:<26} {:>5} {:>15} {:>5} {:>7} {:>6} {:<24} {age}",
                b.id,
                b.state,
                d.spec,
                name,
                util,
                format!("{} free/{}", d.memory_free_mib, d.memory_total_mib),
                temp,
                d.running,
                leases,
                warm
            );
        }
    }
    if beats.is_empty() {
        println!("no live workers (none has sent a heartbeat in the last 3 s)");
    }
    Ok(())
}

/// Waiting tasks per (tenant, priority) over every unfinished job, and tasks ended overall.
async fn backlog(client: &Client) -> anyhow::Result<(std::collections::BTreeMap<(String, String), u64>, u64)> {
    let mut waiting = std::collections::BTreeMap::new();
    let mut ended = 0;
    for tenant in client.jobs.tenants().await? {
        for id in client.jobs.list(&tenant, 1000).await? {
            let Some(record) = client.jobs.get(&tenant, &id).await? else { continue };
            let p = client.jobs.progress(&tenant, &id).await?;
            ended += p.tasks_done;
            if !record.state.is_terminal() {
                let priority = format!("{:?}", record.priority).to_lowercase();
                *waiting.entry((tenant.to_string(), priority)).or_insert(0) += p.tasks_total - p.tasks_done;
            }
        }
    }
    Ok((waiting, ended))
}

async fn queue(client: &Client, window: u64) -> anyhow::Result<()> {
    let (_, ended_before) = backlog(client).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(window.max(1))).await;
    let (waiting, ended_after) = backlog(client).await?;
    let rate = ended_after.saturating_sub(ended_before) as f64 / started.elapsed().as_secs_f64();
    println!("{:<24} {:<12} {:>10}", "tenant", "priority", "tasks");
    for ((tenant, priority), n) in &waiting {
        println!("{tenant:<24} {priority:<12} {n:>10}");
    }
    let total: u64 = waiting.values().sum();
    println!("{:<24} {:<12} {total:>10}", "all", "");
    if rate > 0.0 {
        println!("fleet rate {rate:.1} tasks/s; time to drain the queue at that rate: {:.0} s", total as f64 / rate);
    } else if total > 0 {
        println!("fleet rate 0 tasks/s over {window} s: the queue is not draining (no live workers?)");
    } else {
        println!("queue empty");
    }
    if let Some(blocked) = client.jobs.note(fleet_state::schema::BLOCKED_KEY).await? {
        let blocked: serde_json::Value = serde_json::from_str(&blocked)?;
        println!(
            "waiting for a device: {} interactive, {} batch tasks; why:",
            blocked["interactive"], blocked["batch"]
        );
        for reason in blocked["reasons"].as_array().into_iter().flatten() {
            println!("  {}", reason.as_str().unwrap_or_default());
        }
    }
    Ok(())
}
