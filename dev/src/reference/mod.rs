//! The project's own reference matting model: a small U-Net trained on the synthetic
//! catalog, traced to TorchScript (and scripted with trainable weights for fine-tuning), and
//! its held-out evaluation; and the reference background generator (`generator`).

pub mod eval;
pub mod generator;
pub mod train;
pub mod trainable;
pub mod unet;

pub use eval::{evaluate, score, EvalReport};
pub use train::{ensure_reference_model, model_dir, TrainConfig};
