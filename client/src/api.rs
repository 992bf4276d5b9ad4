//! A tenant's client of the HTTP API: everything a tenant does, with nothing but the API's
//! URL and a token (no broker password, no Redis URL, no object-store key). Inputs go up and
//! results come down through presigned URLs.

use std::time::{Duration, Instant};

use fleet_api::client::{Answer, ApiClient, Method};
use fleet_protocol::job::Rejection;
use fleet_protocol::message::{ItemFailureReport, Progress};
use fleet_state::JobRecord;
use serde_json::{json, Value};

use crate::{ClientError, JobView, Submitted};

/// The API at a URL, as the tenant of a token.
#[derive(Clone)]
pub struct ApiTenant {
    api: ApiClient,
}

/// A result object: its name below the job's results and a URL to GET it.
#[derive(Debug, Clone)]
pub struct ResultUrl {
    /// Path below the job's results prefix.
    pub name: String,
    /// Presigned GET URL.
    pub url: String,
}

fn problem(answer: &Answer) -> ClientError {
    let (code, detail) =
        answer.problem().unwrap_or_else(|| ("http".into(), String::from_utf8_lossy(&answer.body).into_owned()));
    ClientError::Api { status: answer.status.as_u16(), code, detail }
}

fn decode<T: serde::de::DeserializeOwned>(answer: &Answer, what: &str) -> Result<T, ClientError> {
    if !answer.status.is_success() {
        return Err(problem(answer));
    }
    serde_json::from_slice(&answer.body).map_err(ClientError::json(what.to_string()))
}

/// The client's view of a job from the API's JSON.
fn view_of(v: Value) -> Result<JobView, ClientError> {
    let progress: Progress =
        serde_json::from_value(v["progress"].clone()).map_err(ClientError::json("job progress"))?;
    let record = json!({
        "tenant": v["tenant"], "id": v["id"], "priority": v["priority"], "state": v["state"], "model": v["model"],
        "request": v["request"], "accepted_at_ms": v["accepted_at_ms"], "succeeded_items": progress.items_succeeded,
        "failed_items": progress.items_failed, "reason": v.get("reason"), "finished_at_ms": v.get("finished_at_ms"),
    });
    let record: JobRecord = serde_json::from_value(record).map_err(ClientError::json("job record"))?;
    let training = v.get("training").and_then(|t| serde_json::from_value(t.clone()).ok());
    Ok(JobView { record, progress, training })
}

impl ApiTenant {
    /// The API at `url` with `token`.
    pub fn new(url: &str, token: &str) -> Result<ApiTenant, ClientError> {
        let api =
            ApiClient::new(url, Some(token)).map_err(|cause| ClientError::Read { path: "TLS roots".into(), cause })?;
        Ok(ApiTenant { api })
    }

    /// Submits a job (its `id` is the idempotency key); the id and what became of it.
    pub async fn submit(&self, body: &Value) -> Result<(String, Submitted), ClientError> {
        let answer = self.api.post("/v1/jobs", body).await?;
        let id = |a: &Answer| -> Result<String, ClientError> {
            let v: Value = decode(a, "submission answer")?;
            Ok(v["id"].as_str().unwrap_or_default().to_string())
        };
        match answer.status.as_u16() {
            201 | 202 => Ok((id(&answer)?, Submitted::Accepted)),
            200 => Ok((id(&answer)?, Submitted::Duplicate)),
            400 | 403 | 413 | 422 => {
                let (code, reason) = answer.problem().unwrap_or_default();
                let id = body["id"].as_str().unwrap_or_default().to_string();
                Ok((id, Submitted::Rejected(Rejection { code, reason })))
            }
            _ => Err(problem(&answer)),
        }
    }

    /// The job; `None` when the tenant has none of that id; [`ClientError::Rejected`] when
    /// it was refused at submission.
    pub async fn job(&self, id: &str) -> Result<Option<JobView>, ClientError> {
        let answer = self.api.get(&format!("/v1/jobs/{id}")).await?;
        match answer.status.as_u16() {
            404 => Ok(None),
            400 | 403 | 413 | 422 => {
                let (code, reason) = answer.problem().unwrap_or_default();
                Err(ClientError::Rejected(Rejection { code, reason }))
            }
            _ => Ok(Some(view_of(decode(&answer, "job")?)?)),
        }
    }

    /// Polls the job until it ends, calling `on_progress` on each poll.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&JobView),
    ) -> Result<JobView, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(view) = self.job(id).await? {
                on_progress(&view);
                if view.record.state.is_terminal() {
                    return Ok(view);
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::NotEnded { id: id.to_string(), timeout });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The tenant's most recent jobs.
    pub async fn list(&self, limit: usize) -> Result<Vec<JobView>, ClientError> {
        let views: Vec<Value> = decode(&self.api.get(&format!("/v1/jobs?limit={limit}")).await?, "job list")?;
        views.into_iter().map(view_of).collect()
    }

    /// Every failed item of the job, with reasons.
    pub async fn failures(&self, id: &str) -> Result<Vec<ItemFailureReport>, ClientError> {
        let mut all: Vec<ItemFailureReport> = Vec::new();
        loop {
            let path = format!("/v1/jobs/{id}/failures?offset={}&limit=1000", all.len());
            let page: Vec<ItemFailureReport> = decode(&self.api.get(&path).await?, "failures")?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Asks the scheduler to cancel the job.
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        let answer = self.api.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await?;
        decode::<Value>(&answer, "cancel").map(|_| ())
    }

    /// Every result object of the job with a presigned GET URL.
    pub async fn results(&self, id: &str) -> Result<Vec<ResultUrl>, ClientError> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let path = match &page {
                Some(p) => format!("/v1/jobs/{id}/results?page={}", encode(p)),
                None => format!("/v1/jobs/{id}/results"),
            };
            let v: Value = decode(&self.api.get(&path).await?, "results")?;
            for o in v["objects"].as_array().into_iter().flatten() {
                out.push(ResultUrl {
                    name: o["name"].as_str().unwrap_or_default().to_string(),
                    url: o["url"].as_str().unwrap_or_default().to_string(),
                });
            }
            match v["next"].as_str() {
                Some(next) => page = Some(next.to_string()),
                None => return Ok(out),
            }
        }
    }

    /// The bytes at a presigned URL.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, ClientError> {
        let answer = self.api.send(Method::GET, url, &[], Vec::new()).await?;
        if !answer.status.is_success() {
            return Err(problem(&answer));
        }
        Ok(answer.body.to_vec())
    }

    /// Uploads `files` (name, bytes) under `prefix` through presigned PUT URLs; their keys.
    pub async fn upload(&self, prefix: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<String>, ClientError> {
        let mut keys = Vec::with_capacity(files.len());
        for chunk in files.chunks(1000) {
            let names: Vec<Value> = chunk.iter().map(|(name, _)| json!({"name": name})).collect();
            let answer = self.api.post("/v1/uploads", &json!({"prefix": prefix, "files": names})).await?;
            let urls: Vec<Value> = decode(&answer, "upload URLs")?;
            for ((_, bytes), u) in chunk.iter().zip(urls) {
                let headers = [("content-type", u["content_type"].as_str().unwrap_or_default().to_string())];
                let url = u["url"].as_str().unwrap_or_default();
                let put = self.api.send(Method::PUT, url, &headers, bytes.clone()).await?;
                if !put.status.is_success() {
                    return Err(problem(&put));
                }
                keys.push(u["key"].as_str().unwrap_or_default().to_string());
            }
        }
        Ok(keys)
    }

    /// The models the tenant can use, as the API describes them.
    pub async fn models(&self) -> Result<Vec<Value>, ClientError> {
        decode(&self.api.get("/v1/models").await?, "models")
    }

    /// What the tenant's outputs of `job` (all jobs: `None`) owe each contributor, from the
    /// royalty ledger.
    pub async fn royalties(&self, job: Option<&str>) -> Result<Value, ClientError> {
        let path = match job {
            Some(job) => format!("/v1/royalties?job={}", encode(job)),
            None => "/v1/royalties".to_string(),
        };
        decode(&self.api.get(&path).await?, "royalties")
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
