//! The tenants' HTTP API on the real services, with the release binaries: a job run by a
//! tenant holding only a token (inputs up and results down through presigned URLs, events as
//! server-sent events, a signed webhook retried until delivered), tenants kept apart, tokens
//! checked and revoked, and the OpenAPI document held to the routes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use fleet_api::client::{Answer, ApiClient};
use fleet_protocol::keys::TenantId;
use fleet_store::ObjectStore;
use fleet_tests_e2e::fleet::Fleet;
use fleet_tests_e2e::unique;
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small product photo: a disc on a plain background, PNG.
fn photo(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(96, 72, |x, y| {
        let (dx, dy) = (x as i32 - 48, y as i32 - 36);
        if dx * dx + dy * dy < 24 * 24 {
            image::Rgb([200, 40 + seed * 30, 30])
        } else {
            image::Rgb([235, 235, 230])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("png encodes");
    out.into_inner()
}

fn job(id: &str, keys: &[String]) -> Value {
    json!({"id": id, "priority": "batch", "kind": "background_replace",
           "spec": {"input": {"keys": keys}, "background": {"mode": "color", "color": "#f2f2f2"},
                    "output": {"format": "jpeg", "quality": 90}, "model": "matting-ref@1.0.0", "shard_size": 2}})
}

/// Uploads `count` photos under `prefix` through presigned PUT URLs; their keys.
async fn upload(api: &ApiClient, prefix: &str, count: u8) -> Vec<String> {
    let files: Vec<Value> = (0..count).map(|i| json!({"name": format!("p{i}.png")})).collect();
    let answer = api.post("/v1/uploads", &json!({"prefix": prefix, "files": files})).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    let urls: Vec<Value> = answer.json().unwrap();
    let mut keys = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let headers = [("content-type", u["content_type"].as_str().unwrap().to_string())];
        let put = api.send(Method::PUT, u["url"].as_str().unwrap(), &headers, photo(i as u8)).await.unwrap();
        assert_eq!(put.status, StatusCode::OK, "presigned PUT: {}", String::from_utf8_lossy(&put.body));
        keys.push(u["key"].as_str().unwrap().to_string());
    }
    keys
}

async fn wait_state(api: &ApiClient, id: &str, states: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let view: Value = api.get(&format!("/v1/jobs/{id}")).await.unwrap().json().unwrap();
        if states.contains(&view["state"].as_str().unwrap_or("")) {
            return view;
        }
        assert!(Instant::now() < deadline, "job {id} not in {states:?} after {timeout:?}: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A webhook receiver that fails the first attempt of every delivery (500) and takes the
/// second; it keeps every request's delivery id, signature and body.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Attempt>>>,
}

/// One request the receiver got: `Fleet-Delivery`, `Fleet-Signature`, body.
type Attempt = (String, String, Vec<u8>);

impl Receiver {
    async fn start(&self) -> String {
        let seen = self.seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let mut seen = seen.lock().unwrap();
                    let delivery = header("fleet-delivery");
                    let first = !seen.iter().any(|(d, _, _)| *d == delivery);
                    seen.push((delivery, header("fleet-signature"), body.to_vec()));
                    if first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_with_only_a_token_runs_a_job_with_presigned_objects_events_and_a_signed_webhook() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("worker", 2);
    let base = fleet.api("api", &[("FLEET_API_WEBHOOK_BACKOFF_MS", "200")]);
    let api = ApiClient::new(&base, Some(&Fleet::token(Some("tenant-a"), "e2e"))).unwrap();

    let receiver = Receiver::default();
    let hook_url = receiver.start().await;
    let hook = api.call(Method::PUT, "/v1/webhook", Some(&json!({"url": hook_url}))).await.unwrap();
    assert_eq!(hook.status, StatusCode::OK, "{}", String::from_utf8_lossy(&hook.body));
    let secret = hook.json::<Value>().unwrap()["secret"].as_str().unwrap().to_string();

    let prefix = format!("tenant-a/{}/", unique("api"));
    let keys = upload(&api, &prefix, 3).await;
    let id = unique("api-job");
    let submitted = api.post("/v1/jobs", &job(&id, &keys)).await.unwrap();
    assert_eq!(submitted.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&submitted.body));
    assert_eq!(submitted.headers["location"], format!("/v1/jobs/{id}").as_str());

    // The id is the idempotency key: the same submission again is the same job.
    let again = api.post("/v1/jobs", &job(&id, &keys)).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json::<Value>().unwrap()["id"], id.as_str());

    // Events: a snapshot, then the scheduler's events up to the job's end.
    let mut kinds = Vec::new();
    let status = tokio::time::timeout(
        Duration::from_secs(180),
        api.events(&format!("/v1/jobs/{id}/events"), |event, data| {
            let v: Value = serde_json::from_str(data).expect("event data is JSON");
            assert!(event == "snapshot" || v["job"] == id.as_str(), "{event}: {data}");
            kinds.push(event.to_string());
            true
        }),
    )
    .await
    .expect("the event stream ends with the job")
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kinds.first().map(String::as_str), Some("snapshot"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("succeeded"), "{kinds:?}");

    let view = wait_state(&api, &id, &["succeeded"], Duration::from_secs(10)).await;
    assert_eq!(view["progress"]["items_succeeded"], 3, "{view}");

    // Results through presigned GET URLs: three JPEGs at the photos' size, with mattes.
    let page: Value = api.get(&format!("/v1/jobs/{id}/results")).await.unwrap().json().unwrap();
    let objects = page["objects"].as_array().unwrap();
    let images: Vec<&Value> = objects.iter().filter(|o| o["name"].as_str().unwrap().ends_with(".jpg")).collect();
    assert_eq!(images.len(), 3, "{page}");
    assert!(objects.iter().any(|o| o["name"].as_str().unwrap().ends_with("/matte.png")), "{page}");
    for object in images {
        let got = api.send(Method::GET, object["url"].as_str().unwrap(), &[], Vec::new()).await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        let decoded = image::load_from_memory(&got.body).expect("a result decodes");
        assert_eq!((decoded.width(), decoded.height()), (96, 72));
    }

    // The webhook: refused once, retried, delivered; every attempt signed with the secret.
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let seen = receiver.seen.lock().unwrap().clone();
        let mine: Vec<_> = seen.iter().filter(|(d, _, _)| d.contains(&id)).cloned().collect();
        if mine.len() >= 2 {
            break mine;
        }
        assert!(Instant::now() < deadline, "webhook attempts for {id}: {}", mine.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivery.len(), 2, "delivered on the second attempt, then no more");
    assert_eq!(delivery[0].0, delivery[1].0, "both attempts carry one delivery id");
    let now = fleet_protocol::message::now_ms() / 1000;
    for (_, signature, body) in &delivery {
        assert!(fleet_api::webhooks::verify(&secret, signature, body, now, 300), "signature {signature}");
        assert!(!fleet_api::webhooks::verify("another-secret", signature, body, now, 300));
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["type"], "job.succeeded");
        assert_eq!(payload["job"]["progress"]["items_succeeded"], 3);
    }
    let log: Value = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: Value = api.get("/v1/webhook").await.unwrap().json().unwrap();
            if v["deliveries"].as_array().is_some_and(|d| d.iter().any(|x| x["job"] == id.as_str())) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the delivery is recorded");
    let record = log["deliveries"].as_array().unwrap().iter().find(|x| x["job"] == id.as_str()).unwrap().clone();
    assert_eq!((record["outcome"].as_str(), record["attempts"].as_u64()), (Some("delivered"), Some(2)), "{record}");
    assert!(log.get("secret").is_none(), "the secret is shown once: {log}");
}

fn problem(answer: &Answer) -> (String, String) {
    assert_eq!(answer.content_type(), "application/problem+json", "{}", String::from_utf8_lossy(&answer.body));
    answer.problem().expect("a problem body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_are_kept_apart_and_tokens_are_checked() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler");
    let base = fleet.api("api", &[]);
    let token_b = Fleet::token(Some("tenant-b"), "e2e-b");
    let a = ApiClient::new(&base, Some(&Fleet::token(Some("tenant-a"), "e2e-a"))).unwrap();
    let b = a.with_token(Some(&token_b));
    let operator_token = Fleet::token(None, "e2e-ops");
    let operator = a.with_token(Some(&operator_token));

    // A's job (no worker: it waits), which B must not be able to tell from no job at all.
    let prefix_a = format!("tenant-a/{}/", unique("apart"));
    let keys = upload(&a, &prefix_a, 2).await;
    let id = unique("a-job");
    assert_eq!(a.post("/v1/jobs", &job(&id, &keys)).await.unwrap().status, StatusCode::CREATED);
    let missing = b.get(&format!("/v1/jobs/{}", unique("no-such-job"))).await.unwrap();
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::GET, format!("/v1/jobs/{id}/results")),
        (Method::GET, format!("/v1/jobs/{id}/failures")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
    ] {
        let answer = b.call(method.clone(), &path, None).await.unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "B {method} {path}");
        let (code, detail) = problem(&answer);
        assert_eq!(code, "not_found");
        assert!(!detail.contains("tenant-a"), "{detail}");
    }
    assert_eq!(problem(&missing).0, "not_found", "another tenant's job reads like no job");
    let listed: Vec<Value> = b.get("/v1/jobs?limit=1000").await.unwrap().json().unwrap();
    assert!(listed.iter().all(|j| j["id"] != id.as_str()));
    // A submission naming A's objects is refused with validation's own reason.
    let body = job(&unique("b-job"), &keys);
    let refused = b.post("/v1/jobs", &body).await.unwrap();
    let expected =
        fleet_protocol::job::validate(&serde_json::to_vec(&body).unwrap(), &TenantId::new("tenant-b").unwrap())
            .expect_err("validation refuses another tenant's keys");
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(problem(&refused), (expected.code.clone(), expected.reason.clone()));
    // A job that does not parse is a 400 with validation's reason; a rule broken, a 422.
    for (body, status) in [
        (json!({"id": unique("m"), "kind": "background_replace"}), StatusCode::BAD_REQUEST),
        (job(&unique("m"), &[]), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let answer = b.post("/v1/jobs", &body).await.unwrap();
        let expected =
            fleet_protocol::job::validate(&serde_json::to_vec(&body).unwrap(), &TenantId::new("tenant-b").unwrap())
                .expect_err("validation refuses it");
        assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(problem(&answer), (expected.code, expected.reason));
    }

    // Uploads: only under B's own prefix, never into models/ or results/.
    for prefix in [prefix_a.as_str(), "tenant-b/models/", "tenant-b/results/x/", "tenant-b/../tenant-a/"] {
        let answer = b.post("/v1/uploads", &json!({"prefix": prefix, "files": [{"name": "x.png"}]})).await.unwrap();
        assert!(
            answer.status == StatusCode::FORBIDDEN || answer.status == StatusCode::UNPROCESSABLE_ENTITY,
            "{prefix}"
        );
        problem(&answer);
    }
    // A presigned URL opens its one key with its one content type.
    let prefix_b = format!("tenant-b/{}/", unique("apart"));
    let urls: Vec<Value> = b
        .post("/v1/uploads", &json!({"prefix": prefix_b, "files": [{"name": "x.png"}]}))
        .await
        .unwrap()
        .json()
        .unwrap();
    let url = urls[0]["url"].as_str().unwrap();
    let elsewhere = url.replacen(&prefix_b, &prefix_a, 1);
    let png = [("content-type", "image/png".to_string())];
    let moved = b.send(Method::PUT, &elsewhere, &png, photo(9)).await.unwrap();
    assert_eq!(moved.status, StatusCode::FORBIDDEN, "a signature for one key writes no other");
    let s3 = fleet_store::s3::S3Store::new(&fleet_store::s3::S3Config::from_env().unwrap());
    assert!(!s3.exists(&format!("{prefix_a}x.png")).await.unwrap());
    let jpeg = [("content-type", "image/jpeg".to_string())];
    assert_eq!(b.send(Method::PUT, url, &jpeg, photo(9)).await.unwrap().status, StatusCode::FORBIDDEN);
    assert_eq!(b.send(Method::PUT, url, &png, photo(9)).await.unwrap().status, StatusCode::OK);

    // Roles: an operator acts on no tenant's jobs; a tenant reaches no operator endpoint.
    let answer = operator.get("/v1/jobs").await.unwrap();
    assert_eq!((answer.status, problem(&answer).0.as_str()), (StatusCode::FORBIDDEN, "tenant_only"));
    let answer = a.get("/v1/ops/tokens").await.unwrap();
    assert_eq!((answer.status, problem(&answer).0.as_str()), (StatusCode::FORBIDDEN, "operator_only"));
    let tokens = operator.get("/v1/ops/tokens").await.unwrap();
    assert_eq!(tokens.status, StatusCode::OK);
    // The secret is base64url, which may itself hold '_': it is everything after the id.
    let secret_b = token_b.splitn(3, '_').nth(2).unwrap();
    assert!(secret_b.len() >= 40, "{token_b}");
    assert!(!String::from_utf8_lossy(&tokens.body).contains(secret_b), "no secret is listed");

    // Tokens: none, a forged one, a revoked one.
    let none = a.with_token(None).get("/v1/jobs").await.unwrap();
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.headers.contains_key("www-authenticate"));
    let forged = format!("{}{}", &token_b[..token_b.len() - 4], "AAAA");
    assert_eq!(a.with_token(Some(&forged)).get("/v1/jobs").await.unwrap().status, StatusCode::UNAUTHORIZED);
    assert_eq!(b.get("/v1/jobs").await.unwrap().status, StatusCode::OK);
    Fleet::revoke(&token_b);
    let revoked = b.get("/v1/jobs").await.unwrap();
    assert_eq!((revoked.status, problem(&revoked).0.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));

    // A cancels its own job.
    assert_eq!(a.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await.unwrap().status, StatusCode::ACCEPTED);
    wait_state(&a, &id, &["cancelled"], Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_is_the_routes() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let base = fleet.api("api", &[]);
    let api = ApiClient::new(&base, None).unwrap();
    let doc: Value = api.get("/openapi.json").await.unwrap().json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let docs = String::from_utf8(api.get("/docs").await.unwrap().body.to_vec()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
            // Every documented operation is served (and asks for a token) ...
            let concrete = path.replace("{id}", "x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (m == Method::POST || m == Method::PUT).then(|| json!({}));
            let answer = api.call(m, &concrete, body.as_ref()).await.unwrap();
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(docs.contains(&format!("{} {}", method.to_uppercase(), path)), "/docs lists {method} {path}");
        }
    }
    // ... and what is not documented is not served.
    assert_eq!(api.get("/v1/nothing").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(api.call(Method::PATCH, "/v1/jobs", None).await.unwrap().status, StatusCode::METHOD_NOT_ALLOWED);
    let expected: BTreeSet<String> = [
        "POST /v1/jobs",
        "GET /v1/jobs",
        "GET /v1/jobs/{id}",
        "POST /v1/jobs/{id}/cancel",
        "GET /v1/jobs/{id}/failures",
        "GET /v1/jobs/{id}/events",
        "GET /v1/jobs/{id}/results",
        "GET /v1/fine-tunes",
        "POST /v1/uploads",
        "GET /v1/models",
        "GET /v1/royalties",
        "PUT /v1/webhook",
        "GET /v1/webhook",
        "DELETE /v1/webhook",
        "POST /v1/ops/tokens",
        "GET /v1/ops/tokens",
        "DELETE /v1/ops/tokens/{id}",
        "GET /v1/ops/workers",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(operations, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_answer_429_with_retry_after_and_free_up_as_work_ends() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    std::fs::write(
        &file,
        "[tenants.tenant-a]\nmax_queued_items = 5\nmax_job_items = 4\n[tenants.tenant-b]\ninteractive_jobs_per_minute = 2\n",
    )
    .unwrap();
    let mut fleet = Fleet::default();
    fleet.scheduler_with("scheduler", &[("FLEET_TENANTS_FILE", file.to_str().unwrap())]);
    let base = fleet.api("api", &[]);
    let a = ApiClient::new(&base, Some(&Fleet::token(Some("tenant-a"), "quota-a"))).unwrap();
    let b = a.with_token(Some(&Fleet::token(Some("tenant-b"), "quota-b")));

    // Job size: more keys than max_job_items is 413, whatever the queue holds.
    let keys = upload(&a, &format!("tenant-a/{}/", unique("quota")), 5).await;
    let answer = a.post("/v1/jobs", &job(&unique("big"), &keys)).await.unwrap();
    assert_eq!((answer.status, problem(&answer).0.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));

    // Queued items: 3 waiting (no worker yet), 3 more would make 6 > 5: 429 with Retry-After.
    let first = unique("queued");
    assert_eq!(a.post("/v1/jobs", &job(&first, &keys[..3])).await.unwrap().status, StatusCode::CREATED);
    let over = a.post("/v1/jobs", &job(&unique("queued"), &keys[..3])).await.unwrap();
    let (code, detail) = problem(&over);
    assert_eq!((over.status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "over_quota"), "{detail}");
    assert!(detail.contains("max_queued_items is 5"), "{detail}");
    assert_eq!(over.headers["retry-after"], "30");

    // Once a worker has run the first job, its items no longer count.
    fleet.worker("worker", 2);
    wait_state(&a, &first, &["succeeded"], Duration::from_secs(120)).await;
    let again = a.post("/v1/jobs", &job(&unique("queued"), &keys[..3])).await.unwrap();
    assert_eq!(again.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&again.body));

    // Interactive jobs over the rate are refused until the minute turns.
    let keys_b = upload(&b, &format!("tenant-b/{}/", unique("quota")), 1).await;
    let interactive = |id: String| {
        let mut body = job(&id, &keys_b);
        body["priority"] = json!("interactive");
        body
    };
    for attempt in 0..2 {
        let minute = fleet_protocol::message::now_ms() / 60_000;
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(b.post("/v1/jobs", &interactive(unique("fast"))).await.unwrap());
        }
        if fleet_protocol::message::now_ms() / 60_000 != minute && attempt == 0 {
            continue; // The window turned midway: once more, within one minute.
        }
        assert_eq!(answers[0].status, StatusCode::CREATED);
        assert_eq!(answers[1].status, StatusCode::CREATED);
        assert_eq!((answers[2].status, problem(&answers[2]).0.as_str()), (StatusCode::TOO_MANY_REQUESTS, "over_quota"));
        let wait: u64 = answers[2].headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        break;
    }
    // A batch job of the same tenant still passes: the limit is on jumping the queue.
    assert_eq!(b.post("/v1/jobs", &job(&unique("slow"), &keys_b)).await.unwrap().status, StatusCode::CREATED);
}
