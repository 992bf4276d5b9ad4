//! Tests of the backdrops: determinism, sizes, prompts, class separability (a nearest-centroid
//! classifier on simple image features) and scene compositing.

use image::{imageops, RgbImage};

use super::scene::{product_layer, scene_backdrop_seed};
use super::*;

/// Mean RGB, mean absolute horizontal and vertical luminance gradient, luminance std.
fn features(img: &RgbImage) -> [f32; 6] {
    let (w, h) = img.dimensions();
    let lum: Vec<f32> = img
        .pixels()
        .map(|p| (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) / 255.0)
        .collect();
    let n = lum.len() as f32;
    let mut rgb = [0.0f32; 3];
    for p in img.pixels() {
        for k in 0..3 {
            rgb[k] += f32::from(p[k]) / 255.0 / n;
        }
    }
    let (w, h) = (w as usize, h as usize);
    let (mut gx, mut gy) = (0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            if x + 1 < w {
                gx += (lum[y * w + x + 1] - lum[y * w + x]).abs() / ((w - 1) * h) as f32;
            }
            if y + 1 < h {
                gy += (lum[(y + 1) * w + x] - lum[y * w + x]).abs() / (w * (h - 1)) as f32;
            }
        }
    }
    let mean = lum.iter().sum::<f32>() / n;
    let std = (lum.iter().map(|l| (l - mean) * (l - mean)).sum::<f32>() / n).sqrt();
    [rgb[0], rgb[1], rgb[2], gx, gy, std]
}

/// Nearest-centroid classifier on standardised features.
struct Centroids {
    mean: [f32; 6],
    std: [f32; 6],
    centres: Vec<[f32; 6]>,
}

impl Centroids {
    fn train(data: &[(Backdrop, [f32; 6])]) -> Centroids {
        let n = data.len() as f32;
        let (mut mean, mut std) = ([0.0f32; 6], [0.0f32; 6]);
        for (_, f) in data {
            for i in 0..6 {
                mean[i] += f[i] / n;
            }
        }
        let mut sums = [[0.0f32; 6]; 6];
        let mut counts = [0.0f32; 6];
        for (k, f) in data {
            counts[k.index()] += 1.0;
            for i in 0..6 {
                sums[k.index()][i] += f[i];
            }
        }
        let raw: Vec<[f32; 6]> = sums.iter().zip(counts).map(|(s, n)| s.map(|v| v / n)).collect();
        for (k, f) in data {
            for i in 0..6 {
                std[i] += (f[i] - raw[k.index()][i]).powi(2) / n;
            }
        }
        let std = std.map(|v| v.sqrt().max(1e-6));
        let centres = raw.iter().map(|c| std::array::from_fn(|i| (c[i] - mean[i]) / std[i])).collect();
        Centroids { mean, std, centres }
    }

    fn classify(&self, f: &[f32; 6]) -> Backdrop {
        let z: Vec<f32> = (0..6).map(|i| (f[i] - self.mean[i]) / self.std[i]).collect();
        let dist = |c: &[f32; 6]| c.iter().zip(&z).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        let best = (0..6).min_by(|&a, &b| dist(&self.centres[a]).total_cmp(&dist(&self.centres[b]))).unwrap();
        Backdrop::ALL[best]
    }
}

fn train_32() -> Centroids {
    let data: Vec<_> = Backdrop::ALL
        .into_iter()
        .flat_map(|k| (0..40u64).map(move |s| (k, features(&render_backdrop(k, 32, 32, s)))))
        .collect();
    Centroids::train(&data)
}

fn accuracy(c: &Centroids, seeds: std::ops::Range<u64>, render: impl Fn(Backdrop, u64) -> RgbImage) -> f32 {
    let (mut right, mut total) = (0, 0);
    for k in Backdrop::ALL {
        for s in seeds.clone() {
            let got = c.classify(&features(&render(k, s)));
            right += usize::from(got == k);
            total += 1;
        }
    }
    right as f32 / total as f32
}

#[test]
fn names_round_trip() {
    for (i, k) in Backdrop::ALL.into_iter().enumerate() {
        assert_eq!(k.index(), i);
        assert_eq!(Backdrop::from_name(k.name()), Some(k));
    }
    assert_eq!(Backdrop::from_name("velvet"), None);
}

#[test]
fn same_seed_same_bytes_and_seeds_differ() {
    for k in Backdrop::ALL {
        let a = render_backdrop(k, 64, 48, 9);
        assert_eq!(a.as_raw(), render_backdrop(k, 64, 48, 9).as_raw(), "{k:?}");
        assert_ne!(a.as_raw(), render_backdrop(k, 64, 48, 10).as_raw(), "{k:?}");
    }
}

#[test]
fn sizes_are_honoured() {
    for k in Backdrop::ALL {
        for (w, h) in [(48, 32), (32, 48), (32, 32), (1, 7), (256, 256)] {
            assert_eq!(render_backdrop(k, w, h, 3).dimensions(), (w, h), "{k:?}");
        }
    }
    let scene = render_scene(Backdrop::Wood, 48, 32, 1, 2);
    assert_eq!((scene.image.dimensions(), scene.alpha.dimensions()), ((48, 32), (48, 32)));
}

#[test]
fn prompts_use_the_vocabulary_and_name_their_class() {
    for k in Backdrop::ALL {
        for s in 0..200 {
            let p = prompt(k, s);
            assert!(p.split(' ').all(|w| PROMPT_WORDS.contains(&w)), "{p}");
            assert_eq!(p.split(' ').filter(|w| Backdrop::from_name(w).is_some()).count(), 1, "{p}");
            assert_eq!(class_of_prompt(&p), Some(k), "{p}");
        }
    }
    assert_eq!(class_of_prompt("Studio Marble, background"), Some(Backdrop::Marble));
    assert_eq!(class_of_prompt("wood on marble"), None);
    assert_eq!(class_of_prompt("studio background"), None);
}

#[test]
fn classes_are_separable_at_32px() {
    let c = train_32();
    let acc = accuracy(&c, 1000..1040, |k, s| render_backdrop(k, 32, 32, s));
    assert!(acc >= 0.8, "held-out accuracy {acc}");
}

#[test]
fn downscaled_renders_keep_their_class() {
    let c = train_32();
    let acc = accuracy(&c, 2000..2010, |k, s| {
        imageops::resize(&render_backdrop(k, 192, 192, s), 32, 32, imageops::FilterType::Triangle)
    });
    assert!(acc >= 0.8, "accuracy on 192px renders downscaled to 32px {acc}");
}

#[test]
fn scene_keeps_product_pixels_and_shows_backdrop_elsewhere() {
    for (i, k) in Backdrop::ALL.into_iter().enumerate() {
        let (w, h, seed, index) = (96, 64, 5, i as u64);
        let scene = render_scene(k, w, h, seed, index);
        let (product, alpha) = product_layer(seed, index, w, h);
        let backdrop = render_backdrop(k, w, h, scene_backdrop_seed(seed, index));
        assert_eq!(scene.alpha.as_raw(), alpha.as_raw());
        assert!(alpha.as_raw().iter().any(|&a| a > 0), "{k:?} alpha is empty");
        assert!(alpha.as_raw().contains(&0), "{k:?} shows no backdrop");
        for (j, &a) in alpha.as_raw().iter().enumerate() {
            let px = &scene.image.as_raw()[j * 3..j * 3 + 3];
            match a {
                255 => assert_eq!(px, &product.as_raw()[j * 3..j * 3 + 3], "{k:?} pixel {j}"),
                0 => assert_eq!(px, &backdrop.as_raw()[j * 3..j * 3 + 3], "{k:?} pixel {j}"),
                _ => {}
            }
        }
        assert_eq!(scene.backdrop, k);
        assert_eq!(class_of_prompt(&scene.prompt), Some(k));
    }
}

#[test]
fn product_layer_matches_a_resized_sample() {
    let sample = crate::render_sample(4, 1, 60, 60);
    let (image, alpha) = product_layer(4, 1, 60, 40);
    let filter = imageops::FilterType::Triangle;
    assert_eq!(image.as_raw(), imageops::resize(&sample.image, 60, 40, filter).as_raw());
    assert_eq!(alpha.as_raw(), imageops::resize(&sample.alpha, 60, 40, filter).as_raw());
}
