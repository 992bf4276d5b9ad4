//! What an autoscaler and an operator read: the backlog the leading scheduler exports
//! (`fleet_backlog_tasks`, `fleet_backlog_drain_seconds`, the figures the KEDA ScaledObjects in
//! deploy/k8s scale on) moves with the queue, and a worker removed while busy (scale-in sends
//! SIGTERM) finishes what it holds, so the job loses nothing.

use std::time::{Duration, Instant};

use fleet_client::Submitted;
use fleet_protocol::state::JobState;
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::{plain, unique};
use serde_json::json;

const TENANT: &str = "tenant-a";
/// The drain time exported while tasks wait and none ends (`fleet_scheduler::backlog`).
const STALLED_S: f64 = 86_400.0;

/// The value of `name{labels}` in a Prometheus text page (labels as the encoder writes
/// them: sorted by name), if it is there.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{{{labels}}} ");
    page.lines().find_map(|line| line.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

/// The scheduler's batch backlog for the tenant and its batch drain time, as exported now.
fn backlog(fleet: &Fleet) -> (Option<f64>, Option<f64>) {
    let page = fleet.metrics("scheduler").unwrap_or_default();
    let tasks = sample(&page, "fleet_backlog_tasks", &format!("priority=\"batch\",tenant=\"{TENANT}\""));
    (tasks, sample(&page, "fleet_backlog_drain_seconds", "priority=\"batch\""))
}

/// Waits until the exported backlog satisfies `done`, returning the last reading.
fn until(fleet: &Fleet, within: Duration, what: &str, done: impl Fn((Option<f64>, Option<f64>)) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let now = backlog(fleet);
        if done(now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the backlog reads {now:?}\n{}", plain(&fleet.log("scheduler")));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backlog_metric_moves_with_the_queue_and_a_worker_removed_while_busy_loses_nothing() {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let client = client(TENANT).await;
    // What earlier tests left counted (tasks made straight in the store): the figure moves
    // from there. One sampling period first (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = backlog(&fleet).0.unwrap_or(0.0);

    // Twelve one-item tasks and no worker: the backlog holds all twelve and does not drain.
    let id = unique("backlog");
    let keys: Vec<String> = (0..12).map(|i| format!("{TENANT}/nothing/{id}/{i}.png")).collect();
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"keys": keys}, "background": {"mode": "transparent"},
                 "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 1}
    }))
    .unwrap();
    assert_eq!(client.submit(&id, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    until(&fleet, Duration::from_secs(20), "twelve tasks counted", |(tasks, _)| tasks == Some(base + 12.0));
    until(&fleet, Duration::from_secs(20), "stalled with no worker", |(_, drain)| drain == Some(STALLED_S));

    // A worker drains it: each task takes 400 ms, two at a time.
    fleet.worker_with("w1", 2, &["--executor", "noop", "--noop-ms", "400"], &[]);
    until(&fleet, Duration::from_secs(30), "draining at a finite rate", |(tasks, drain)| {
        tasks.is_some_and(|t| t <= base + 10.0) && drain.is_some_and(|d| d < STALLED_S)
    });
    // Scale-in: the pod is sent SIGTERM while it holds tasks. It finishes them and exits.
    assert!(fleet.terminate("w1", Duration::from_secs(60)), "SIGTERM drains and exits cleanly:\n{}", fleet.log("w1"));
    let (left, _) = backlog(&fleet);
    assert!(left.is_some_and(|t| t > base), "tasks were left for another worker: {left:?}");
    fleet.worker_with("w2", 2, &["--executor", "noop", "--noop-ms", "50"], &[]);
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded);
    assert_eq!((view.progress.items_succeeded, view.progress.items_failed), (12, 0));
    until(&fleet, Duration::from_secs(20), "back where it started", |(tasks, _)| tasks == Some(base));
}
