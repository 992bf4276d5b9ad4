//! Checks and benchmarks of background generators: the backdrop classifier that judges a
//! generated background, the evaluation on held-out photos, the memorisation check, and the
//! sampler benchmark.

pub mod bench;
pub mod classifier;
pub mod evaluate;
pub mod memorise;
