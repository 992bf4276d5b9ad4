//! The background-replacement engine, usable alone: a TorchScript matting model on its own
//! inference thread (one per device), with decoding, compositing and encoding around it, and
//! generative backgrounds from a diffusion inpainting model. In the fleet's flow it is the
//! `libtorch` step of `worker (S3 in, libtorch, S3 out)`; `fleet_imaging` lies beneath it.
//!
//! ```text
//! bytes --decode--> RGB --resize, normalise--> [B,3,H,W] --model (inference thread)--> alpha
//!   --refine--> composite (background: colour | image | blur | generated) --encode--> bytes
//! ```
//!
//! | concern | module |
//! | --- | --- |
//! | the pipeline, decode -> infer -> finish | [`pipeline`] |
//! | the model runtime: loading, the inference thread | [`model`], [`runtime`] |
//! | generative backgrounds, samplers and schedules | [`generate`], [`diffusion`] |
//! | aspect-ratio buckets | [`buckets`] |
//! | the background mini-language of the CLIs | [`options`] |
//! | the engine over a folder, with a contact sheet | [`folder`] |

pub mod buckets;
pub mod code;
pub mod diffusion;
mod error;
pub mod folder;
pub mod generate;
pub mod model;
pub mod options;
pub mod pipeline;
pub mod preprocess;
pub mod record;
pub mod runtime;

pub use error::EngineError;
pub use pipeline::{Engine, EngineOptions, InputItem, ItemOutput, ItemResult, Preview, Variant};
pub use record::{GeneratedRecord, ItemFailure, ItemRecord, StageTimings};
pub use runtime::{resolve_device, BatchInput, InferenceThread};

/// Whether libtorch sees a usable CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Caps the CPU threads of the engine's stages (rayon's global pool) and of libtorch's CPU
/// kernels: several workers on one host each take their share.
pub fn set_cpu_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    let threads = threads.max(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(threads as i32);
    Ok(())
}
