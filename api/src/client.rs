//! A small HTTP client of the API (and of presigned URLs), for `fleetctl` and the tests.

use axum::body::Bytes;
pub use axum::http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;

/// The HTTP(S) client the API's callers and webhooks use.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client for `http://` and `https://` (the system's root certificates). The crypto
/// provider is named: the object store's client already links one, and rustls refuses to
/// guess between two.
pub fn http_client() -> Result<HttpClient, std::io::Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// A request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL or request could not be built.
    #[error("bad request to {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer (connection refused, reset, TLS).
    #[error("{url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off.
    #[error("{url}: reading the answer: {reason}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// The body as `T`; the body's text in the error when it is not.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("{} {}: {e}", self.status, String::from_utf8_lossy(&self.body)))
    }

    /// The content type.
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// A problem's `code` and `detail`, when the answer is one.
    pub fn problem(&self) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some((v.get("code")?.as_str()?.to_string(), v.get("detail")?.as_str()?.to_string()))
    }
}

/// The API at `base` with a token.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: HttpClient,
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`), sending `token`.
    pub fn new(base: &str, token: Option<&str>) -> Result<ApiClient, std::io::Error> {
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            http: http_client()?,
        })
    }

    /// The same API with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> ApiClient {
        ApiClient { base: self.base.clone(), token: token.map(str::to_string), http: self.http.clone() }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method` on `path` (below the base) with an optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer, CallError> {
        let url = format!("{}{path}", self.base);
        let body = json.map(|j| serde_json::to_vec(j).expect("a JSON value serialises"));
        let mut headers = vec![("accept", "application/json".to_string())];
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".to_string()));
        }
        self.send(method, &url, &headers, body.unwrap_or_default()).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, CallError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, json: &serde_json::Value) -> Result<Answer, CallError> {
        self.call(Method::POST, path, Some(json)).await
    }

    /// A request to any URL (presigned object URLs), without the token.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, CallError> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Request { url: url.to_string(), reason: e.to_string() })?;
        let response =
            self.http.request(request).await.map_err(|source| CallError::Transport { url: url.to_string(), source })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| CallError::Body { url: url.to_string(), reason: e.to_string() })?
            .to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }

    /// Server-sent events from `path`: each `(event, data)` as it arrives, until the stream
    /// ends or `on_event` returns false.
    pub async fn events(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<StatusCode, CallError> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::get(&url).header("accept", "text/event-stream");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| CallError::Request { url: url.clone(), reason: e.to_string() })?;
        let response =
            self.http.request(request).await.map_err(|source| CallError::Transport { url: url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            return Ok(status);
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CallError::Body { url: url.clone(), reason: e.to_string() })?;
            let Some(data) = frame.data_ref() else { continue };
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut event, mut data) = ("message".to_string(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() && !on_event(&event, &data) {
                    return Ok(status);
                }
            }
        }
        Ok(status)
    }
}
