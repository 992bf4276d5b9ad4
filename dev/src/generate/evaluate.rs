//! The automatic check of a background generator on held-out synthetic product photos: for
//! each photo a new backdrop class is asked for (never the one it has), the background is
//! generated and the product composited back, and the result
//!
//! - keeps every product pixel (alpha >= 240 in the matte) bit for bit,
//! - does not grow the product: object expansion = product area of the result, as the
//!   matting model sees it, minus the input's, in percent of the image; and growth = the
//!   share of the image that is product in the result but was not in the input (expansion
//!   nets growth against pixels the matte no longer counts, growth does not),
//! - shows the backdrop asked for, as the [`BackdropClassifier`] recognises it.
//!
//! A result passing all three (growth at most [`EXPANSION_LIMIT_PCT`]) is a success.

use fleet_imaging::composite::{composite, Background, CompositeOptions, Composited};
use fleet_imaging::resize::resize_gray;
use fleet_synth::backdrop::{prompt, render_scene, Backdrop};
use image::{GrayImage, RgbImage};
use serde::Serialize;

use super::classifier::BackdropClassifier;
use crate::error::{DevError, IoAt, Result};
use fleet_engine::generate::{GenerateOptions, Generator};
use fleet_engine::model::LoadedModel;
use fleet_engine::preprocess::normalize_into;

/// Most growth a success may show, percent of the image.
pub const EXPANSION_LIMIT_PCT: f64 = 2.0;

/// What the check found over a set of photos.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Photos generated for.
    pub photos: usize,
    /// Share of results passing all three checks.
    pub success_rate: f64,
    /// Share whose product pixels are all the input's.
    pub foreground_exact: f64,
    /// Mean object expansion (result's product area minus the input's), percent of the image.
    pub expansion_mean_pct: f64,
    /// Mean growth (product in the result where the input had none), percent of the image.
    pub growth_mean_pct: f64,
    /// Share whose growth is over the limit.
    pub expanded_share: f64,
    /// Share whose backdrop is the class asked for.
    pub class_accuracy: f64,
    /// Seconds generating, per photo.
    pub seconds_per_photo: f64,
}

/// The product's alpha (full size) of `rgb` by the matting model.
pub fn matte(matting: &LoadedModel, rgb: &RgbImage) -> Result<GrayImage> {
    let spec = &matting.manifest.input;
    let mut buf = vec![0f32; 3 * (spec.width * spec.height) as usize];
    normalize_into(rgb, spec, &mut buf);
    let batch = tch::Tensor::from_slice(&buf).view([1, 3, spec.height as i64, spec.width as i64]);
    let out = matting.forward(&batch)?;
    let (h, w) = out.alpha_size;
    let alpha = out.alphas.into_iter().next().unwrap_or_default();
    let len = alpha.len();
    let small = GrayImage::from_raw(w, h, alpha).ok_or(DevError::AlphaSize { width: w, height: h, len })?;
    Ok(resize_gray(&small, rgb.width(), rgb.height()))
}

/// Percent of the image the product covers (alpha > 127).
fn area_pct(alpha: &GrayImage) -> f64 {
    100.0 * alpha.as_raw().iter().filter(|&&a| a > 127).count() as f64 / alpha.as_raw().len().max(1) as f64
}

/// Percent of the image that is product in `after` and not in `before`.
fn growth_pct(before: &GrayImage, after: &GrayImage) -> f64 {
    let grown = before.as_raw().iter().zip(after.as_raw()).filter(|(&b, &a)| a > 127 && b <= 127).count();
    100.0 * grown as f64 / before.as_raw().len().max(1) as f64
}

/// The held-out photo `i` (seeds far from the training ones) and the class asked for it.
pub fn held_out(i: usize) -> (RgbImage, Backdrop, Backdrop) {
    let sizes = [(64, 48), (56, 56), (48, 64)];
    let own = Backdrop::ALL[i % Backdrop::ALL.len()];
    let asked = Backdrop::ALL[(i + 1 + (i / Backdrop::ALL.len()) % (Backdrop::ALL.len() - 1)) % Backdrop::ALL.len()];
    let (w, h) = sizes[i % sizes.len()];
    let scene = render_scene(own, w, h, 900_000 + i as u64, 50_000 + i as u64);
    (scene.image, own, asked)
}

/// Runs the check over `photos` held-out photos with `opts` (its prompt is replaced by the
/// class asked for, its seed offset per photo).
pub fn evaluate(
    generator: &Generator,
    matting: &LoadedModel,
    classifier: &BackdropClassifier,
    photos: usize,
    opts: &GenerateOptions,
    save: Option<&std::path::Path>,
) -> Result<Evaluation> {
    let compositing = CompositeOptions::default();
    let (mut exact, mut expanded, mut right, mut success) = (0usize, 0usize, 0usize, 0usize);
    let (mut expansion_sum, mut growth_sum) = (0.0, 0.0);
    let started = std::time::Instant::now();
    for i in 0..photos {
        let (rgb, _, asked) = held_out(i);
        let alpha = matte(matting, &rgb)?;
        let mut o = opts.clone();
        o.prompt = Some(prompt(asked, i as u64));
        o.seed = opts.seed.wrapping_add(i as u64 * 101);
        o.results = 1;
        let background = generator.backgrounds(&rgb, &alpha, &o)?.remove(0);
        let out = match composite(
            &rgb,
            &alpha,
            &CompositeOptions { background: Background::Image(background.into()), ..compositing.clone() },
        ) {
            Composited::Rgb(img) => img,
            Composited::Rgba(_) => return Err(DevError::OpaqueComposite),
        };
        let kept = alpha
            .pixels()
            .zip(rgb.pixels().zip(out.pixels()))
            .all(|(a, (x, y))| a.0[0] < compositing.preserve_at || x == y);
        let after = matte(matting, &out)?;
        let expansion = area_pct(&after) - area_pct(&alpha);
        let growth = growth_pct(&alpha, &after);
        let seen = classifier.classify(std::slice::from_ref(&out))[0];
        let class_ok = seen == asked;
        if let Some(dir) = save {
            std::fs::create_dir_all(dir).at(dir)?;
            let name = format!("{i:03}-asked-{}-seen-{}-grew-{growth:.1}.png", asked.name(), seen.name());
            let mut pair = RgbImage::new(rgb.width() * 2, rgb.height());
            image::imageops::replace(&mut pair, &rgb, 0, 0);
            image::imageops::replace(&mut pair, &out, i64::from(rgb.width()), 0);
            let path = dir.join(name);
            pair.save(&path).map_err(|cause| DevError::Image { path: path.clone(), cause })?;
        }
        exact += usize::from(kept);
        expanded += usize::from(growth > EXPANSION_LIMIT_PCT);
        right += usize::from(class_ok);
        success += usize::from(kept && growth <= EXPANSION_LIMIT_PCT && class_ok);
        expansion_sum += expansion;
        growth_sum += growth;
    }
    let n = photos.max(1) as f64;
    Ok(Evaluation {
        photos,
        success_rate: success as f64 / n,
        foreground_exact: exact as f64 / n,
        expansion_mean_pct: expansion_sum / n,
        growth_mean_pct: growth_sum / n,
        expanded_share: expanded as f64 / n,
        class_accuracy: right as f64 / n,
        seconds_per_photo: started.elapsed().as_secs_f64() / n,
    })
}
