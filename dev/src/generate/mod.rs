//! Checks and benchmarks of background generators: the backdrop classifier that judges a
//! generated background, the evaluation on held-out photos, and the sampler benchmark.

pub mod bench;
pub mod classifier;
pub mod evaluate;
