//! The developers' side of the fleet, kept out of the services: the reference models the
//! tests and the demo run (a matting U-Net and a pixel-space generator, trained here from
//! synthetic photos), the benchmarks behind BENCHMARKS.md, and the generator checks and
//! experiments behind EXPERIMENTS.md. The binary is `fleet-dev`.

pub mod bench;
pub mod bench_train;
pub mod error;
pub mod generate;
pub mod reference;

pub use error::{DevError, Result};
