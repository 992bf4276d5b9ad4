//! What the tenant's outputs owe to the contributors of the training images behind them:
//! the royalty ledger's report over the tenant's own outputs.

use axum::extract::{Query, State};
use axum::Json;
use fleet_attribution::Period;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::problem::Problem;
use crate::AppState;

/// Which outputs the report covers.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RoyaltiesQuery {
    /// Start, Unix seconds (default: the beginning).
    pub from: Option<f64>,
    /// End, Unix seconds, exclusive (default: no end).
    pub to: Option<f64>,
    /// Only this job's outputs.
    pub job: Option<String>,
    /// Only this contributor's line.
    pub contributor: Option<String>,
}

/// One contributor's line.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContributorView {
    /// The contributor, as the training data set names them.
    pub contributor: String,
    /// Outputs that credit them.
    pub outputs: i64,
    /// Their shares summed (each output's shares sum to 1).
    pub share: f64,
}

/// The tenant's royalties over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoyaltiesView {
    /// Outputs of the tenant attributed in the period.
    pub outputs: i64,
    /// Of them, outputs that credit a contributor (the shares' total).
    pub credited_outputs: i64,
    /// Per contributor, largest share first.
    pub contributors: Vec<ContributorView>,
}

/// The royalties the tenant's outputs owe, per contributor, from the royalty ledger.
#[utoipa::path(get, path = "/v1/royalties", tag = "attribution", params(RoyaltiesQuery),
    responses((status = 200, body = RoyaltiesView), (status = 503, description = "no ledger configured or reachable")),
    security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RoyaltiesQuery>,
) -> Result<Json<RoyaltiesView>, Problem> {
    let tenant = caller.tenant()?;
    let ledger =
        state.ledger.as_ref().ok_or_else(|| Problem::unavailable("this API has no royalty ledger configured", 60))?;
    let period =
        Period { from: q.from, to: q.to, tenant: Some(tenant.to_string()), job: q.job, contributor: q.contributor };
    let report = ledger.report(&period).await.map_err(|e| Problem::unavailable(e.to_string(), 5))?;
    Ok(Json(RoyaltiesView {
        outputs: report.outputs,
        credited_outputs: report.credited_outputs,
        contributors: report
            .contributors
            .into_iter()
            .map(|c| ContributorView { contributor: c.contributor, outputs: c.outputs, share: c.share })
            .collect(),
    }))
}
