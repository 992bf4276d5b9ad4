//! Who is calling: the bearer token, checked against the token store on every request.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use fleet_protocol::keys::TenantId;

use crate::problem::Problem;
use crate::tokens::{Role, TokenInfo};
use crate::AppState;

/// The caller of a request, from its `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenInfo);

impl Caller {
    /// The tenant a tenant token acts for; an operator token acts for none (403).
    pub fn tenant(&self) -> Result<TenantId, Problem> {
        match (&self.0.role, &self.0.tenant) {
            (Role::Tenant, Some(t)) => {
                TenantId::new(t).map_err(|e| Problem::internal(format!("token {} names a bad tenant: {e}", self.0.id)))
            }
            _ => Err(Problem::role("tenant_only", "an operator token acts on no tenant's jobs: use a tenant's token")),
        }
    }

    /// Ok for an operator token; 403 for a tenant's.
    pub fn operator(&self) -> Result<(), Problem> {
        match self.0.role {
            Role::Operator => Ok(()),
            Role::Tenant => Err(Problem::role("operator_only", "this endpoint is for operator tokens")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("send the token as `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Problem::unauthorized("the Authorization header is not `Bearer <token>`"))?;
        match state.tokens.verify(token).await? {
            Some(info) => Ok(Caller(info)),
            None => Err(Problem::unauthorized("the token is unknown or revoked")),
        }
    }
}
