//! Hostile input and dependency faults, each found in a review and each shown here on the
//! real services: a cancel naming an id no routing key can hold, job ids that once shared an
//! event key, inputs named like another input's outputs, a prefix over a job's own results,
//! a job store outage while submissions arrive, a submission the broker dead-letters, an
//! input object far over the cap, and fine-tune data sets over their caps.

use std::time::{Duration, Instant};

use fleet_client::{Client, ClientError, Submitted};
use fleet_protocol::keys::{results_prefix, TenantId};
use fleet_protocol::message::CANCEL_TYPE;
use fleet_protocol::state::JobState;
use fleet_queue as amqp;
use fleet_store::{list_all, ObjectStore};
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::{libfaketime, photo, plain, unique};
use fleet_tests_services::proxy::{addr_of, Mode, Proxy};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANT: &str = "tenant-a";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: the test command exports it"))
}

fn job(id: &str, input: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": input, "background": {"mode": "color", "color": "#f2f2f2"},
                 "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 10}
    }))
    .unwrap()
}

/// A job whose one key does not exist: accepted at once, and cheap to cancel.
fn placeholder(id: &str) -> Vec<u8> {
    job(id, json!({"keys": [format!("{TENANT}/nothing/{id}.png")]}))
}

/// Waits for the job's record to exist; `Err` with the rejection if it was refused.
async fn recorded(client: &Client, id: &str, within: Duration) -> Result<(), fleet_protocol::job::Rejection> {
    let deadline = Instant::now() + within;
    loop {
        match client.job(id).await {
            Ok(Some(_)) => return Ok(()),
            Err(ClientError::Rejected(r)) => return Err(r),
            Ok(None) | Err(_) => {}
        }
        assert!(Instant::now() < deadline, "job {id} was neither recorded nor rejected within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_of_an_id_no_routing_key_can_hold_is_refused_and_intake_goes_on() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let client = client(TENANT).await;
    let mut refusals = client.subscribe("unknown").await.unwrap();
    // 300 bytes: more than an AMQP short string, so never a routing key word.
    let long = "x".repeat(300);
    let connection =
        amqp::connect(&fleet_client::amqp_url_as(&env("FLEET_AMQP_URL"), TENANT, "tenant-a-dev")).await.unwrap();
    let channel = amqp::confirmed_channel(&connection).await.unwrap();
    let body = serde_json::to_vec(&json!({ "cancel": long })).unwrap();
    let props = lapin::BasicProperties::default().with_user_id(TENANT.into()).with_type(CANCEL_TYPE.into());
    amqp::publish_confirmed(&channel, amqp::JOBS_EXCHANGE, amqp::CANCEL_KEY, &body, props).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let event = refusals.next_before(deadline).await.unwrap().expect("a cancel_refused event within 30 s");
        if event.kind == "cancel_refused" && event.reason.as_deref().is_some_and(|r| r.contains("xxxx")) {
            break event;
        }
    };
    assert_eq!(refused.code.as_deref(), Some("invalid"), "{refused:?}");
    // The scheduler's session stood: the next submission is taken at once, and it never
    // reconnected (a reconnect returns every delivery it held, spending their limits).
    let id = unique("after-cancel");
    assert_eq!(client.submit(&id, &placeholder(&id), Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    client.cancel(&id).await.unwrap();
    let log = plain(&fleet.log("scheduler"));
    assert_eq!(log.matches("ready: consuming").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_ids_that_differ_by_dot_or_underscore_each_hear_only_their_own_events() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let client = client(TENANT).await;
    let base = unique("ids");
    let (dotted, underscored) = (format!("{base}.1"), format!("{base}_1"));
    let mut events = client.subscribe(underscored.as_str()).await.unwrap();
    assert_eq!(
        client.submit(&dotted, &placeholder(&dotted), Duration::from_secs(30)).await.unwrap(),
        Submitted::Accepted
    );
    assert_eq!(
        client.submit(&underscored, &placeholder(&underscored), Duration::from_secs(30)).await.unwrap(),
        Submitted::Accepted
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut heard = Vec::new();
    while let Ok(Some(event)) = events.next_before(deadline).await {
        heard.push(event.job);
    }
    assert!(heard.contains(&underscored), "{heard:?}");
    assert!(heard.iter().all(|j| *j == underscored), "a subscriber of {underscored} heard {heard:?}");
    for id in [&dotted, &underscored] {
        client.cancel(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_named_like_another_input_s_outputs_keep_their_own_results() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 1);
    let client = client(TENANT).await;
    let prefix = format!("{TENANT}/{}/", unique("names"));
    // `x.jpg.matte` once wrote its result onto the matte of `x.jpg`, and `x.jpg.1` onto the
    // first generated result of `x.jpg`.
    let names = ["x.jpg", "x.jpg.matte", "x.jpg.1", "x.jpg.embedding"];
    for (i, name) in names.iter().enumerate() {
        client.s3.put(&format!("{prefix}{name}"), photo(i as u8 * 40), "image/png").await.unwrap();
    }
    let id = unique("names");
    assert_eq!(
        client.submit(&id, &job(&id, json!({ "prefix": prefix })), Duration::from_secs(30)).await.unwrap(),
        Submitted::Accepted
    );
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{:?}", client.failures(&id).await.unwrap());
    let tenant = TenantId::new(TENANT).unwrap();
    let keys = list_all(&client.s3, &results_prefix(&tenant, &id)).await.unwrap();
    // Each input: result, matte, embedding, attribution record; and one task manifest.
    assert_eq!(keys.len(), names.len() * 4 + 1, "{keys:#?}");
    for name in names {
        let (result, matte, _) = fleet_protocol::keys::output_keys(&tenant, &id, &format!("{prefix}{name}"), "png");
        let result = image::load_from_memory(&client.s3.get(&result).await.unwrap()).unwrap();
        let matte = image::load_from_memory(&client.s3.get(&matte).await.unwrap()).unwrap();
        assert_eq!((result.width(), matte.width()), (96, 96), "{name}");
        assert_eq!(matte.color(), image::ColorType::L8, "{name}'s matte is a matte");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_inside_the_job_s_own_results_folder_is_refused() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let client = client(TENANT).await;
    let id = unique("own");
    let tenant = TenantId::new(TENANT).unwrap();
    let body = job(&id, json!({ "prefix": results_prefix(&tenant, &id) }));
    match client.submit(&id, &body, Duration::from_secs(30)).await.unwrap() {
        Submitted::Rejected(r) => {
            assert_eq!(r.code, "invalid");
            assert!(r.reason.contains("own results folder"), "{}", r.reason);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_during_a_job_store_outage_wait_for_it_and_none_is_lost() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    // The scheduler reaches Redis through a proxy the test can cut; nothing else does.
    let redis_url = env("FLEET_SCHEDULER_REDIS_URL");
    let proxy = Proxy::start(addr_of(&redis_url)).await;
    fleet.scheduler_with("scheduler", &[("FLEET_REDIS_URL", &proxy.url_for(&redis_url))]);
    let client = client(TENANT).await;
    proxy.set(Mode::Cut);
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("outage{i}"))).collect();
    for id in &ids {
        client.publish(id, &placeholder(id)).await.unwrap();
    }
    // Longer than six returns to the queue used to take (each spent one delivery of the
    // message's limit, and the sixth dead-lettered it with no word to the submitter), and
    // longer than a Redis call's 10 s answer timeout, so a call made in the outage fails in it.
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.set(Mode::Pass);
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.job(id).await {
                Ok(Some(_)) => break,
                Err(ClientError::Rejected(r)) => panic!("{id} rejected: {r:?}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{id} never recorded:\n{}", plain(&fleet.log("scheduler")));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let log = plain(&fleet.log("scheduler"));
    assert!(log.contains("intake message waits for its dependency"), "{log}");
    for id in &ids {
        client.cancel(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_the_broker_dead_letters_is_rejected_so_its_tenant_hears() {
    let _turn = SERIAL.lock().await;
    let client = client(TENANT).await;
    let id = unique("poison");
    // No scheduler yet: the submission waits in intake, and a consumer that fails on it at
    // every delivery (as a scheduler that crashes on it would) spends its delivery limit.
    client.publish(&id, &placeholder(&id)).await.unwrap();
    let admin = amqp::connect(&env("FLEET_AMQP_URL")).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut returns = 0;
    while returns <= amqp::DELIVERY_LIMIT {
        assert!(Instant::now() < deadline, "returned {returns} times");
        let Some(message) = channel.basic_get(amqp::INTAKE_QUEUE, BasicGetOptions::default()).await.unwrap() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if message.delivery.properties.message_id().as_ref().map(|m| m.as_str()) == Some(id.as_str()) {
            returns += 1;
        }
        message.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
    }
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let rejection = recorded(&client, &id, Duration::from_secs(30)).await.expect_err("the job was never recorded");
    assert_eq!(rejection.code, "dead_lettered", "{rejection:?}");
    assert!(rejection.reason.contains("fleet.dead"), "{}", rejection.reason);
    let _ = channel.close(200, "done").await;
    let _ = admin.close(200, "done").await;
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_input_far_over_the_cap_fails_its_item_without_being_read() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 1);
    let client = client(TENANT).await;
    let prefix = format!("{TENANT}/{}/", unique("big"));
    client.s3.put(&format!("{prefix}ok.png"), photo(1), "image/png").await.unwrap();
    // A first job warms the worker (model loaded), so its peak memory is the working peak.
    let warm = unique("warm");
    let body = job(&warm, json!({ "keys": [format!("{prefix}ok.png")] }));
    assert_eq!(client.submit(&warm, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    assert_eq!(client.wait(&warm, Duration::from_secs(120), |_| {}).await.unwrap().record.state, JobState::Succeeded);
    let before = peak_rss_kib(fleet.pid("w1"));
    // 300 MiB: read whole, as workers once did, it would add at least that to the peak.
    let big = format!("{prefix}big.png");
    client.s3.put(&big, vec![0u8; 300 << 20], "image/png").await.unwrap();
    let id = unique("big");
    let body = job(&id, json!({ "keys": [format!("{prefix}ok.png"), big.clone()] }));
    assert_eq!(client.submit(&id, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::SucceededWithItemErrors);
    let failures = client.failures(&id).await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].key.as_str(), failures[0].code.as_str()), (big.as_str(), "too_large"));
    assert!(failures[0].reason.contains("input cap"), "{}", failures[0].reason);
    let grew_mib = (peak_rss_kib(fleet.pid("w1")).saturating_sub(before)) / 1024;
    assert!(grew_mib < 64, "the worker's peak memory grew by {grew_mib} MiB");
    client.s3.delete(&big).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fine_tune_data_sets_over_their_caps_train_nothing_and_say_why() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 1);
    let client = client(TENANT).await;
    let prefix = format!("{TENANT}/{}/", unique("datasets"));
    let line = json!({"image": format!("{prefix}a.png"), "mask": format!("{prefix}a.mask.png"),
                      "licence": "CC-BY-4.0", "contributor": "c"})
    .to_string();
    // Over the byte cap (16 MiB), and within it but over the sample cap (10,000).
    let too_big = format!("{prefix}big.jsonl");
    let big: String = std::iter::repeat_n("# padding line\n", (17 << 20) / 15).collect();
    client.s3.put(&too_big, big.into_bytes(), "application/x-ndjson").await.unwrap();
    let too_many = format!("{prefix}many.jsonl");
    let many: String = std::iter::repeat_n(format!("{line}\n"), 10_001).collect();
    client.s3.put(&too_many, many.into_bytes(), "application/x-ndjson").await.unwrap();
    for (data, why) in [(too_big, "byte cap"), (too_many, "10001 samples, over the cap of 10000")] {
        let id = unique("ft-cap");
        let body = serde_json::to_vec(&json!({
            "id": id, "priority": "batch", "kind": "fine_tune",
            "spec": {"base_model": "matting-ref@1.0.0", "data": data,
                     "output": {"name": unique("capped"), "version": "1"},
                     "hyper": {"steps_phase1": 10, "steps_phase2": 5, "batch_size": 2, "warmup_steps": 1}}
        }))
        .unwrap();
        match client.submit(&id, &body, Duration::from_secs(30)).await.unwrap() {
            Submitted::Accepted => {}
            other => panic!("{other:?}"),
        }
        let view = client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap_or_else(|e| {
            panic!("{e}\nscheduler:\n{}\nworker:\n{}", plain(&fleet.log("scheduler")), plain(&fleet.log("w1")))
        });
        assert!(view.record.state.is_terminal(), "{view:?}");
        let failures = client.failures(&id).await.unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].code, "no_model");
        assert!(failures[0].reason.contains(why), "{}", failures[0].reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_clock_is_ten_seconds_behind_keeps_its_leases() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    // Each task takes 6 s, two lease lives; the worker's wall clock is 10 s behind.
    let preload = libfaketime();
    let skewed = [("LD_PRELOAD", preload.as_str()), ("FAKETIME", "-10"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    fleet.worker_with("late", 1, &["--executor", "noop", "--noop-ms", "6000"], &skewed);
    let client = client(TENANT).await;
    // The beat as the worker wrote it, on its own clock.
    let raw = client.jobs.note(&fleet_state::schema::heartbeat_key("late")).await.unwrap().expect("a heartbeat");
    let beat: fleet_protocol::heartbeat::Heartbeat = serde_json::from_str(&raw).unwrap();
    let behind_ms = fleet_protocol::message::now_ms() as i64 - beat.at_ms as i64;
    assert!(behind_ms > 8_000, "the worker's clock is {behind_ms} ms behind, not 10 s");
    let id = unique("skew");
    let keys: Vec<String> = (0..2).map(|i| format!("{TENANT}/nothing/{id}/{i}.png")).collect();
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"keys": keys}, "background": {"mode": "transparent"},
                 "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 1}
    }))
    .unwrap();
    assert_eq!(client.submit(&id, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&id, Duration::from_secs(90), |_| {}).await.unwrap_or_else(|e| {
        panic!("{e}\nscheduler:\n{}\nworker:\n{}", plain(&fleet.log("scheduler")), plain(&fleet.log("late")))
    });
    assert_eq!(view.record.state, JobState::Succeeded);
    let log = plain(&fleet.log("scheduler"));
    // Only this job's leases: a lease an earlier test left may be taken over meanwhile.
    let taken = log.lines().any(|l| l.contains("lease taken over") && l.contains(id.as_str()));
    assert!(!taken, "a live worker's lease was taken over:\n{log}");
    let tenant = TenantId::new(TENANT).unwrap();
    for (task, record) in client.jobs.tasks(&tenant, &id).await.unwrap() {
        assert_eq!(record.worker.as_deref(), Some("late"), "task {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_at_once_one_leads_and_the_other_takes_over_when_it_dies() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("first");
    let second = fleet.scheduler_unready("second");
    let client = client(TENANT).await;
    // The second waits as a standby: never ready, taking nothing, while the first leads.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !plain(&fleet.log("second")).contains("standby: another scheduler leads") {
        assert!(Instant::now() < deadline, "no standby:\n{}", fleet.log("second"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let id = unique("led");
        assert_eq!(client.submit(&id, &placeholder(&id), Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
        client.cancel(&id).await.unwrap();
    }
    assert!(!fleet_tests_e2e::fleet::ready(second), "a standby is not ready");
    assert!(!plain(&fleet.log("second")).contains("leading:"), "{}", fleet.log("second"));
    // The leader dies without a word: its lead lapses and the standby takes over.
    let killed = Instant::now();
    fleet.kill9("first");
    fleet.await_ready("second", second);
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(20), "took over after {took:?}");
    let id = unique("after-lead");
    assert_eq!(client.submit(&id, &placeholder(&id), Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    client.cancel(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_whose_task_has_no_record_is_dropped_and_frees_its_device() {
    let _turn = SERIAL.lock().await;
    let client = client(TENANT).await;
    // A lease on a worker's device for a task whose record is gone. A tenant of its own:
    // the task stays counted in its backlog.
    let tenant = TenantId::new(&unique("orphans")).unwrap();
    let (job, worker) = (unique("orphan"), unique("ghost"));
    let body = serde_json::to_vec(&json!({
        "tenant": tenant.as_str(), "job": job, "task": 0, "priority": "batch", "model": "matting-ref@1.0.0",
        "keys": [format!("{tenant}/x.png")], "background": {"mode": "transparent"}, "output": {"format": "png"},
        "accepted_at_ms": fleet_protocol::message::now_ms(),
    }))
    .unwrap();
    client.jobs.create_task(&tenant, &job, 0, 1, fleet_protocol::job::Priority::Batch).await.unwrap();
    let granted = client.jobs.grant_lease(&tenant, &job, 0, &worker, 0, "batch", &body).await.unwrap();
    assert!(matches!(granted, fleet_state::lease::Grant::Granted { .. }), "{granted:?}");
    let slot = (worker.clone(), 0, "batch".to_string());
    assert_eq!(client.jobs.load().await.unwrap().get(&slot), Some(&1));
    // The task's record goes (as an expired job's would); the lease stays behind.
    let mut redis =
        redis::Client::open(env("FLEET_REDIS_URL")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let tasks = fleet_state::schema::job_key("tasks", &tenant, &job);
    let _: () = redis::cmd("DEL").arg(&tasks).query_async(&mut redis).await.unwrap();
    // Nobody renews it; the scheduler finds it expired and, with no task to send again,
    // drops it instead of trying for ever, which would hold the device's slot for ever.
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let id = fleet_protocol::message::task_id(tenant.as_str(), &job, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.jobs.lease(&id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the orphan lease stayed:\n{}", plain(&fleet.log("scheduler")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.jobs.load().await.unwrap().get(&slot), None, "its device's slot is free again");
    assert!(plain(&fleet.log("scheduler")).contains("expired lease of a task with no record dropped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_keeps_every_scripted_write() {
    let _turn = SERIAL.lock().await;
    let client = client(TENANT).await;
    let tenant = TenantId::new("tenant-restart").unwrap();
    let job = unique("aof");
    // Written by Lua scripts, which the append-only file logs as MULTI/EXEC blocks.
    client.jobs.create_task(&tenant, &job, 0, 7, fleet_protocol::job::Priority::Batch).await.unwrap();
    client.jobs.create_task(&tenant, &job, 1, 5, fleet_protocol::job::Priority::Batch).await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(root.join("deploy/stack.sh")).args(["restart", "redis"]).status().unwrap();
    assert!(status.success(), "Redis restarts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let progress = loop {
        match client.jobs.progress(&tenant, &job).await {
            Ok(p) => break p,
            Err(e) => assert!(Instant::now() < deadline, "Redis not back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((progress.tasks_total, progress.items_total), (2, 12), "scripted writes lost across a restart");
    assert_eq!(client.jobs.tasks(&tenant, &job).await.unwrap().len(), 2);
}
