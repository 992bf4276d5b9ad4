//! Turning an uploaded file into an 8-bit sRGB RGB image, refusing what the worker must not
//! touch: empty or oversized files, formats other than JPEG/PNG/WebP, decompression bombs
//! (checked from the header before any pixel buffer exists) and truncated data.

mod sniff;
#[cfg(test)]
mod tests;

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

pub use crate::error::ImageError;

/// Bounds on what `decode` accepts, so one upload cannot exhaust a worker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted width*height as declared by the header.
    pub max_pixels: u64,
    /// Largest accepted file size in bytes.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: 50_000_000, max_file_bytes: 64 * 1024 * 1024 }
    }
}

/// The container format of an input photo, as identified by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// JPEG (JFIF/EXIF).
    Jpeg,
    /// PNG, including 16-bit and paletted files.
    Png,
    /// WebP, lossy or lossless.
    Webp,
}

impl InputFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            InputFormat::Jpeg => ImageFormat::Jpeg,
            InputFormat::Png => ImageFormat::Png,
            InputFormat::Webp => ImageFormat::WebP,
        }
    }
}

/// A decoded input photo, upright and ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The pixels: EXIF orientation applied, 8-bit sRGB, any alpha channel dropped.
    pub rgb: RgbImage,
    /// The format the file was in.
    pub format: InputFormat,
    /// Whether the file carried an alpha channel (dropped from `rgb`).
    pub had_alpha: bool,
    /// Bits per channel in the file (1, 2, 4, 8 or 16).
    pub bit_depth: u8,
}

/// Decodes an uploaded photo, checking limits before allocating pixel memory.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, ImageError> {
    let (image, format, had_alpha, bit_depth) = decode_upright(bytes, limits)?;
    Ok(Decoded { rgb: image.into_rgb8(), format, had_alpha, bit_depth })
}

/// Decodes a mask (a fine-tune sample's alpha, a scribble) under the same limits as a photo:
/// a mask is tenant input too, and a 100-megapixel PNG bomb is as cheap to upload as a photo.
pub fn decode_mask(bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage, ImageError> {
    Ok(decode_upright(bytes, limits)?.0.into_luma8())
}

/// The image upright (EXIF orientation applied), its format, whether it had alpha and its
/// bits per channel; sizes checked against `limits` from the header on.
fn decode_upright(bytes: &[u8], limits: &DecodeLimits) -> Result<(DynamicImage, InputFormat, bool, u8), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let size = bytes.len() as u64;
    if size > limits.max_file_bytes {
        return Err(ImageError::TooLarge { bytes: size, limit: limits.max_file_bytes });
    }
    let format = sniff::sniff(bytes)?;
    let header_dims = match format {
        InputFormat::Png => Some(sniff::png_dimensions(bytes)?),
        InputFormat::Jpeg => Some(sniff::jpeg_structure(bytes)?),
        InputFormat::Webp => None,
    };
    if let Some((width, height)) = header_dims {
        check_pixels(width, height, limits)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut alloc = image::Limits::default();
    alloc.max_alloc = Some(max_alloc(limits));
    reader.limits(alloc);
    let mut decoder = reader.into_decoder().map_err(|e| map_decode_error(e, header_dims, limits))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("header declares an empty {width}x{height} image")));
    }
    if decoder.total_bytes() > max_alloc(limits) {
        return Err(too_many(width, height, limits));
    }
    // A malformed EXIF block must not fail an otherwise good photo: keep it as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let had_alpha = decoder.color_type().has_alpha();
    let original = decoder.original_color_type();
    let bits = original.bits_per_pixel() / u16::from(original.channel_count().max(1));
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| map_decode_error(e, Some((width, height)), limits))?;
    image.apply_orientation(orientation);
    Ok((image, format, had_alpha, u8::try_from(bits).unwrap_or(u8::MAX)))
}

/// Bytes a decoder may hold at once: a 16-bit RGBA frame of the largest accepted size plus
/// slack for line buffers, as a second guard behind the header check.
fn max_alloc(limits: &DecodeLimits) -> u64 {
    limits.max_pixels.saturating_mul(8).saturating_add(64 * 1024 * 1024)
}

fn check_pixels(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_many(width, height, limits));
    }
    Ok(())
}

fn too_many(width: u32, height: u32, limits: &DecodeLimits) -> ImageError {
    ImageError::TooManyPixels { width, height, limit: limits.max_pixels }
}

fn map_decode_error(err: image::ImageError, dims: Option<(u32, u32)>, limits: &DecodeLimits) -> ImageError {
    match err {
        image::ImageError::Limits(limit) => match dims {
            Some((width, height)) => too_many(width, height, limits),
            None => ImageError::Corrupt(format!("decoder memory limit hit: {limit}")),
        },
        image::ImageError::Unsupported(what) => ImageError::UnsupportedFormat { seen: what.to_string().to_lowercase() },
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt("file ends before the image data is complete".into())
        }
        other => ImageError::Corrupt(other.to_string().to_lowercase()),
    }
}
