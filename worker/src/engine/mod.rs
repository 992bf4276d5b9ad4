//! The background-replacement engine: a TorchScript matting model on its own inference
//! thread, with decoding, compositing and encoding around it.

mod error;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod record;
pub mod runtime;

pub use error::EngineError;
pub use pipeline::{Engine, EngineOptions, InputItem, ItemOutput, ItemResult, Preview, Variant};
pub use record::{GeneratedRecord, ItemFailure, ItemRecord, StageTimings};
pub use runtime::{resolve_device, InferenceThread};
