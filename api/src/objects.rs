//! Objects: inputs uploaded straight to the object store with presigned PUT URLs (each signs
//! one key under the tenant's prefix and one content type, so it writes nothing else), and
//! results read with presigned GET URLs. The bytes never pass through the API.

use axum::extract::{Path, Query, State};
use axum::Json;
use fleet_protocol::keys::{check_tenant_key, results_prefix};
use fleet_store::ObjectStore;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::problem::Problem;
use crate::AppState;

/// Files to upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// Where under the tenant's space, e.g. `tenant-a/catalog/` (must start with the tenant).
    pub prefix: String,
    /// The files, by name.
    pub files: Vec<UploadFile>,
}

/// One file to upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadFile {
    /// Its name below the prefix (may hold `/`).
    pub name: String,
    /// Its content type; from the name's extension when absent.
    pub content_type: Option<String>,
}

/// Where to PUT one file.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadUrl {
    /// The object key it will have (what a job names).
    pub key: String,
    /// PUT the bytes here, with the `content-type` below, before `expires_at_ms`.
    pub url: String,
    /// The content type the signature holds.
    pub content_type: String,
    /// When the URL stops working (ms since the epoch).
    pub expires_at_ms: u64,
}

/// Presigned PUT URLs for files under the tenant's prefix (at most 1,000 per request).
#[utoipa::path(post, path = "/v1/uploads", tag = "objects", request_body = UploadRequest,
    responses((status = 200, body = Vec<UploadUrl>),
        (status = 403, description = "a key outside the tenant's space", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn uploads(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<UploadRequest>,
) -> Result<Json<Vec<UploadUrl>>, Problem> {
    let tenant = caller.tenant()?;
    if request.files.is_empty() || request.files.len() > 1000 {
        return Err(Problem::rejected(invalid(format!("{} files: ask for 1 to 1000 at a time", request.files.len()))));
    }
    let prefix = if request.prefix.ends_with('/') { request.prefix.clone() } else { format!("{}/", request.prefix) };
    let ttl = state.settings.url_ttl;
    let expires_at_ms = fleet_protocol::message::now_ms() + ttl.as_millis() as u64;
    let mut out = Vec::with_capacity(request.files.len());
    for file in &request.files {
        let key = format!("{prefix}{}", file.name);
        check_tenant_key(&tenant, &key).map_err(|e| Problem::rejected(e.into()))?;
        if key.starts_with(&format!("{tenant}/models/")) || key.starts_with(&format!("{tenant}/results/")) {
            return Err(Problem::rejected(fleet_protocol::job::Rejection {
                code: "forbidden".into(),
                reason: format!("{key}: models/ and results/ are written by the fleet, not uploaded"),
            }));
        }
        let content_type = file.content_type.clone().unwrap_or_else(|| fleet_store::content_type(&key).to_string());
        let url = state.s3.presign_put(&key, &content_type, ttl).await?;
        out.push(UploadUrl { key, url, content_type, expires_at_ms });
    }
    Ok(Json(out))
}

fn invalid(reason: String) -> fleet_protocol::job::Rejection {
    fleet_protocol::job::Rejection { code: "invalid".into(), reason }
}

/// A result object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultObject {
    /// Its key.
    pub key: String,
    /// Its path below the job's results prefix.
    pub name: String,
    /// GET it here before `expires_at_ms`.
    pub url: String,
    /// When the URL stops working (ms since the epoch).
    pub expires_at_ms: u64,
}

/// A page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultPage {
    /// The objects of this page.
    pub objects: Vec<ResultObject>,
    /// Pass as `page` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Paging of results.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ResultQuery {
    /// The `next` of the previous page.
    pub page: Option<String>,
    /// At most this many (1-1000, default 1000).
    pub limit: Option<usize>,
}

/// A job's outputs (images, mattes, embeddings, task manifests) with presigned GET URLs.
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "objects", params(("id" = String, Path, description = "job id"), ResultQuery),
    responses((status = 200, body = ResultPage), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn results(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ResultQuery>,
) -> Result<Json<ResultPage>, Problem> {
    let tenant = caller.tenant()?;
    if crate::jobs::view(&state, &tenant, &id).await?.is_none() {
        return Err(Problem::not_found(&format!("job {id}")));
    }
    let prefix = results_prefix(&tenant, &id);
    let page = state.s3.list_page(&prefix, q.page, q.limit.unwrap_or(1000).clamp(1, 1000)).await?;
    let ttl = state.settings.url_ttl;
    let expires_at_ms = fleet_protocol::message::now_ms() + ttl.as_millis() as u64;
    let mut objects = Vec::with_capacity(page.keys.len());
    for key in page.keys {
        let url = state.s3.presign_get(&key, ttl).await?;
        let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
        objects.push(ResultObject { key, name, url, expires_at_ms });
    }
    Ok(Json(ResultPage { objects, next: page.next }))
}
