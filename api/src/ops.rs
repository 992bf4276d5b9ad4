//! The operator's endpoints: tokens and the workers' live view. Tenant tokens get 403 here.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fleet_protocol::keys::TenantId;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::problem::Problem;
use crate::tokens::{Role, TokenInfo};
use crate::AppState;

/// A token to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `tenant` or `operator`.
    pub role: Role,
    /// The tenant a tenant token acts for.
    pub tenant: Option<String>,
    /// A name for people.
    pub name: String,
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Its record.
    pub info: TokenInfo,
}

/// Make a token (operators only).
#[utoipa::path(post, path = "/v1/ops/tokens", tag = "operators", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), Problem> {
    caller.operator()?;
    let tenant = match (new.role, new.tenant.as_deref()) {
        (Role::Tenant, Some(t)) => Some(TenantId::new(t).map_err(|e| Problem::malformed(e.to_string()))?),
        (Role::Tenant, None) => return Err(Problem::malformed("a tenant token needs `tenant`")),
        (Role::Operator, Some(_)) => return Err(Problem::malformed("an operator token acts for no tenant")),
        (Role::Operator, None) => None,
    };
    let (token, info) = state.tokens.create(new.role, tenant.as_ref(), &new.name).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info })))
}

/// Every token, revoked ones included, without secrets (operators only).
#[utoipa::path(get, path = "/v1/ops/tokens", tag = "operators", responses((status = 200, body = Vec<TokenInfo>)),
    security(("bearer" = [])))]
pub async fn list_tokens(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<TokenInfo>>, Problem> {
    caller.operator()?;
    Ok(Json(state.tokens.list().await?))
}

/// Revoke a token: refused from the next request on (operators only).
#[utoipa::path(delete, path = "/v1/ops/tokens/{id}", tag = "operators", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, Problem> {
    caller.operator()?;
    state.tokens.revoke(&id).await?.map(Json).ok_or_else(|| Problem::not_found(&format!("token {id}")))
}

/// Live workers and their devices, from their heartbeats (operators only).
#[utoipa::path(get, path = "/v1/ops/workers", tag = "operators",
    responses((status = 200, description = "the workers' heartbeats", body = Vec<Object>)), security(("bearer" = [])))]
pub async fn workers(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<serde_json::Value>>, Problem> {
    caller.operator()?;
    let beats = state.jobs.heartbeats().await?;
    Ok(Json(beats.iter().filter_map(|b| serde_json::to_value(b).ok()).collect()))
}
