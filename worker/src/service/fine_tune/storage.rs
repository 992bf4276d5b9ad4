//! A fine-tune's traffic with S3: samples read and decoded, checkpoints uploaded under the
//! task's lease and downloaded to resume, and the training thread's events relayed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_protocol::fine_tune::Sample;
use fleet_protocol::keys::TenantId;
use fleet_protocol::manifest::ModelRef;
use fleet_store::registry;
use fleet_store::s3::S3Store;
use fleet_store::{ObjectStore, StoreError};
use fleet_train::checkpoint::{CheckpointState, CHECKPOINT_FILES};
use fleet_train::progress::Event;
use image::{GrayImage, RgbImage};
use tokio::sync::mpsc;

use super::FineTuneContext;
use crate::service::failure::AttemptError;

/// Reads and decodes one sample; a problem with the sample itself is a refusal, a store
/// problem fails the attempt.
pub(super) async fn load_sample(
    s3: &S3Store,
    sample: &Sample,
) -> Result<Result<(RgbImage, GrayImage), (String, String)>, AttemptError> {
    let limits = DecodeLimits::default();
    let mut fetched = Vec::new();
    let Some(mask_key) = &sample.mask else {
        return Ok(Err(("no_mask".into(), "a matting fine-tune needs a mask per image".into())));
    };
    for key in [&sample.image, mask_key] {
        match s3.get_capped(key, limits.max_file_bytes).await {
            Ok(bytes) => fetched.push(bytes),
            Err(StoreError::NotFound { .. }) => return Ok(Err(("not_found".into(), format!("no object at {key}")))),
            Err(StoreError::TooLarge { size, max, .. }) => {
                return Ok(Err(("too_large".into(), format!("{key} is {size} bytes, over the {max}-byte input cap"))))
            }
            Err(e) if e.is_retryable() => return Err(AttemptError::retry(e.to_string())),
            Err(e) => return Ok(Err(("store_error".into(), e.to_string()))),
        }
    }
    let rgb = match decode(&fetched[0], &limits) {
        Ok(d) => d.rgb,
        Err(e) => return Ok(Err((e.code().to_string(), format!("image {}: {e}", sample.image)))),
    };
    let mask = match fleet_imaging::decode_mask(&fetched[1], &limits) {
        Ok(m) => m,
        Err(e) => return Ok(Err((e.code().to_string(), format!("mask {mask_key}: {e}")))),
    };
    if mask.dimensions() != rgb.dimensions() {
        let (mw, mh) = mask.dimensions();
        let (iw, ih) = rgb.dimensions();
        return Ok(Err(("mask_mismatch".into(), format!("mask is {mw}x{mh} but its image is {iw}x{ih}"))));
    }
    Ok(Ok((rgb, mask)))
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) async fn put(s3: &S3Store, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<(), AttemptError> {
    s3.put(key, bytes, content_type).await.map_err(|e| AttemptError::store(&format!("writing {key}"), &e))
}

/// Uploads a checkpoint under the lease: files first, `state.json` last (its presence means a
/// complete checkpoint).
pub(super) async fn upload_checkpoint(ctx: &FineTuneContext<'_>, prefix: &str, dir: &Path) -> Result<(), AttemptError> {
    ctx.fence.check().await?;
    for file in CHECKPOINT_FILES {
        let bytes =
            std::fs::read(dir.join(file)).map_err(|e| AttemptError::retry(format!("checkpoint {file}: {e}")))?;
        put(ctx.s3, &format!("{prefix}{file}"), bytes, "application/octet-stream").await?;
    }
    Ok(())
}

/// The last checkpoint of the job, downloaded into `dir`, if there is one.
pub(super) async fn download_checkpoint(
    s3: &S3Store,
    prefix: &str,
    dir: &Path,
) -> Result<Option<CheckpointState>, AttemptError> {
    let state = match s3.get(&format!("{prefix}state.json")).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(AttemptError::store("checkpoint", &e)),
    };
    let state: CheckpointState =
        serde_json::from_slice(&state).map_err(|e| AttemptError::permanent(format!("checkpoint state: {e}")))?;
    let resume = dir.join("resume");
    std::fs::create_dir_all(&resume).map_err(|e| AttemptError::retry(e.to_string()))?;
    for file in ["module.pt", "optimizer.pt"] {
        let bytes = s3
            .get(&format!("{prefix}{file}"))
            .await
            .map_err(|e| AttemptError::retry(format!("checkpoint {file}: {e}")))?;
        std::fs::write(resume.join(file), bytes).map_err(|e| AttemptError::retry(e.to_string()))?;
    }
    Ok(Some(state))
}

/// Relays the training thread's events until it ends: progress to the scheduler,
/// checkpoints to S3 under the lease (a failed upload sets `stop`). Returns the seconds
/// spent uploading checkpoints.
pub(super) async fn relay(
    ctx: &FineTuneContext<'_>,
    checkpoint_prefix: &str,
    mut rx: mpsc::Receiver<Event>,
    stop: &std::sync::Arc<AtomicBool>,
) -> f64 {
    let mut checkpoint_s = 0.0;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Progress(progress) => (ctx.progress)(progress).await,
            Event::Checkpoint { dir, step, done } => {
                let t = Instant::now();
                let uploaded = upload_checkpoint(ctx, checkpoint_prefix, &dir).await;
                checkpoint_s += t.elapsed().as_secs_f64();
                if let Err(e) = &uploaded {
                    tracing::warn!(step, error = %e, "checkpoint not saved; stopping");
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                } else {
                    tracing::info!(step, ms = t.elapsed().as_millis() as u64, "checkpoint saved");
                }
                let _ = done.send(uploaded.map_err(|e| e.reason));
            }
        }
    }
    checkpoint_s
}

/// The folder of `model` (the tenant's or a shared one) in the host's model cache.
pub(super) async fn fetch_model(
    ctx: &FineTuneContext<'_>,
    tenant: &TenantId,
    model: &ModelRef,
) -> Result<PathBuf, AttemptError> {
    let (scope, _) = registry::locate(ctx.s3, tenant, model).await.map_err(|e| AttemptError::retry(e.to_string()))?;
    let (dir, _) = registry::fetch_in(ctx.s3, &scope, model, ctx.model_cache)
        .await
        .map_err(|e| AttemptError::retry(e.to_string()))?;
    Ok(dir)
}
