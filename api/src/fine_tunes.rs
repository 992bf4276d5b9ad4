//! Fine-tunes: they are jobs (`kind: fine_tune`, submitted to `/v1/jobs`); this lists the
//! tenant's with their training figures and the model each registers.

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::jobs::{view, JobView, ListQuery};
use crate::problem::Problem;
use crate::AppState;

/// A fine-tune as its tenant sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FineTuneView {
    /// The job.
    pub job: JobView,
    /// The model it registers, `name@version` (under the tenant's own models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_model: Option<String>,
    /// The model it starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
}

/// The tenant's fine-tunes, newest first, with step, phase, loss, learning rate and ETA.
#[utoipa::path(get, path = "/v1/fine-tunes", tag = "jobs", params(ListQuery),
    responses((status = 200, body = Vec<FineTuneView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<FineTuneView>>, Problem> {
    let tenant = caller.tenant()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let mut out = Vec::new();
    // Fine-tunes are among the tenant's jobs: look through ten times as many.
    for id in state.jobs.list(&tenant, limit * 10).await? {
        let Some(job) = view(&state, &tenant, &id).await? else { continue };
        if job.kind != "fine_tune" {
            continue;
        }
        let spec = &job.request["spec"];
        let output_model = match (spec["output"]["name"].as_str(), spec["output"]["version"].as_str()) {
            (Some(n), Some(v)) => Some(format!("{n}@{v}")),
            _ => None,
        };
        let base_model = spec["base_model"].as_str().map(str::to_string);
        out.push(FineTuneView { job, output_model, base_model });
        if out.len() >= limit {
            break;
        }
    }
    Ok(Json(out))
}
