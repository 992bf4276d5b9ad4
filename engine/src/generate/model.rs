//! A background generator loaded on a device: its TorchScript components, tokenizer and
//! noise schedule, and generation of several backgrounds for one photo in one batch.

use std::path::{Path, PathBuf};

use fleet_imaging::resize::{resize_gray, resize_rgb};
use fleet_protocol::manifest::generator::{ConditioningSpec, GeneratorSpec, Prediction, Space};
use fleet_protocol::manifest::{ModelManifest, Task};
use image::{GrayImage, RgbImage};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::masks::{background_mask, dilate_px};
use crate::diffusion::{self, Conditioning, Denoiser, Guidance, NoiseSchedule, SampleOptions, SamplerKind, Spacing};
use crate::EngineError;

/// A generator ready to sample.
pub struct Generator {
    /// Its manifest.
    pub manifest: ModelManifest,
    /// The manifest's `generator` section.
    pub spec: GeneratorSpec,
    /// The noise schedule from the manifest.
    pub schedule: NoiseSchedule,
    /// Where it was loaded from.
    pub dir: PathBuf,
    denoiser: CModule,
    vae: Option<(CModule, CModule)>,
    encoder: CModule,
    tokenizer: Option<tokenizers::Tokenizer>,
    device: Device,
}

/// What one photo's backgrounds are generated from.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The prompt (text-conditioned generators).
    pub prompt: Option<String>,
    /// The negative prompt, in the unconditional half of guidance.
    pub negative_prompt: Option<String>,
    /// The reference image (image-conditioned generators).
    pub reference: Option<RgbImage>,
    /// Seed of the first result; result `k` uses `seed + k`.
    pub seed: u64,
    /// Denoiser steps.
    pub steps: u32,
    /// Guidance scale (1 = none).
    pub guidance: f32,
    /// Results.
    pub results: u32,
    /// Update rule.
    pub sampler: SamplerKind,
    /// Margin kept around the product, percent of the long side.
    pub dilate_pct: f32,
}

/// The TorchScript denoiser behind the sampler's [`Denoiser`]: the sampler's `concat` is
/// `[masked, mask]` on channels.
pub struct ScriptDenoiser<'a> {
    /// The module (inference or trainable, both run `forward`).
    pub forward: &'a dyn Fn(&[Tensor]) -> Result<Tensor, EngineError>,
    /// What it predicts.
    pub prediction: Prediction,
    /// Channels of a sample.
    pub channels: i64,
}

impl Denoiser for ScriptDenoiser<'_> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor, EngineError> {
        let concat =
            cond.concat.as_ref().ok_or_else(|| EngineError::invalid("an inpainting denoiser needs its mask"))?;
        let masked = concat.narrow(1, 0, self.channels);
        let mask = concat.narrow(1, self.channels, 1);
        (self.forward)(&[x_t.shallow_clone(), t.shallow_clone(), masked, mask, cond.embedding.shallow_clone()])
    }
}

/// Runs a TorchScript method on tensors and expects one tensor back.
pub fn run_module(module: &CModule, inputs: &[Tensor]) -> Result<Tensor, EngineError> {
    let args: Vec<IValue> = inputs.iter().map(|t| IValue::Tensor(t.shallow_clone())).collect();
    match module.forward_is(&args).map_err(|e| EngineError::Forward { reason: e.to_string() })? {
        IValue::Tensor(t) => Ok(t),
        other => Err(EngineError::Forward { reason: format!("expected one tensor, got {}", kind_of(&other)) }),
    }
}

fn kind_of(v: &IValue) -> &'static str {
    match v {
        IValue::Tuple(_) => "a tuple",
        IValue::GenericList(_) | IValue::TensorList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        _ => "a non-tensor value",
    }
}

/// Token ids of `text`, cut or padded with `pad_id` to `max_tokens`.
pub fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    max_tokens: usize,
    pad_id: u32,
) -> Result<Vec<i64>, EngineError> {
    let encoding = tokenizer.encode(text, true).map_err(|e| EngineError::Tokenize { reason: e.to_string() })?;
    let mut ids: Vec<i64> = encoding.get_ids().iter().take(max_tokens).map(|&i| i64::from(i)).collect();
    ids.resize(max_tokens, i64::from(pad_id));
    Ok(ids)
}

/// An 8-bit RGB image as `[3,H,W]` in [-1, 1].
pub fn to_signed(rgb: &RgbImage) -> Tensor {
    let (w, h) = (rgb.width() as i64, rgb.height() as i64);
    Tensor::from_slice(rgb.as_raw()).view([h, w, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 127.5 - 1.0
}

/// `[3,H,W]` in [-1, 1] (any device) as an 8-bit RGB image.
pub fn from_signed(t: &Tensor) -> RgbImage {
    let (h, w) = (t.size()[1], t.size()[2]);
    let bytes = ((t.to_device(Device::Cpu).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    let data = Vec::<u8>::try_from(bytes.flatten(0, -1)).expect("a uint8 tensor reads back");
    RgbImage::from_raw(w as u32, h as u32, data).expect("buffer matches its size")
}

impl Generator {
    /// Loads the generator in `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, EngineError> {
        let fail = |reason: String| EngineError::model(dir, reason);
        let bytes = std::fs::read(dir.join("manifest.json")).map_err(|e| fail(format!("manifest.json: {e}")))?;
        let manifest = ModelManifest::from_json(&bytes).map_err(|e| fail(e.to_string()))?;
        if manifest.task != Task::BackgroundGenerator {
            return Err(fail(format!("{} is not a background generator", manifest.model_ref())));
        }
        let spec = manifest.generator.clone().expect("a validated generator manifest has its section");
        let load = |file: &str| {
            let mut m = crate::code::load(&dir.join(file), device)
                .map_err(|e| fail(format!("cannot load TorchScript {file}: {e}")))?;
            m.set_eval();
            Ok::<_, EngineError>(m)
        };
        let denoiser = load(&manifest.file)?;
        let vae = match &spec.space {
            Space::Pixel => None,
            Space::Latent { encoder, decoder, .. } => Some((load(encoder)?, load(decoder)?)),
        };
        let (encoder, tokenizer) = match &spec.conditioning {
            ConditioningSpec::Text { encoder, tokenizer, .. } => {
                let tok = tokenizers::Tokenizer::from_file(dir.join(tokenizer))
                    .map_err(|e| fail(format!("tokenizer {tokenizer}: {e}")))?;
                (load(encoder)?, Some(tok))
            }
            ConditioningSpec::Image { encoder, .. } => (load(encoder)?, None),
        };
        let schedule = NoiseSchedule::of(&spec.schedule);
        Ok(Generator { manifest, spec, schedule, dir: dir.to_path_buf(), denoiser, vae, encoder, tokenizer, device })
    }

    /// The TorchScript denoiser.
    pub fn denoiser(&self) -> &CModule {
        &self.denoiser
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Channels of a sample (3 on pixels, the VAE's on latents).
    pub fn channels(&self) -> i64 {
        match &self.spec.space {
            Space::Pixel => 3,
            Space::Latent { channels, .. } => i64::from(*channels),
        }
    }

    /// The sample size (pixels) a `w` x `h` photo is generated at: its aspect-ratio bucket at
    /// the generator's pixel budget.
    pub fn sample_size(&self, w: u32, h: u32) -> (u32, u32) {
        sample_size(&self.spec, w, h)
    }

    /// The conditioning of a prompt (or of the reference image), `[1, ...]` on the device.
    pub fn encode(&self, prompt: Option<&str>, reference: Option<&RgbImage>) -> Result<Tensor, EngineError> {
        let _guard = tch::no_grad_guard();
        match (&self.spec.conditioning, &self.tokenizer) {
            (ConditioningSpec::Text { max_tokens, pad_id, .. }, Some(tok)) => {
                let ids = tokenize(tok, prompt.unwrap_or(""), *max_tokens as usize, *pad_id)?;
                let ids = Tensor::from_slice(&ids).view([1, -1]).to_device(self.device);
                run_module(&self.encoder, &[ids])
            }
            (ConditioningSpec::Image { height, width, .. }, _) => {
                let image = reference.ok_or_else(|| {
                    EngineError::invalid("this generator is conditioned on a reference image, none was given")
                })?;
                let pixels = to_signed(&resize_rgb(image, *width, *height)).unsqueeze(0).to_device(self.device);
                run_module(&self.encoder, &[pixels])
            }
            _ => Err(EngineError::model(&self.dir, "a text-conditioned generator without its tokenizer".into())),
        }
    }

    /// The unconditional half of guidance: the negative prompt where the generator takes
    /// one, the empty prompt otherwise (zeros for image conditioning).
    pub fn encode_unconditional(&self, negative: Option<&str>, like: &Tensor) -> Result<Tensor, EngineError> {
        match &self.spec.conditioning {
            ConditioningSpec::Text { negative_prompt, .. } => {
                self.encode(if *negative_prompt { negative } else { None }.or(Some("")), None)
            }
            ConditioningSpec::Image { .. } => Ok(like.zeros_like()),
        }
    }

    /// Generates `opts.results` backgrounds for `rgb` around the product `alpha` shows (full
    /// size), each at the photo's size; the product's own pixels are put back by the
    /// compositor afterwards.
    pub fn backgrounds(
        &self,
        rgb: &RgbImage,
        alpha: &GrayImage,
        opts: &GenerateOptions,
    ) -> Result<Vec<RgbImage>, EngineError> {
        let _guard = tch::no_grad_guard();
        let (w, h) = self.sample_size(rgb.width(), rgb.height());
        let small = resize_rgb(rgb, w, h);
        let small_alpha = resize_gray(alpha, w, h);
        let mask = background_mask(&small_alpha, dilate_px(opts.dilate_pct, w, h));
        let mask = Tensor::from_slice(&mask).view([1, 1, h as i64, w as i64]).to_device(self.device);
        let pixels = to_signed(&small).unsqueeze(0).to_device(self.device);
        let masked = &pixels * (1.0 - &mask);
        let (masked, mask) = self.to_sample_space(&masked, &mask)?;
        let n = i64::from(opts.results.max(1));
        let cond = self.encode(opts.prompt.as_deref(), opts.reference.as_ref())?;
        let uncond = self.encode_unconditional(opts.negative_prompt.as_deref(), &cond)?;
        let concat = Tensor::cat(&[masked, mask], 1).repeat([n, 1, 1, 1]);
        let repeat = |t: &Tensor| {
            let mut dims = vec![n];
            dims.extend(std::iter::repeat_n(1, t.dim() - 1));
            t.repeat(&dims)
        };
        let cond = Conditioning { concat: Some(concat.shallow_clone()), embedding: repeat(&cond) };
        let uncond = Conditioning { concat: Some(concat), embedding: repeat(&uncond) };
        let forward = |inputs: &[Tensor]| run_module(&self.denoiser, inputs);
        let denoiser =
            ScriptDenoiser { forward: &forward, prediction: self.spec.prediction, channels: self.channels() };
        let size = cond.concat.as_ref().expect("set above").size();
        let samples = diffusion::sample(
            &denoiser,
            &self.schedule,
            &cond,
            &SampleOptions {
                sampler: opts.sampler,
                steps: opts.steps as usize,
                spacing: Spacing::Trailing,
                shape: vec![self.channels(), size[2], size[3]],
                seeds: (0..opts.results.max(1) as u64).map(|k| opts.seed.wrapping_add(k)).collect(),
                guidance: (opts.guidance > 1.0)
                    .then_some(Guidance { scale: f64::from(opts.guidance), uncond: &uncond }),
                clip: self.spec.clip_sample,
                device: self.device,
            },
        )?;
        let pixels = self.to_pixels(&samples)?;
        Ok((0..n).map(|k| resize_rgb(&from_signed(&pixels.get(k)), rgb.width(), rgb.height())).collect())
    }

    /// The masked image and mask in the space the denoiser samples in.
    fn to_sample_space(&self, masked: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor), EngineError> {
        match (&self.spec.space, &self.vae) {
            (Space::Latent { downsample, .. }, Some((encoder, _))) => {
                let latents = run_module(encoder, &[masked.shallow_clone()])?;
                // A latent is to be generated when any pixel it covers is.
                let f = i64::from(*downsample);
                let mask = mask.max_pool2d([f, f], [f, f], [0, 0], [1, 1], false);
                Ok((latents, mask))
            }
            _ => Ok((masked.shallow_clone(), mask.shallow_clone())),
        }
    }

    fn to_pixels(&self, samples: &Tensor) -> Result<Tensor, EngineError> {
        match &self.vae {
            Some((_, decoder)) => run_module(decoder, &[samples.shallow_clone()]),
            None => Ok(samples.shallow_clone()),
        }
    }
}

/// Sides of samples must be multiples of the denoiser's and the VAE's down-sampling together.
pub fn sample_multiple(spec: &GeneratorSpec) -> u32 {
    match &spec.space {
        Space::Pixel => spec.multiple_of,
        Space::Latent { downsample, .. } => spec.multiple_of * downsample,
    }
}

/// The bucket a `w` x `h` photo is generated (and trained) at.
pub fn sample_size(spec: &GeneratorSpec, w: u32, h: u32) -> (u32, u32) {
    let buckets = crate::buckets::buckets_of(spec.pixel_budget, sample_multiple(spec));
    crate::buckets::nearest(&buckets, w, h)
}
