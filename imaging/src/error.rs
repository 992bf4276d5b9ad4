//! The one error type of this crate: why an input photo was refused or an output could not be
//! written. None of these is retryable: the same bytes fail the same way, so a worker should
//! fail the job (dead-letter) and report [`ImageError::code`] to the client.

use thiserror::Error;

/// Why decoding, encoding or preparing an image failed; each variant says what the operator
/// can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageError {
    /// The upload holds no bytes at all.
    #[error("image file is empty (0 bytes); upload the photo again")]
    Empty,
    /// The file is bigger than the configured byte limit.
    #[error("image file is {} MiB, over the {} MiB limit", mib(*bytes), mib(*limit))]
    TooLarge {
        /// Size of the upload in bytes.
        bytes: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The header declares more pixels than the configured limit (decompression bomb guard).
    #[error(
        "image header declares {width}x{height} = {} MP, over the {} MP limit",
        megapixels(u64::from(*width) * u64::from(*height)),
        megapixels(*limit)
    )]
    TooManyPixels {
        /// Width declared in the header.
        width: u32,
        /// Height declared in the header.
        height: u32,
        /// The configured pixel limit.
        limit: u64,
    },
    /// The bytes are not JPEG, PNG or WebP (or use a variant of them that is not supported).
    #[error("unsupported image format: {seen} (accepted: jpeg, png, webp)")]
    UnsupportedFormat {
        /// What the bytes looked like, e.g. "gif" or "text".
        seen: String,
    },
    /// The file is truncated or damaged.
    #[error("image data is corrupt or truncated: {0}")]
    Corrupt(String),
    /// The requested output cannot represent this image.
    #[error("{0}")]
    Unsupported(String),
    /// The encoder failed for another reason (e.g. an empty image).
    #[error("could not encode image: {0}")]
    Encode(String),
}

impl ImageError {
    /// A stable, machine-readable code for job events and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty",
            ImageError::TooLarge { .. } => "too_large",
            ImageError::TooManyPixels { .. } => "too_many_pixels",
            ImageError::UnsupportedFormat { .. } => "unsupported_format",
            ImageError::Corrupt(_) => "corrupt",
            ImageError::Unsupported(_) => "unsupported",
            ImageError::Encode(_) => "encode_failed",
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn megapixels(pixels: u64) -> String {
    format!("{:.1}", pixels as f64 / 1_000_000.0)
}
