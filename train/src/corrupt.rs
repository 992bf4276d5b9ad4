//! Seeded corruption of training images, so a model learns from a contributor's photo
//! without memorising it: Gaussian noise (the matting fine-tune) or dropped pixels (the
//! generator fine-tune's Ambient Diffusion masks). The choice of samples, the noise and the
//! masks are functions of the job's seed alone (no global RNG), so a resumed or re-run job
//! corrupts the same images the same way.

use rayon::prelude::*;
use tch::Tensor;

/// Separates the random streams drawn from one job seed.
const NOISE_STREAM: u64 = 0x6e6f_6973_6500_0001;
const CHOICE_STREAM: u64 = 0x6368_6f69_6365_0002;
const DROP_STREAM: u64 = 0x6472_6f70_7065_0003;

/// `image` (`3 x H x W`, float in `[0, 1]`, any device) plus Gaussian noise of standard
/// deviation `strength`, clamped to `[0, 1]`; the same `seed` gives the same noise.
pub fn corrupt(image: &Tensor, strength: f64, seed: u64) -> Tensor {
    let n = image.numel();
    let mut noise = vec![0f32; n];
    // Each element from its own index, so the result does not depend on rayon's split.
    noise.par_chunks_mut(1 << 14).enumerate().for_each(|(chunk, out)| {
        let base = (chunk << 14) as u64;
        for (k, v) in out.iter_mut().enumerate() {
            *v = gaussian(seed, base + k as u64) as f32;
        }
    });
    let noise = Tensor::from_slice(&noise).view(image.size().as_slice()).to_device(image.device());
    (image + noise.to_kind(image.kind()) * strength).clamp(0.0, 1.0)
}

/// Whether sample `index` is one of the corrupted ones, so that about `ratio` of all
/// samples are; the same for the same `seed`, whatever order the samples are visited in.
pub fn chosen(index: usize, ratio: f64, seed: u64) -> bool {
    unit(hash(seed ^ CHOICE_STREAM, index as u64)) < ratio
}

/// A `width` x `height` pixel mask, row-major: `0.0` where the pixel is dropped (each with
/// probability `p`, independently), `1.0` where it is kept; the same `seed` gives the same mask.
pub fn pixel_mask(width: usize, height: usize, p: f64, seed: u64) -> Vec<f32> {
    (0..width * height).map(|i| if unit(hash(seed ^ DROP_STREAM, i as u64)) < p { 0.0 } else { 1.0 }).collect()
}

/// A standard normal value for element `i`, by Box-Muller on two uniform halves of a hash.
fn gaussian(seed: u64, i: u64) -> f64 {
    let h = hash(seed ^ NOISE_STREAM, i);
    // In (0, 1]: the logarithm needs a non-zero argument.
    let u1 = (f64::from((h >> 32) as u32) + 1.0) / 4_294_967_296.0;
    let u2 = f64::from(h as u32) / 4_294_967_296.0;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Uniform in `[0, 1)` from the top 53 bits of `h`.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64's finaliser over the seed and the index: cheap, and every input bit moves
/// every output bit.
fn hash(seed: u64, i: u64) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    mix(mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    fn grey() -> Tensor {
        Tensor::full([3, 64, 80], 0.5, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_same_seed_gives_the_same_noise_and_another_seed_other_noise() {
        let a = corrupt(&grey(), 0.1, 7);
        assert!(a.equal(&corrupt(&grey(), 0.1, 7)));
        assert!(!a.equal(&corrupt(&grey(), 0.1, 8)));
        assert_eq!(a.size(), [3, 64, 80]);
        assert_eq!(a.kind(), Kind::Float);
    }

    #[test]
    fn noise_has_the_requested_strength_and_stays_in_range() {
        let out = corrupt(&grey(), 0.05, 3);
        let diff = &out - grey();
        let (mean, std) = (diff.mean(Kind::Double).double_value(&[]), diff.std(true).double_value(&[]));
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((std / 0.05 - 1.0).abs() < 0.03, "std {std}");
        let strong = corrupt(&grey(), 2.0, 3);
        assert!(strong.min().double_value(&[]) >= 0.0 && strong.max().double_value(&[]) <= 1.0);
        assert!(strong.eq(0.0).sum(Kind::Int64).int64_value(&[]) > 0, "clamped at zero, not wrapped");
        assert!(corrupt(&grey(), 0.0, 3).equal(&grey()));
    }

    #[test]
    fn about_the_ratio_of_samples_is_chosen_deterministically() {
        for (ratio, seed) in [(0.1, 1), (0.3, 2), (0.5, 3), (0.9, 4)] {
            let picked: Vec<usize> = (0..10_000).filter(|&i| chosen(i, ratio, seed)).collect();
            let share = picked.len() as f64 / 10_000.0;
            assert!((share - ratio).abs() < 0.02, "ratio {ratio}: {share}");
            let again: Vec<usize> = (0..10_000).filter(|&i| chosen(i, ratio, seed)).collect();
            assert_eq!(picked, again);
            let other: Vec<usize> = (0..10_000).filter(|&i| chosen(i, ratio, seed + 100)).collect();
            assert_ne!(picked, other, "another seed picks other samples");
        }
        assert!(!(0..10_000).any(|i| chosen(i, 0.0, 5)));
        assert!((0..10_000).all(|i| chosen(i, 1.0, 5)));
    }

    #[test]
    fn pixel_masks_drop_about_p_of_the_pixels_the_same_way_per_seed() {
        for (p, seed) in [(0.1, 1), (0.5, 2), (0.8, 3)] {
            let mask = pixel_mask(100, 80, p, seed);
            assert_eq!(mask.len(), 8000);
            assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0));
            let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / 8000.0;
            assert!((dropped - p).abs() < 0.02, "p {p}: {dropped}");
            assert_eq!(mask, pixel_mask(100, 80, p, seed));
            assert_ne!(mask, pixel_mask(100, 80, p, seed + 1), "another seed drops other pixels");
        }
        assert!(pixel_mask(10, 10, 0.0, 4).iter().all(|&v| v == 1.0));
    }
}
