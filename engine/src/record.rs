//! What the engine reports per image: the record that goes into a task's manifest, and the
//! failure a catalog operator reads when one image could not be processed.

use fleet_imaging::composite::Composited;
use fleet_imaging::decode::InputFormat;
use fleet_imaging::encode::OutputFormat;
use fleet_imaging::ImageError;
use serde::{Deserialize, Serialize};

/// Wall time of each stage for one image, in milliseconds. `forward_ms` is this image's
/// share of its batch's forward pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Header check and decode.
    pub decode_ms: f64,
    /// Resize to the model size and normalise.
    pub preprocess_ms: f64,
    /// Share of the batch forward pass.
    pub forward_ms: f64,
    /// Alpha back to full size, morphology, uncertainty.
    pub postprocess_ms: f64,
    /// Decontamination and compositing.
    pub composite_ms: f64,
    /// Encoding of the result and of the matte.
    pub encode_ms: f64,
    /// Generating the backgrounds (device) and embedding the results, when generated.
    #[serde(default)]
    pub generate_ms: f64,
}

impl StageTimings {
    /// Every stage but the forward pass: the CPU cost per image.
    pub fn cpu_ms(&self) -> f64 {
        self.decode_ms + self.preprocess_ms + self.postprocess_ms + self.composite_ms + self.encode_ms
    }
}

/// The input as decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Width after EXIF orientation.
    pub width: u32,
    /// Height after EXIF orientation.
    pub height: u32,
    /// Format sniffed from the bytes.
    pub format: InputFormat,
    /// Encoded size.
    pub bytes: usize,
}

/// The encoded result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `png`, `jpeg` or `webp`.
    pub format: String,
    /// Whether the image carries an alpha channel.
    pub has_alpha: bool,
    /// Encoded size.
    pub bytes: usize,
}

impl OutputInfo {
    pub(crate) fn of(img: &Composited, format: OutputFormat, bytes: usize) -> Self {
        let (width, height, has_alpha) = match img {
            Composited::Rgb(i) => (i.width(), i.height(), false),
            Composited::Rgba(i) => (i.width(), i.height(), true),
        };
        OutputInfo { width, height, format: format_name(format).to_string(), has_alpha, bytes }
    }
}

/// File extension and record name of an output format.
pub fn format_name(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Png => "png",
        OutputFormat::Jpeg { .. } => "jpeg",
        OutputFormat::Webp => "webp",
    }
}

/// The per-image record kept with every output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Caller's identifier.
    pub id: String,
    /// The input as decoded.
    pub input: ImageInfo,
    /// The result as encoded.
    pub output: OutputInfo,
    /// Size of the matte PNG.
    pub matte_bytes: usize,
    /// `name@version` of the model.
    pub model: String,
    /// Device the forward pass ran on.
    pub device: String,
    /// Images in the forward pass this one shared.
    pub batch: usize,
    /// Per-stage wall times.
    pub timings_ms: StageTimings,
    /// Share of alpha pixels neither clearly foreground nor background; review the highest first.
    pub uncertainty: f32,
    /// Length of the embedding.
    pub embedding_dim: usize,
    /// How the background was generated, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedRecord>,
}

/// How an item's backgrounds were generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedRecord {
    /// `name@version` of the generator.
    pub generator: String,
    /// Seed of each result, in order.
    pub seeds: Vec<u64>,
    /// Denoiser steps.
    pub steps: u32,
    /// Guidance scale.
    pub guidance: f32,
    /// `ddim` or `euler`.
    pub sampler: String,
    /// Sample size (pixels) the backgrounds were generated at, before scaling to the photo.
    pub sample_size: (u32, u32),
}

/// One image that could not be processed, with a reason its owner can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{id}: {reason}")]
pub struct ItemFailure {
    /// Caller's identifier.
    pub id: String,
    /// Stable machine-readable code (`corrupt`, `too_many_pixels`, ...).
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

impl ItemFailure {
    pub(crate) fn from_image(id: &str, e: &ImageError) -> Self {
        ItemFailure { id: id.to_string(), code: e.code().to_string(), reason: e.to_string() }
    }
}
