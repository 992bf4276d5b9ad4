//! The chaos suite, `./fleet chaos`: faults injected into a running fleet on the real
//! services, one scenario after another, each bounded in time, and one table at the end.
//!
//! Every scenario runs the same work (two catalog jobs of 52 inputs, one per task, on two
//! workers, or the scenario's own)
//! with the workers' object store behind a proxy that records every PUT: its key, the lease
//! (`<task> <token>`) that wrote it, and when. For each scenario the table says
//! - **lost**: jobs that did not end, items not accounted for (succeeded + failed short of the
//!   total, a succeeded item without its result) and items failed by the fault rather than
//!   for their own reason;
//! - **written twice**: result keys PUT more than once (redone work, harmless but counted);
//! - **stale writes**: PUTs by an attempt whose lease had been taken over when they arrived
//!   (the scheduler logs when it took each lease over);
//! - **redone**: tasks whose outputs were written under more than one lease;
//! - **fault -> done**: seconds from the fault to the end of the last job.
//!
//! Ignored by `cargo test`: `./fleet chaos` runs it on a new stack (about 15 minutes on two
//! cores) and RELIABILITY.md keeps its table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fleet_client::catalog::seed;
use fleet_client::{Client, Submitted};
use fleet_protocol::keys::{results_prefix, TenantId};
use fleet_store::ObjectStore;
use fleet_synth::CatalogSpec;
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::{libfaketime, plain, unique};
use fleet_tests_services::proxy::{addr_of, Mode, Proxy, Put};
use serde_json::json;

const TENANT: &str = "tenant-a";
/// Longest a scenario's jobs may take to end after its fault.
const BOUND: Duration = Duration::from_secs(240);
/// Failure codes an item earns for itself (the catalog's broken uploads, a too-large input),
/// as opposed to failing because of a fault.
const OWN_FAILURES: [&str; 8] =
    ["corrupt", "unsupported_format", "unsupported", "too_large", "too_many_pixels", "empty", "not_found", "no_model"];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: ./fleet chaos exports it"))
}

/// What one scenario cost.
struct Outcome {
    scenario: String,
    jobs: usize,
    lost: usize,
    written_twice: usize,
    stale: usize,
    redone: usize,
    fault_to_done_s: f64,
    note: String,
}

/// The shared set-up: a seeded catalog and the recording proxy in front of the object store.
struct Bench {
    client: Client,
    images: String,
    store: Proxy,
}

impl Bench {
    async fn new() -> Bench {
        let client = client(TENANT).await;
        let prefix = format!("{TENANT}/{}/", unique("chaos"));
        let spec = CatalogSpec { seed: 21, count: 48, min_long_side: 200, max_long_side: 320, ..Default::default() };
        let work = tempfile::tempdir().unwrap();
        seed(&client.s3, &prefix, &spec, work.path()).await.unwrap();
        let store = Proxy::start_recording_puts(addr_of(&env("FLEET_S3_ENDPOINT")), &env("FLEET_S3_BUCKET")).await;
        Bench { client, images: format!("{prefix}images/"), store }
    }

    /// A worker whose object store is the recording proxy.
    fn worker(&self, fleet: &mut Fleet, name: &str, extra_env: &[(&str, &str)]) {
        let endpoint = format!("http://{}", self.store.addr());
        let mut env = vec![("FLEET_S3_ENDPOINT", endpoint.as_str())];
        env.extend_from_slice(extra_env);
        fleet.worker_with(name, 1, &[], &env);
    }

    /// Submits a catalog job (the whole seeded catalog, one image per task).
    async fn submit(&self, what: &str) -> String {
        let id = unique(what);
        let body = serde_json::to_vec(&json!({
            "id": id, "priority": "batch", "kind": "background_replace",
            "spec": {"input": {"prefix": self.images}, "background": {"mode": "color", "color": "#f2f2f2"},
                     "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 1}
        }))
        .unwrap();
        self.submit_body(&id, &body).await;
        id
    }

    async fn submit_body(&self, id: &str, body: &[u8]) {
        // A new broker connection each time: an earlier scenario restarted the broker.
        let submitter = client(TENANT).await;
        match submitter.submit(id, body, Duration::from_secs(60)).await.unwrap() {
            Submitted::Accepted => {}
            other => panic!("{id}: {other:?}"),
        }
    }

    /// Waits for every job to end (Redis only, so a broker restart does not matter); the
    /// ones that did not end within [`BOUND`].
    async fn wait(&self, ids: &[String]) -> Vec<String> {
        let deadline = Instant::now() + BOUND;
        let mut open: Vec<String> = ids.to_vec();
        while !open.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for id in open {
                match self.client.job(&id).await {
                    Ok(Some(view)) if view.record.state.is_terminal() => {}
                    _ => still.push(id),
                }
            }
            open = still;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        open
    }

    /// Judges the scenario once its jobs ended (or the bound passed).
    async fn judge(
        &self,
        scenario: &str,
        fleet: &Fleet,
        logs: &[&str],
        ids: &[String],
        fault: Instant,
        note: &str,
    ) -> Outcome {
        let unfinished = self.wait(ids).await;
        let fault_to_done_s = fault.elapsed().as_secs_f64();
        let tenant = TenantId::new(TENANT).unwrap();
        let mut lost = unfinished.len();
        for id in ids.iter().filter(|id| !unfinished.contains(id)) {
            let view = self.client.job(id).await.unwrap().expect("an ended job has a record");
            let p = view.progress;
            lost += (p.items_total.saturating_sub(p.items_succeeded + p.items_failed)) as usize;
            let failures = self.client.failures(id).await.unwrap();
            lost += failures.iter().filter(|f| !OWN_FAILURES.contains(&f.code.as_str())).count();
            let results = fleet_store::list_all(&self.client.s3, &results_prefix(&tenant, id)).await.unwrap();
            let written = results.iter().filter(|k| k.contains("/result.")).count() as u64;
            lost += p.items_succeeded.saturating_sub(written) as usize;
        }
        let takeovers = takeovers(fleet, logs);
        let puts: Vec<Put> = self
            .store
            .puts()
            .into_iter()
            .filter(|p| ids.iter().any(|id| p.key.starts_with(&results_prefix(&tenant, id))))
            .collect();
        let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
        let mut leases_per_task: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stale = 0;
        for put in &puts {
            *per_key.entry(put.key.as_str()).or_default() += 1;
            let Some(lease) = &put.lease else { continue };
            let (task, token) = lease.split_once(' ').unwrap_or((lease, ""));
            leases_per_task.entry(task.to_string()).or_default().insert(token.to_string());
            if takeovers.get(&(task.to_string(), token.to_string())).is_some_and(|at| *at <= put.at_ms) {
                stale += 1;
            }
        }
        if lost > 0 || stale > 0 {
            let slug: String = scenario.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.fleet/chaos-logs").join(slug);
            fleet.keep_logs(&dir);
            eprintln!("chaos: {scenario}: logs kept in {}", dir.display());
        }
        Outcome {
            scenario: scenario.to_string(),
            jobs: ids.len(),
            lost,
            written_twice: per_key.values().filter(|n| **n > 1).count(),
            stale,
            redone: leases_per_task.values().filter(|t| t.len() > 1).count(),
            fault_to_done_s,
            note: note.to_string(),
        }
    }
}

/// When each lease was taken over, from the schedulers' logs: `(task, token) -> ms`.
fn takeovers(fleet: &Fleet, logs: &[&str]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for name in logs {
        for line in plain(&fleet.log(name)).lines().filter(|l| l.contains("lease taken over")) {
            let field = |key: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
            };
            if let (Some(task), Some(token), Some(at)) = (field("task"), field("token"), field("taken_at_ms")) {
                out.insert((task, token), at.parse().unwrap_or(0));
            }
        }
    }
    out
}

fn stack(command: &str, service: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(root.join("deploy/stack.sh")).args([command, service]).status().unwrap();
    assert!(status.success(), "stack.sh {command} {service}");
}

async fn worker_killed_repeatedly(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "steady", &[]);
    bench.worker(&mut fleet, "doomed-0", &[]);
    let ids = vec![bench.submit("kill9").await, bench.submit("kill9").await];
    let fault = Instant::now();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fleet.kill9(&format!("doomed-{round}"));
        bench.worker(&mut fleet, &format!("doomed-{}", round + 1), &[]);
    }
    bench.judge("worker kill -9, three times", &fleet, &["scheduler"], &ids, fault, "a new worker after each").await
}

async fn scheduler_killed(bench: &Bench, mid_shard: bool) -> Outcome {
    let mut fleet = Fleet::default();
    // A queue window of 2 keeps the split going while the tasks run: a kill lands mid-split.
    let window = if mid_shard { "2" } else { "256" };
    fleet.scheduler_with("first", &[("FLEET_QUEUE_WINDOW", window)]);
    bench.worker(&mut fleet, "w1", &[]);
    bench.worker(&mut fleet, "w2", &[]);
    let ids = vec![bench.submit("sched").await, bench.submit("sched").await];
    tokio::time::sleep(Duration::from_millis(if mid_shard { 1500 } else { 100 })).await;
    let fault = Instant::now();
    fleet.kill9("first");
    // The next scheduler leads once the dead one's lead lapses (up to 10 s).
    fleet.scheduler_with("second", &[("FLEET_QUEUE_WINDOW", window)]);
    let (name, note) = if mid_shard {
        ("scheduler kill -9 mid-split", "queue window 2; the split resumes from its cursor")
    } else {
        ("scheduler kill -9 mid-dispatch", "killed 0.1 s after the submissions")
    };
    bench.judge(name, &fleet, &["first", "second"], &ids, fault, note).await
}

async fn service_restarted(bench: &Bench, service: &str) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "w1", &[]);
    bench.worker(&mut fleet, "w2", &[]);
    let ids = vec![bench.submit("restart").await, bench.submit("restart").await];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault = Instant::now();
    stack("restart", service);
    let took = fault.elapsed().as_secs_f64();
    let name = match service {
        "rabbitmq" => "RabbitMQ restart",
        "redis" => "Redis restart",
        _ => "Garage restart",
    };
    bench.judge(name, &fleet, &["scheduler"], &ids, fault, &format!("down and up again in {took:.1} s")).await
}

async fn worker_paused(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "paused", &[]);
    bench.worker(&mut fleet, "w2", &[]);
    let ids = vec![bench.submit("stop").await, bench.submit("stop").await];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault = Instant::now();
    fleet.signal("paused", "STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    fleet.signal("paused", "CONT");
    bench.judge("worker SIGSTOP 8 s, then SIGCONT", &fleet, &["scheduler"], &ids, fault, "lease life 3 s").await
}

async fn worker_clock_off(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let preload = libfaketime();
    let skew = [("LD_PRELOAD", preload.as_str()), ("FAKETIME", "+10"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    bench.worker(&mut fleet, "ahead", &skew);
    let skew = [("LD_PRELOAD", preload.as_str()), ("FAKETIME", "-10"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    bench.worker(&mut fleet, "behind", &skew);
    let fault = Instant::now();
    let ids = vec![bench.submit("skew").await, bench.submit("skew").await];
    bench.judge("worker clocks 10 s ahead and behind", &fleet, &["scheduler"], &ids, fault, "libfaketime").await
}

async fn two_schedulers(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("leader");
    let standby = fleet.scheduler_unready("standby");
    bench.worker(&mut fleet, "w1", &[]);
    bench.worker(&mut fleet, "w2", &[]);
    let ids = vec![bench.submit("two").await, bench.submit("two").await];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault = Instant::now();
    fleet.kill9("leader");
    fleet.await_ready("standby", standby);
    let took = fault.elapsed().as_secs_f64();
    let note = format!("standby led after {took:.1} s");
    bench.judge("two schedulers, the leader killed", &fleet, &["leader", "standby"], &ids, fault, &note).await
}

async fn slow_store(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "w1", &[]);
    bench.worker(&mut fleet, "w2", &[]);
    bench.store.set(Mode::Delay(Duration::from_millis(200)));
    let fault = Instant::now();
    let ids = vec![bench.submit("slow").await, bench.submit("slow").await];
    let outcome = bench.judge("slow S3 (+200 ms per chunk)", &fleet, &["scheduler"], &ids, fault, "proxy delay").await;
    bench.store.set(Mode::Pass);
    outcome
}

async fn huge_input(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "w1", &[]);
    let key = format!("{TENANT}/{}/huge.png", unique("huge"));
    bench.client.s3.put(&key, vec![0u8; 4 << 30], "image/png").await.unwrap();
    let id = unique("huge");
    let keys: Vec<String> =
        fleet_store::list_all(&bench.client.s3, &bench.images).await.unwrap().into_iter().take(3).collect();
    let mut all = keys;
    all.push(key.clone());
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"keys": all}, "background": {"mode": "transparent"},
                 "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 4}
    }))
    .unwrap();
    let fault = Instant::now();
    bench.submit_body(&id, &body).await;
    let peak_before = peak_rss_mib(fleet.pid("w1"));
    let mut outcome =
        bench.judge("a 4 GiB input object", &fleet, &["scheduler"], std::slice::from_ref(&id), fault, "").await;
    let failures = bench.client.failures(&id).await.unwrap();
    let refused = failures.iter().any(|f| f.key == key && f.code == "too_large");
    let grew = peak_rss_mib(fleet.pid("w1")).saturating_sub(peak_before);
    outcome.note = format!("the item failed too_large: {refused}; worker peak memory grew {grew} MiB");
    if !refused {
        outcome.lost += 1;
    }
    bench.client.s3.delete(&key).await.unwrap();
    outcome
}

async fn huge_dataset(bench: &Bench) -> Outcome {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    bench.worker(&mut fleet, "w1", &[]);
    let prefix = format!("{TENANT}/{}/", unique("dataset"));
    let line = json!({"image": format!("{prefix}a.png"), "mask": format!("{prefix}a.mask.png"),
                      "licence": "CC-BY-4.0", "contributor": "c"})
    .to_string();
    let lines = 10_000_000;
    let mut text = String::with_capacity((line.len() + 1) * lines);
    for _ in 0..lines {
        text.push_str(&line);
        text.push('\n');
    }
    let data = format!("{prefix}data.jsonl");
    let size_mib = text.len() >> 20;
    bench.client.s3.put(&data, text.into_bytes(), "application/x-ndjson").await.unwrap();
    let id = unique("dataset");
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "fine_tune",
        "spec": {"base_model": "matting-ref@1.0.0", "data": data,
                 "output": {"name": unique("chaos-ft"), "version": "1"},
                 "hyper": {"steps_phase1": 10, "steps_phase2": 5, "batch_size": 2, "warmup_steps": 1}}
    }))
    .unwrap();
    let fault = Instant::now();
    let peak_before = peak_rss_mib(fleet.pid("w1"));
    bench.submit_body(&id, &body).await;
    let mut outcome =
        bench.judge("a 10,000,000-line data set", &fleet, &["scheduler"], std::slice::from_ref(&id), fault, "").await;
    let failures = bench.client.failures(&id).await.unwrap();
    let said = failures.iter().any(|f| f.code == "no_model" && f.reason.contains("cap"));
    let grew = peak_rss_mib(fleet.pid("w1")).saturating_sub(peak_before);
    outcome.note = format!("{size_mib} MiB; refused at its cap: {said}; worker peak memory grew {grew} MiB");
    if !said {
        outcome.lost += 1;
    }
    bench.client.s3.delete(&data).await.unwrap();
    outcome
}

/// Peak resident memory of a process, MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | jobs | lost | result keys written twice | stale writes | tasks redone | fault -> done (s) | note |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} |\n",
            o.scenario, o.jobs, o.lost, o.written_twice, o.stale, o.redone, o.fault_to_done_s, o.note
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the chaos suite: ./fleet chaos"]
async fn chaos() {
    let started = Instant::now();
    let bench = Bench::new().await;
    let only = std::env::var("FLEET_CHAOS_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| name.contains(o.trim()));
    let mut outcomes = Vec::new();
    macro_rules! scenario {
        ($key:expr, $run:expr) => {
            if wanted($key) {
                let outcome = $run.await;
                eprintln!("chaos: {} done: lost {}, stale {}", outcome.scenario, outcome.lost, outcome.stale);
                outcomes.push(outcome);
            }
        };
    }
    scenario!("worker-kill", worker_killed_repeatedly(&bench));
    scenario!("scheduler-kill-split", scheduler_killed(&bench, true));
    scenario!("scheduler-kill-dispatch", scheduler_killed(&bench, false));
    scenario!("rabbitmq", service_restarted(&bench, "rabbitmq"));
    scenario!("redis", service_restarted(&bench, "redis"));
    scenario!("garage", service_restarted(&bench, "garage"));
    scenario!("sigstop", worker_paused(&bench));
    scenario!("clock", worker_clock_off(&bench));
    scenario!("two-schedulers", two_schedulers(&bench));
    scenario!("slow-s3", slow_store(&bench));
    scenario!("huge-input", huge_input(&bench));
    scenario!("huge-dataset", huge_dataset(&bench));
    let table = table(&outcomes);
    println!("\n{table}\nchaos suite: {} scenarios in {:.0} s", outcomes.len(), started.elapsed().as_secs_f64());
    if let Ok(path) = std::env::var("FLEET_CHAOS_TABLE") {
        std::fs::write(&path, &table).unwrap();
    }
    let failed: Vec<&str> =
        outcomes.iter().filter(|o| o.lost > 0 || o.stale > 0).map(|o| o.scenario.as_str()).collect();
    assert!(failed.is_empty(), "scenarios that lost work or let a stale attempt write: {failed:?}\n{table}");
}
