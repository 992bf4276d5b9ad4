//! The parts of a generator's training step: prompt conditioning, the VAE of latent models,
//! and the denoising objective.

use super::*;

/// The frozen prompt (or reference image) encoder of a generator.
pub struct Conditioner {
    pub module: tch::CModule,
    pub tokenizer: Option<(tokenizers::Tokenizer, usize, u32)>,
    pub device: Device,
}

impl Conditioner {
    pub fn load(dir: &Path, spec: &ConditioningSpec, device: Device) -> Result<Self, String> {
        let load = |f: &str| fleet_engine::code::load(&dir.join(f), device).map_err(|e| format!("{f}: {e}"));
        match spec {
            ConditioningSpec::Text { encoder, tokenizer, max_tokens, pad_id, .. } => {
                let tok =
                    tokenizers::Tokenizer::from_file(dir.join(tokenizer)).map_err(|e| format!("{tokenizer}: {e}"))?;
                Ok(Conditioner {
                    module: load(encoder)?,
                    tokenizer: Some((tok, *max_tokens as usize, *pad_id)),
                    device,
                })
            }
            ConditioningSpec::Image { .. } => {
                Err("fine-tuning an image-conditioned generator is not supported: its data sets carry prompts".into())
            }
        }
    }

    /// `[1, ...]` conditioning of `prompt`.
    pub fn encode(&self, prompt: &str) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let (tok, max, pad) = self.tokenizer.as_ref().expect("text conditioning");
        let ids = tokenize(tok, prompt, *max, *pad).map_err(|e| e.to_string())?;
        run_module(&self.module, &[Tensor::from_slice(&ids).view([1, -1]).to_device(self.device)])
            .map_err(|e| e.to_string())
    }
}

/// The VAE of a latent generator (none for pixel ones), frozen.
pub struct Vae {
    pub encoder: Option<(tch::CModule, i64)>,
}

impl Vae {
    pub fn load(dir: &Path, space: &Space, device: Device) -> Result<Self, String> {
        Ok(Vae {
            encoder: match space {
                Space::Pixel => None,
                Space::Latent { encoder, downsample, .. } => Some((
                    fleet_engine::code::load(&dir.join(encoder), device).map_err(|e| format!("{encoder}: {e}"))?,
                    i64::from(*downsample),
                )),
            },
        })
    }

    /// Pixels and masks in the denoiser's space.
    pub fn encode(&self, pixels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor), String> {
        match &self.encoder {
            None => Ok((pixels.shallow_clone(), mask.shallow_clone())),
            Some((enc, f)) => {
                let _guard = tch::no_grad_guard();
                let latents = run_module(enc, &[pixels.shallow_clone()]).map_err(|e| e.to_string())?;
                Ok((latents, mask.max_pool2d([*f, *f], [*f, *f], [0, 0], [1, 1], false)))
            }
        }
    }
}

/// The denoising objective of one batch, and the held-out error.
pub struct Objective<'a> {
    pub schedule: &'a NoiseSchedule,
    pub prediction: Prediction,
    pub vae: &'a Vae,
    pub uncond: &'a Tensor,
    pub device: Device,
}

/// splitmix64 of `x`: a seeded draw per (seed, step, item).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Objective<'_> {
    /// Mean squared error of the prediction, over every pixel, for `items` noised at seeded
    /// timesteps: a function of (seed, step) alone, so a resumed run repeats it.
    pub fn loss(
        &self,
        module: &tch::TrainableCModule,
        items: &[&Prepared],
        masks: MaskSource,
        seed: u64,
        step: u32,
    ) -> Result<Tensor, String> {
        let draw = |item: usize, salt: u64| {
            mix(seed ^ mix(u64::from(step) << 8 | salt) ^ (item as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
        };
        let flip = draw(0, 7) & 1 == 1;
        let stack = |f: &dyn Fn(usize, &Prepared) -> Tensor| {
            Tensor::stack(&items.iter().enumerate().map(|(k, p)| f(k, p)).collect::<Vec<_>>(), 0).to_device(self.device)
        };
        let pixels = stack(&|_, p| p.pixels.shallow_clone());
        let mask = stack(&|k, p| match masks {
            MaskSource::Background => p.mask.shallow_clone(),
            MaskSource::Scribble => {
                let (h, w) = (p.mask.size()[1], p.mask.size()[2]);
                Tensor::from_slice(&scribble_mask(w as u32, h as u32, draw(k, 3))).view([1, h, w])
            }
        });
        let (pixels, mask) = if flip { (pixels.flip([3]), mask.flip([3])) } else { (pixels, mask) };
        let cond = stack(&|k, p| {
            let dropped = (draw(k, 5) % 10_000) as f64 / 10_000.0 < PROMPT_DROPOUT;
            if dropped {
                self.uncond.squeeze_dim(0).to_device(Device::Cpu)
            } else {
                p.cond.shallow_clone()
            }
        });
        let t: Vec<i64> = (0..items.len()).map(|k| (draw(k, 1) % self.schedule.len() as u64) as i64).collect();
        let noise_seed = draw(0, 11);
        self.denoising_error(module, &pixels, &mask, &cond, &t, noise_seed, false).map(|(all, _)| all)
    }

    /// `(error over every pixel, error over the region to generate)` of one noised batch.
    #[allow(clippy::too_many_arguments)]
    pub fn denoising_error(
        &self,
        module: &tch::TrainableCModule,
        pixels: &Tensor,
        mask: &Tensor,
        cond: &Tensor,
        t: &[i64],
        noise_seed: u64,
        with_region: bool,
    ) -> Result<(Tensor, Option<Tensor>), String> {
        let masked = pixels * (1.0 - mask);
        let (x0, _) = self.vae.encode(pixels, mask)?;
        let (masked, mask) = self.vae.encode(&masked, mask)?;
        let noise = seeded_noise(&x0.size(), noise_seed).to_device(self.device);
        let a: Vec<f32> = t.iter().map(|&s| self.schedule.alpha_bar(s as usize) as f32).collect();
        let a = Tensor::from_slice(&a).view([-1, 1, 1, 1]).to_device(self.device);
        let keep = (-&a + 1.0).sqrt();
        let x_t = a.sqrt() * &x0 + &keep * &noise;
        let target = match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::V => a.sqrt() * &noise - &keep * &x0,
        };
        let ts = Tensor::from_slice(t).to_device(self.device);
        let args = [x_t, ts, masked, mask.shallow_clone(), cond.shallow_clone()].map(IValue::Tensor);
        let pred = match module.forward_is(&args).map_err(|e| format!("denoiser forward: {e}"))? {
            IValue::Tensor(p) => p,
            _ => return Err("the denoiser must return one tensor".into()),
        };
        let sq = (pred - target).square();
        let all = sq.mean(Kind::Float);
        let region = with_region.then(|| {
            let m = mask.expand_as(&sq);
            (&sq * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
        });
        Ok((all, region))
    }

    /// Held-out denoising error (all pixels, background region) at fixed timesteps and
    /// noise, with the prompts: comparable between the base and each phase.
    pub fn validate(
        &self,
        module: &tch::TrainableCModule,
        validation: &[(usize, Prepared)],
    ) -> Result<(f64, f64), String> {
        let _guard = tch::no_grad_guard();
        let (mut all, mut region, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for (k, (_, p)) in validation.iter().enumerate() {
            for (j, frac) in VALIDATION_TIMESTEPS.iter().enumerate() {
                let t = ((self.schedule.len() - 1) as f64 * frac) as i64;
                let (a, r) = self.denoising_error(
                    module,
                    &p.pixels.unsqueeze(0).to_device(self.device),
                    &p.mask.unsqueeze(0).to_device(self.device),
                    &p.cond.unsqueeze(0).to_device(self.device),
                    &[t],
                    (k * VALIDATION_TIMESTEPS.len() + j) as u64,
                    true,
                )?;
                all += a.double_value(&[]);
                region += r.expect("asked for").double_value(&[]);
                n += 1.0;
            }
        }
        Ok((all / n.max(1.0), region / n.max(1.0)))
    }
}
