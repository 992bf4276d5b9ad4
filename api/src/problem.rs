//! Errors as RFC 9457 problem details (`application/problem+json`): a stable `code` a program
//! can branch on and a `detail` a person can act on. A rejected job keeps the code and reason
//! that job validation gives on the AMQP path.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_protocol::job::Rejection;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem: why a request was not done.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: the docs page's entry for `code`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened and what to do about it.
    pub detail: String,
    /// Stable code: `malformed`, `invalid`, `forbidden`, `too_large`, `unknown_model`,
    /// `conflict` (job validation), `over_quota` (a tenant's quota, with `retry_after_s`),
    /// `unauthorized`, `not_found`, `operator_only`, `tenant_only`, `unavailable`, `internal`.
    pub code: String,
    /// Seconds to wait before trying again (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl Problem {
    /// A problem of `status` with `code`, `title` and `detail`.
    pub fn new(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("/docs#problem-{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            retry_after_s: None,
        }
    }

    /// The request is not what the endpoint takes (not JSON, a bad parameter).
    pub fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "malformed", "Malformed request", detail)
    }

    /// No token, or one that is unknown or revoked.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Not authenticated", detail)
    }

    /// Nothing of that name that this caller may see: also what another tenant's job looks like.
    pub fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "Not found", format!("no {what}"))
    }

    /// The caller's role cannot do this (an operator's endpoint, or a tenant's).
    pub fn role(code: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, code, "Not allowed for this token's role", detail)
    }

    /// A service behind the API is out of reach; worth retrying after `retry_after_s`.
    pub fn unavailable(detail: impl Into<String>, retry_after_s: u64) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Temporarily unavailable", detail);
        p.retry_after_s = Some(retry_after_s);
        p
    }

    /// Something failed that retrying will not fix.
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// A job refused by validation or a quota: 429 for `over_quota`, 413 for `too_large`, 403
    /// for `forbidden` (a key outside the tenant's space), 400 for `malformed`, 422 otherwise;
    /// the code and reason are the scheduler's own.
    pub fn rejected(rejection: Rejection) -> Problem {
        let status = match rejection.code.as_str() {
            "over_quota" => StatusCode::TOO_MANY_REQUESTS,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "forbidden" => StatusCode::FORBIDDEN,
            "malformed" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, &rejection.code, "Job rejected", rejection.reason)
    }

    /// The status as a [`StatusCode`].
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_s;
        let body = serde_json::to_vec(&self).expect("a problem serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gpu-fleet\""));
        }
        response
    }
}

impl From<fleet_state::JobStoreError> for Problem {
    fn from(e: fleet_state::JobStoreError) -> Problem {
        tracing::warn!(error = %e, "job store");
        if e.is_retryable() {
            Problem::unavailable(format!("job state unreachable: {e}"), 2)
        } else {
            Problem::internal(format!("job state: {e}"))
        }
    }
}

impl From<fleet_store::StoreError> for Problem {
    fn from(e: fleet_store::StoreError) -> Problem {
        tracing::warn!(error = %e, "object store");
        if e.is_retryable() {
            Problem::unavailable(format!("object store unreachable: {e}"), 2)
        } else {
            Problem::internal(format!("object store: {e}"))
        }
    }
}

impl From<fleet_queue::AmqpError> for Problem {
    fn from(e: fleet_queue::AmqpError) -> Problem {
        tracing::warn!(error = %e, "broker");
        Problem::unavailable(format!("broker unreachable: {e}"), 2)
    }
}

impl From<crate::tokens::TokenError> for Problem {
    fn from(e: crate::tokens::TokenError) -> Problem {
        tracing::warn!(error = %e, "token store");
        Problem::unavailable(format!("token store unreachable: {e}"), 2)
    }
}
