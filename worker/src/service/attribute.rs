//! Attribution of a task's outputs: each output's embedding is matched against the training
//! set of the model that shaped it (the generator of a generate job, else the matting model),
//! revocations are read from the royalty ledger, the record is written beside the output, and
//! the outputs are recorded in the ledger in one transaction, once each whatever the attempt.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_attribution::{Entry, Ledger, TrainingSet};
use fleet_protocol::attribution::{AttributionRecord, AttributionStatus, Share};
use fleet_protocol::keys::{attribution_key, TenantId};
use fleet_protocol::message::TaskMessage;
use serde::Serialize;

use super::failure::AttemptError;
use super::task::{put_fenced, TaskContext};

/// What a task knows for attributing its outputs.
#[derive(Clone, Default)]
pub struct Attribution<'a> {
    /// The model whose training set outputs are matched (`name@version`).
    pub model: String,
    /// Its lineage's training set, if it registers one.
    pub training_set: Option<Arc<TrainingSet>>,
    /// The embedding space of the task's matting model, which embedded the outputs.
    pub embedding_space: Option<String>,
    /// The royalty ledger, if the worker has one.
    pub ledger: Option<&'a Ledger>,
}

/// One output to attribute.
pub struct OutputEmbedding {
    /// Its input key.
    pub item: String,
    /// Which result of the input (0: the first).
    pub k: usize,
    /// The output image's key.
    pub output_key: String,
    /// Its embedding.
    pub embedding: Vec<f32>,
}

/// What the task manifest says of an output's attribution.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The record's key.
    pub key: String,
    /// Its status.
    pub status: AttributionStatus,
    /// Contributors' shares.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
}

/// Attributes `outputs`, writes each record beside its output and records them in the
/// ledger; returns each output key's summary.
pub async fn attribute_outputs(
    ctx: &TaskContext<'_>,
    tenant: &TenantId,
    task: &TaskMessage,
    outputs: Vec<OutputEmbedding>,
) -> Result<HashMap<String, Summary>, AttemptError> {
    let a = &ctx.attribution;
    let comparable = match &a.training_set {
        Some(set) if a.embedding_space.as_deref() == Some(set.embedding_space()) => Some(set.clone()),
        _ => None,
    };
    // The nearest samples of every output, then the revocations that touch any of them.
    let mut found = Vec::with_capacity(outputs.len());
    if let Some(set) = &comparable {
        let rule = set.rule();
        for o in &outputs {
            let near = fleet_attribution::neighbours(set, &rule, &o.embedding)
                .map_err(|e| AttemptError::retry(format!("attribution: {e}")))?;
            found.push(near);
        }
    }
    let revoked = match (&comparable, a.ledger) {
        (Some(_), Some(ledger)) => {
            let mut contributors: Vec<String> = found.iter().flatten().map(|(s, _)| s.contributor.clone()).collect();
            contributors.sort();
            contributors.dedup();
            Some(ledger.revocations(&contributors).await.map_err(|e| AttemptError::retry(e.to_string()))?)
        }
        _ => None,
    };
    let mut found = found.into_iter();
    let mut summaries = HashMap::new();
    let mut entries = Vec::new();
    for o in outputs {
        let record = match (&comparable, &a.training_set) {
            (Some(set), _) => {
                let rule = set.rule();
                let near = found.next().expect("one search per output");
                fleet_attribution::attribute(&o.output_key, &a.model, set, &rule, near, revoked.as_ref())
            }
            (None, Some(set)) => AttributionRecord {
                status: AttributionStatus::OtherEmbeddingSpace,
                reason: Some(format!(
                    "the output was embedded by {}, whose embedder is not {}'s, which embedded {}'s training set",
                    task.model,
                    set.embedding_model(),
                    a.model
                )),
                embedding_model: Some(set.embedding_model().to_string()),
                training_samples: set.len() as u64,
                ..AttributionRecord::untraceable(&o.output_key, &a.model)
            },
            (None, None) => AttributionRecord::untraceable(&o.output_key, &a.model),
        };
        let key = attribution_key(tenant, &task.job, &o.item, o.k);
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        put_fenced(ctx, &key, json, "application/json").await?;
        if comparable.is_some() {
            entries.push(Entry {
                output_key: o.output_key.clone(),
                tenant: tenant.to_string(),
                job: task.job.clone(),
                item: o.item.clone(),
                model: a.model.clone(),
                record_key: key.clone(),
                shares: record.shares.clone(),
            });
        }
        summaries.insert(o.output_key, Summary { key, status: record.status, shares: record.shares });
    }
    if let (Some(ledger), false) = (a.ledger, entries.is_empty()) {
        ctx.fence.check().await?;
        let new = ledger.record(&entries).await.map_err(|e| AttemptError::retry(e.to_string()))?;
        tracing::info!(job = %task.job, task = task.task, outputs = entries.len(), new, "attributions recorded in the ledger");
        // Fault injection for the tests: die between the ledger and the task's report, so the
        // task is redone by another worker and must find its outputs already recorded.
        if std::env::var_os("FLEET_FAULT_EXIT_AFTER_LEDGER").is_some() {
            tracing::error!("FLEET_FAULT_EXIT_AFTER_LEDGER: dying after the ledger write, before the report");
            std::process::abort();
        }
    }
    Ok(summaries)
}
