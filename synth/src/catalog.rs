//! Writing a catalog to disk: images (PNG or JPEG), 8-bit mask PNGs and a
//! `catalog.json` index. Samples render in parallel, but each file depends only on
//! (seed, index), so the output is identical for any thread count.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::unit_hash;
use crate::{render_sample, SynthError};

/// JPEG quality used for catalog images.
const JPEG_QUALITY: u8 = 92;
/// Stream id deciding each sample's file format (independent of its pixels).
const FORMAT_PURPOSE: u64 = 0x6a70_6567;

/// What catalog to write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    /// Catalog seed; sample `i` is `Scene::generate(seed, i)`.
    pub seed: u64,
    /// Number of samples.
    pub count: usize,
    /// Smallest long side in pixels.
    pub min_long_side: u32,
    /// Largest long side in pixels.
    pub max_long_side: u32,
    /// Share of images written as JPEG (quality 92); the rest are PNG.
    pub jpeg_share: f32,
}

impl Default for CatalogSpec {
    fn default() -> Self {
        CatalogSpec { seed: 0, count: 16, min_long_side: 320, max_long_side: 1600, jpeg_share: 0.5 }
    }
}

/// One sample of a written catalog; paths are relative to the catalog directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Sample id, e.g. "item-000042".
    pub id: String,
    /// Image path, e.g. "images/item-000042.jpg".
    pub image: String,
    /// Mask path, e.g. "masks/item-000042.png".
    pub mask: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Product kind name.
    pub object: String,
    /// Background kind name.
    pub background: String,
    /// Catalog seed.
    pub seed: u64,
    /// Sample index.
    pub index: u64,
}

/// The index of a written catalog; this is the content of `catalog.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSummary {
    /// Number of entries.
    pub count: usize,
    /// Entries in index order.
    pub entries: Vec<CatalogEntry>,
}

/// The id of sample `index`.
pub fn sample_id(index: u64) -> String {
    format!("item-{index:06}")
}

/// Whether sample `index` of catalog `seed` is written as JPEG under `jpeg_share`.
pub fn is_jpeg(seed: u64, index: u64, jpeg_share: f32) -> bool {
    unit_hash(seed, index, FORMAT_PURPOSE) < jpeg_share
}

/// Writes a catalog: `<dir>/images/<id>.{png|jpg}` and `<dir>/masks/<id>.png` (8-bit gray)
/// and `<dir>/catalog.json` (a `CatalogSummary`). Rendering in parallel with rayon, output
/// identical regardless of thread count. ids like "item-000042". JPEG quality 92.
pub fn write_catalog(dir: &Path, spec: &CatalogSpec) -> Result<CatalogSummary, SynthError> {
    if spec.min_long_side == 0 || spec.min_long_side > spec.max_long_side {
        return Err(SynthError::InvalidSpec {
            reason: format!("long side range {}..={} is empty or zero", spec.min_long_side, spec.max_long_side),
        });
    }
    for sub in ["images", "masks"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|source| SynthError::Io { path, source })?;
    }
    let entries = (0..spec.count as u64)
        .into_par_iter()
        .map(|index| write_one(dir, spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = CatalogSummary { count: entries.len(), entries };
    let json = serde_json::to_vec_pretty(&summary).map_err(|source| SynthError::Json { source })?;
    let path = dir.join("catalog.json");
    fs::write(&path, json).map_err(|source| SynthError::Io { path, source })?;
    Ok(summary)
}

/// Reads the `catalog.json` that `write_catalog` wrote into `dir`.
pub fn read_catalog(dir: &Path) -> Result<CatalogSummary, SynthError> {
    let path = dir.join("catalog.json");
    let bytes = fs::read(&path).map_err(|source| SynthError::Io { path, source })?;
    serde_json::from_slice(&bytes).map_err(|source| SynthError::Json { source })
}

fn write_one(dir: &Path, spec: &CatalogSpec, index: u64) -> Result<CatalogEntry, SynthError> {
    let sample = render_sample(spec.seed, index, spec.min_long_side, spec.max_long_side);
    let id = sample_id(index);
    let (width, height) = sample.image.dimensions();
    let jpeg = is_jpeg(spec.seed, index, spec.jpeg_share);
    let image = format!("images/{id}.{}", if jpeg { "jpg" } else { "png" });
    let mask = format!("masks/{id}.png");
    let mut bytes = Vec::new();
    let encoded = if jpeg {
        JpegEncoder::new_with_quality(Cursor::new(&mut bytes), JPEG_QUALITY).encode_image(&sample.image)
    } else {
        PngEncoder::new(Cursor::new(&mut bytes)).write_image(
            sample.image.as_raw(),
            width,
            height,
            ExtendedColorType::Rgb8,
        )
    };
    encoded.map_err(|source| SynthError::Encode { id: id.clone(), source })?;
    write_file(dir.join(&image), &bytes)?;
    bytes.clear();
    PngEncoder::new(Cursor::new(&mut bytes))
        .write_image(sample.alpha.as_raw(), width, height, ExtendedColorType::L8)
        .map_err(|source| SynthError::Encode { id: id.clone(), source })?;
    write_file(dir.join(&mask), &bytes)?;
    Ok(CatalogEntry {
        id,
        image,
        mask,
        width,
        height,
        object: sample.object,
        background: sample.background,
        seed: spec.seed,
        index,
    })
}

fn write_file(path: PathBuf, bytes: &[u8]) -> Result<(), SynthError> {
    fs::write(&path, bytes).map_err(|source| SynthError::Io { path, source })
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
