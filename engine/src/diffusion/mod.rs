//! Diffusion sampling for generative backgrounds: the noise schedule a denoiser was trained
//! with, and DDIM and Euler samplers with classifier-free guidance, in Rust on libtorch.
//!
//! ```text
//! seeded noise (per result, on the host: the same on every device)
//!   --> for each timestep: denoiser(x_t, t, conditioning) [uncond + cond in one batch]
//!       --> guided prediction (epsilon or v) --> DDIM or Euler update
//!   --> x_0
//! ```
//!
//! The denoiser is behind [`Denoiser`]: a TorchScript inpainting model in the worker, an
//! analytic one in the tests. What it conditions on (masked image, mask, prompt embedding)
//! travels in [`Conditioning`] and is the denoiser's business.

pub mod sampler;
pub mod schedule;

pub use sampler::{sample, Guidance, SampleOptions, SamplerKind};
pub use schedule::{NoiseSchedule, Spacing};

use tch::Tensor;

use crate::EngineError;

pub use fleet_protocol::manifest::generator::{BetaSchedule, Prediction};

/// What one forward pass of the denoiser is conditioned on, batched like the sample.
pub struct Conditioning {
    /// Extra channels concatenated to the sample by inpainting models (masked image and mask,
    /// `[B, C, H, W]`), if any.
    pub concat: Option<Tensor>,
    /// The conditioning embedding (`[B, ...]`: prompt tokens' embedding or a reference image's).
    pub embedding: Tensor,
}

impl Conditioning {
    /// The same conditioning twice over along the batch: for a guided pass, the unconditional
    /// half first.
    fn paired_with(&self, uncond: &Conditioning) -> Conditioning {
        let concat = match (&uncond.concat, &self.concat) {
            (Some(u), Some(c)) => Some(Tensor::cat(&[u, c], 0)),
            _ => None,
        };
        Conditioning { concat, embedding: Tensor::cat(&[&uncond.embedding, &self.embedding], 0) }
    }
}

/// A denoiser: predicts epsilon or v for a batch of noisy samples at their timesteps.
pub trait Denoiser {
    /// What [`predict`](Self::predict) returns.
    fn prediction(&self) -> Prediction;
    /// The prediction for samples `x_t` (`[B, ...]`) at integer timesteps `t` (`[B]`, int64).
    ///
    /// A failure of the denoiser (a forward pass that fails, conditioning it cannot use) ends
    /// the sampling call with that error.
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor, EngineError>;
}
