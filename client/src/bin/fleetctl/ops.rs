//! The operator's commands: the live workers and their devices (`workers`), taking a worker
//! out of and back into rotation (`cordon`, `drain`, `uncordon`) and the backlog with the
//! time to drain it (`queue`).

use std::time::{Duration, Instant};

use fleet_client::Client;
use fleet_protocol::heartbeat::Order;

/// `workers`: one row per device of every live worker, from their heartbeats and leases.
pub(crate) async fn workers(client: &Client) -> anyhow::Result<()> {
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

/// `cordon`: the worker takes nothing new; tasks in hand finish.
pub(crate) async fn cordon(client: &Client, worker: &str) -> anyhow::Result<()> {
    client.jobs.set_worker_order(worker, Order::Cordon).await?;
    println!("{worker}: cordoned (takes nothing new; tasks in hand finish)");
    Ok(())
}

/// `uncordon`: the worker is back in rotation.
pub(crate) async fn uncordon(client: &Client, worker: &str) -> anyhow::Result<()> {
    client.jobs.set_worker_order(worker, Order::Run).await?;
    println!("{worker}: back in rotation");
    Ok(())
}

/// `drain`: the worker takes nothing new and finishes what it holds; with `wait`, returns once
/// its heartbeat says `drained` (an error when it has none).
pub(crate) async fn drain(client: &Client, worker: &str, wait: bool) -> anyhow::Result<()> {
    client.jobs.set_worker_order(worker, Order::Drain).await?;
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
    Ok(())
}

/// `queue`: the backlog by tenant and priority (the figure the leading scheduler exports as
/// `fleet_backlog_tasks`), the fleet's rate over `window` seconds, the time to drain at that
/// rate, and why tasks wait for a device.
pub(crate) async fn queue(client: &Client, window: u64) -> anyhow::Result<()> {
    let before = client.jobs.backlog().await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(window.max(1))).await;
    let after = client.jobs.backlog().await?;
    let ended = |b: &fleet_state::tasks::Backlog| b.ended.values().sum::<u64>();
    let rate = ended(&after).saturating_sub(ended(&before)) as f64 / started.elapsed().as_secs_f64();
    let waiting = after.waiting;
    println!("{:<24} {:<12} {:>10}", "tenant", "priority", "tasks");
    for ((tenant, priority), n) in &waiting {
        println!("{tenant:<24} {:<12} {n:>10}", priority.as_str());
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
