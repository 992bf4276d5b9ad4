//! A `fine_tune` with `target: background_generator` on a worker: photos from S3, the base
//! generator and the mask model from the registry, `fleet_train`'s generator loop on a thread,
//! the result registered like a matting model.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_protocol::fine_tune::{FineTuneSpec, Refusal, Sample};
use fleet_protocol::keys::{results_prefix, TenantId};
use fleet_protocol::manifest::ModelRef;
use fleet_protocol::message::TaskMessage;
use fleet_store::{ObjectStore, StoreError};
use fleet_train::generator::{GenSample, GeneratorJob};
use futures::StreamExt;
use image::RgbImage;

use super::report::{finished_without_model, summarize};
use super::storage::{download_checkpoint, fetch_model};
use super::{train_and_report, Ended, FineTuneContext, Outputs, SAMPLE_FETCHES};
use crate::service::failure::AttemptError;

/// Runs a generator fine-tune task: photos from S3, the base generator and the mask model
/// from the registry, training on a thread, the result registered like a matting model.
pub(super) async fn run(
    ctx: &FineTuneContext<'_>,
    task: &TaskMessage,
    spec: &FineTuneSpec,
    listed: Vec<(usize, Sample)>,
    mut refusals: Vec<Refusal>,
    digest: String,
) -> Result<Ended, AttemptError> {
    let started = Instant::now();
    let fail = AttemptError::retry;
    let tenant = TenantId::new(&task.tenant).map_err(|e| fail(e.to_string()))?;
    let results = results_prefix(&tenant, &task.job);
    let checkpoint_prefix = format!("{tenant}/training/{}/checkpoint/", task.job);
    let settings = spec.generator.clone().ok_or_else(|| AttemptError::permanent("generator settings are missing"))?;
    let mut loaded = Vec::new();
    let mut fetches = futures::stream::iter(listed)
        .map(|(line, sample)| async move { (line, load_photo(ctx, &sample.image).await, sample) })
        .buffered(SAMPLE_FETCHES);
    while let Some((line, fetched, sample)) = fetches.next().await {
        match fetched? {
            Ok(rgb) => loaded.push(GenSample { line, sample, rgb }),
            Err((code, reason)) => refusals.push(Refusal { line, image: sample.image.clone(), code, reason }),
        }
    }
    drop(fetches);
    if loaded.len() < 3 {
        let reason = format!("{} usable samples; a generator fine-tune needs at least 3", loaded.len());
        return finished_without_model(ctx, &results, task, spec, &reason).await.map(|mut r| {
            r.failures[0].reason = format!("{reason}; refused: {}", summarize(&refusals));
            Ended::Trained(r)
        });
    }
    let base_ref: ModelRef = task.model.parse().map_err(|e| AttemptError::permanent(format!("base model: {e}")))?;
    let mask_ref: ModelRef =
        settings.mask_model.parse().map_err(|e| AttemptError::permanent(format!("mask model: {e}")))?;
    let base_dir = fetch_model(ctx, &tenant, &base_ref).await?;
    let mask_dir = fetch_model(ctx, &tenant, &mask_ref).await?;
    let work = tempfile::tempdir().map_err(|e| fail(format!("work folder: {e}")))?;
    let resume = download_checkpoint(ctx.s3, &checkpoint_prefix, work.path()).await?;
    if let Some(state) = &resume {
        tracing::info!(step = state.step, "resuming the generator fine-tune from its last checkpoint");
    }
    let out = Outputs {
        tenant: &tenant,
        spec,
        results: &results,
        checkpoint_prefix: &checkpoint_prefix,
        base: &base_ref,
        base_dir: &base_dir,
        embedder_dir: Some(&mask_dir),
        digest: &digest,
        refusals: &refusals,
        started,
    };
    let job = GeneratorJob {
        samples: loaded,
        hyper: spec.hyper.clone(),
        settings,
        base_dir: base_dir.clone(),
        mask_dir: mask_dir.clone(),
        device: ctx.device,
        work: work.path().to_path_buf(),
        resume,
        output: spec.output.model_ref(),
        parent: base_ref.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        yield_now: ctx.yield_now.clone(),
    };
    train_and_report(ctx, job, out).await
}

/// Reads and decodes one photo; a problem with the photo is a refusal, a store problem
/// fails the attempt.
async fn load_photo(ctx: &FineTuneContext<'_>, key: &str) -> Result<Result<RgbImage, (String, String)>, AttemptError> {
    let limits = DecodeLimits::default();
    match ctx.s3.get_capped(key, limits.max_file_bytes).await {
        Ok(bytes) => {
            Ok(decode(&bytes, &limits).map(|d| d.rgb).map_err(|e| (e.code().to_string(), format!("image {key}: {e}"))))
        }
        Err(StoreError::NotFound { .. }) => Ok(Err(("not_found".into(), format!("no object at {key}")))),
        Err(StoreError::TooLarge { size, max, .. }) => {
            Ok(Err(("too_large".into(), format!("{key} is {size} bytes, over the {max}-byte input cap"))))
        }
        Err(e) if e.is_retryable() => Err(AttemptError::retry(e.to_string())),
        Err(e) => Ok(Err(("store_error".into(), e.to_string()))),
    }
}
