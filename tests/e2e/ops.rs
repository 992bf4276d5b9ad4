//! What an autoscaler and an operator read: the backlog the leading scheduler exports
//! (`fleet_backlog_tasks`, `fleet_backlog_drain_seconds`, the figures the KEDA ScaledObjects in
//! deploy/k8s scale on) moves with the queue, and a worker removed while busy (scale-in sends
//! SIGTERM) finishes what it holds, so the job loses nothing; and one OpenTelemetry trace
//! follows a job from intake to the worker's S3 writes and its report, read by a collector
//! in this test.

use std::time::{Duration, Instant};

use fleet_client::Submitted;
use fleet_protocol::state::JobState;
use fleet_store::ObjectStore;
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::{photo, plain, unique};
use serde_json::json;

const TENANT: &str = "tenant-a";

/// One scheduler leads at a time: the tests here take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
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
async fn until(fleet: &Fleet, within: Duration, what: &str, done: impl Fn((Option<f64>, Option<f64>)) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let now = backlog(fleet);
        if done(now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the backlog reads {now:?}\n{}", plain(&fleet.log("scheduler")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backlog_metric_moves_with_the_queue_and_a_worker_removed_while_busy_loses_nothing() {
    let _turn = SERIAL.lock().await;
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
    until(&fleet, Duration::from_secs(20), "twelve tasks counted", |(tasks, _)| tasks == Some(base + 12.0)).await;
    until(&fleet, Duration::from_secs(20), "stalled with no worker", |(_, drain)| drain == Some(STALLED_S)).await;

    // A worker drains it: each task takes 400 ms, two at a time.
    fleet.worker_with("w1", 2, &["--executor", "noop", "--noop-ms", "400"], &[]);
    until(&fleet, Duration::from_secs(30), "draining at a finite rate", |(tasks, drain)| {
        tasks.is_some_and(|t| t <= base + 10.0) && drain.is_some_and(|d| d < STALLED_S)
    })
    .await;
    // Scale-in: the pod is sent SIGTERM while it holds tasks. It finishes them and exits.
    assert!(fleet.terminate("w1", Duration::from_secs(60)), "SIGTERM drains and exits cleanly:\n{}", fleet.log("w1"));
    let (left, _) = backlog(&fleet);
    assert!(left.is_some_and(|t| t > base), "tasks were left for another worker: {left:?}");
    fleet.worker_with("w2", 2, &["--executor", "noop", "--noop-ms", "50"], &[]);
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded);
    assert_eq!((view.progress.items_succeeded, view.progress.items_failed), (12, 0));
    until(&fleet, Duration::from_secs(20), "back where it started", |(tasks, _)| tasks == Some(base)).await;
}

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) on a free port; the spans it got.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = spans.clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let receive = move |body: axum::body::Bytes| {
        let store = store.clone();
        async move {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
            let mut got = store.lock().expect("collector lock");
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                    got.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
            ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
        }
    };
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_follows_a_job_from_intake_through_the_worker_s_writes_to_its_report() {
    let _turn = SERIAL.lock().await;
    let (endpoint, spans) = collector().await;
    let otlp = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut fleet = Fleet::default();
    fleet.scheduler_with("scheduler", &otlp);
    fleet.worker_with("w1", 1, &[], &otlp);
    let client = client(TENANT).await;
    let id = unique("traced");
    let keys: Vec<String> = (0..2).map(|i| format!("{TENANT}/{id}/in/{i}.png")).collect();
    for (i, key) in keys.iter().enumerate() {
        client.s3.put(key, photo(i as u8), "image/png").await.unwrap();
    }
    let body = serde_json::to_vec(&json!({
        "id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"keys": keys}, "background": {"mode": "color", "color": "#ffffff"},
                 "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 1}
    }))
    .unwrap();
    assert_eq!(client.submit(&id, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!((view.record.state, view.progress.items_succeeded), (JobState::Succeeded, 2));
    let trace = fleet_protocol::message::trace_id(&view.record.traceparent).expect("a trace id").to_string();

    // Every span of the job's trace, once the last (the second report) has arrived.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let got: Vec<Received> = spans.lock().unwrap().iter().filter(|s| s.trace == trace).cloned().collect();
        if got.iter().filter(|s| s.name == "report" && s.service == "fleet-scheduler").count() >= 4 {
            break got;
        }
        assert!(Instant::now() < deadline, "not every span arrived: {got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let by_id = |id: &str| spans.iter().find(|s| s.id == id);
    // The chain: intake -> shard -> dispatch -> task -> (S3 reads and writes, report).
    let intake = named("intake");
    assert_eq!(intake.len(), 1, "{spans:#?}");
    let intake = intake[0];
    assert_eq!(intake.service, "fleet-scheduler");
    assert!(by_id(&intake.parent).is_none(), "intake hangs beneath the submitter's span");
    for shard in named("shard") {
        assert_eq!(shard.parent, intake.id, "shard beneath intake");
    }
    let shard_ids: Vec<&str> = named("shard").iter().map(|s| s.id.as_str()).collect();
    let dispatches = named("dispatch");
    assert_eq!(dispatches.len(), 2, "one placement per task: {spans:#?}");
    assert!(dispatches.iter().all(|d| shard_ids.contains(&d.parent.as_str())), "dispatch beneath shard");
    let tasks = named("task");
    assert_eq!(tasks.len(), 2, "{spans:#?}");
    for task in &tasks {
        assert_eq!(task.service, "fleet-worker");
        assert!(dispatches.iter().any(|d| d.id == task.parent), "task beneath its dispatch");
        let beneath = |name: &str| {
            spans.iter().filter(|s| s.name == name && ancestors(&spans, s).contains(&task.id.as_str())).count()
        };
        assert!(beneath("S3.GetObject") >= 1, "the task's input read is in its trace: {spans:#?}");
        assert!(beneath("S3.PutObject") >= 2, "the task's result and manifest writes are in its trace");
        let reports = named("report").into_iter().filter(|r| ancestors(&spans, r).contains(&task.id.as_str()));
        assert!(reports.count() >= 2, "the task's start and end reports hang beneath it");
    }
    // One tree: every span but intake has its parent in the trace.
    let orphans: Vec<_> = spans.iter().filter(|s| s.id != intake.id && by_id(&s.parent).is_none()).collect();
    assert!(orphans.is_empty(), "spans outside the job's tree: {orphans:#?}");
}

/// The ids of a span's ancestors within `spans`, nearest first.
fn ancestors<'a>(spans: &'a [Received], span: &Received) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut parent = span.parent.as_str();
    while let Some(p) = spans.iter().find(|s| s.id == parent) {
        out.push(p.id.as_str());
        parent = p.parent.as_str();
    }
    out
}
