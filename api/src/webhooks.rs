//! Webhooks: a tenant names one URL; when a job of its ends, the API POSTs the job there,
//! signed with HMAC-SHA256, and retries with backoff until the receiver answers 2xx.
//!
//! Ends reach the API on its own durable queue (`fleet-api.webhooks`, bound to the events
//! exchange for terminal events), so an ending that happens while every API process is down
//! is delivered when one comes back, and several API processes share the work. A message is
//! acknowledged only after its delivery succeeded or its last attempt failed, so a delivery
//! can repeat (at least once): receivers deduplicate on `Fleet-Delivery`.
//!
//! The signature header reads `Fleet-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is
//! HMAC-SHA256 with the webhook's secret over `<t>.<body>`; [`verify`] checks one.
//!
//! ```text
//! fleet:api:webhook:<tenant>      hash: url, secret, created_ms
//! fleet:api:webhook:log:<tenant>  list of the latest 100 deliveries (JSON, newest first)
//! ```

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{now_ms, JobEventMessage};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::broker::QUEUE_PREFIX;
use crate::problem::Problem;
use crate::AppState;

/// The queue of job ends waiting for delivery.
pub const QUEUE: &str = "fleet-api.webhooks";

/// The event kinds that end a job: the ones delivered.
const TERMINAL: [&str; 4] = ["succeeded", "succeeded_with_item_errors", "failed", "cancelled"];

fn key(tenant: &TenantId) -> String {
    format!("fleet:api:webhook:{tenant}")
}

fn log_key(tenant: &str) -> String {
    format!("fleet:api:webhook:log:{tenant}")
}

/// A webhook to set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// `http://` or `https://` URL that receives a POST when a job ends.
    pub url: String,
}

/// The tenant's webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// Where job ends are POSTed.
    pub url: String,
    /// The signing secret: shown when the webhook is set, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// When it was set (ms since the epoch).
    pub created_ms: u64,
    /// The latest deliveries, newest first.
    pub deliveries: Vec<Delivery>,
}

/// What became of one delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// `<tenant>/<job>/<event seq>`, also sent as `Fleet-Delivery`.
    pub id: String,
    /// The job.
    pub job: String,
    /// The event kind (`succeeded`, ...).
    pub kind: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `delivered` or `failed`.
    pub outcome: String,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
}

/// Set (or replace) the tenant's webhook; the answer holds the signing secret, once.
#[utoipa::path(put, path = "/v1/webhook", tag = "webhooks", request_body = WebhookRequest,
    responses((status = 200, body = WebhookView), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<WebhookRequest>,
) -> Result<Json<WebhookView>, Problem> {
    let tenant = caller.tenant()?;
    let uri: hyper::Uri = request.url.parse().map_err(|e| invalid(format!("url {:?}: {e}", request.url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(invalid(format!("url {:?}: an http:// or https:// URL with a host", request.url)));
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let created_ms = now_ms();
    let mut conn = state.redis.clone();
    redis::cmd("HSET")
        .arg(key(&tenant))
        .arg("url")
        .arg(&request.url)
        .arg("secret")
        .arg(&secret)
        .arg("created_ms")
        .arg(created_ms)
        .query_async::<()>(&mut conn)
        .await
        .map_err(redis_problem)?;
    Ok(Json(WebhookView { url: request.url, secret: Some(secret), created_ms, deliveries: Vec::new() }))
}

fn invalid(reason: String) -> Problem {
    Problem::rejected(fleet_protocol::job::Rejection { code: "invalid".into(), reason })
}

fn redis_problem(e: redis::RedisError) -> Problem {
    Problem::unavailable(format!("redis: {e}"), 2)
}

/// The tenant's webhook with its latest deliveries (without the secret).
#[utoipa::path(get, path = "/v1/webhook", tag = "webhooks",
    responses((status = 200, body = WebhookView), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, caller: Caller) -> Result<Json<WebhookView>, Problem> {
    let tenant = caller.tenant()?;
    let mut conn = state.redis.clone();
    let hook = target(&mut conn, &tenant).await.map_err(redis_problem)?.ok_or_else(|| Problem::not_found("webhook"))?;
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg(log_key(tenant.as_str()))
        .arg(0)
        .arg(99)
        .query_async(&mut conn)
        .await
        .map_err(redis_problem)?;
    let deliveries = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok(Json(WebhookView { url: hook.url, secret: None, created_ms: hook.created_ms, deliveries }))
}

/// Remove the tenant's webhook: later job ends are not delivered.
#[utoipa::path(delete, path = "/v1/webhook", tag = "webhooks",
    responses((status = 204, description = "removed"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, caller: Caller) -> Result<axum::http::StatusCode, Problem> {
    let tenant = caller.tenant()?;
    let mut conn = state.redis.clone();
    let removed: i64 = redis::cmd("DEL").arg(key(&tenant)).query_async(&mut conn).await.map_err(redis_problem)?;
    if removed == 0 {
        return Err(Problem::not_found("webhook"));
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

struct Target {
    url: String,
    secret: String,
    created_ms: u64,
}

async fn target(
    conn: &mut redis::aio::ConnectionManager,
    tenant: &TenantId,
) -> Result<Option<Target>, redis::RedisError> {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key(tenant)).query_async(conn).await?;
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Ok(match (get("url"), get("secret")) {
        (Some(url), Some(secret)) => {
            Some(Target { url, secret, created_ms: get("created_ms").and_then(|v| v.parse().ok()).unwrap_or(0) })
        }
        _ => None,
    })
}

/// The `Fleet-Signature` value for `body` signed with `secret` at `t` (unix seconds).
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Whether `header` (a `Fleet-Signature` value) signs `body` with `secret`, made no more than
/// `tolerance_s` seconds from `now_s` (a replayed old delivery fails).
pub fn verify(secret: &str, header: &str, body: &[u8], now_s: u64, tolerance_s: u64) -> bool {
    let Some(t) = header.split(',').find_map(|p| p.strip_prefix("t=")).and_then(|t| t.parse::<u64>().ok()) else {
        return false;
    };
    if t.abs_diff(now_s) > tolerance_s {
        return false;
    }
    let expected = sign(secret, t, body);
    expected.len() == header.len() && expected.bytes().zip(header.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each.
    pub first_backoff: Duration,
    /// Each attempt's time limit.
    pub timeout: Duration,
}

/// Declares the API's delivery queue and its bindings (idempotent).
pub async fn declare(channel: &lapin::Channel) -> Result<(), lapin::Error> {
    debug_assert!(QUEUE.starts_with(QUEUE_PREFIX));
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(QUEUE, opts, args).await?;
    for kind in TERMINAL {
        let routing = format!("job.*.*.{kind}");
        channel
            .queue_bind(
                QUEUE,
                fleet_queue::EVENTS_EXCHANGE,
                &routing,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

use crate::client::{http_client, HttpClient};

/// Delivers job ends until `stop` is cancelled; reconnects when the broker goes away.
pub async fn run(state: AppState, policy: RetryPolicy, stop: CancellationToken) {
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no TLS roots; deliveries stop");
            return;
        }
    };
    while !stop.is_cancelled() {
        if let Err(e) = session(&state, &client, policy, &stop).await {
            tracing::warn!(error = %e, "webhooks: broker session ended; reconnecting");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn session(
    state: &AppState,
    client: &HttpClient,
    policy: RetryPolicy,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let channel = state
        .broker
        .channel()
        .await
        .map_err(|e| lapin::Error::IOError(std::sync::Arc::new(std::io::Error::other(e.to_string()))))?;
    declare(&channel).await?;
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(QUEUE, "fleet-api-webhooks", BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            d = consumer.next() => d,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery?;
        let (state, client) = (state.clone(), client.clone());
        tracker.spawn(async move {
            if let Ok(event) = serde_json::from_slice::<JobEventMessage>(&delivery.data) {
                deliver(&state, &client, policy, &event).await;
            }
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "webhooks: ack failed; the delivery will repeat");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Delivers one job end to its tenant's webhook (if it has one), retrying; records the outcome.
async fn deliver(state: &AppState, client: &HttpClient, policy: RetryPolicy, event: &JobEventMessage) {
    let Ok(tenant) = TenantId::new(&event.tenant) else { return };
    let mut conn = state.redis.clone();
    let hook = match target(&mut conn, &tenant).await {
        Ok(Some(hook)) => hook,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "webhooks: cannot read the target; not delivered");
            return;
        }
    };
    let id = format!("{}/{}/{}", event.tenant, event.job, event.seq);
    let job = crate::jobs::view(state, &tenant, &event.job).await.ok().flatten();
    let body = serde_json::json!({ "delivery": id, "type": format!("job.{}", event.kind), "event": event, "job": job });
    let body = axum::body::Bytes::from(serde_json::to_vec(&body).expect("a delivery serialises"));
    let mut backoff = policy.first_backoff;
    let mut outcome = Delivery {
        id: id.clone(),
        job: event.job.clone(),
        kind: event.kind.clone(),
        attempts: 0,
        status: None,
        outcome: "failed".into(),
        error: None,
        at_ms: 0,
    };
    for attempt in 1..=policy.attempts {
        outcome.attempts = attempt;
        let t = now_ms() / 1000;
        let request = hyper::Request::post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", "gpu-fleet-webhooks")
            .header("fleet-delivery", &id)
            .header("fleet-signature", sign(&hook.secret, t, &body))
            .body(http_body_util::Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                outcome.error = Some(format!("bad request: {e}"));
                break;
            }
        };
        match tokio::time::timeout(policy.timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                outcome.status = Some(response.status().as_u16());
                outcome.outcome = "delivered".into();
                outcome.error = None;
                break;
            }
            Ok(Ok(response)) => {
                outcome.status = Some(response.status().as_u16());
                outcome.error = Some(format!("answered {}", response.status()));
            }
            Ok(Err(e)) => outcome.error = Some(format!("{e}")),
            Err(_) => outcome.error = Some(format!("no answer within {:?}", policy.timeout)),
        }
        if attempt < policy.attempts {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    outcome.at_ms = now_ms();
    tracing::info!(delivery = %id, outcome = %outcome.outcome, attempts = outcome.attempts, "webhook");
    let line = serde_json::to_string(&outcome).expect("an outcome serialises");
    let logged: Result<(), _> = redis::pipe()
        .cmd("LPUSH")
        .arg(log_key(&event.tenant))
        .arg(line)
        .ignore()
        .cmd("LTRIM")
        .arg(log_key(&event.tenant))
        .arg(0)
        .arg(99)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = logged {
        tracing::warn!(error = %e, "webhooks: outcome not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let body = br#"{"delivery":"t/j/3"}"#;
        let header = sign("s3cret", 1_700_000_000, body);
        assert!(verify("s3cret", &header, body, 1_700_000_010, 300));
        assert!(!verify("other", &header, body, 1_700_000_010, 300), "another secret");
        assert!(!verify("s3cret", &header, br#"{"delivery":"t/j/4"}"#, 1_700_000_010, 300), "another body");
        assert!(!verify("s3cret", &header, body, 1_700_001_000, 300), "replayed too late");
        let forged = header.replace("t=1700000000", "t=1700000900");
        assert!(!verify("s3cret", &forged, body, 1_700_000_900, 300), "the time is signed");
    }
}
