//! `fleet-synth` makes the project's own data set: deterministic synthetic product photos
//! (a product on a background, with an exact anti-aliased alpha mask), because no real
//! data is downloaded. It sits beside the job flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`
//! as its input source: the reference matting-model trainer renders small samples from
//! it, the evaluation renders 200 held-out scenes at full size, and tests, the demo and
//! S3 seeding use `write_catalog`.
//!
//! Every sample is a function of (seed, index) only: ChaCha8 seeded from a hash mix of
//! both, integer-hash noise, and maths built from IEEE basic operations, so the same pair
//! gives byte-identical pixels on any machine and under any thread count.

pub mod backdrop;
mod background;
mod catalog;
mod detmath;
mod kinds;
mod object;
mod paint;
mod raster;
mod render;
mod rng;
mod scene;
mod shapes;

use std::path::PathBuf;

pub use backdrop::{
    class_of_prompt, prompt, render_backdrop, render_scene, training_photos, Backdrop, BackdropScene, TrainingPhoto,
    PROMPT_WORDS,
};
pub use catalog::{is_jpeg, read_catalog, sample_id, write_catalog, CatalogEntry, CatalogSpec, CatalogSummary};
pub use scene::Scene;

/// Names of the product kinds, as they appear in `Sample::object`.
pub const OBJECT_KINDS: [&str; 7] = ["box", "bottle", "can", "mug", "bag", "shoe", "blob"];

/// Names of the background kinds, as they appear in `Sample::background`.
pub const BACKGROUND_KINDS: [&str; 7] = ["flat", "gradient", "studio", "noise", "stripes", "tabletop", "clutter"];

/// One rendered sample: the photo, its ground-truth alpha and what it shows.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The composited photo.
    pub image: image::RgbImage,
    /// Object coverage, 0 (background, shadows included) to 255 (opaque product).
    pub alpha: image::GrayImage,
    /// Product kind name ("box", "bottle", "can", "mug", "bag", "shoe", "blob").
    pub object: String,
    /// Background kind name ("flat", "gradient", "studio", "noise", "stripes",
    /// "tabletop", "clutter").
    pub background: String,
}

/// Renders sample `index` at its natural size.
pub fn render_sample(seed: u64, index: u64, min_long_side: u32, max_long_side: u32) -> Sample {
    let scene = Scene::generate(seed, index);
    let (w, h) = scene.natural_size(min_long_side, max_long_side);
    scene.render(w, h)
}

/// Why writing a catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file or directory could not be written or read.
    #[error("catalog io failed at {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("encoding sample {id} failed")]
    Encode {
        /// The sample id.
        id: String,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// The catalog index could not be serialised or parsed.
    #[error("catalog json is invalid")]
    Json {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The spec cannot describe a catalog.
    #[error("invalid catalog spec: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
}

impl SynthError {
    /// Whether trying again may succeed (disk trouble may pass; bad specs will not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SynthError::Io { .. })
    }
}

#[cfg(test)]
mod tests;
