//! Writing composited results and mattes for upload: PNG tuned for speed (encode time counts
//! in the per-image budget), JPEG at a chosen quality, lossless WebP.
//!
//! JPEG goes through `jpeg-encoder` (AVX2 when the CPU has it) rather than the `image`
//! crate's encoder, which is about four times slower and alone would exceed the budget.

use std::io::Cursor;

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
        OutputFormat::Png => PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(raw, width, height, color),
        OutputFormat::Jpeg { .. } if color == ExtendedColorType::Rgba8 => {
            return Err(ImageError::Unsupported("jpeg cannot carry transparency; use png or webp".into()))
        }
        OutputFormat::Jpeg { quality } => return encode_jpeg(raw, width, height, quality),
        OutputFormat::Webp => WebPEncoder::new_lossless(&mut out).encode(raw, width, height, color),
    };
    result.map_err(|e| ImageError::Encode(e.to_string().to_lowercase()))?;
    Ok(out.into_inner())
}

/// Baseline JPEG of RGB data; 4:4:4 chroma from quality 90 up, 4:2:0 below.
fn encode_jpeg(raw: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(ImageError::Unsupported(format!(
            "jpeg is limited to 65535 pixels a side, the image is {width}x{height}; use png or webp"
        )));
    };
    let mut out = Vec::with_capacity(raw.len() / 8);
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(raw, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| ImageError::Encode(e.to_string().to_lowercase()))?;
    Ok(out)
}

/// A PNG signature and an IHDR chunk declaring `width` x `height` 8-bit RGB pixels, with a
/// valid CRC and no pixel data: the shape of a decompression bomb or a cut-off upload, which the
/// decoder must refuse from the header alone.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out
}

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use image::{ColorType, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    fn decoded(bytes: &[u8]) -> image::DynamicImage {
        image::load_from_memory(bytes).expect("output decodes")
    }

    #[test]
    fn a_header_only_png_declares_its_size_with_a_valid_crc() {
        // The CRC of an IEND chunk type is fixed by the PNG specification.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let header = png_header_only(7, 9);
        assert_eq!(&header[16..24], &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert!(image::load_from_memory(&header).is_err(), "no pixel data follows the header");
    }

    #[test]
    fn every_format_decodes_back_with_size_and_channels() {
        let rgb = Composited::Rgb(RgbImage::from_fn(33, 17, |x, y| Rgb([x as u8 * 7, y as u8 * 9, 50])));
        let rgba = Composited::Rgba(RgbaImage::from_fn(33, 17, |x, _| Rgba([9, 8, 7, x as u8 * 7])));
        for format in [OutputFormat::Png, OutputFormat::Jpeg { quality: 85 }, OutputFormat::Webp] {
            let back = decoded(&encode(&rgb, format).unwrap());
            assert_eq!((back.width(), back.height(), back.color()), (33, 17, ColorType::Rgb8));
        }
        for format in [OutputFormat::Png, OutputFormat::Webp] {
            let back = decoded(&encode(&rgba, format).unwrap());
            assert_eq!((back.width(), back.height(), back.color()), (33, 17, ColorType::Rgba8));
            let Composited::Rgba(src) = &rgba else { unreachable!() };
            assert_eq!(&back.into_rgba8(), src, "{format:?} must be lossless");
        }
    }

    #[test]
    fn jpeg_of_a_cutout_is_refused() {
        let rgba = Composited::Rgba(RgbaImage::new(4, 4));
        let e = encode(&rgba, OutputFormat::Jpeg { quality: 90 }).unwrap_err();
        assert_eq!(e.code(), "unsupported");
        assert_eq!(e.to_string(), "jpeg cannot carry transparency; use png or webp");
        let empty = Composited::Rgb(RgbImage::new(0, 3));
        assert_eq!(encode(&empty, OutputFormat::Png).unwrap_err().code(), "encode_failed");
    }

    #[test]
    fn matte_png_is_8_bit_gray() {
        let alpha = GrayImage::from_fn(20, 10, |x, _| Luma([x as u8 * 12]));
        let back = decoded(&encode_matte_png(&alpha));
        assert_eq!(back.color(), ColorType::L8);
        assert_eq!(back.into_luma8(), alpha);
        assert!(encode_matte_png(&GrayImage::new(0, 0)).is_empty());
    }

    #[test]
    fn mime_types_and_extensions() {
        assert_eq!(OutputFormat::Jpeg { quality: 90 }.extension(), "jpg");
        assert_eq!(OutputFormat::Webp.mime_type(), "image/webp");
    }
}
