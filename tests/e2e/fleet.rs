//! The fleet end to end on the real services: RabbitMQ, Redis and Garage started by the test
//! command, the release binaries of the scheduler and workers as separate processes, and the
//! reference model published in the S3 registry. The tests share the stack, so they take
//! turns.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fleet_client::catalog::{seed, SeededCatalog};
use fleet_client::{Client, Submitted};
use fleet_protocol::keys::{output_keys, results_prefix, TenantId};
use fleet_protocol::message::{trace_id, JobEventMessage};
use fleet_protocol::state::JobState;
use fleet_store::{list_all, ObjectStore};
use fleet_synth::CatalogSpec;
use fleet_tests_e2e::fleet::{client, free_port, Fleet};
use fleet_tests_e2e::unique;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANT: &str = "tenant-a";

/// Seeds a small catalog (short sides, so the CPU is quick) under a fresh prefix.
async fn catalog(client: &Client, count: usize) -> (String, SeededCatalog) {
    let prefix = format!("{TENANT}/{}/", unique("catalog"));
    let spec = CatalogSpec { seed: 11, count, min_long_side: 256, max_long_side: 560, ..Default::default() };
    let work = tempfile::tempdir().unwrap();
    let (seeded, fresh) = seed(&client.s3, &prefix, &spec, work.path()).await.unwrap();
    assert!(fresh);
    (prefix, seeded)
}

fn job(id: &str, input: serde_json::Value, shard: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": input, "background": {"mode": "color", "color": "#f2f2f2"},
                 "output": {"format": "jpeg", "quality": 90}, "model": "matting-ref@1.0.0", "shard_size": shard}
    }))
    .unwrap()
}

async fn submit(client: &Client, id: &str, body: &[u8]) -> Submitted {
    client.submit(id, body, Duration::from_secs(60)).await.unwrap()
}

/// Waits until the job's tasks have ended at least `tasks` times.
async fn wait_tasks_done(client: &Client, id: &str, tasks: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(view)) = client.job(id).await {
            if view.progress.tasks_done >= tasks {
                return;
            }
        }
        assert!(Instant::now() < deadline, "job {id}: {tasks} tasks did not end in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts the job's result objects by kind: results, mattes, embeddings, task manifests.
async fn outputs(client: &Client, id: &str) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for key in list_all(&client.s3, &results_prefix(client.tenant(), id)).await.unwrap() {
        let kind = if key.ends_with("/matte.png") {
            "matte"
        } else if key.ends_with("/embedding.npy") {
            "embedding"
        } else if key.ends_with("/attribution.json") {
            "attribution"
        } else if key.contains("/_tasks/") {
            "task manifest"
        } else {
            "result"
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

fn iou(matte: &image::GrayImage, mask: &image::GrayImage) -> f64 {
    assert_eq!(matte.dimensions(), mask.dimensions());
    let (mut inter, mut union) = (0u64, 0u64);
    for (a, b) in matte.pixels().zip(mask.pixels()) {
        let (a, b) = (a.0[0] >= 128, b.0[0] >= 128);
        inter += (a && b) as u64;
        union += (a || b) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn is_terminal(kind: &str) -> bool {
    matches!(kind, "succeeded" | "succeeded_with_item_errors" | "failed" | "cancelled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catalog_job_runs_end_to_end_with_outputs_failures_and_ordered_events() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2).worker("w2", 2);
    let client = client(TENANT).await;
    let (prefix, seeded) = catalog(&client, 46).await;
    let id = unique("e2e");
    let mut events = client.subscribe(id.as_str()).await.unwrap();
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 6)).await,
        Submitted::Accepted
    );
    let view = client.wait(&id, Duration::from_secs(300), |_| {}).await.unwrap_or_else(|e| {
        panic!("{e}\nscheduler log:\n{}\nworker log:\n{}", fleet.log("scheduler"), fleet.log("w1"))
    });

    assert_eq!(view.record.state, JobState::SucceededWithItemErrors);
    let p = view.progress;
    assert_eq!((p.items_total, p.items_succeeded, p.items_failed), (50, 46, 4));
    assert_eq!((p.tasks_total, p.tasks_done), (9, 9), "50 images in shards of 6");

    // Broken inputs are listed with the engine's reasons.
    let failures: HashMap<String, String> =
        client.failures(&id).await.unwrap().into_iter().map(|f| (f.key, f.code)).collect();
    let expected: HashMap<String, String> = seeded.broken.iter().cloned().collect();
    assert_eq!(failures, expected);

    // Every good input has its result, matte and embedding; mattes match the ground truth.
    let mut ious = Vec::new();
    for entry in &seeded.entries {
        let (result, matte, embedding) = output_keys(client.tenant(), &id, &entry.image, "jpg");
        let result = image::load_from_memory(&client.s3.get(&result).await.unwrap()).unwrap();
        let matte = image::load_from_memory(&client.s3.get(&matte).await.unwrap()).unwrap().to_luma8();
        let mask = image::load_from_memory(&client.s3.get(&entry.mask).await.unwrap()).unwrap().to_luma8();
        assert_eq!(result.width(), mask.width());
        ious.push(iou(&matte, &mask));
        let npy = client.s3.get(&embedding).await.unwrap();
        assert!(npy.starts_with(b"\x93NUMPY"), "embedding is a .npy file");
        let header = 10 + u16::from_le_bytes([npy[8], npy[9]]) as usize;
        let values: Vec<f32> = npy[header..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(values.len() >= 16 && (norm - 1.0).abs() < 1e-3, "{} values, norm {norm}", values.len());
    }
    let mean_iou = ious.iter().sum::<f64>() / ious.len() as f64;
    assert!(mean_iou >= 0.9, "mean alpha IoU {mean_iou:.3} against ground truth");
    let counts = outputs(&client, &id).await;
    assert_eq!(counts.get("result"), Some(&46));
    assert_eq!(counts.get("attribution"), Some(&46), "every output says what it owes (here: no training set)");
    assert_eq!(counts.get("task manifest"), Some(&9));

    // Events arrive in order: accepted, queued, progress..., the outcome with the failures.
    let mut seen: Vec<JobEventMessage> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.last().is_some_and(|e| is_terminal(&e.kind)) {
        match events.next_before(deadline).await.unwrap() {
            Some(event) => seen.push(event),
            None => panic!("no terminal event; saw {:?}", seen.iter().map(|e| &e.kind).collect::<Vec<_>>()),
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[..2], ["accepted", "queued"], "{kinds:?}");
    assert!(kinds[2..kinds.len() - 1].iter().all(|k| *k == "progress") && kinds.len() > 3, "{kinds:?}");
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
    let last = seen.last().unwrap();
    assert_eq!(last.kind, "succeeded_with_item_errors");
    assert_eq!(last.failures.len(), 4);
    let done: Vec<u64> = seen.iter().filter_map(|e| e.progress.map(|p| p.tasks_done)).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress never goes backwards: {done:?}");

    // One trace id follows the job from the scheduler's intake to the workers' task spans.
    let trace = trace_id(&view.record.traceparent).expect("the job has a trace context").to_string();
    assert!(fleet.log("scheduler").contains(&trace), "scheduler spans carry the job's trace id");
    let workers = fleet.log("w1") + &fleet.log("w2");
    assert!(workers.contains(&trace) && workers.contains(&id), "worker spans carry the trace id and job id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_finishes_what_it_holds_and_exits() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 1);
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 40).await;
    let id = unique("drain");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 2)).await,
        Submitted::Accepted
    );
    wait_tasks_done(&client, &id, 1, Duration::from_secs(120)).await;
    // The worker is registered with its heartbeat: state, warm model, device, telemetry.
    // Beats come every second: the one after the model load names it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let beat = loop {
        let beats = client.jobs.heartbeats().await.unwrap();
        let beat = beats.into_iter().find(|b| b.id == "w1").expect("w1 heartbeats");
        if !beat.warm_models.is_empty() || Instant::now() > deadline {
            break beat;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((beat.state.as_str(), beat.device.as_str()), ("active", "cpu"));
    assert_eq!(beat.warm_models, ["matting-ref@1.0.0"]);
    assert!(beat.gpus.is_empty() == beat.telemetry_absent.is_some(), "either NVML readings or why there are none");
    assert!(fleet.terminate("w1", Duration::from_secs(120)), "SIGTERM: the worker drains and exits cleanly");
    let beats = client.jobs.heartbeats().await.unwrap();
    assert!(beats.iter().all(|b| b.id != "w1"), "a stopped worker leaves the fleet view");
    assert!(fleet.log("w1").contains("draining"), "{}", fleet.log("w1"));
    let left = client.job(&id).await.unwrap().unwrap().progress;
    assert!(left.tasks_done < left.tasks_total, "the drained worker took no new work");
    fleet.worker("w2", 2);
    let view = client.wait(&id, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!((view.progress.items_succeeded, view.progress.items_failed), (40, 4));
    assert_eq!(outputs(&client, &id).await.get("result"), Some(&40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_id_twice_is_one_job_and_bad_submissions_are_rejected_with_reasons() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 6).await;
    let input = json!({"prefix": format!("{prefix}images/")});

    let id = unique("dup");
    assert_eq!(submit(&client, &id, &job(&id, input.clone(), 2)).await, Submitted::Accepted);
    let mut changed = job(&id, input.clone(), 5);
    assert_eq!(submit(&client, &id, &changed).await, Submitted::Duplicate, "the same id makes no second job");
    let view = client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap();
    assert_eq!(view.progress.tasks_total, 5, "10 items in shards of 2: the first submission's job alone");
    assert_eq!((view.progress.items_total, view.progress.items_succeeded), (10, 6));

    // Tenant A naming tenant B's objects is refused, whatever the path tricks.
    for (n, input) in [
        json!({"keys": ["tenant-b/catalog/1.jpg"]}),
        json!({"prefix": "tenant-b/catalog/"}),
        json!({"keys": ["tenant-a/../tenant-b/catalog/1.jpg"]}),
        json!({"manifest": "tenant-b/manifest.txt"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = unique(&format!("cross-{n}"));
        match submit(&client, &id, &job(&id, input.clone(), 2)).await {
            Submitted::Rejected(r) => {
                assert!(r.code == "forbidden" || r.code == "invalid", "{input}: {r:?}");
                assert!(r.reason.contains("tenant-b") || r.reason.contains(".."), "{r:?}");
            }
            other => panic!("{input} should be rejected, got {other:?}"),
        }
        let stored = client.job(&id).await.expect_err("the rejection is stored for the submitter");
        assert!(stored.to_string().contains("rejected"), "{stored}");
    }

    // Malformed bodies and unknown models are rejected with readable reasons...
    let bad: [(&[u8], &str, &str); 3] = [
        (b"{not json", "malformed", "key must be a string"),
        (br#"{"id":"x","priority":"batch","kind":"background_replace","spec":{},"colour":1}"#, "malformed", "colour"),
        (b"", "malformed", "EOF"),
    ];
    for (body, code, says) in bad {
        let id = unique("bad");
        let mut events = client.subscribe(id.as_str()).await.unwrap();
        client.publish(&id, body).await.unwrap();
        let event = events.next_before(Instant::now() + Duration::from_secs(30)).await.unwrap().expect("a rejection");
        assert_eq!((event.kind.as_str(), event.code.as_deref()), ("rejected", Some(code)));
        assert!(event.reason.as_deref().unwrap_or("").contains(says), "{event:?}");
    }
    let id = unique("unknown-model");
    changed = serde_json::to_vec(&json!({
        "id": id, "priority": "interactive", "kind": "background_replace",
        "spec": {"input": input, "background": {"mode": "transparent"}, "output": {"format": "png"}, "model": "nope@9.9"}
    }))
    .unwrap();
    match submit(&client, &id, &changed).await {
        Submitted::Rejected(r) => assert!(r.code == "unknown_model" && r.reason.contains("nope@9.9"), "{r:?}"),
        other => panic!("unknown model accepted: {other:?}"),
    }
    // ...and the scheduler keeps serving.
    let id = unique("after-bad");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"keys": [format!("{prefix}seed.json")]}), 1)).await,
        Submitted::Accepted
    );
}

/// Leases a worker holds now, over all its devices and lanes.
async fn leases_of(client: &Client, worker: &str) -> u32 {
    let load = client.jobs.load().await.unwrap();
    load.iter().filter(|((w, _, _), _)| w == worker).map(|(_, n)| *n).sum()
}

/// Waits until `check` holds for the worker's lease count; how long it took.
async fn wait_leases(client: &Client, worker: &str, timeout: Duration, check: impl Fn(u32) -> bool) -> Duration {
    let started = Instant::now();
    while !check(leases_of(client, worker).await) {
        assert!(started.elapsed() < timeout, "{worker}'s leases never reached the expected count");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Longest a dead worker's tasks may stay with it: three heartbeat periods (the lease TTL),
/// one recovery sweep, and a margin for a loaded test machine.
const DETECTION_WINDOW: Duration = Duration::from_millis(3_000 + 250 + 750);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_worker_s_tasks_move_within_the_detection_window_and_a_stale_worker_is_fenced_out() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let (a, b, c) = (unique("lease-a"), unique("lease-b"), unique("lease-c"));
    fleet.scheduler("scheduler").worker(&a, 1).worker(&b, 1);
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 40).await;
    let input = json!({"prefix": format!("{prefix}images/")});

    // kill -9 one of two workers mid-job: its leases are taken over within the window and
    // the job completes on the other, every item counted and written once.
    let first = unique("kill9");
    assert_eq!(submit(&client, &first, &job(&first, input.clone(), 2)).await, Submitted::Accepted);
    // Warm affinity may keep every task on the first worker to load the model while it keeps
    // up: the one to kill is whichever holds tasks.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b) = loop {
        if leases_of(&client, &a).await > 0 {
            break (a, b);
        }
        if leases_of(&client, &b).await > 0 {
            break (b, a);
        }
        assert!(Instant::now() < deadline, "no worker took a task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    fleet.kill9(&a);
    let detected = wait_leases(&client, &a, Duration::from_secs(30), |n| n == 0).await;
    eprintln!("kill -9: the dead worker's leases were taken over {} ms after the kill", detected.as_millis());
    assert!(detected <= DETECTION_WINDOW, "took {detected:?}");
    let view = client.wait(&first, Duration::from_secs(300), |_| {}).await.unwrap();
    let p = view.progress;
    assert_eq!((p.items_total, p.items_succeeded, p.items_failed), (44, 40, 4), "each item counted once");
    assert_eq!((p.tasks_total, p.tasks_done), (22, 22));
    let counts = outputs(&client, &first).await;
    assert_eq!(counts.get("result"), Some(&40));
    assert_eq!(counts.get("matte"), Some(&40));
    assert_eq!(counts.get("embedding"), Some(&40));
    assert_eq!(counts.get("task manifest"), Some(&22));
    let log = fleet.log("scheduler");
    assert!(log.contains("lease taken over") && log.contains(&a), "{log}");

    // A worker that froze mid-job (SIGSTOP) loses its leases the same way; when it wakes up
    // after the job finished elsewhere, its results are ignored and nothing changes.
    let second = unique("stale");
    assert_eq!(submit(&client, &second, &job(&second, input, 2)).await, Submitted::Accepted);
    wait_leases(&client, &b, Duration::from_secs(60), |n| n > 0).await;
    fleet.signal(&b, "STOP");
    let detected = wait_leases(&client, &b, Duration::from_secs(30), |n| n == 0).await;
    eprintln!("SIGSTOP: the silent worker's leases were taken over {} ms after it froze", detected.as_millis());
    // Until its heartbeat is two periods old the frozen worker may still be granted tasks,
    // whose leases then run their own three periods.
    assert!(detected <= DETECTION_WINDOW + Duration::from_secs(2), "took {detected:?}");
    fleet.worker(&c, 1);
    let view = client.wait(&second, Duration::from_secs(300), |_| {}).await.unwrap();
    let done = view.progress;
    assert_eq!((done.items_succeeded, done.items_failed, done.tasks_done), (40, 4, 22));
    fleet.signal(&b, "CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fleet.log(&b).contains("lease lost") && !fleet.log("scheduler").contains("stale token") {
        assert!(Instant::now() < deadline, "the stale worker never noticed:\n{}", fleet.log(&b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client.job(&second).await.unwrap().unwrap();
    assert_eq!(after.progress, done, "the stale worker's late results changed nothing");
    assert_eq!(after.record.state, view.record.state);
    let counts = outputs(&client, &second).await;
    assert_eq!((counts.get("result"), counts.get("task manifest")), (Some(&40), Some(&22)));
    for (n, task) in client.jobs.tasks(&TenantId::new(TENANT).unwrap(), &second).await.unwrap() {
        assert!(task.state.is_terminal(), "task {n}: {task:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_and_workers_ride_out_a_rabbitmq_restart() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 40).await;
    let id = unique("restart");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 2)).await,
        Submitted::Accepted
    );
    wait_tasks_done(&client, &id, 2, Duration::from_secs(120)).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let status =
        std::process::Command::new(root.join("deploy/stack.sh")).args(["restart", "rabbitmq"]).status().unwrap();
    assert!(status.success(), "RabbitMQ restarts");
    let view = client.wait(&id, Duration::from_secs(300), |_| {}).await.unwrap_or_else(|e| {
        panic!("{e}\nscheduler log:\n{}\nworker log:\n{}", fleet.log("scheduler"), fleet.log("w1"))
    });
    let p = view.progress;
    assert_eq!(view.record.state, JobState::SucceededWithItemErrors);
    assert_eq!((p.items_succeeded, p.items_failed, p.tasks_done), (40, 4, 22));
    assert_eq!(outputs(&client, &id).await.get("result"), Some(&40));
    assert!(fleet.log("w1").contains("reconnecting"), "the worker noticed the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_starts_no_more_tasks() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 12).await;
    let id = unique("cancel");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 2)).await,
        Submitted::Accepted
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.job(&id).await.unwrap().is_some_and(|v| v.progress.sharded) {
        assert!(Instant::now() < deadline, "job never split");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.cancel(&id).await.unwrap();
    let view = client.wait(&id, Duration::from_secs(30), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Cancelled);
    // A worker arriving now finds the tasks and skips every one of them.
    fleet.worker("late", 2);
    wait_tasks_done(&client, &id, 8, Duration::from_secs(120)).await;
    let after = client.job(&id).await.unwrap().unwrap();
    assert_eq!(after.record.state, JobState::Cancelled);
    assert_eq!(after.progress.items_succeeded, 0);
    assert!(outputs(&client, &id).await.is_empty(), "no output was written for a cancelled job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_cannot_load_fails_its_task_at_once_and_its_items_fail_with_the_reason() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let client = client(TENANT).await;
    // A model whose manifest is fine but whose weights are not TorchScript: every load would
    // fail, so the first attempt fails the task (no retry can pass).
    let dir = tempfile::tempdir().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fleet_tests_e2e::reference_dir().join("manifest.json")).unwrap())
            .unwrap();
    manifest["name"] = json!("broken-weights");
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    for file in ["model.pt", "embed.pt", "trainable.pt"] {
        std::fs::write(dir.path().join(file), b"these are not weights").unwrap();
    }
    fleet_store::registry::publish(&client.s3, dir.path()).await.unwrap();
    let (prefix, _) = catalog(&client, 3).await;
    let id = unique("dead");
    let version = manifest["version"].as_str().unwrap();
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"prefix": format!("{prefix}images/")}, "background": {"mode": "transparent"},
                 "output": {"format": "png"}, "model": format!("broken-weights@{version}")}
    }))
    .unwrap();
    assert_eq!(submit(&client, &id, &body).await, Submitted::Accepted);
    let view = client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Failed);
    let failures = client.failures(&id).await.unwrap();
    assert_eq!(failures.len(), 7, "every item of the dead-lettered task");
    assert_eq!(fleet.log("scheduler").matches("task attempt failed").count(), 1, "one attempt, no retry");
    for f in &failures {
        assert_eq!(f.code, "task_failed");
        assert!(f.reason.contains("cannot pass on a retry") && f.reason.contains("model"), "{}", f.reason);
    }
}

/// Polls the worker's heartbeat until `check` holds.
async fn wait_beat(
    client: &Client,
    worker: &str,
    check: impl Fn(&fleet_protocol::heartbeat::Heartbeat) -> bool,
) -> fleet_protocol::heartbeat::Heartbeat {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let beats = client.jobs.heartbeats().await.unwrap();
        if let Some(beat) = beats.into_iter().find(|b| b.id == worker && check(b)) {
            return beat;
        }
        assert!(Instant::now() < deadline, "{worker} never reached the expected state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_cordon_drain_and_uncordon_a_worker() {
    use fleet_protocol::heartbeat::Order;
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let worker = unique("ops");
    fleet.scheduler("scheduler").worker(&worker, 1);
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 30).await;
    let id = unique("ops-job");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 2)).await,
        Submitted::Accepted
    );
    wait_tasks_done(&client, &id, 1, Duration::from_secs(120)).await;

    client.jobs.set_worker_order(&worker, Order::Cordon).await.unwrap();
    wait_beat(&client, &worker, |b| b.state == "cordoned" && b.in_flight.is_empty()).await;
    let held = client.job(&id).await.unwrap().unwrap().progress.tasks_done;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = client.job(&id).await.unwrap().unwrap().progress;
    assert_eq!(still.tasks_done, held, "a cordoned worker takes nothing new");
    assert!(still.tasks_done < still.tasks_total);

    client.jobs.set_worker_order(&worker, Order::Run).await.unwrap();
    let view = client.wait(&id, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!((view.progress.items_succeeded, view.progress.items_failed), (30, 4), "uncordoned, it finishes the job");

    client.jobs.set_worker_order(&worker, Order::Drain).await.unwrap();
    let drained = wait_beat(&client, &worker, |b| b.state == "drained").await;
    assert!(drained.in_flight.is_empty());
    client.jobs.set_worker_order(&worker, Order::Run).await.unwrap();
    wait_beat(&client, &worker, |b| b.state == "active").await;
}

/// `GET /metrics` over a plain socket.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint listens");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_and_worker_export_prometheus_metrics() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let (s_addr, w_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    fleet.spawn_with_env("scheduler", "fleet-scheduler", &[], ("FLEET_METRICS_ADDR", &s_addr));
    let worker = unique("metrics");
    fleet.spawn_with_env(
        &worker,
        "fleet-worker",
        &["serve", "--device", "cpu", "--id", &worker],
        ("FLEET_METRICS_ADDR", &w_addr),
    );
    let client = client(TENANT).await;
    let (prefix, _) = catalog(&client, 6).await;
    let id = unique("metrics-job");
    assert_eq!(
        submit(&client, &id, &job(&id, json!({"prefix": format!("{prefix}images/")}), 5)).await,
        Submitted::Accepted
    );
    client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let scheduler = scrape(&s_addr).await;
    assert!(sample(&scheduler, "fleet_jobs_total{outcome=\"accepted\"}") >= 1.0);
    assert!(sample(&scheduler, "fleet_tasks_total{event=\"completed\"}") >= 2.0, "10 items in shards of 5");
    assert!(sample(&scheduler, "fleet_queue_depth{queue=\"fleet.tasks.batch\"}") >= 0.0);
    let worker = scrape(&w_addr).await;
    // At least this job's images (a task left over in the shared queue may add to them).
    assert!(sample(&worker, "fleet_worker_images_total{outcome=\"ok\"}") >= 6.0);
    assert!(sample(&worker, "fleet_worker_images_total{outcome=\"failed\"}") >= 4.0);
    assert_eq!(sample(&worker, "fleet_worker_model_loads_total"), 1.0);
    assert!(sample(&worker, "fleet_worker_task_seconds_count{priority=\"batch\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_its_memory_budget_a_worker_evicts_the_least_recently_used_model() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let worker = unique("lru");
    // One reference model holds about 94 MiB (weights + a batch of activations): 150 fits one.
    // No headroom on top, so the dispatcher places against that budget as it is.
    fleet.spawn_with_env("scheduler", "fleet-scheduler", &[], ("FLEET_HEADROOM_MIB", "0"));
    fleet.spawn_with_env(
        &worker,
        "fleet-worker",
        &["serve", "--device", "cpu", "--id", &worker, "--model-memory-mib", "150"],
        ("RUST_LOG", "info"),
    );
    let client = client(TENANT).await;
    let dir = tempfile::tempdir().unwrap();
    let reference = fleet_tests_e2e::reference_dir();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("manifest.json")).unwrap()).unwrap();
    manifest["name"] = json!("matting-ref-copy");
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    for file in ["model.pt", "embed.pt", "trainable.pt"] {
        std::fs::copy(reference.join(file), dir.path().join(file)).unwrap();
    }
    fleet_store::registry::publish(&client.s3, dir.path()).await.unwrap();
    let copy = format!("matting-ref-copy@{}", manifest["version"].as_str().unwrap());
    let (prefix, seeded) = catalog(&client, 2).await;
    let key = seeded.entries[0].image.clone();
    for model in ["matting-ref@1.0.0", copy.as_str()] {
        let id = unique("lru-job");
        let body = serde_json::to_vec(&json!({
            "id": id, "priority": "interactive", "kind": "background_replace",
            "spec": {"input": {"keys": [key]}, "background": {"mode": "transparent"},
                     "output": {"format": "png"}, "model": model}
        }))
        .unwrap();
        assert_eq!(submit(&client, &id, &body).await, Submitted::Accepted, "{prefix}");
        let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
        assert_eq!(view.progress.items_succeeded, 1, "{model}: {}", fleet.log(&worker));
    }
    let beat = wait_beat(&client, &worker, |b| b.warm_models.len() == 1 && b.warm_models[0] == copy).await;
    assert_eq!(beat.warm_models, std::slice::from_ref(&copy), "the first model made room for the second");
    assert!(fleet.log(&worker).contains("model evicted (least recently used)"), "{}", fleet.log(&worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_darkens_the_background_and_leaves_the_product_bit_exact() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let client = client(TENANT).await;
    let (_, seeded) = catalog(&client, 2).await;
    let keys: Vec<String> = seeded.entries.iter().map(|e| e.image.clone()).collect();
    let body = |id: &str, shadow: serde_json::Value| {
        let mut spec = json!({"input": {"keys": keys}, "background": {"mode": "color", "color": "#ffffff"},
                              "output": {"format": "png"}, "model": "matting-ref@1.0.0"});
        if !shadow.is_null() {
            spec["shadow"] = shadow;
        }
        serde_json::to_vec(&json!({"id": id, "priority": "interactive", "kind": "background_replace", "spec": spec}))
            .unwrap()
    };
    let (plain, shaded) = (unique("plain"), unique("shadow"));
    let shadow = json!({"kind": "drop", "opacity": 0.8, "blur_pct": 0.5, "offset_pct": [4.0, 4.0]});
    assert_eq!(submit(&client, &plain, &body(&plain, serde_json::Value::Null)).await, Submitted::Accepted);
    assert_eq!(submit(&client, &shaded, &body(&shaded, shadow)).await, Submitted::Accepted);
    for id in [&plain, &shaded] {
        let view = client.wait(id, Duration::from_secs(120), |_| {}).await.unwrap();
        assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log("w1"));
    }
    let tenant = TenantId::new(TENANT).unwrap();
    for key in &keys {
        let load = |job: &str| {
            let (result, matte, _) = fleet_protocol::keys::output_keys(&tenant, job, key, "png");
            (result, matte)
        };
        let ((plain_key, matte_key), (shaded_key, _)) = (load(&plain), load(&shaded));
        let decode = |bytes: Vec<u8>| image::load_from_memory(&bytes).unwrap();
        let a = decode(client.s3.get(&plain_key).await.unwrap()).to_rgb8();
        let b = decode(client.s3.get(&shaded_key).await.unwrap()).to_rgb8();
        let matte = decode(client.s3.get(&matte_key).await.unwrap()).to_luma8();
        assert_eq!(a.dimensions(), b.dimensions());
        let mut darker = 0;
        for ((pa, pb), m) in a.pixels().zip(b.pixels()).zip(matte.pixels()) {
            if m.0[0] >= 240 {
                assert_eq!(pa, pb, "a product pixel changed with the shadow");
            }
            let sum = |p: &image::Rgb<u8>| p.0.iter().map(|&v| u32::from(v)).sum::<u32>();
            darker += usize::from(sum(pb) < sum(pa));
        }
        assert!(darker > 100, "{key}: the shadow darkened {darker} pixels");
    }
}
