//! What a fine-tune leaves behind: the model registered in the tenant's registry, and the
//! report `<tenant>/results/<job>/fine-tune.json` that is the task's one item.

use std::path::Path;
use std::time::Instant;

use fleet_protocol::fine_tune::{FineTuneSpec, Refusal};
use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::{Report, TaskMessage, TrainingProgress};
use fleet_store::registry::{self, Scope};
use fleet_train::progress::TrainOutcome;

use super::storage::put;
use super::FineTuneContext;
use crate::service::failure::AttemptError;
use crate::service::task::TaskResult;

/// What a fine-tune's report says about the run around the training itself.
pub(super) struct Run<'a> {
    pub(super) base: &'a ModelRef,
    pub(super) digest: &'a str,
    pub(super) refusals: &'a [Refusal],
    pub(super) checkpoint_s: f64,
    pub(super) started: Instant,
}

/// Writes `<results>fine-tune.json` under the lease; its one item is the registered model.
pub(super) async fn write_report(
    ctx: &FineTuneContext<'_>,
    results: &str,
    spec: &FineTuneSpec,
    model_prefix: &str,
    outcome: &TrainOutcome,
    run: &Run<'_>,
) -> Result<TaskResult, AttemptError> {
    let report = serde_json::json!({
        "model": model_prefix,
        "model_ref": spec.output.model_ref().to_string(),
        "target": spec.target,
        "parent": run.base.to_string(),
        "data": {"key": spec.data, "sha256": run.digest, "accepted": outcome.report["samples"], "refused": run.refusals},
        "filter": outcome.report["filter"],
        "phases": outcome.report["phases"],
        "base_validation": outcome.report["base_validation"],
        "resumed_from": outcome.report["resumed_from"],
        "steps": outcome.report["steps"],
        "hyper": spec.hyper,
        "generator": spec.generator,
        "training_set": outcome.report["training_set"],
        "train_seconds": outcome.report["train_seconds"],
        "checkpoint_seconds": run.checkpoint_s,
        "seconds": run.started.elapsed().as_secs_f64(),
    });
    let key = format!("{results}fine-tune.json");
    ctx.fence.check().await?;
    put(ctx.s3, &key, serde_json::to_vec_pretty(&report).expect("a report serialises"), "application/json").await?;
    Ok(TaskResult { succeeded: 1, failures: Vec::new(), manifest: key })
}

/// Registers the trained model folder in the tenant's space under the lease: extra files
/// first, the model's files and manifest last. Returns the model's prefix.
pub(super) async fn register(
    ctx: &FineTuneContext<'_>,
    tenant: &TenantId,
    spec: &FineTuneSpec,
    dir: &Path,
) -> Result<String, AttemptError> {
    ctx.fence.check().await?;
    let scope = Scope::Tenant(tenant.clone());
    let model_prefix = scope.prefix(&spec.output.model_ref());
    for (file, content_type) in [("training-embeddings.jsonl", "application/x-ndjson"), ("loss-curve.png", "image/png")]
    {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| AttemptError::retry(format!("{file}: {e}")))?;
        put(ctx.s3, &format!("{model_prefix}{file}"), bytes, content_type).await?;
    }
    registry::publish_in(ctx.s3, &scope, dir)
        .await
        .map_err(|e| AttemptError::retry(format!("registering the model: {e}")))?;
    Ok(model_prefix)
}

/// A fine-tune that cannot train: its one item fails with `reason`.
pub(super) async fn finished_without_model(
    ctx: &FineTuneContext<'_>,
    results: &str,
    task: &TaskMessage,
    spec: &FineTuneSpec,
    reason: &str,
) -> Result<TaskResult, AttemptError> {
    let key = format!("{results}fine-tune.json");
    let report = serde_json::json!({"model": null, "data": {"key": spec.data}, "reason": reason});
    ctx.fence.check().await?;
    put(ctx.s3, &key, serde_json::to_vec_pretty(&report).expect("a report serialises"), "application/json").await?;
    let failure = fleet_protocol::message::ItemFailureReport {
        key: spec.data.clone(),
        code: "no_model".into(),
        reason: format!("fine-tune of {} trained nothing: {reason}", task.model),
    };
    Ok(TaskResult { succeeded: 0, failures: vec![failure], manifest: key })
}

pub(super) fn summarize(refusals: &[Refusal]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for r in refusals {
        *counts.entry(r.code.as_str()).or_insert(0) += 1;
    }
    counts.iter().map(|(c, n)| format!("{n} {c}")).collect::<Vec<_>>().join(", ")
}

/// Whether a report should still be made for this lease.
pub fn report_for(task: &TaskMessage, token: u64, progress: TrainingProgress) -> Report {
    Report::Training { tenant: task.tenant.clone(), job: task.job.clone(), task: task.task, token, progress }
}
