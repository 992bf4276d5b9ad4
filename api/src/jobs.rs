//! Jobs: submit (the job id is the idempotency key), read, list, cancel, failures, events.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{JobEventMessage, Progress};
use fleet_state::JobRecord;
use futures::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::problem::Problem;
use crate::AppState;

/// A job as its tenant sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    /// The job id (the idempotency key).
    pub id: String,
    /// The tenant it belongs to (the token's).
    pub tenant: String,
    /// `background_replace` or `fine_tune`.
    pub kind: String,
    /// `interactive` or `batch`.
    pub priority: String,
    /// `accepted`, `running`, `succeeded`, `succeeded_with_item_errors`, `failed`, `cancelled`.
    pub state: String,
    /// The model, `name@version`.
    pub model: String,
    /// When the scheduler accepted it (ms since the epoch).
    pub accepted_at_ms: u64,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Why it failed, for job-level failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its counts.
    pub progress: ProgressView,
    /// A fine-tune's latest figures: step, phase, loss, learning rate, steps/s, ETA.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub training: Option<serde_json::Value>,
    /// The request as submitted.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
}

/// A job's counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgressView {
    /// Tasks created so far.
    pub tasks_total: u64,
    /// Tasks ended.
    pub tasks_done: u64,
    /// Items in created tasks.
    pub items_total: u64,
    /// Items with outputs.
    pub items_succeeded: u64,
    /// Items failed.
    pub items_failed: u64,
    /// Whether every task has been created (the totals are final).
    pub sharded: bool,
}

impl From<Progress> for ProgressView {
    fn from(p: Progress) -> Self {
        ProgressView {
            tasks_total: p.tasks_total,
            tasks_done: p.tasks_done,
            items_total: p.items_total,
            items_succeeded: p.items_succeeded,
            items_failed: p.items_failed,
            sharded: p.sharded,
        }
    }
}

fn word<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The view of `tenant`'s job `id`; `None` when the tenant has no such job.
pub(crate) async fn view(state: &AppState, tenant: &TenantId, id: &str) -> Result<Option<JobView>, Problem> {
    let Some(record) = state.jobs.get(tenant, id).await? else { return Ok(None) };
    let progress = state.jobs.progress(tenant, id).await?;
    let training = match state.jobs.note(&fleet_state::schema::training_key(tenant.as_str(), id)).await? {
        Some(json) => serde_json::from_str(&json).ok(),
        None => None,
    };
    Ok(Some(view_of(record, progress, training)))
}

fn view_of(record: JobRecord, progress: Progress, training: Option<serde_json::Value>) -> JobView {
    JobView {
        kind: record.request.get("kind").and_then(|k| k.as_str()).unwrap_or("background_replace").to_string(),
        priority: word(&record.priority),
        state: word(&record.state),
        id: record.id,
        tenant: record.tenant,
        model: record.model,
        accepted_at_ms: record.accepted_at_ms,
        finished_at_ms: record.finished_at_ms,
        reason: record.reason,
        progress: progress.into(),
        training,
        request: record.request,
    }
}

/// 404 unless the tenant has job `id` (another tenant's job looks exactly like none).
async fn owned(state: &AppState, tenant: &TenantId, id: &str) -> Result<JobView, Problem> {
    view(state, tenant, id).await?.ok_or_else(|| Problem::not_found(&format!("job {id}")))
}

/// A job submitted but not yet answered by a scheduler: the broker holds it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// The job id.
    pub id: String,
    /// Always `submitted`: the broker holds the job, no scheduler answered within the wait;
    /// follow `/v1/jobs/{id}`.
    pub state: String,
}

/// Submit a job (`background_replace` or `fine_tune`), as on the AMQP path. The job's `id` is
/// the idempotency key (one is made when absent): submitting an id again returns the
/// existing job with 200. 201: accepted; 202: queued, no scheduler answered within the wait.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body(content = Object, description = "the job, as on the AMQP path"),
    responses(
        (status = 201, description = "accepted", body = JobView),
        (status = 200, description = "the id was taken: the existing job", body = JobView),
        (status = 202, description = "queued for a scheduler", body = Queued),
        (status = 400, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "an input outside the tenant's space", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "refused by validation, with the reason", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "over a quota of the tenant; Retry-After says when", body = Problem, content_type = "application/problem+json"),
    ), security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let tenant = caller.tenant()?;
    let mut job: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| Problem::malformed(format!("the body is not JSON: {e}")))?;
    if !job.is_object() {
        return Err(Problem::malformed("the body is not a JSON object"));
    }
    let id = match job.get("id").and_then(|v| v.as_str()) {
        Some(id) => id.to_string(),
        None => {
            let id = format!("job-{}", &fleet_protocol::message::new_traceparent()[3..19]);
            job["id"] = serde_json::Value::String(id.clone());
            id
        }
    };
    let bytes = serde_json::to_vec(&job).map_err(|e| Problem::internal(e.to_string()))?;
    // The scheduler validates again (with the registry); refusing here answers at once.
    fleet_protocol::job::validate(&bytes, &tenant).map_err(Problem::rejected)?;
    if let Some(existing) = view(&state, &tenant, &id).await? {
        return Ok((StatusCode::OK, Json(existing)).into_response());
    }
    let mut events = state.broker.subscribe(tenant.as_str(), &id).await?;
    state.broker.publish_job(tenant.as_str(), &id, &bytes).await?;
    let deadline = Instant::now() + state.settings.answer_timeout;
    while let Some(event) = events.next_before(deadline).await {
        match event.kind.as_str() {
            "accepted" => {
                let status = if event.duplicate { StatusCode::OK } else { StatusCode::CREATED };
                let view = owned(&state, &tenant, &id).await?;
                let mut response = (status, Json(view)).into_response();
                if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                return Ok(response);
            }
            "rejected" => {
                let mut problem = Problem::rejected(fleet_protocol::job::Rejection {
                    code: event.code.unwrap_or_else(|| "invalid".into()),
                    reason: event.reason.unwrap_or_default(),
                });
                problem.retry_after_s = event.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
                return Err(problem);
            }
            _ => {}
        }
    }
    Ok((StatusCode::ACCEPTED, Json(Queued { id, state: "submitted".into() })).into_response())
}

/// Paging of lists.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// At most this many (1-1000, default 50).
    pub limit: Option<usize>,
}

/// The tenant's most recent jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = Vec<JobView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, Problem> {
    let tenant = caller.tenant()?;
    let mut out = Vec::new();
    for id in state.jobs.list(&tenant, q.limit.unwrap_or(50).clamp(1, 1000)).await? {
        if let Some(v) = view(&state, &tenant, &id).await? {
            out.push(v);
        }
    }
    Ok(Json(out))
}

/// One job: state, counts, a fine-tune's figures. A refused submission answers with its
/// rejection (422); another tenant's job is not found (404).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "the submission was refused", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, Problem> {
    let tenant = caller.tenant()?;
    match view(&state, &tenant, &id).await? {
        Some(v) => Ok(Json(v)),
        None => match state.jobs.rejection(&tenant, &id).await? {
            Some(rejection) => Err(Problem::rejected(rejection)),
            None => Err(Problem::not_found(&format!("job {id}"))),
        },
    }
}

/// Cancel a job: no further task of it starts; tasks running finish. 202: the cancel is
/// with the scheduler.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "job id")),
    responses((status = 202, body = JobView), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let tenant = caller.tenant()?;
    let view = owned(&state, &tenant, &id).await?;
    state.broker.cancel(tenant.as_str(), &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// A failed item.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailureView {
    /// The input's key.
    pub key: String,
    /// Stable code (`decode`, `too_large`, `not_found`, ...).
    pub code: String,
    /// What went wrong.
    pub reason: String,
}

/// Paging by offset.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Skip this many (default 0).
    pub offset: Option<usize>,
    /// At most this many (1-1000, default 1000).
    pub limit: Option<usize>,
}

/// A job's failed items, with reasons.
#[utoipa::path(get, path = "/v1/jobs/{id}/failures", tag = "jobs", params(("id" = String, Path, description = "job id"), PageQuery),
    responses((status = 200, body = Vec<FailureView>), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn failures(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Vec<FailureView>>, Problem> {
    let tenant = caller.tenant()?;
    owned(&state, &tenant, &id).await?;
    let page = state.jobs.failures(&tenant, &id, q.offset.unwrap_or(0), q.limit.unwrap_or(1000).clamp(1, 1000)).await?;
    Ok(Json(page.into_iter().map(|f| FailureView { key: f.key, code: f.code, reason: f.reason }).collect()))
}

/// A job's events as server-sent events (`event: <kind>`, data: the event JSON): first
/// `snapshot` with the job's view, then each event as the scheduler publishes it; the stream
/// ends after the job's terminal event.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    _headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let tenant = caller.tenant()?;
    // Subscribe before reading the snapshot, so no event falls between the two.
    let subscription = state.broker.subscribe(tenant.as_str(), &id).await?;
    let snapshot = owned(&state, &tenant, &id).await?;
    let ended = is_terminal(&snapshot.state);
    let first =
        Event::default().event("snapshot").json_data(&snapshot).map_err(|e| Problem::internal(e.to_string()))?;
    let stream =
        futures::stream::unfold((Some(first), subscription, ended), |(first, mut subscription, ended)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, subscription, ended)));
            }
            if ended {
                return None;
            }
            let event: JobEventMessage = subscription.next().await?;
            let done = is_terminal(&event.kind);
            let sse = Event::default().event(event.kind.clone()).json_data(&event).unwrap_or_else(|_| Event::default());
            Some((Ok(sse), (None, subscription, done)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Whether a job state (or event kind) ends the job.
pub(crate) fn is_terminal(kind: &str) -> bool {
    matches!(kind, "succeeded" | "succeeded_with_item_errors" | "failed" | "cancelled")
}
