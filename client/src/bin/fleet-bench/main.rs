//! `fleet-bench`: the fleet's benchmarks against a running scheduler and workers (`./fleet
//! bench-fleet` starts them). Figures go to BENCHMARKS.md.
//!
//! ```text
//! fleet-bench dispatch --tasks 20000 --probes 200 --backlog 100000   no-op workers: tasks/s, p99 start latency
//! fleet-bench shard-rss --keys 1000000 --scheduler-pid PID           scheduler peak RSS splitting a manifest
//! fleet-bench catalog-job --prefix P                                 images/s of one re-render job
//! fleet-bench mixed-models --prefix P --models a@1,b@1 --jobs 24     interleaved jobs of two models
//! fleet-bench fair-share --flood 20000 --later 2000 --weight-b 3     two tenants' shares (weights 1 and 3)
//! ```

mod fair;
mod retention;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_client::report::percentile;
use fleet_client::{amqp_url_as, Client, ClientConfig, Submitted};
use fleet_protocol::message::now_ms;
use fleet_queue::{self as amqp, BATCH_QUEUE};
use fleet_store::s3::S3Config;
use fleet_store::ObjectStore;
use lapin::options::QueuePurgeOptions;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "fleet-bench", about = "gpu-fleet benchmarks against a running fleet")]
struct Cli {
    /// Configuration file (TOML, section `[bench]`; see deploy/fleet.example.toml): the
    /// environment overrides it, flags override both.
    #[arg(long, env = "FLEET_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dispatch throughput and interactive start latency with no-op workers.
    Dispatch {
        /// Tasks of the throughput job (one key each).
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Interactive one-task jobs per latency probe.
        #[arg(long, default_value_t = 200)]
        probes: usize,
        /// Tasks of the batch backlog the second probe runs beside.
        #[arg(long, default_value_t = 100_000)]
        backlog: usize,
        /// Only the probe beside the backlog (no throughput run, no idle probe).
        #[arg(long)]
        backlog_only: bool,
    },
    /// Peak RSS of the scheduler while it splits a manifest of KEYS keys (no workers).
    ShardRss {
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        #[arg(long, default_value_t = 100)]
        shard: u32,
        #[arg(long)]
        scheduler_pid: u32,
    },
    /// One re-render job over a prefix; prints images/s from acceptance to the last result.
    CatalogJob {
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 16)]
        shard: u32,
    },
    /// Interleaved jobs over a prefix, alternating between models, all submitted at once;
    /// prints tasks and wall time (model loads are counted from the workers' logs).
    MixedModels {
        #[arg(long)]
        prefix: String,
        /// Models to alternate between, comma-separated `name@version`.
        #[arg(long)]
        models: String,
        #[arg(long, default_value_t = 24)]
        jobs: usize,
        #[arg(long, default_value_t = 2)]
        shard: u32,
    },
    /// Two tenants: A floods batch tasks, B submits later; B's share while both wait (the
    /// scheduler's tenants file gives A weight 1 and B `--weight-b`), then B's interactive
    /// latency while A floods interactive jobs.
    FairShare {
        #[arg(long, default_value_t = 20_000)]
        flood: usize,
        #[arg(long, default_value_t = 2_000)]
        later: usize,
        #[arg(long, default_value_t = 200)]
        probes: usize,
        #[arg(long, default_value_t = 3.0)]
        weight_b: f64,
    },
    /// Redis memory for finished work: JOBS jobs of ITEMS items recorded and finished as the
    /// scheduler does, then left to expire after RETENTION seconds.
    Retention {
        #[arg(long, default_value_t = 1_000)]
        jobs: usize,
        #[arg(long, default_value_t = 1_000)]
        items: u32,
        #[arg(long, default_value_t = 100)]
        shard: u32,
        #[arg(long, default_value_t = 20)]
        retention: u64,
    },
}

const TENANT: &str = "tenant-a";

async fn client() -> anyhow::Result<Client> {
    client_as(TENANT).await
}

/// A client acting as `tenant` (dev password `<tenant>-dev`).
async fn client_as(tenant: &str) -> anyhow::Result<Client> {
    let url = std::env::var("FLEET_AMQP_URL").context("FLEET_AMQP_URL")?;
    let config = ClientConfig {
        amqp_url: amqp_url_as(&url, tenant, &format!("{tenant}-dev")),
        tenant: tenant.into(),
        redis_url: std::env::var("FLEET_REDIS_URL").context("FLEET_REDIS_URL")?,
        s3: S3Config::from_env().map_err(anyhow::Error::msg)?,
    };
    Ok(Client::connect(&config).await?)
}

fn job(id: &str, priority: &str, input: serde_json::Value, shard: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "priority": priority, "kind": "background_replace",
        "spec": {"input": input, "background": {"mode": "color", "color": "#f2f2f2"},
                 "output": {"format": "jpeg", "quality": 90}, "model": "matting-ref@1.0.0", "shard_size": shard}
    }))
    .expect("a job serialises")
}

/// Writes a manifest of `keys` synthetic keys; returns its key.
async fn manifest(client: &Client, name: &str, keys: usize) -> anyhow::Result<String> {
    let tenant = client.tenant();
    let key = format!("{tenant}/bench/{name}-{keys}.txt");
    if !client.s3.exists(&key).await? {
        let mut text = String::with_capacity(keys * 40);
        for i in 0..keys {
            text.push_str(&format!("{tenant}/bench/noop/item-{i:08}.jpg\n"));
        }
        client.s3.put(&key, text.into_bytes(), "text/plain").await?;
    }
    Ok(key)
}

fn run_id(what: &str) -> String {
    format!("bench-{what}-{}", now_ms())
}

fn main() -> anyhow::Result<()> {
    fleet_config::layer(&<Cli as clap::CommandFactory>::command(), "bench")?;
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = client().await?;
        match cli.command {
            Command::Dispatch { tasks, probes, backlog, backlog_only } => {
                dispatch(&client, tasks, probes, backlog, backlog_only).await
            }
            Command::ShardRss { keys, shard, scheduler_pid } => shard_rss(&client, keys, shard, scheduler_pid).await,
            Command::CatalogJob { prefix, shard } => catalog_job(&client, &prefix, shard).await,
            Command::MixedModels { prefix, models, jobs, shard } => {
                mixed_models(&client, &prefix, &models, jobs, shard).await
            }
            Command::FairShare { flood, later, probes, weight_b } => {
                fair::fair_share(flood, later, probes, weight_b).await
            }
            Command::Retention { jobs, items, shard, retention } => {
                retention::retention(jobs, items, shard, retention).await
            }
        }
    })
}

async fn dispatch(
    client: &Client,
    tasks: usize,
    probes: usize,
    backlog: usize,
    backlog_only: bool,
) -> anyhow::Result<()> {
    if !backlog_only {
        throughput(client, tasks, probes).await?;
    }
    backlog_probe(client, probes, backlog).await
}

async fn throughput(client: &Client, tasks: usize, probes: usize) -> anyhow::Result<()> {
    let key = manifest(client, "throughput", tasks).await?;
    let id = run_id("throughput");
    let submitted = Instant::now();
    let submitted_ms = now_ms();
    anyhow::ensure!(
        client.submit(&id, &job(&id, "batch", json!({"manifest": key}), 1), Duration::from_secs(60)).await?
            == Submitted::Accepted
    );
    let view = client.wait(&id, Duration::from_secs(1800), |_| {}).await?;
    let wall = view.record.finished_at_ms.unwrap_or_else(now_ms).saturating_sub(submitted_ms) as f64 / 1e3;
    anyhow::ensure!(view.progress.tasks_done as usize == tasks, "only {} tasks ended", view.progress.tasks_done);
    println!(
        "throughput: {tasks} no-op tasks from submission to recorded completion in {wall:.2} s = {:.0} tasks/s \
         (client wall {:.2} s)",
        tasks as f64 / wall,
        submitted.elapsed().as_secs_f64()
    );
    let idle = probe(client, probes, "idle").await?;
    report("interactive start latency, idle fleet", &idle);
    Ok(())
}

async fn backlog_probe(client: &Client, probes: usize, backlog: usize) -> anyhow::Result<()> {
    let key = manifest(client, "backlog", backlog).await?;
    let backlog_id = run_id("backlog");
    anyhow::ensure!(
        client
            .submit(&backlog_id, &job(&backlog_id, "batch", json!({"manifest": key}), 1), Duration::from_secs(60))
            .await?
            == Submitted::Accepted
    );
    // Let the backlog build: wait until all of it is queued (workers are already draining it).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let view = client.job(&backlog_id).await?.context("backlog job")?;
        let waiting = view.progress.tasks_total - view.progress.tasks_done;
        if view.progress.sharded {
            println!("backlog: {} tasks created, {waiting} waiting", view.progress.tasks_total);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "backlog never built");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the broker finish writing the backlog to its log before probing beside it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let view = client.job(&backlog_id).await?.context("backlog job")?;
    println!("backlog when the probe starts: {} tasks waiting", view.progress.tasks_total - view.progress.tasks_done);
    let busy = probe(client, probes, "backlog").await?;
    let view = client.job(&backlog_id).await?.context("backlog job")?;
    println!(
        "backlog after the probe: {} of {} tasks still waiting",
        view.progress.tasks_total - view.progress.tasks_done,
        view.progress.tasks_total
    );
    report("interactive start latency, beside the batch backlog", &busy);
    client.cancel(&backlog_id).await?;
    purge_batch_queue().await
}

/// Drops every queued batch task (the backlog has done its job).
async fn purge_batch_queue() -> anyhow::Result<()> {
    let admin = amqp::connect(&std::env::var("FLEET_AMQP_URL")?).await?;
    let purged = admin.create_channel().await?.queue_purge(BATCH_QUEUE, QueuePurgeOptions::default()).await?;
    println!("cancelled the backlog job and purged {purged} queued tasks");
    Ok(())
}

/// Submits `n` one-task interactive jobs 20 ms apart; returns submit-to-start latencies (ms).
async fn probe(client: &Client, n: usize, what: &str) -> anyhow::Result<Vec<f64>> {
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let id = run_id(&format!("probe-{what}-{i}"));
        let body = job(&id, "interactive", json!({"keys": [format!("{TENANT}/bench/noop/probe-{i}.jpg")]}), 1);
        let at = now_ms();
        client.publish(&id, &body).await?;
        sent.push((id, at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(n);
    for (id, at) in sent {
        client.wait(&id, Duration::from_secs(600), |_| {}).await?;
        let task = client.jobs.task(client.tenant(), &id, 0).await?.context("probe task")?;
        let started = task.started_at_ms.context("probe task start time")?;
        latencies.push(started.saturating_sub(at) as f64);
    }
    Ok(latencies)
}

fn report(what: &str, latencies: &[f64]) {
    let p = |q| percentile(latencies, q).unwrap_or(f64::NAN);
    println!(
        "{what}: n={} p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        p(50.0),
        p(95.0),
        p(99.0),
        p(100.0)
    );
}

fn peak_rss_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

async fn shard_rss(client: &Client, keys: usize, shard: u32, pid: u32) -> anyhow::Result<()> {
    let key = manifest(client, "rss", keys).await?;
    let (rss_before, _) = peak_rss_mb(pid)?;
    let id = run_id("rss");
    let started = Instant::now();
    anyhow::ensure!(
        client.submit(&id, &job(&id, "batch", json!({"manifest": key}), shard), Duration::from_secs(60)).await?
            == Submitted::Accepted
    );
    let mut peak_sampled = 0.0f64;
    loop {
        let (rss, _) = peak_rss_mb(pid)?;
        peak_sampled = peak_sampled.max(rss);
        let view = client.job(&id).await?.context("job")?;
        if view.progress.sharded {
            let (_, hwm) = peak_rss_mb(pid)?;
            println!(
                "split a {keys}-key manifest into {} tasks of {shard} in {:.1} s; scheduler RSS {rss_before:.0} MB \
                 before, peak {hwm:.0} MB (VmHWM; sampled peak {peak_sampled:.0} MB)",
                view.progress.tasks_total,
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.cancel(&id).await?;
    purge_batch_queue().await
}

async fn catalog_job(client: &Client, prefix: &str, shard: u32) -> anyhow::Result<()> {
    let id = run_id("catalog");
    anyhow::ensure!(
        client.submit(&id, &job(&id, "batch", json!({"prefix": prefix}), shard), Duration::from_secs(60)).await?
            == Submitted::Accepted
    );
    let view = client.wait(&id, Duration::from_secs(3600), |_| {}).await?;
    let wall =
        view.record.finished_at_ms.unwrap_or_else(now_ms).saturating_sub(view.record.accepted_at_ms) as f64 / 1e3;
    println!(
        "fleet job {id}: {} images ({} failed) in {wall:.2} s = {:.2} images/s",
        view.progress.items_succeeded,
        view.progress.items_failed,
        view.progress.items_succeeded as f64 / wall
    );
    Ok(())
}

async fn mixed_models(client: &Client, prefix: &str, models: &str, jobs: usize, shard: u32) -> anyhow::Result<()> {
    let models: Vec<&str> = models.split(',').filter(|m| !m.is_empty()).collect();
    anyhow::ensure!(!models.is_empty(), "--models names no model");
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..jobs {
        let model = models[i % models.len()];
        let id = run_id(&format!("mixed-{i}"));
        let mut body: serde_json::Value = serde_json::from_slice(&job(&id, "batch", json!({"prefix": prefix}), shard))?;
        body["spec"]["model"] = json!(model);
        match client.submit(&id, &serde_json::to_vec(&body)?, Duration::from_secs(60)).await? {
            Submitted::Accepted => ids.push(id),
            other => anyhow::bail!("job {id} not accepted: {other:?}"),
        }
    }
    let mut tasks = 0;
    for id in &ids {
        let view = client.wait(id, Duration::from_secs(1800), |_| {}).await?;
        tasks += view.progress.tasks_done;
    }
    println!(
        "mixed-models: {jobs} jobs alternating {} models, {tasks} tasks in {:.1} s",
        models.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
