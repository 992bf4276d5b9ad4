//! `fleet-api`: the tenants' HTTP API.
//!
//! A tenant holds one thing: an API token. With it, it submits and cancels jobs, follows them
//! (JSON, or server-sent events), uploads inputs and fetches results through presigned URLs
//! that open one object each, lists the models it may use, and sets a signed webhook. The API
//! holds the infrastructure credentials: its own broker user (tagged `impersonator`, so a
//! job's validated `user_id` names the token's tenant), Redis, and an object-store key.
//!
//! Built on axum (the tokio and hyper stack the fleet already runs, extractors for the token
//! check) with utoipa: each route is registered together with its OpenAPI operation
//! (`utoipa_axum::routes!`), so `/openapi.json` is generated from the routes themselves.

pub mod auth;
pub mod broker;
pub mod client;
mod docs;
pub mod fine_tunes;
pub mod jobs;
pub mod models;
pub mod objects;
pub mod ops;
pub mod problem;
pub mod royalties;
pub mod tokens;
pub mod ui;
pub mod webhooks;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use fleet_state::RedisJobStore;
use fleet_store::s3::{S3Config, S3Store};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use problem::Problem;
pub use tokens::{Role, TokenInfo, TokenStore};

/// What the API connects to and how it behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API's broker URL (its own user, tagged `impersonator`).
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Object store, with the API's key.
    pub s3: S3Config,
    /// How long a submission waits for the scheduler's answer before answering 202.
    pub answer_timeout: Duration,
    /// How long presigned URLs work.
    pub url_ttl: Duration,
    /// Webhook retries.
    pub webhooks: webhooks::RetryPolicy,
    /// The royalty ledger (PostgreSQL, the reader's role), for `/v1/royalties`.
    pub ledger_url: Option<String>,
}

/// Settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`ApiConfig::answer_timeout`].
    pub answer_timeout: Duration,
    /// See [`ApiConfig::url_ttl`].
    pub url_ttl: Duration,
}

/// What every handler shares.
pub struct Inner {
    /// API tokens.
    pub tokens: TokenStore,
    /// Job state.
    pub jobs: RedisJobStore,
    /// Redis, for the API's own keys (webhooks).
    pub redis: redis::aio::ConnectionManager,
    /// Inputs, results, models.
    pub s3: S3Store,
    /// The broker link.
    pub broker: broker::Broker,
    /// Settings.
    pub settings: Settings,
    /// The royalty ledger, when configured.
    pub ledger: Option<fleet_attribution::Ledger>,
}

/// The handlers' state (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Redis is out of reach.
    #[error("redis at {url}: {source}")]
    Redis {
        /// The URL.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl AppState {
    /// Connects to Redis (the broker and object store connect on first use).
    pub async fn connect(config: &ApiConfig) -> Result<AppState, ApiError> {
        let redis_err = |source| ApiError::Redis { url: config.redis_url.clone(), source };
        let client = redis::Client::open(config.redis_url.as_str()).map_err(redis_err)?;
        let redis = redis::aio::ConnectionManager::new(client).await.map_err(redis_err)?;
        let tokens = TokenStore::connect(&config.redis_url).await.map_err(|e| match e {
            tokens::TokenError::Redis(source) => ApiError::Redis { url: config.redis_url.clone(), source },
            other => ApiError::Redis {
                url: config.redis_url.clone(),
                source: redis::RedisError::from((redis::ErrorKind::ClientError, "token store", other.to_string())),
            },
        })?;
        let jobs = RedisJobStore::connect(&config.redis_url).await.map_err(|e| ApiError::Redis {
            url: config.redis_url.clone(),
            source: redis::RedisError::from((redis::ErrorKind::ClientError, "job store", e.to_string())),
        })?;
        Ok(AppState(Arc::new(Inner {
            tokens,
            jobs,
            redis,
            s3: S3Store::new(&config.s3),
            broker: broker::Broker::new(&config.amqp_url),
            settings: Settings { answer_timeout: config.answer_timeout, url_ttl: config.url_ttl },
            ledger: config.ledger_url.as_deref().map(fleet_attribution::Ledger::new),
        })))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "gpu-fleet API", description = "Background replacement and fine-tuning jobs on a GPU fleet, per tenant."),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit, follow, cancel"),
        (name = "objects", description = "Presigned uploads and results"),
        (name = "models", description = "Models a tenant can use"),
        (name = "attribution", description = "Royalties owed to the contributors of training images"),
        (name = "webhooks", description = "Signed notifications of job ends"),
        (name = "operators", description = "Tokens and workers (operator tokens only)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("fleet_<id>_<secret>").build(),
            ),
        );
    }
}

/// The routes with their OpenAPI document (each route and its operation registered together).
pub fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::failures))
        .routes(routes!(jobs::events))
        .routes(routes!(fine_tunes::list))
        .routes(routes!(objects::results))
        .routes(routes!(objects::uploads))
        .routes(routes!(models::list))
        .routes(routes!(royalties::report))
        .routes(routes!(webhooks::set, webhooks::get, webhooks::delete))
        .routes(routes!(ops::create_token, ops::list_tokens))
        .routes(routes!(ops::revoke_token))
        .routes(routes!(ops::workers))
        .split_for_parts()
}

/// The whole service: the API, `/openapi.json`, `/docs`, the dashboard under `/ui`,
/// `/livez` and `/readyz`.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api_routes();
    let page = docs::page(&openapi);
    let openapi = Arc::new(openapi);
    api.route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .route("/docs", get(move || async move { axum::response::Html(page) }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(ui::routes())
        .fallback(|| async { Problem::not_found("such endpoint (see /docs)") })
        .with_state(state)
}

/// 200 once Redis and the broker answer; 503 naming what does not.
async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    let redis = state.tokens.ping().await;
    let broker = state.broker.ready().await;
    match (redis, broker) {
        (true, true) => "ready".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {redis}, broker: {broker}")).into_response(),
    }
}

/// Serves on `listener` with webhook delivery beside it until `stop` is cancelled; then
/// finishes the requests in hand.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    policy: webhooks::RetryPolicy,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let deliveries = tokio::spawn(webhooks::run(state.clone(), policy, stop.clone()));
    let app = router(state);
    let shutdown = stop.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    stop.cancel();
    let _ = deliveries.await;
    Ok(())
}

/// Binds `addr`.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ApiError::Listen { addr: addr.to_string(), source })
}
