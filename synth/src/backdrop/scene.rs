//! Product photos on backdrops: a catalog product composited over a backdrop with its
//! prompt, and the reference background generator's training set built from them.

use image::{imageops, GrayImage, RgbImage};
use rayon::prelude::*;

use super::{prompt, render_backdrop, Backdrop};
use crate::rng::mix_seed;

/// Stream id for the backdrop seed of a composited scene.
const SCENE_STREAM: u64 = 0x5ce4_e0b1;

/// A product photo on a backdrop, with what it shows.
#[derive(Clone, Debug)]
pub struct BackdropScene {
    /// The composited photo.
    pub image: RgbImage,
    /// Product coverage, 0 (backdrop) to 255 (opaque product).
    pub alpha: GrayImage,
    /// The backdrop's class.
    pub backdrop: Backdrop,
    /// A prompt naming the backdrop.
    pub prompt: String,
}

/// Renders product `index` of catalog `seed` (see [`crate::render_sample`]) at `width` x `height`,
/// composited over a `kind` backdrop that also varies with `index`. The product loses
/// its own background and shadows; pixels where alpha is 255 are the product's exactly.
pub fn render_scene(kind: Backdrop, width: u32, height: u32, seed: u64, index: u64) -> BackdropScene {
    let (w, h) = (width.max(1), height.max(1));
    let (product, alpha) = product_layer(seed, index, w, h);
    let backdrop_seed = scene_backdrop_seed(seed, index);
    let mut image = render_backdrop(kind, w, h, backdrop_seed);
    composite(&mut image, &product, &alpha);
    BackdropScene { image, alpha, backdrop: kind, prompt: prompt(kind, backdrop_seed) }
}

/// One photo of the reference background generator's training set.
#[derive(Clone, Debug)]
pub struct TrainingPhoto {
    /// File name, `<backdrop>-<i>.png`.
    pub name: String,
    /// The photo.
    pub image: RgbImage,
    /// Its prompt.
    pub prompt: String,
    /// Who it is credited to (`synth-<backdrop>`).
    pub contributor: String,
}

/// The reference generator's training set: `per_class` product photos on each backdrop,
/// the classes interleaved, sizes 64x48, 56x56 and 48x64 in turn, each with its prompt.
pub fn training_photos(per_class: usize, seed: u64) -> Vec<TrainingPhoto> {
    const SIZES: [(u32, u32); 3] = [(64, 48), (56, 56), (48, 64)];
    let jobs: Vec<(usize, usize, Backdrop)> = (0..per_class)
        .flat_map(|i| Backdrop::ALL.into_iter().map(move |kind| (i, kind)))
        .enumerate()
        .map(|(n, (i, k))| (n, i, k))
        .collect();
    jobs.into_par_iter()
        .map(|(n, i, kind)| {
            let (w, h) = SIZES[n % SIZES.len()];
            let scene = render_scene(kind, w, h, seed.wrapping_mul(1000).wrapping_add(n as u64), n as u64);
            TrainingPhoto {
                name: format!("{}-{i}.png", kind.name()),
                image: scene.image,
                prompt: scene.prompt,
                contributor: format!("synth-{}", kind.name()),
            }
        })
        .collect()
}

/// `out = alpha * product + (1 - alpha) * out`, rounded; exact where alpha is 0 or 255.
fn composite(out: &mut RgbImage, product: &RgbImage, alpha: &GrayImage) {
    let pixels = out.chunks_exact_mut(3).zip(product.chunks_exact(3)).zip(alpha.as_raw());
    for ((dst, src), &a) in pixels {
        let a = u32::from(a);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = ((a * u32::from(s) + (255 - a) * u32::from(*d) + 127) / 255) as u8;
        }
    }
}

/// The product sample resized to `w` x `h`: its photo and its alpha.
pub(super) fn product_layer(seed: u64, index: u64, w: u32, h: u32) -> (RgbImage, GrayImage) {
    let long = w.max(h);
    let sample = crate::render_sample(seed, index, long, long);
    let filter = imageops::FilterType::Triangle;
    (imageops::resize(&sample.image, w, h, filter), imageops::resize(&sample.alpha, w, h, filter))
}

/// The backdrop seed of scene (`seed`, `index`).
pub(super) fn scene_backdrop_seed(seed: u64, index: u64) -> u64 {
    mix_seed(seed, index, SCENE_STREAM)
}
