//! Failures that decide what happens next, on the real services: a model that breaks its
//! contract fails its task after one attempt (no retry can fix it); an object store that
//! cannot be reached is retried and the job succeeds once it can; a task that panics inside a
//! live worker gives its lease up, and the scheduler takes it over like a dead worker's.

use std::time::{Duration, Instant};

use fleet_client::catalog::seed;
use fleet_client::{Client, Submitted};
use fleet_protocol::keys::TenantId;
use fleet_protocol::state::{JobState, TaskState};
use fleet_synth::CatalogSpec;
use fleet_tests_e2e::fleet::{client, free_port, Fleet};
use fleet_tests_e2e::{plain, reference_dir, unique};
use serde_json::json;
use tch::{CModule, Device, Kind, Tensor};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANT: &str = "tenant-a";

/// A few small photos under a fresh prefix; the prefix of their images.
async fn photos(client: &Client, count: usize) -> String {
    let prefix = format!("{TENANT}/{}/", unique("photos"));
    let spec = CatalogSpec { seed: 5, count, min_long_side: 200, max_long_side: 320, ..Default::default() };
    let work = tempfile::tempdir().unwrap();
    seed(&client.s3, &prefix, &spec, work.path()).await.unwrap();
    format!("{prefix}images/")
}

fn job(id: &str, prefix: &str, model: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"prefix": prefix}, "background": {"mode": "transparent"},
                 "output": {"format": "png"}, "model": model, "shard_size": 100}
    }))
    .unwrap()
}

/// Publishes a copy of the reference model named `name` whose `model.pt` is `module`.
async fn publish_variant(client: &Client, name: &str, module: &mut CModule) -> String {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_dir();
    for entry in std::fs::read_dir(&reference).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("manifest.json")).unwrap()).unwrap();
    manifest["name"] = json!(name);
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    module.save(dir.path().join("model.pt")).unwrap();
    fleet_store::registry::publish(&client.s3, dir.path()).await.unwrap();
    format!("{name}@{}", manifest["version"].as_str().unwrap())
}

/// Lines of `log` that contain `text`.
fn count(log: &str, text: &str) -> usize {
    plain(log).lines().filter(|line| line.contains(text)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_breaks_its_contract_fails_its_task_after_one_attempt() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 1);
    let client = client(TENANT).await;
    // It loads, and answers every batch with two alpha channels where the contract says one.
    let example = Tensor::zeros([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let mut module =
        CModule::create_by_tracing("TwoAlphas", "forward", &[example], &mut |xs| vec![xs[0].sigmoid().narrow(1, 0, 2)])
            .unwrap();
    let model = publish_variant(&client, &unique("contract-breaker"), &mut module).await;
    let prefix = photos(&client, 3).await;
    let id = unique("contract");
    assert_eq!(
        client.submit(&id, &job(&id, &prefix, &model), Duration::from_secs(60)).await.unwrap(),
        Submitted::Accepted
    );
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Failed);
    let failures = client.failures(&id).await.unwrap();
    assert!(!failures.is_empty());
    for f in &failures {
        assert_eq!(f.code, "task_failed");
        assert!(
            f.reason.contains("cannot pass on a retry") && f.reason.contains("breaks the model contract"),
            "{}",
            f.reason
        );
    }
    // One attempt, one report, no retry: the worker said so and the scheduler acted on it.
    let (worker, scheduler) = (fleet.log("w1"), fleet.log("scheduler"));
    assert_eq!(count(&worker, "no retry can pass"), 1, "{worker}");
    assert_eq!(count(&worker, "the scheduler retries it"), 0, "{worker}");
    assert_eq!(count(&scheduler, "task attempt failed"), 1, "{scheduler}");
    assert_eq!(count(&scheduler, "permanent=true"), 1, "{scheduler}");
    let tasks = client.jobs.tasks(&TenantId::new(TENANT).unwrap(), &id).await.unwrap();
    assert!(tasks.iter().all(|(_, t)| t.state == TaskState::DeadLettered), "{tasks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_store_outage_is_retried_and_the_job_succeeds_once_the_store_answers() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    // The first worker's object store is a port where nothing listens: every read fails with
    // a connection error, which may pass later.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    fleet.scheduler("scheduler").worker_with("cut-off", 1, &[], &[("FLEET_S3_ENDPOINT", &nowhere)]);
    let client = client(TENANT).await;
    let prefix = photos(&client, 2).await;
    let id = unique("outage");
    let body = job(&id, &prefix, "matting-ref@1.0.0");
    assert_eq!(client.submit(&id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    // The scheduler puts the failed attempt back in line rather than failing the task.
    let tenant = TenantId::new(TENANT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tasks = client.jobs.tasks(&tenant, &id).await.unwrap();
        let retried = tasks.iter().any(|(_, t)| {
            matches!(t.state, TaskState::Pending { attempts } if attempts >= 1)
                || matches!(t.state, TaskState::Dispatched { attempt } | TaskState::Running { attempt } if attempt >= 2)
        });
        if retried {
            break;
        }
        assert!(tasks.iter().all(|(_, t)| !t.state.is_terminal()), "the outage ended the task: {tasks:?}");
        assert!(Instant::now() < deadline, "no attempt was retried:\n{}", fleet.log("cut-off"));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The store comes back (a worker that reaches it); the one cut off goes away.
    fleet.kill9("cut-off");
    fleet.worker("w1", 1);
    let view = client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap();
    // Both photos come out; only the catalog's deliberately broken uploads fail, each for
    // its own reason, and no item fails for the outage.
    let failures = client.failures(&id).await.unwrap();
    assert_eq!(view.record.state, JobState::SucceededWithItemErrors, "{failures:?}");
    assert_eq!((view.progress.items_succeeded, view.progress.items_failed), (2, 4), "{failures:?}");
    assert!(failures.iter().all(|f| f.code != "task_failed"), "{failures:?}");
    let cut_off = fleet.log("cut-off");
    assert!(count(&cut_off, "the scheduler retries it") >= 1, "{cut_off}");
    assert_eq!(count(&cut_off, "no retry can pass"), 0, "{cut_off}");
    assert!(count(&fleet.log("scheduler"), "permanent=false") >= 1, "{}", fleet.log("scheduler"));
}

/// Longest a lease may outlive the task that held it: three heartbeat periods (the lease
/// TTL), one recovery sweep, and a margin for a loaded test machine.
const DETECTION_WINDOW: Duration = Duration::from_millis(3_000 + 250 + 750);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_panics_loses_its_lease_within_three_heartbeat_periods() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker_with("panics", 1, &["--executor", "panic"], &[]);
    let client = client(TENANT).await;
    let prefix = photos(&client, 1).await;
    let id = unique("panic");
    let body = job(&id, &prefix, "matting-ref@1.0.0");
    assert_eq!(client.submit(&id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    // The task dies right after it reports its start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.log("panics").contains("fault injection") {
        assert!(Instant::now() < deadline, "the task never ran:\n{}", fleet.log("panics"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let died = Instant::now();
    while !fleet.log("scheduler").contains("lease taken over") {
        assert!(
            died.elapsed() < Duration::from_secs(30),
            "the lease was never taken over:\n{}",
            fleet.log("scheduler")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let detected = died.elapsed();
    eprintln!("a panicking task's lease was taken over {} ms after the panic", detected.as_millis());
    assert!(detected <= DETECTION_WINDOW, "took {detected:?}");
    assert!(fleet.alive("panics"), "the panic stayed inside its task; the worker lives on");
    // Leave nothing queued for the other tests' fleets.
    client.cancel(&id).await.unwrap();
    client.wait(&id, Duration::from_secs(30), |_| {}).await.unwrap();
}
