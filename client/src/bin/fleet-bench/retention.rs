//! Redis memory for finished work: `JOBS` jobs of `ITEMS` items each (1,000,000 items by
//! default) recorded the way the scheduler records them (job record, tasks created and
//! completed with their counts, one failed item in a hundred with its reason, the job ended),
//! Redis's `used_memory` before, with all of them finished, and once their retention ran out.

use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_protocol::job::Priority;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::ItemFailureReport;
use fleet_protocol::state::{JobEvent, JobState, TaskEvent};
use fleet_state::{JobRecord, LeaseOp, RedisJobStore, TaskNote, TaskOutcome};

/// Runs the measurement and prints one table row per stage.
pub async fn retention(jobs: usize, items: u32, shard: u32, retention_s: u64) -> anyhow::Result<()> {
    let url = std::env::var("FLEET_REDIS_URL").context("FLEET_REDIS_URL")?;
    let store = RedisJobStore::connect(&url).await?.with_retention(Duration::from_secs(retention_s));
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let tenant = TenantId::new("tenant-a")?;
    let run = format!("bench-retention-{}", fleet_protocol::message::now_ms());
    let before = used_memory(&mut conn).await?;
    let started = Instant::now();
    let tasks = items.div_ceil(shard);
    for j in 0..jobs {
        let id = format!("{run}-{j:06}");
        let record = JobRecord {
            tenant: tenant.to_string(),
            id: id.clone(),
            priority: Priority::Batch,
            state: JobState::Accepted,
            model: "matting-ref@1.0.0".into(),
            request: serde_json::json!({"id": id, "kind": "background_replace",
                "spec": {"input": {"prefix": format!("tenant-a/catalog/{j}/")}, "model": "matting-ref@1.0.0"}}),
            accepted_at_ms: fleet_protocol::message::now_ms(),
            succeeded_items: 0,
            failed_items: 0,
            reason: None,
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            finished_at_ms: None,
        };
        store.create(record).await?;
        store.apply(&tenant, &id, JobEvent::Queued).await?;
        let (mut succeeded, mut failed) = (0, 0);
        for t in 0..tasks {
            let n = shard.min(items - t * shard);
            store.create_task(&tenant, &id, t, n, fleet_protocol::job::Priority::Batch).await?;
            let failures: Vec<ItemFailureReport> = (0..n)
                .filter(|i| (t * shard + i) % 100 == 99)
                .map(|i| ItemFailureReport {
                    key: format!("tenant-a/catalog/{j}/{:06}.jpg", t * shard + i),
                    code: "corrupt".into(),
                    reason: "file ends before the image data is complete".into(),
                })
                .collect();
            let outcome = TaskOutcome { succeeded: u64::from(n) - failures.len() as u64, failures };
            succeeded += outcome.succeeded;
            failed += outcome.failures.len() as u64;
            let note = TaskNote { worker: Some("w1"), ..Default::default() };
            store
                .update_task(&tenant, &id, t, TaskEvent::Complete, &outcome, note, LeaseOp::End { token: None })
                .await?;
        }
        store.apply(&tenant, &id, JobEvent::TasksEnded { succeeded, failed }).await?;
    }
    let recorded_s = started.elapsed().as_secs_f64();
    let finished = used_memory(&mut conn).await?;
    let total_items = jobs as u64 * u64::from(items);
    let per_item = (finished.saturating_sub(before)) as f64 / total_items as f64;
    println!("| stage | used_memory (MiB) | bytes per finished item |");
    println!("| --- | ---: | ---: |");
    println!("| before | {:.1} | |", mib(before));
    println!(
        "| {jobs} jobs x {items} items finished ({total_items} items, {tasks} tasks per job, 1 % failed; recorded in {recorded_s:.0} s) | {:.1} | {per_item:.1} |",
        mib(finished)
    );
    tokio::time::sleep(Duration::from_secs(retention_s + 1)).await;
    let pruned = store.prune_expired(jobs + 10).await?;
    let expired = used_memory(&mut conn).await?;
    println!(
        "| {retention_s} s later: retention ran out ({pruned} jobs pruned from the job list) | {:.1} | |",
        mib(expired)
    );
    Ok(())
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("used_memory in INFO memory")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
