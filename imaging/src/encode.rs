//! Writing composited results and mattes for upload: PNG tuned for speed (encode time counts
//! in the per-image budget), JPEG at a chosen quality, lossless WebP.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder};
use serde::{Deserialize, Serialize};

use crate::composite::Composited;
use crate::error::ImageError;

/// The file format of a job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// PNG, fast deflate with adaptive filtering; keeps transparency.
    Png,
    /// Baseline JPEG; cannot carry transparency.
    Jpeg {
        /// Quality from 1 (smallest) to 100 (best); out-of-range values are clamped.
        quality: u8,
    },
    /// Lossless WebP (the only WebP the encoder writes); keeps transparency.
    Webp,
}

impl OutputFormat {
    /// The MIME type to store the object with.
    pub fn mime_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg { .. } => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg { .. } => "jpg",
            OutputFormat::Webp => "webp",
        }
    }
}

/// Encodes a composited image; a cut-out (RGBA) cannot be written as JPEG.
pub fn encode(img: &Composited, format: OutputFormat) -> Result<Vec<u8>, ImageError> {
    let (raw, color) = match img {
        Composited::Rgb(rgb) => (rgb.as_raw(), ExtendedColorType::Rgb8),
        Composited::Rgba(rgba) => (rgba.as_raw(), ExtendedColorType::Rgba8),
    };
    encode_raw(raw, img.width(), img.height(), color, format)
}

/// Encodes a matte as an 8-bit grayscale PNG; an empty (0-pixel) matte gives an empty vector.
pub fn encode_matte_png(alpha: &GrayImage) -> Vec<u8> {
    let (w, h) = alpha.dimensions();
    // PNG cannot represent a 0-pixel image; every other size encodes into memory infallibly.
    encode_raw(alpha.as_raw(), w, h, ExtendedColorType::L8, OutputFormat::Png).unwrap_or_default()
}

fn encode_raw(
    raw: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
    format: OutputFormat,
) -> Result<Vec<u8>, ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Encode(format!("cannot encode an empty {width}x{height} image")));
    }
    let mut out = Cursor::new(Vec::with_capacity(raw.len() / 4));
    let result = match format {
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(raw, width, height, color)
        }
        OutputFormat::Jpeg { .. } if color == ExtendedColorType::Rgba8 => {
            return Err(ImageError::Unsupported(
                "jpeg cannot carry transparency; use png or webp".into(),
            ))
        }
        OutputFormat::Jpeg { quality } => {
            JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
                .write_image(raw, width, height, color)
        }
        OutputFormat::Webp => WebPEncoder::new_lossless(&mut out).encode(raw, width, height, color),
    };
    result.map_err(|e| ImageError::Encode(e.to_string().to_lowercase()))?;
    Ok(out.into_inner())
}
