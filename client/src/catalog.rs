//! Seeding a synthetic catalog into S3 for the demo, the tests and the benchmarks: images
//! under `<prefix>images/`, exact ground-truth masks under `<prefix>masks/`, a few
//! deliberately broken uploads among the images, and `<prefix>seed.json` written last, so
//! its presence means a complete catalog and a second run reuses it.

use std::path::Path;

use fleet_imaging::encode::png_header_only;
use fleet_store::{content_type, ObjectStore};
use fleet_synth::{write_catalog, CatalogEntry, CatalogSpec};
use futures::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// Uploads at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// What a seeded catalog holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeededCatalog {
    /// Catalog seed.
    pub seed: u64,
    /// Good images.
    pub count: usize,
    /// Smallest and largest long side.
    pub sides: (u32, u32),
    /// Good images with their ground truth.
    pub entries: Vec<SeededEntry>,
    /// Broken uploads: key and the failure code the engine must give.
    pub broken: Vec<(String, String)>,
}

/// One good image and its mask, as keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeededEntry {
    /// Image key.
    pub image: String,
    /// Ground-truth mask key.
    pub mask: String,
}

impl SeededCatalog {
    /// Every input key, good and broken.
    pub fn image_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.iter().map(|e| e.image.clone()).collect();
        keys.extend(self.broken.iter().map(|(k, _)| k.clone()));
        keys.sort();
        keys
    }
}

/// Seeds `count` images (plus broken uploads) under `prefix`, or returns the catalog already
/// there when it was seeded with the same settings. `work` is a scratch folder.
pub async fn seed<S: ObjectStore>(
    s3: &S,
    prefix: &str,
    spec: &CatalogSpec,
    work: &Path,
) -> Result<(SeededCatalog, bool), ClientError> {
    let marker = format!("{prefix}seed.json");
    if let Ok(bytes) = s3.get(&marker).await {
        if let Ok(existing) = serde_json::from_slice::<SeededCatalog>(&bytes) {
            if existing.seed == spec.seed
                && existing.count == spec.count
                && existing.sides == (spec.min_long_side, spec.max_long_side)
            {
                return Ok((existing, false));
            }
        }
    }
    let dir = work.join(format!("catalog-{}-{}", spec.seed, spec.count));
    let _ = std::fs::remove_dir_all(&dir);
    let summary = {
        let (dir, spec) = (dir.clone(), spec.clone());
        tokio::task::spawn_blocking(move || write_catalog(&dir, &spec)).await??
    };
    let mut uploads: Vec<(String, std::path::PathBuf)> = Vec::new();
    let entries: Vec<SeededEntry> = summary
        .entries
        .iter()
        .map(|e: &CatalogEntry| {
            let entry = SeededEntry { image: format!("{prefix}{}", e.image), mask: format!("{prefix}{}", e.mask) };
            uploads.push((entry.image.clone(), dir.join(&e.image)));
            uploads.push((entry.mask.clone(), dir.join(&e.mask)));
            entry
        })
        .collect();
    stream::iter(uploads)
        .map(|(key, path)| async move {
            let bytes = tokio::fs::read(&path).await.map_err(|cause| ClientError::Read { path, cause })?;
            s3.put(&key, bytes, content_type(&key)).await?;
            Ok::<_, ClientError>(())
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let first_jpeg = summary.entries.iter().find(|e| e.image.ends_with(".jpg")).map(|e| dir.join(&e.image));
    let mut broken = Vec::new();
    for (name, code, bytes) in broken_uploads(first_jpeg.as_deref())? {
        let key = format!("{prefix}images/{name}");
        s3.put(&key, bytes, "application/octet-stream").await?;
        broken.push((key, code.to_string()));
    }
    let seeded = SeededCatalog {
        seed: spec.seed,
        count: spec.count,
        sides: (spec.min_long_side, spec.max_long_side),
        entries,
        broken,
    };
    let json = serde_json::to_vec_pretty(&seeded).map_err(ClientError::json(format!("encoding {marker}")))?;
    s3.put(&marker, json, "application/json").await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((seeded, true))
}

/// A broken upload: file name, the code the engine must fail it with, its bytes.
type BrokenUpload = (&'static str, &'static str, Vec<u8>);

/// The broken uploads a real catalog has, each with the code the engine must fail it with.
fn broken_uploads(jpeg: Option<&Path>) -> Result<Vec<BrokenUpload>, ClientError> {
    let mut out = vec![
        ("broken-notes.jpg", "unsupported_format", b"not a photo, a note someone saved as .jpg\n".to_vec()),
        ("broken-empty.png", "empty", Vec::new()),
        ("broken-huge.png", "too_many_pixels", png_header_only(100_000, 100_000)),
    ];
    if let Some(path) = jpeg {
        let bytes = std::fs::read(path).map_err(|cause| ClientError::Read { path: path.to_path_buf(), cause })?;
        out.push(("broken-truncated.jpg", "corrupt", bytes[..bytes.len().min(3000)].to_vec()));
    }
    Ok(out)
}

/// Seeds the reference background generator's training set under `prefix`: `per_class`
/// product photos on each studio backdrop (`<prefix>photos/<backdrop>-<i>.png`) and the data
/// set `<prefix>dataset.jsonl` (prompt, contributor, licence per photo), written last, so a
/// second run with the data set present reuses it. Returns the data set's key.
pub async fn seed_backdrops<S: ObjectStore>(
    s3: &S,
    prefix: &str,
    per_class: usize,
    seed: u64,
    licence: &str,
) -> Result<String, ClientError> {
    let key = format!("{prefix}dataset.jsonl");
    let expected = per_class * fleet_synth::Backdrop::ALL.len();
    if let Ok(bytes) = s3.get(&key).await {
        if bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() == expected {
            return Ok(key);
        }
    }
    let photos = tokio::task::spawn_blocking(move || fleet_synth::training_photos(per_class, seed)).await?;
    let mut lines = String::new();
    let mut uploads = Vec::new();
    for p in photos {
        let image_key = format!("{prefix}photos/{}", p.name);
        let line = serde_json::json!({"image": image_key, "prompt": p.prompt, "contributor": p.contributor, "licence": licence});
        lines.push_str(&format!("{line}\n"));
        let mut png = std::io::Cursor::new(Vec::new());
        p.image
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|cause| ClientError::Image { what: format!("encoding {image_key} as png"), cause })?;
        uploads.push((image_key, png.into_inner()));
    }
    stream::iter(uploads)
        .map(|(k, bytes)| async move { s3.put(&k, bytes, "image/png").await })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    s3.put(&key, lines.into_bytes(), "application/x-ndjson").await?;
    Ok(key)
}
