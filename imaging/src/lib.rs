//! CPU-side image handling of the GPU worker, around the matting model.
//!
//! In the fleet's flow `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out)
//! -> events -> client`, this crate is the worker's pixel work on either side of the model:
//!
//! `worker: S3 bytes -> decode -> resize -> [model, libtorch] -> resize alpha back -> matte ->
//! composite -> encode -> S3`.
//!
//! Everything here is pure CPU and free of libtorch, so it builds and tests anywhere. The
//! method follows Bria's background replacement: a matting model gives an alpha matte, the
//! background is replaced, and the original foreground pixels are put back untouched where
//! the matte is sure, so the product itself is never altered.

#![warn(missing_docs)]

pub mod composite;
pub mod decode;
pub mod encode;
mod error;
pub mod matte;
pub mod resize;
pub mod sheet;

pub use composite::{composite, Background, CompositeOptions, Composited};
pub use decode::{decode, decode_mask, DecodeLimits, Decoded, InputFormat};
pub use encode::{encode, encode_matte_png, OutputFormat};
pub use error::ImageError;
pub use matte::{refine, uncertainty, Morphology};
pub use resize::{cover_fit_rgb, resize_gray, resize_rgb, resize_rgba};
pub use sheet::contact_sheet;
