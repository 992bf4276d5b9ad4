//! Job records in the real Redis the test command starts: one job per tenant and id, state
//! changes only through the state machine, and no update lost when schedulers race.

use fleet_protocol::job::Priority;
use fleet_protocol::keys::TenantId;
use fleet_protocol::state::TaskEvent;
use fleet_protocol::state::{JobEvent, JobState};
use fleet_state::lease::{Grant, Renewal};
use fleet_state::{Created, JobRecord, JobStoreError, LeaseOp, RedisJobStore, TaskNote, TaskOutcome, TaskUpdate};
use fleet_tests_services::unique;

async fn store() -> RedisJobStore {
    let url = std::env::var("FLEET_REDIS_URL").expect("the test command starts the stack and exports FLEET_REDIS_URL");
    RedisJobStore::connect(&url).await.unwrap()
}

fn record(tenant: &str, id: &str, model: &str) -> JobRecord {
    JobRecord {
        tenant: tenant.into(),
        id: id.into(),
        priority: Priority::Batch,
        state: JobState::Accepted,
        model: model.into(),
        request: serde_json::json!({"id": id}),
        accepted_at_ms: 1,
        succeeded_items: 0,
        failed_items: 0,
        reason: None,
        traceparent: String::new(),
        finished_at_ms: None,
    }
}

#[tokio::test]
async fn the_same_id_submitted_twice_makes_one_job_per_tenant() {
    let store = store().await;
    let id = unique("dup");
    assert!(matches!(store.create(record("tenant-a", &id, "m@1")).await.unwrap(), Created::New(_)));
    match store.create(record("tenant-a", &id, "other@2")).await.unwrap() {
        Created::Existing(existing) => assert_eq!(existing.model, "m@1", "the first submission wins"),
        other => panic!("expected the existing job, got {other:?}"),
    }
    // Ids are per tenant: another tenant's job with the same id is a different job.
    assert!(matches!(store.create(record("tenant-b", &id, "m@1")).await.unwrap(), Created::New(_)));
}

#[tokio::test]
async fn state_changes_follow_the_state_machine() {
    let store = store().await;
    let tenant = TenantId::new("tenant-a").unwrap();
    let id = unique("flow");
    store.create(record("tenant-a", &id, "m@1")).await.unwrap();
    store.apply(&tenant, &id, JobEvent::Queued).await.unwrap();
    store.apply(&tenant, &id, JobEvent::TaskStarted).await.unwrap();
    let done = store.apply(&tenant, &id, JobEvent::TasksEnded { succeeded: 48, failed: 2 }).await.unwrap();
    assert_eq!(done.state, JobState::SucceededWithItemErrors);
    assert_eq!((done.succeeded_items, done.failed_items), (48, 2));
    assert!(matches!(store.apply(&tenant, &id, JobEvent::Cancel).await, Err(JobStoreError::Transition(_))));
    assert_eq!(store.get(&tenant, &id).await.unwrap().unwrap().state, JobState::SucceededWithItemErrors);
    assert!(matches!(store.apply(&tenant, "missing", JobEvent::Queued).await, Err(JobStoreError::NotFound { .. })));
}

#[tokio::test]
async fn racing_schedulers_apply_exactly_one_terminal_transition() {
    let store = store().await;
    let tenant = TenantId::new("tenant-a").unwrap();
    let id = unique("race");
    store.create(record("tenant-a", &id, "m@1")).await.unwrap();
    store.apply(&tenant, &id, JobEvent::Queued).await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (store, tenant, id) = (store.clone(), tenant.clone(), id.clone());
            tokio::spawn(async move {
                let event =
                    if i % 2 == 0 { JobEvent::Cancel } else { JobEvent::TasksEnded { succeeded: 1, failed: 0 } };
                store.apply(&tenant, &id, event).await
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(JobStoreError::Transition(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners, 1, "a job reaches one terminal state once");
    assert!(store.get(&tenant, &id).await.unwrap().unwrap().state.is_terminal());
}

#[tokio::test]
async fn the_backlog_counts_each_task_until_it_ends_once_by_tenant_and_priority() {
    let note = || TaskNote { worker: Some("w1"), ..Default::default() };
    let store = store().await;
    // A tenant of its own: the backlog is fleet-wide.
    let tenant = TenantId::new(&unique("backlog")).unwrap();
    let (urgent, bulk) = (unique("urgent"), unique("bulk"));
    let before = store.backlog().await.unwrap();
    for task in 0..3 {
        store.create_task(&tenant, &urgent, task, 1, Priority::Interactive).await.unwrap();
    }
    for task in 0..2 {
        store.create_task(&tenant, &bulk, task, 4, Priority::Batch).await.unwrap();
    }
    // Made again (a split that resumes): counted once.
    store.create_task(&tenant, &urgent, 0, 1, Priority::Interactive).await.unwrap();
    let waiting = |b: &fleet_state::tasks::Backlog, p| b.waiting.get(&(tenant.to_string(), p)).copied();
    let now = store.backlog().await.unwrap();
    assert_eq!((waiting(&now, Priority::Interactive), waiting(&now, Priority::Batch)), (Some(3), Some(2)));

    let end = |job: String, task| {
        let store = store.clone();
        let tenant = tenant.clone();
        async move {
            let none = TaskOutcome::default();
            let start = TaskEvent::Start { attempt: 1 };
            store.update_task(&tenant, &job, task, start, &none, note(), LeaseOp::None).await.unwrap();
            let done = TaskOutcome { succeeded: 1, failures: vec![] };
            store.update_task(&tenant, &job, task, TaskEvent::Complete, &done, note(), LeaseOp::None).await.unwrap()
        }
    };
    assert!(matches!(end(urgent.clone(), 0).await, TaskUpdate::Applied { ended: true, .. }));
    // The same report again is refused and changes nothing.
    let done = TaskOutcome { succeeded: 1, failures: vec![] };
    let again =
        store.update_task(&tenant, &urgent, 0, TaskEvent::Complete, &done, note(), LeaseOp::None).await.unwrap();
    assert!(matches!(again, TaskUpdate::Refused(_)), "{again:?}");
    let now = store.backlog().await.unwrap();
    assert_eq!((waiting(&now, Priority::Interactive), waiting(&now, Priority::Batch)), (Some(2), Some(2)));
    let ended = |b: &fleet_state::tasks::Backlog, p| b.ended[&p];
    // No other test ends interactive tasks.
    assert_eq!(ended(&now, Priority::Interactive), ended(&before, Priority::Interactive) + 1);
    for (job, task) in [(urgent.clone(), 1), (urgent.clone(), 2), (bulk.clone(), 0), (bulk.clone(), 1)] {
        end(job, task).await;
    }
    let now = store.backlog().await.unwrap();
    assert_eq!((waiting(&now, Priority::Interactive), waiting(&now, Priority::Batch)), (None, None), "{now:?}");
    assert_eq!(ended(&now, Priority::Interactive), ended(&before, Priority::Interactive) + 3);
    assert!(ended(&now, Priority::Batch) >= ended(&before, Priority::Batch) + 2);
}

#[tokio::test]
async fn a_task_reported_twice_is_counted_once_and_its_failures_kept() {
    use fleet_protocol::message::ItemFailureReport;
    use fleet_protocol::state::TaskState;
    let note = |worker| TaskNote { worker: Some(worker), ..Default::default() };
    let store = store().await;
    let tenant = TenantId::new("tenant-a").unwrap();
    let job = unique("tasks");
    assert_eq!(store.create_task(&tenant, &job, 0, 3, Priority::Batch).await.unwrap(), None);
    assert_eq!(store.create_task(&tenant, &job, 1, 2, Priority::Batch).await.unwrap(), None);
    let again =
        store.create_task(&tenant, &job, 0, 3, Priority::Batch).await.unwrap().expect("an existing task is returned");
    assert_eq!(again.state, TaskState::Dispatched { attempt: 1 });
    let failure =
        ItemFailureReport { key: "tenant-a/x.jpg".into(), code: "corrupt".into(), reason: "truncated".into() };
    let outcome = TaskOutcome { succeeded: 2, failures: vec![failure.clone()] };
    let start = TaskEvent::Start { attempt: 1 };
    let none = TaskOutcome::default();
    assert!(matches!(
        store.update_task(&tenant, &job, 0, start, &none, note("w1"), LeaseOp::None).await.unwrap(),
        TaskUpdate::Applied { ended: false, .. }
    ));
    let first =
        store.update_task(&tenant, &job, 0, TaskEvent::Complete, &outcome, note("w1"), LeaseOp::None).await.unwrap();
    let TaskUpdate::Applied { ended: true, progress, .. } = first else { panic!("{first:?}") };
    assert_eq!((progress.tasks_total, progress.tasks_done, progress.items_total), (2, 1, 5));
    assert_eq!((progress.items_succeeded, progress.items_failed), (2, 1));
    // The redelivered task completes again: refused, nothing counted.
    let second =
        store.update_task(&tenant, &job, 0, TaskEvent::Complete, &outcome, note("w2"), LeaseOp::None).await.unwrap();
    assert!(matches!(second, TaskUpdate::Refused(_)), "{second:?}");
    let progress = store.progress(&tenant, &job).await.unwrap();
    assert_eq!((progress.tasks_done, progress.items_succeeded, progress.items_failed), (1, 2, 1));
    assert_eq!(store.failures(&tenant, &job, 0, 10).await.unwrap(), vec![failure]);
    assert!(!progress.all_done(), "not done before the split is finished");
    let dead = TaskOutcome { succeeded: 0, failures: vec![] };
    store
        .update_task(
            &tenant,
            &job,
            1,
            TaskEvent::DeadLetter,
            &dead,
            TaskNote { error: Some("boom"), ..Default::default() },
            LeaseOp::None,
        )
        .await
        .unwrap();
    let progress = store.finish_sharding(&tenant, &job).await.unwrap();
    assert!(progress.all_done());
    assert_eq!(store.task(&tenant, &job, 1).await.unwrap().unwrap().last_error.as_deref(), Some("boom"));
}

/// The message of task 0 of `job`, as a lease stores it.
fn task_body(job: &str, now: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "tenant": "tenant-a", "job": job, "task": 0, "priority": "batch", "model": "matting-ref@1.0.0",
        "keys": ["tenant-a/x.jpg"], "background": {"mode": "transparent"}, "output": {"format": "png"},
        "accepted_at_ms": now,
    }))
    .unwrap()
}

#[tokio::test]
async fn leases_fence_out_a_worker_whose_task_was_taken_over() {
    let store = store().await;
    let tenant = TenantId::new("tenant-a").unwrap();
    let job = unique("leases");
    store.create_task(&tenant, &job, 0, 4, Priority::Batch).await.unwrap();
    let id = fleet_protocol::message::task_id("tenant-a", &job, 0);
    let (w1, w2, w3) = (unique("w1"), unique("w2"), unique("w3"));
    let (w1, w2, w3) = (w1.as_str(), w2.as_str(), w3.as_str());
    let now = fleet_protocol::message::now_ms();
    let body = task_body(&job, now);
    let body = body.as_slice();
    let Grant::Granted { token: first, grants: 1 } =
        store.grant_lease(&tenant, &job, 0, w1, 0, "batch", body).await.unwrap()
    else {
        panic!("the first grant is granted")
    };
    assert_eq!(
        store.grant_lease(&tenant, &job, 0, w2, 0, "batch", body).await.unwrap(),
        Grant::Held,
        "a second copy of a task a live worker holds is not granted again"
    );
    assert_eq!(store.load().await.unwrap().get(&(w1.to_string(), 0, "batch".to_string())), Some(&1));
    assert_eq!(store.renew_leases(w1, &[(id.clone(), first)]).await.unwrap(), Renewal::default());
    assert_eq!(store.renew_leases(w2, &[(id.clone(), first)]).await.unwrap().lost, vec![id.clone()]);
    // A preemption reaches the holder on its next renewal, and only the holder.
    assert!(store.request_preemption(&id).await.unwrap());
    let renewal = store.renew_leases(w1, &[(id.clone(), first)]).await.unwrap();
    assert_eq!((renewal.lost, renewal.preempt), (Vec::new(), vec![id.clone()]));
    let start = TaskEvent::Start { attempt: 1 };
    let none = TaskOutcome::default();
    let started =
        store.update_task(&tenant, &job, 0, start, &none, TaskNote::default(), LeaseOp::Check { token: first });
    assert!(matches!(started.await.unwrap(), TaskUpdate::Applied { .. }));
    // w1 goes silent: its lease expires and the scheduler takes the task over.
    tokio::time::sleep(fleet_state::lease::LEASE_TTL + std::time::Duration::from_millis(100)).await;
    let later = fleet_protocol::message::now_ms();
    let expired = store.expired_leases(1000).await.unwrap();
    let lease = expired.iter().find(|l| l.id == id).expect("the silent worker's lease has expired");
    assert_eq!((lease.worker.as_str(), lease.token, lease.grants), (w1, first, 1));
    let takeover = LeaseOp::Requeue { token: first, not_before_ms: 0 };
    let taken = store.update_task(&tenant, &job, 0, TaskEvent::LeaseLost, &none, TaskNote::default(), takeover);
    assert!(matches!(taken.await.unwrap(), TaskUpdate::Applied { ended: false, .. }));
    assert!(store.requeue_due(later).await.unwrap().iter().any(|l| l.id == id), "queued for dispatch again");
    assert_eq!(
        store.load().await.unwrap().get(&(w1.to_string(), 0, "batch".to_string())),
        None,
        "w1 no longer counts it"
    );
    let Grant::Granted { token: second, grants: 2 } =
        store.grant_lease(&tenant, &job, 0, w2, 1, "batch", body).await.unwrap()
    else {
        panic!("the task is granted to the next worker")
    };
    assert!(second > first, "tokens increase");
    assert_eq!(
        store.renew_leases(w2, &[(id.clone(), second)]).await.unwrap(),
        Renewal::default(),
        "a new grant clears the old holder's preemption"
    );
    assert!(!store.requeue_due(later).await.unwrap().iter().any(|l| l.id == id), "granted: no longer waiting");
    let start = TaskEvent::Start { attempt: 2 };
    let started =
        store.update_task(&tenant, &job, 0, start, &none, TaskNote::default(), LeaseOp::Check { token: second });
    assert!(matches!(started.await.unwrap(), TaskUpdate::Applied { .. }));
    // w1 comes back and reports: its token is stale, nothing is counted and its renewal fails.
    let outcome = TaskOutcome { succeeded: 4, failures: vec![] };
    let note = TaskNote { worker: Some(w1), ..Default::default() };
    let stale =
        store.update_task(&tenant, &job, 0, TaskEvent::Complete, &outcome, note, LeaseOp::End { token: Some(first) });
    assert_eq!(stale.await.unwrap(), TaskUpdate::Fenced);
    assert_eq!(store.progress(&tenant, &job).await.unwrap().items_succeeded, 0);
    assert_eq!(store.renew_leases(w1, &[(id.clone(), first)]).await.unwrap().lost, vec![id.clone()]);
    // w2 completes under the current token: counted once, lease gone.
    assert!(
        serde_json::from_str::<fleet_protocol::message::TaskMessage>(&store.lease(&id).await.unwrap().unwrap().body)
            .is_ok(),
        "the lease keeps the task message for re-dispatch"
    );
    let note = TaskNote { worker: Some(w2), ..Default::default() };
    let done =
        store.update_task(&tenant, &job, 0, TaskEvent::Complete, &outcome, note, LeaseOp::End { token: Some(second) });
    assert!(matches!(done.await.unwrap(), TaskUpdate::Applied { ended: true, .. }));
    assert_eq!(store.progress(&tenant, &job).await.unwrap().items_succeeded, 4);
    assert_eq!(store.lease(&id).await.unwrap(), None);
    assert_eq!(store.load().await.unwrap().get(&(w2.to_string(), 1, "batch".to_string())), None);
    assert_eq!(
        store.grant_lease(&tenant, &job, 0, w3, 0, "batch", body).await.unwrap(),
        Grant::Ended,
        "a duplicate copy of an ended task is dropped"
    );
}

#[tokio::test]
async fn a_task_given_back_does_not_use_up_a_grant() {
    let store = store().await;
    let tenant = TenantId::new("tenant-a").unwrap();
    let job = unique("given-back");
    store.create_task(&tenant, &job, 0, 1, Priority::Batch).await.unwrap();
    let id = fleet_protocol::message::task_id("tenant-a", &job, 0);
    let now = fleet_protocol::message::now_ms();
    let body = task_body(&job, now);
    let (w1, w2) = (unique("w1"), unique("w2"));
    let Grant::Granted { token, grants: 1 } =
        store.grant_lease(&tenant, &job, 0, &w1, 0, "batch", &body).await.unwrap()
    else {
        panic!("first grant")
    };
    let none = TaskOutcome::default();
    let started = TaskEvent::Start { attempt: 1 };
    let op = LeaseOp::Check { token };
    store.update_task(&tenant, &job, 0, started, &none, TaskNote::default(), op).await.unwrap();
    // The worker gives the task back (a preempted fine-tune): re-queued, the grant forgiven.
    let op = LeaseOp::Requeue { token, not_before_ms: 0 };
    let given = store.update_task(&tenant, &job, 0, TaskEvent::LeaseLost, &none, TaskNote::default(), op);
    assert!(matches!(given.await.unwrap(), TaskUpdate::Applied { ended: false, .. }));
    store.forgive_grant(&id).await.unwrap();
    let Grant::Granted { token: again, grants } =
        store.grant_lease(&tenant, &job, 0, &w2, 0, "batch", &body).await.unwrap()
    else {
        panic!("granted again")
    };
    assert_eq!(grants, 1, "a give-back is not a lost worker");
    assert!(again > token, "a new token all the same");
    let started = TaskEvent::Start { attempt: grants };
    let op = LeaseOp::Check { token: again };
    let update = store.update_task(&tenant, &job, 0, started, &none, TaskNote::default(), op).await.unwrap();
    assert!(matches!(update, TaskUpdate::Applied { .. }), "the next holder starts the task: {update:?}");
}

#[tokio::test]
async fn tokens_keep_rising_after_redis_loses_its_last_writes_and_leases_run_on_its_clock() {
    let store = store().await;
    let tenant = TenantId::new("tenant-jobstore").unwrap();
    let job = unique("rollback");
    for task in 0..2 {
        store.create_task(&tenant, &job, task, 1, Priority::Batch).await.unwrap();
    }
    let body = task_body(&job, fleet_protocol::message::now_ms());
    // Workers of their own: the leases count against their devices until they end.
    let (w1, w2) = (unique("w1"), unique("w2"));
    let Grant::Granted { token: first, .. } =
        store.grant_lease(&tenant, &job, 0, &w1, 0, "batch", &body).await.unwrap()
    else {
        panic!("granted")
    };
    // A crash with appendfsync everysec loses the last second of writes: the token counter
    // reads as it did before `first` was drawn, while w1 still holds `first`.
    let url = std::env::var("FLEET_REDIS_URL").unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("fleet:lease:seq").arg(first - 1).query_async(&mut conn).await.unwrap();
    let Grant::Granted { token: second, .. } =
        store.grant_lease(&tenant, &job, 1, &w2, 0, "batch", &body).await.unwrap()
    else {
        panic!("granted")
    };
    assert!(second > first, "token {second} issued after {first}: a rolled-back counter issued a token twice");
    // The lease's expiry is on Redis's clock, whatever the caller's clock says.
    let lease = store.lease(&fleet_protocol::message::task_id("tenant-jobstore", &job, 1)).await.unwrap().unwrap();
    let server = store.server_now_ms().await.unwrap();
    let ttl = fleet_state::lease::LEASE_TTL.as_millis() as u64;
    assert!(lease.expires_ms > server && lease.expires_ms <= server + ttl, "{} vs {server}", lease.expires_ms);
    for (task, token) in [(0, first), (1, second)] {
        store.end_lease(&fleet_protocol::message::task_id("tenant-jobstore", &job, task), token).await.unwrap();
    }
}

#[tokio::test]
async fn a_finished_job_s_records_expire_after_the_retention_and_leave_the_job_list() {
    let store = store().await.with_retention(std::time::Duration::from_secs(2));
    let tenant = TenantId::new("tenant-jobstore").unwrap();
    let id = unique("retained");
    store.create(record("tenant-jobstore", &id, "m@1")).await.unwrap();
    store.create_task(&tenant, &id, 0, 3, Priority::Batch).await.unwrap();
    assert!(store.list(&tenant, 100_000).await.unwrap().contains(&id));
    // Running jobs never expire, however long they run.
    let url = std::env::var("FLEET_REDIS_URL").unwrap();
    let conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move { redis::cmd("TTL").arg(key).query_async::<i64>(&mut conn).await.unwrap() }
    };
    assert_eq!(ttl(format!("fleet:job:tenant-jobstore:{id}")).await, -1, "a running job's record has no TTL");
    store.apply(&tenant, &id, JobEvent::Cancel).await.unwrap();
    for key in [
        format!("fleet:job:tenant-jobstore:{id}"),
        format!("fleet:tasks:tenant-jobstore:{id}"),
        format!("fleet:progress:tenant-jobstore:{id}"),
    ] {
        let left = ttl(key.clone()).await;
        assert!((1..=2).contains(&left), "{key}: TTL {left}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    assert!(store.get(&tenant, &id).await.unwrap().is_none(), "the record expired");
    assert_eq!(store.progress(&tenant, &id).await.unwrap().tasks_total, 0, "its counters too");
    assert!(store.prune_expired(100_000).await.unwrap() >= 1);
    assert!(!store.list(&tenant, 100_000).await.unwrap().contains(&id), "and it left the tenant's job list");
}
