//! The GPU worker: where a task's images meet libtorch. In the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`
//! this crate is the worker's engine (decode, matting model, compositing, encode), the
//! reference model the project builds for itself, and the commands around them.
//! It is the only crate that links libtorch.

pub mod bench;
pub mod cli;
pub mod diffusion;
pub mod engine;
pub mod folder;
pub mod generate;
pub mod options;
pub mod reference;
pub mod service;
pub mod telemetry;
pub mod train;

/// Whether libtorch sees a usable CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}
