//! The parts of a generator's training step: prompt conditioning, the VAE of latent models,
//! the denoising objective, and its Ambient Diffusion variant for corrupted photos.
//!
//! **Corruption** (`Hyper::corruption_ratio`), after Daras et al. 2023, "Ambient Diffusion:
//! Learning Clean Distributions from Corrupted Data": each chosen photo is only ever seen
//! through a fixed random pixel mask A (each pixel dropped with [`AMBIENT_DROP`], drawn once
//! from the job's seed and the photo's index), as if the contributor had sent that corrupted
//! photo. Each step drops [`AMBIENT_FURTHER`] more of the pixels A keeps (B, fresh per step):
//! the denoiser is given the further-corrupted input (Ã = B·A applied to x_t and to the known
//! region, whose dropped pixels are marked "to generate"), and the loss is taken only on the
//! pixels A observes. Because it must predict pixels it was not shown (A but not Ã), it learns
//! the expectation of the clean image given a corrupted one instead of the identity on what it
//! sees, without ever seeing the photo's dropped pixels.
//!
//! Where this is not the paper's method: the paper's network also takes Ã as an input and
//! predicts x0, with the loss on x0; this denoiser's inputs are fixed (x_t, t, masked image,
//! mask, prompt), so Ã reaches it as zeros in x_t and as "to generate" in the mask, and the
//! loss is the objective's own (v or epsilon) on A's pixels (for v-prediction the x0 error is
//! the v error times sqrt(1 - a_t), a per-timestep weight). The paper samples from corrupted
//! inputs too; the worker's sampler is unchanged and gives the full x_t. Pixel-space
//! generators only: a latent generator's pixels are not what its denoiser sees.

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

/// Share of a corrupted photo's pixels its fixed mask A drops (the paper's p).
pub const AMBIENT_DROP: f64 = 0.5;

/// Share of the pixels A keeps that each step drops on top (the further corruption B, the
/// paper's delta).
pub const AMBIENT_FURTHER: f64 = 0.1;

/// The fixed mask A of photo `index` at `w` x `h` (`[1,h,w]`, 1 = observed) when the job
/// corrupts it (`corrupt::chosen`), or `None`: a function of the seed and the index alone, so
/// a resumed job corrupts the same photos the same way.
pub fn observed_mask(index: usize, w: u32, h: u32, ratio: f64, seed: u64) -> Option<Tensor> {
    crate::corrupt::chosen(index, ratio, seed).then(|| {
        let a = crate::corrupt::pixel_mask(w as usize, h as usize, AMBIENT_DROP, mix(seed ^ mix(index as u64)));
        Tensor::from_slice(&a).view([1, i64::from(h), i64::from(w)])
    })
}

/// The Ambient Diffusion masks of a batch, `[B,1,h,w]`, 1 = kept; all ones for the items not
/// corrupted.
pub struct AmbientMasks {
    /// A: the pixels of the photo there are (the loss is taken on these).
    pub observed: Tensor,
    /// Ã = B·A: the pixels the denoiser is shown this step.
    pub seen: Tensor,
}

/// What the objective runs: the trainable TorchScript denoiser, or a stand-in in the tests.
pub trait Denoise {
    /// The prediction for `[x_t, t, masked image, mask, conditioning]`.
    fn predict(&self, inputs: [Tensor; 5]) -> Result<Tensor, String>;
}

impl Denoise for tch::TrainableCModule {
    fn predict(&self, inputs: [Tensor; 5]) -> Result<Tensor, String> {
        match self.forward_is(&inputs.map(IValue::Tensor)).map_err(|e| format!("denoiser forward: {e}"))? {
            IValue::Tensor(p) => Ok(p),
            _ => Err("the denoiser must return one tensor".into()),
        }
    }
}

/// splitmix64 of `x`: a seeded draw per (seed, step, item).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Objective<'_> {
    /// Mean squared error of the prediction, over every pixel (over the observed ones of
    /// corrupted photos), for `items` noised at seeded timesteps: a function of (seed, step)
    /// alone, so a resumed run repeats it.
    pub fn loss(
        &self,
        module: &dyn Denoise,
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
        // Without a corrupted item the batch is exactly what it was before corruption existed.
        let ambient = items.iter().any(|p| p.observed.is_some()).then(|| {
            let observed =
                stack(&|_, p| p.observed.as_ref().map_or_else(|| Tensor::ones_like(&p.mask), Tensor::shallow_clone));
            let further = stack(&|k, p| match &p.observed {
                Some(_) => {
                    let (h, w) = (p.mask.size()[1], p.mask.size()[2]);
                    let b = crate::corrupt::pixel_mask(w as usize, h as usize, AMBIENT_FURTHER, draw(k, 13));
                    Tensor::from_slice(&b).view([1, h, w])
                }
                None => Tensor::ones_like(&p.mask),
            });
            let seen = &observed * further;
            if flip {
                AmbientMasks { observed: observed.flip([3]), seen: seen.flip([3]) }
            } else {
                AmbientMasks { observed, seen }
            }
        });
        self.denoising_error(module, &pixels, &mask, &cond, &t, noise_seed, false, ambient.as_ref()).map(|(all, _)| all)
    }

    /// `(error over every pixel, error over the region to generate)` of one noised batch;
    /// with `ambient`, the denoiser sees only Ã's pixels and the error is over A's.
    #[allow(clippy::too_many_arguments)]
    pub fn denoising_error(
        &self,
        module: &dyn Denoise,
        pixels: &Tensor,
        mask: &Tensor,
        cond: &Tensor,
        t: &[i64],
        noise_seed: u64,
        with_region: bool,
        ambient: Option<&AmbientMasks>,
    ) -> Result<(Tensor, Option<Tensor>), String> {
        // A pixel of the known region that Ã drops is unknown: "to generate", like the background.
        let mask = match ambient {
            Some(m) => 1.0 - (1.0 - mask) * &m.seen,
            None => mask.shallow_clone(),
        };
        let masked = pixels * (1.0 - &mask);
        let (x0, _) = self.vae.encode(pixels, &mask)?;
        let (masked, mask) = self.vae.encode(&masked, &mask)?;
        let noise = seeded_noise(&x0.size(), noise_seed).to_device(self.device);
        let a: Vec<f32> = t.iter().map(|&s| self.schedule.alpha_bar(s as usize) as f32).collect();
        let a = Tensor::from_slice(&a).view([-1, 1, 1, 1]).to_device(self.device);
        let keep = (-&a + 1.0).sqrt();
        let x_t = a.sqrt() * &x0 + &keep * &noise;
        let x_t = match ambient {
            Some(m) => x_t * &m.seen,
            None => x_t,
        };
        let target = match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::V => a.sqrt() * &noise - &keep * &x0,
        };
        let ts = Tensor::from_slice(t).to_device(self.device);
        let pred = module.predict([x_t, ts, masked, mask.shallow_clone(), cond.shallow_clone()])?;
        let sq = (pred - target).square();
        let all = match ambient {
            None => sq.mean(Kind::Float),
            Some(m) => {
                let w = m.observed.expand_as(&sq);
                (&sq * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1.0)
            }
        };
        let region = with_region.then(|| {
            let m = mask.expand_as(&sq);
            (&sq * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
        });
        Ok((all, region))
    }

    /// Held-out denoising error (all pixels, background region) at fixed timesteps and
    /// noise, with the prompts: comparable between the base and each phase.
    pub fn validate(&self, module: &dyn Denoise, validation: &[(usize, Prepared)]) -> Result<(f64, f64), String> {
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
                    None,
                )?;
                all += a.double_value(&[]);
                region += r.expect("asked for").double_value(&[]);
                n += 1.0;
            }
        }
        Ok((all / n.max(1.0), region / n.max(1.0)))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use fleet_protocol::manifest::generator::{BetaSchedule, ScheduleSpec};

    use super::*;

    const H: i64 = 8;
    const W: i64 = 12;

    /// A stand-in denoiser: every input pixel reaches the prediction of its neighbours (a 3x3
    /// blur), so a dropped pixel that leaked into any input would move the loss; it records
    /// what it was shown, and can add `bump` to its prediction.
    struct Blur {
        shown: RefCell<Vec<Tensor>>,
        bump: Option<Tensor>,
    }

    impl Blur {
        fn new(bump: Option<Tensor>) -> Self {
            Blur { shown: RefCell::new(Vec::new()), bump }
        }
    }

    impl Denoise for Blur {
        fn predict(&self, inputs: [Tensor; 5]) -> Result<Tensor, String> {
            let [x_t, t, masked, mask, cond] = &inputs;
            let mixed = x_t * 0.6 + masked * 0.3 + mask * 0.2;
            let blurred = mixed.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>);
            let scale = (t.to_kind(Kind::Float) / 1000.0 + 1.0).view([-1, 1, 1, 1]);
            let pred = blurred * scale + cond.mean(Kind::Float) * 0.01;
            *self.shown.borrow_mut() = inputs.iter().map(Tensor::copy).collect();
            Ok(match &self.bump {
                Some(b) => pred + b,
                None => pred,
            })
        }
    }

    /// What an [`Objective`] borrows: the reference generator's schedule, no VAE, an empty prompt.
    struct Parts {
        schedule: NoiseSchedule,
        vae: Vae,
        uncond: Tensor,
    }

    impl Parts {
        fn new() -> Self {
            let schedule = NoiseSchedule::of(&ScheduleSpec {
                beta_schedule: BetaSchedule::ScaledLinear,
                beta_start: 0.00085,
                beta_end: 0.012,
                train_steps: 1000,
            });
            Parts { schedule, vae: Vae { encoder: None }, uncond: Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)) }
        }

        fn objective(&self) -> Objective<'_> {
            let (schedule, vae, uncond) = (&self.schedule, &self.vae, &self.uncond);
            Objective { schedule, prediction: Prediction::V, vae, uncond, device: Device::Cpu }
        }
    }

    /// Photo `index`: fixed pixels, the right half to generate, its mask A when `corrupt`.
    fn item(index: usize, corrupt: bool) -> Prepared {
        let pixels = (Tensor::arange(3 * H * W, (Kind::Float, Device::Cpu)) * (0.37 + 0.01 * index as f64))
            .sin()
            .view([3, H, W]);
        let mask: Vec<f32> = (0..H * W).map(|i| if i % W >= W / 2 { 1.0 } else { 0.0 }).collect();
        Prepared {
            index,
            pixels,
            mask: Tensor::from_slice(&mask).view([1, H, W]),
            cond: Tensor::full([4], 0.1 * index as f64, (Kind::Float, Device::Cpu)),
            observed: observed_mask(index, W as u32, H as u32, if corrupt { 1.0 } else { 0.0 }, 3),
        }
    }

    /// `(row, column)` of the first pixel `mask` (`[1,H,W]`) has at `value`.
    fn first_at(mask: &Tensor, value: f64) -> (i64, i64) {
        let k = (0..H * W).find(|&k| mask.double_value(&[0, k / W, k % W]) == value).expect("such a pixel");
        (k / W, k % W)
    }

    fn loss_of(module: &dyn Denoise, items: &[&Prepared], step: u32) -> Tensor {
        Parts::new().objective().loss(module, items, MaskSource::Background, 7, step).expect("loss")
    }

    #[test]
    fn ratio_zero_corrupts_nothing_and_the_plain_error_is_over_every_pixel() {
        assert!((0..1000).all(|i| observed_mask(i, 12, 8, 0.0, 11).is_none()));
        let parts = Parts::new();
        let objective = parts.objective();
        let (a, b) = (item(0, false), item(1, false));
        let pixels = Tensor::stack(&[&a.pixels, &b.pixels], 0);
        let mask = Tensor::stack(&[&a.mask, &b.mask], 0);
        let cond = Tensor::stack(&[&a.cond, &b.cond], 0);
        let blur = Blur::new(None);
        let (plain, _) = objective.denoising_error(&blur, &pixels, &mask, &cond, &[100, 700], 5, false, None).unwrap();
        // The objective written out: x_t from every pixel, v target, mean over every element.
        let noise = seeded_noise(&pixels.size(), 5);
        let alpha_bar = |t: usize| parts.schedule.alpha_bar(t) as f32;
        let ab = Tensor::from_slice(&[alpha_bar(100), alpha_bar(700)]).view([-1, 1, 1, 1]);
        let keep = (-&ab + 1.0).sqrt();
        let x_t = ab.sqrt() * &pixels + &keep * &noise;
        let target = ab.sqrt() * &noise - &keep * &pixels;
        let t = Tensor::from_slice(&[100i64, 700]);
        let pred = blur.predict([x_t, t, &pixels * (1.0 - &mask), mask.shallow_clone(), cond.shallow_clone()]).unwrap();
        assert!(plain.equal(&(pred - target).square().mean(Kind::Float)));
        // Masks that keep everything give the same error through the weighted path.
        let ones = Tensor::ones_like(&mask);
        let all_kept = AmbientMasks { observed: ones.shallow_clone(), seen: ones };
        let (weighted, _) =
            objective.denoising_error(&blur, &pixels, &mask, &cond, &[100, 700], 5, false, Some(&all_kept)).unwrap();
        assert!(weighted.allclose(&plain, 1e-6, 1e-7, false));
    }

    /// Photo `index` with the pixel at `(row, column)` set to `value` in every channel.
    fn with_pixel(index: usize, corrupt: bool, (y, x): (i64, i64), value: f64) -> Prepared {
        let mut p = item(index, corrupt);
        p.pixels = p.pixels.copy();
        let _ = p.pixels.narrow(1, y, 1).narrow(2, x, 1).fill_(value);
        p
    }

    #[test]
    fn a_corrupted_photo_is_seen_only_through_its_mask() {
        let (clean, corrupted) = (item(0, false), item(1, true));
        let observed = corrupted.observed.as_ref().expect("ratio 1 corrupts every photo");
        let dropped = observed.eq(0.0).sum(Kind::Float).double_value(&[]) / (H * W) as f64;
        assert!((dropped - AMBIENT_DROP).abs() < 0.2, "dropped {dropped}");
        let (dropped_px, kept_px) = (first_at(observed, 0.0), first_at(observed, 1.0));
        // Over several steps, so both flipped and unflipped batches are met (A flips with the pixels).
        for step in 0..6 {
            let loss = |items: &[&Prepared]| loss_of(&Blur::new(None), items, step);
            let base = loss(&[&clean, &corrupted]);
            assert!(base.equal(&loss(&[&clean, &corrupted])), "a function of (seed, step)");
            let changed = with_pixel(1, true, dropped_px, 40.0);
            assert!(base.equal(&loss(&[&clean, &changed])), "step {step}: a dropped pixel moved the loss");
            let changed = with_pixel(1, true, kept_px, 40.0);
            assert!(!base.equal(&loss(&[&clean, &changed])), "step {step}: an observed pixel is trained on");
            let changed = with_pixel(0, false, dropped_px, 40.0);
            assert!(!base.equal(&loss(&[&changed, &corrupted])), "step {step}: every pixel of a clean photo counts");
        }
    }

    #[test]
    fn the_denoiser_is_shown_the_further_corrupted_input_and_judged_on_the_observed_pixels() {
        let parts = Parts::new();
        let objective = parts.objective();
        let p = item(2, true);
        let observed = p.observed.as_ref().unwrap().unsqueeze(0);
        let further =
            Tensor::from_slice(&crate::corrupt::pixel_mask(W as usize, H as usize, 0.3, 9)).view([1, 1, H, W]);
        let masks = AmbientMasks { observed: observed.shallow_clone(), seen: &observed * further };
        let (pixels, mask, cond) = (p.pixels.unsqueeze(0), p.mask.unsqueeze(0), p.cond.unsqueeze(0));
        let blur = Blur::new(None);
        let (base, _) =
            objective.denoising_error(&blur, &pixels, &mask, &cond, &[300], 1, false, Some(&masks)).unwrap();
        let shown = blur.shown.borrow();
        let hidden = masks.seen.eq(0.0);
        let hidden_count = hidden.sum(Kind::Float).double_value(&[]);
        let observed_not_seen = (&observed - &masks.seen).sum(Kind::Float).double_value(&[]);
        assert!(observed_not_seen > 0.0, "B drops some of what A keeps");
        let x_t_hidden = shown[0].abs().masked_select(&hidden.expand_as(&shown[0])).sum(Kind::Float).double_value(&[]);
        let masked_hidden =
            shown[2].abs().masked_select(&hidden.expand_as(&shown[2])).sum(Kind::Float).double_value(&[]);
        let mask_hidden = shown[3].masked_select(&hidden).sum(Kind::Float).double_value(&[]);
        assert_eq!((x_t_hidden, masked_hidden), (0.0, 0.0), "a pixel Ã drops is zero in every image input");
        assert_eq!(mask_hidden, hidden_count, "and marked to generate");
        drop(shown);
        // The prediction at a pixel A drops is never judged; at one A keeps but Ã hides, it is.
        let at = |(y, x): (i64, i64)| {
            let bump = Tensor::zeros([1, 3, H, W], (Kind::Float, Device::Cpu));
            let _ = bump.narrow(2, y, 1).narrow(3, x, 1).fill_(5.0);
            let (loss, _) = objective
                .denoising_error(&Blur::new(Some(bump)), &pixels, &mask, &cond, &[300], 1, false, Some(&masks))
                .unwrap();
            loss
        };
        assert!(base.equal(&at(first_at(&observed.squeeze_dim(0), 0.0))));
        let kept_not_seen = first_at(&(&observed - &masks.seen).squeeze_dim(0), 1.0);
        assert!(at(kept_not_seen).double_value(&[]) > base.double_value(&[]) + 0.01);
    }
}
