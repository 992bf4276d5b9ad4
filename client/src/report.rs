//! What a finished job did, read back from S3: the per-task manifests give every image's
//! latency and uncertainty; the contact sheet puts the least certain cutouts first, built
//! from the inputs, mattes and results in the bucket.

use fleet_imaging::composite::Composited;
use fleet_imaging::decode::{decode, DecodeLimits};
use fleet_imaging::sheet::contact_sheet;
use fleet_protocol::keys::{task_manifests_prefix, TenantId};
use fleet_store::ObjectStore;
use futures::{stream, StreamExt, TryStreamExt};
use image::{GrayImage, RgbImage};
use serde::Deserialize;

use crate::ClientError;

/// One image's line in a task manifest (the fields read back here).
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestItem {
    /// Input key.
    pub input_key: String,
    /// Result key.
    pub result_key: String,
    /// Matte key.
    pub matte_key: String,
    /// Embedding key.
    pub embedding_key: String,
    /// Download, engine and upload time of the image.
    pub latency_ms: f64,
    /// Matte uncertainty (share of pixels neither clearly in nor out).
    pub uncertainty: f32,
}

/// A task manifest (the fields read back here).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskManifest {
    /// Task number.
    pub task: u32,
    /// Worker that wrote it.
    pub worker: String,
    /// Attempt that wrote it.
    pub attempt: u32,
    /// Its images.
    pub items: Vec<ManifestItem>,
}

/// Every task manifest of a job, by task number.
pub async fn task_manifests<S: ObjectStore>(
    s3: &S,
    tenant: &TenantId,
    job: &str,
) -> Result<Vec<TaskManifest>, ClientError> {
    let keys = fleet_store::list_all(s3, &task_manifests_prefix(tenant, job)).await?;
    let mut manifests: Vec<TaskManifest> = stream::iter(keys)
        .map(|key| async move {
            let bytes = s3.get(&key).await?;
            serde_json::from_slice::<TaskManifest>(&bytes)
                .map_err(ClientError::json(format!("decoding task manifest {key}")))
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    manifests.sort_by_key(|m| m.task);
    Ok(manifests)
}

/// Latency percentile (nearest rank) of `values`, in their unit; `None` when empty.
pub fn percentile(values: &[f64], pct: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// A before / matte / after contact sheet of the `rows` least certain images of the job.
pub async fn job_contact_sheet<S: ObjectStore>(
    s3: &S,
    manifests: &[TaskManifest],
    rows: usize,
    row_height: u32,
) -> Result<Option<RgbImage>, ClientError> {
    let mut items: Vec<&ManifestItem> = manifests.iter().flat_map(|m| &m.items).collect();
    items.sort_by(|a, b| b.uncertainty.total_cmp(&a.uncertainty).then_with(|| a.input_key.cmp(&b.input_key)));
    items.truncate(rows);
    if items.is_empty() {
        return Ok(None);
    }
    let limits = DecodeLimits::default();
    let loaded: Vec<(RgbImage, GrayImage, Composited)> = stream::iter(items)
        .map(|item| async move {
            let key = &item.input_key;
            let input = decode(&s3.get(key).await?, &limits)
                .map_err(|cause| ClientError::Decode { key: key.clone(), cause })?
                .rgb;
            let load = |key: &str, bytes: Vec<u8>| {
                image::load_from_memory(&bytes)
                    .map_err(|cause| ClientError::Image { what: format!("decoding {key}"), cause })
            };
            let matte = load(&item.matte_key, s3.get(&item.matte_key).await?)?.to_luma8();
            let result = load(&item.result_key, s3.get(&item.result_key).await?)?;
            let after = if result.color().has_alpha() {
                Composited::Rgba(result.to_rgba8())
            } else {
                Composited::Rgb(result.to_rgb8())
            };
            Ok::<_, ClientError>((input, matte, after))
        })
        .buffered(8)
        .try_collect()
        .await?;
    let refs: Vec<(&RgbImage, &GrayImage, &Composited)> = loaded.iter().map(|(a, b, c)| (a, b, c)).collect();
    Ok(Some(contact_sheet(&refs, row_height)))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 95.0), Some(95.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
