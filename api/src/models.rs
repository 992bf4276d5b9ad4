//! Models a tenant can use: its own (fine-tuned, with lineage) and the shared ones (with
//! where their weights come from and their licence).

use axum::extract::State;
use axum::Json;
use fleet_store::registry::{list_models, Scope};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::problem::Problem;
use crate::AppState;

/// A model as a tenant sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// `name@version`, as jobs name it.
    pub model: String,
    /// `own` (the tenant's fine-tune) or `shared`.
    pub scope: String,
    /// `matting` or `background_generator`.
    pub task: String,
    /// Input size the model was built for, `WxH`.
    pub input: String,
    /// Parameters.
    pub parameters: u64,
    /// The weights' licence (`AGPL-3.0`, ...); absent for models the fleet trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// The package the weights come from, `name@version`; absent for models the fleet trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How it was made: base model, data set, steps, phases (the manifest's `training`).
    #[schema(value_type = Object)]
    pub lineage: serde_json::Value,
    /// Held-out figures, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
}

/// The tenant's own models, then the shared ones.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = Vec<ModelView>)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ModelView>>, Problem> {
    let tenant = caller.tenant()?;
    let models = list_models(&state.s3, &tenant).await.map_err(|e| Problem::unavailable(e.to_string(), 2))?;
    let word = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_default();
    let views = models
        .into_iter()
        .map(|(scope, m)| ModelView {
            model: m.model_ref().to_string(),
            scope: match scope {
                Scope::Shared => "shared".into(),
                Scope::Tenant(_) => "own".into(),
            },
            task: word(serde_json::to_value(m.task).unwrap_or_default()),
            input: format!("{}x{}", m.input.width, m.input.height),
            parameters: m.parameters,
            licence: m.source.as_ref().map(|s| s.licence.clone()),
            source: m.source.as_ref().map(|s| format!("{}@{}", s.package, s.version)),
            lineage: m.training.clone(),
            metrics: m.metrics.as_ref().and_then(|x| serde_json::to_value(x).ok()),
        })
        .collect();
    Ok(Json(views))
}
