//! `fleet-bench fair-share`: two tenants, weights 1 (`tenant-a`) and 3 (`tenant-b`) from the
//! scheduler's tenants file. A floods batch tasks, B submits later; B's share of the tasks
//! ended while both wait, against its weight. Then A floods interactive jobs while B probes
//! with interactive jobs: B's submit-to-start latency. The workers are no-op workers holding
//! each task a fixed time, so tasks are device time.

use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_client::{Client, Submitted};
use fleet_protocol::message::now_ms;
use serde_json::json;

use crate::{client_as, job, manifest, report, run_id};

/// Submits a batch job over a manifest, one key per task.
async fn submit(c: &Client, id: &str, key: &str) -> anyhow::Result<Submitted> {
    let body = job(id, "batch", json!({"manifest": key}), 1);
    Ok(c.submit(id, &body, Duration::from_secs(60)).await?)
}

/// Tasks ended of the job, and whether it ended.
async fn done(client: &Client, id: &str) -> anyhow::Result<(u64, bool)> {
    let view = client.job(id).await?.context("bench job")?;
    Ok((view.progress.tasks_done, view.record.state.is_terminal()))
}

pub(crate) async fn fair_share(flood: usize, later: usize, probes: usize, weight_b: f64) -> anyhow::Result<()> {
    let a = client_as("tenant-a").await?;
    let b = client_as("tenant-b").await?;
    let key_a = manifest(&a, "flood", flood).await?;
    let key_b = manifest(&b, "later", later).await?;
    let id_a = run_id("flood");
    let id_b = run_id("later");
    anyhow::ensure!(submit(&a, &id_a, &key_a).await? == Submitted::Accepted, "flood job not accepted");
    // Let A's flood run alone for a while: it has every device.
    let deadline = Instant::now() + Duration::from_secs(600);
    while done(&a, &id_a).await?.0 < 1000 {
        anyhow::ensure!(Instant::now() < deadline, "the flood job does not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(submit(&b, &id_b, &key_b).await? == Submitted::Accepted, "later job not accepted");
    let b_submitted = Instant::now();
    // Sample both while both wait; the share is measured from B's first ended task to the
    // end of whichever ends first.
    let mut first: Option<(Instant, u64, u64)> = None;
    let mut last = None;
    loop {
        let ((ta, end_a), (tb, end_b)) = (done(&a, &id_a).await?, done(&b, &id_b).await?);
        let now = Instant::now();
        if first.is_none() && tb > 0 {
            first = Some((now, ta, tb));
        }
        if end_a || end_b {
            break;
        }
        last = Some((now, ta, tb));
        anyhow::ensure!(b_submitted.elapsed() < Duration::from_secs(1800), "the jobs do not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ((t0, a0, b0), (t1, a1, b1)) = (first.context("B never ran")?, last.context("no sample while both waited")?);
    let (da, db) = (a1.saturating_sub(a0), b1.saturating_sub(b0));
    let share = db as f64 / (da + db).max(1) as f64;
    let target = weight_b / (1.0 + weight_b);
    println!(
        "fair share: A flooded {flood} batch tasks, B submitted {later} after A's first 1,000; while both waited \
         ({:.1} s) A ended {da} tasks, B {db}: B's share {:.1} % against its weight's {:.1} % ({:+.1} %); \
         B's first task ended {:.2} s after it was submitted",
        t1.duration_since(t0).as_secs_f64(),
        share * 100.0,
        target * 100.0,
        (share / target - 1.0) * 100.0,
        t0.duration_since(b_submitted).as_secs_f64(),
    );
    let (_, b_ended) = done(&b, &id_b).await?;
    if !b_ended {
        b.wait(&id_b, Duration::from_secs(1800), |_| {}).await?;
    }
    a.cancel(&id_a).await?;
    interactive_flood(&a, &b, probes).await
}

/// A publishes interactive one-task jobs as fast as it can while B sends `probes` one-task
/// interactive jobs 20 ms apart; B's submit-to-start latencies and how many of A's passed.
async fn interactive_flood(a: &Client, b: &Client, probes: usize) -> anyhow::Result<()> {
    let stop = tokio_util_stop();
    let flooder = {
        let a_stop = stop.clone();
        let a = client_as("tenant-a").await?;
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !a_stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = run_id(&format!("a-interactive-{sent}"));
                let body = job(&id, "interactive", json!({"keys": [format!("tenant-a/bench/noop/i-{sent}.jpg")]}), 1);
                if a.publish(&id, &body).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent = Vec::with_capacity(probes);
    for i in 0..probes {
        let id = run_id(&format!("b-probe-{i}"));
        let body = job(&id, "interactive", json!({"keys": [format!("tenant-b/bench/noop/probe-{i}.jpg")]}), 1);
        let at = now_ms();
        b.publish(&id, &body).await?;
        sent.push((id, at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(probes);
    for (id, at) in sent {
        b.wait(&id, Duration::from_secs(600), |_| {}).await?;
        let task = b.jobs.task(b.tenant(), &id, 0).await?.context("probe task")?;
        latencies.push(task.started_at_ms.context("probe start time")?.saturating_sub(at) as f64);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = flooder.await?;
    let accepted = a.list(100_000).await?.iter().filter(|id| id.contains("a-interactive")).count();
    println!("A published {published} interactive jobs meanwhile; {accepted} were accepted (its interactive_jobs_per_minute)");
    report("B's interactive start latency while A floods interactive jobs", &latencies);
    Ok(())
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}
