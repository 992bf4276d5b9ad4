//! The contract of a background generator: a diffusion inpainting model split into
//! TorchScript components, named in the `generator` section of its manifest.
//!
//! ```text
//! <file>.forward(x_t, t, masked, mask, cond) -> prediction    (the denoiser: required)
//!   x_t     [B,C,h,w] float   the noisy sample (pixels in [-1,1], or latents)
//!   t       [B]       int64   training timestep, 0..train_steps
//!   masked  [B,C,h,w] float   the image with the region to generate zeroed, same space as x_t
//!   mask    [B,1,h,w] float   1 where to generate (the background), 0 where to keep
//!   cond    [B,...]   float   what the conditioning encoder returns
//!   returns [B,C,h,w] float   epsilon or v, as `prediction` says
//! vae_encoder.forward(pixels [B,3,H,W] in [-1,1]) -> latents [B,C,H/f,W/f]    (latent models)
//! vae_decoder.forward(latents) -> pixels [B,3,H,W] in [-1,1]                   (latent models)
//! text_encoder.forward(ids [B,L] int64) -> cond           (with a tokenizer.json for prompts)
//! image_encoder.forward(pixels [B,3,H,W] in [-1,1]) -> cond     (reference-image conditioning)
//! ```
//!
//! The latents are already scaled (SD's 0.18215 is inside the exported encoder and decoder).

use serde::{Deserialize, Serialize};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise that was added (`epsilon`).
    Epsilon,
    /// `v = sqrt(a) * eps - sqrt(1 - a) * x0` (v-prediction).
    V,
}

/// How the training betas run from `beta_start` to `beta_end` (as diffusers names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Evenly spaced betas.
    Linear,
    /// Evenly spaced square roots of betas (Stable Diffusion).
    ScaledLinear,
}

/// The noise schedule the denoiser was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Shape of the betas.
    pub beta_schedule: BetaSchedule,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Training timesteps (1,000 for SD).
    pub train_steps: u32,
}

/// Where the diffusion runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum Space {
    /// On pixels in [-1, 1], 3 channels.
    Pixel,
    /// On the latents of a VAE.
    Latent {
        /// Encoder file.
        encoder: String,
        /// Decoder file.
        decoder: String,
        /// Latent channels.
        channels: u32,
        /// Pixels per latent along each side (8 for SD).
        downsample: u32,
    },
}

/// What the denoiser is conditioned on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum ConditioningSpec {
    /// A prompt: tokenised by `tokenizer` (a `tokenizers` JSON file), padded or cut to
    /// `max_tokens` with `pad_id`, encoded by `encoder`.
    Text {
        /// Text encoder file.
        encoder: String,
        /// `tokenizer.json` file.
        tokenizer: String,
        /// Token ids per prompt.
        max_tokens: u32,
        /// Id of the padding token.
        pad_id: u32,
        /// Whether a negative prompt may take the unconditional half of guidance.
        negative_prompt: bool,
    },
    /// A reference image, encoded by `encoder` at `height` x `width`.
    Image {
        /// Image encoder file.
        encoder: String,
        /// Encoder input height.
        height: u32,
        /// Encoder input width.
        width: u32,
    },
}

/// The `generator` section of a background generator's manifest. The manifest's `file` is
/// the denoiser (saved with parameters, so it fine-tunes as it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// What the denoiser predicts.
    pub prediction: Prediction,
    /// Its training noise schedule.
    pub schedule: ScheduleSpec,
    /// Pixel or latent diffusion.
    pub space: Space,
    /// Prompt or reference image.
    pub conditioning: ConditioningSpec,
    /// Pixels per generated sample: each image is generated in the aspect-ratio bucket
    /// nearest its own at this many pixels, then scaled to the photo.
    pub pixel_budget: u32,
    /// Sides of a sample must be multiples of this (the denoiser's down-sampling).
    pub multiple_of: u32,
    /// Range the clean sample is clipped to at every sampling step (diffusers'
    /// `clip_sample_range`; 1.0 for pixel models, absent for latent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<f64>,
    /// The guidance scale this model samples best at, used when a job gives none (the
    /// sampling preset's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
}

impl GeneratorSpec {
    /// Every file the section names (the denoiser, the manifest's `file`, aside), in a
    /// stable order.
    pub fn files(&self) -> Vec<String> {
        let mut files = Vec::new();
        if let Space::Latent { encoder, decoder, .. } = &self.space {
            files.push(encoder.clone());
            files.push(decoder.clone());
        }
        match &self.conditioning {
            ConditioningSpec::Text { encoder, tokenizer, .. } => {
                files.push(encoder.clone());
                files.push(tokenizer.clone());
            }
            ConditioningSpec::Image { encoder, .. } => files.push(encoder.clone()),
        }
        files
    }

    /// Checks the values the worker relies on; the reason names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let plain = |f: &str| !(f.is_empty() || f.contains('/') || f.contains(".."));
        if let Some(bad) = self.files().into_iter().find(|f| !plain(f)) {
            return Err(("generator", format!("file {bad:?} must be a plain file name next to the manifest")));
        }
        let s = &self.schedule;
        if !(s.beta_start > 0.0 && s.beta_start < s.beta_end && s.beta_end < 1.0) {
            return Err(("generator.schedule", "needs 0 < beta_start < beta_end < 1".into()));
        }
        if !(2..=10_000).contains(&s.train_steps) {
            return Err(("generator.schedule.train_steps", "must be within 2..=10000".into()));
        }
        if !(256..=16_777_216).contains(&self.pixel_budget) {
            return Err(("generator.pixel_budget", "must be within 256..=16777216".into()));
        }
        if self.clip_sample.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(("generator.clip_sample", "must be a positive number".into()));
        }
        if self.guidance.is_some_and(|g| !(1.0..=20.0).contains(&g)) {
            return Err(("generator.guidance", "must be within 1..=20".into()));
        }
        if !(1..=64).contains(&self.multiple_of) {
            return Err(("generator.multiple_of", "must be within 1..=64".into()));
        }
        if let Space::Latent { channels, downsample, .. } = &self.space {
            if !(1..=64).contains(channels) || !(1..=32).contains(downsample) {
                return Err(("generator.space", "channels must be within 1..=64 and downsample within 1..=32".into()));
            }
        }
        match &self.conditioning {
            ConditioningSpec::Text { max_tokens, .. } if !(1..=1024).contains(max_tokens) => {
                Err(("generator.conditioning.max_tokens", "must be within 1..=1024".into()))
            }
            ConditioningSpec::Image { height, width, .. }
                if !(8..=4096).contains(height) || !(8..=4096).contains(width) =>
            {
                Err(("generator.conditioning", "encoder sides must be within 8..=4096".into()))
            }
            _ => Ok(()),
        }
    }
}
