//! Generative backgrounds: a diffusion inpainting model (the contract in
//! `fleet_protocol::manifest::generator`) fills the background of a photo around its product,
//! which the compositor then puts back pixel for pixel.
//!
//! ```text
//! photo + matte --> sample bucket (pixel budget) --> background mask (product dilated)
//!   --> masked image, mask [--> VAE encoder for latent models]
//!   --> prompt --> tokenizer --> text encoder (cond; negative or empty prompt: uncond)
//!   --> DDIM / Euler with guidance, every result of the photo in one batch, seeds seed + k
//!   [--> VAE decoder] --> backgrounds at the photo's size --> compositor (product restored)
//! ```

pub mod masks;
pub mod model;

pub use model::{GenerateOptions, Generator};

/// A job's generation settings with its loaded generator, shared by every image of a task.
#[derive(Clone)]
pub struct GenerateJob {
    /// The generator, warm on the task's device.
    pub generator: std::sync::Arc<Generator>,
    /// What to generate.
    pub options: GenerateOptions,
}

impl std::fmt::Debug for GenerateJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateJob")
            .field("generator", &self.generator.manifest.model_ref().to_string())
            .field("options", &self.options)
            .finish()
    }
}
