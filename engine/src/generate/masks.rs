//! The masks a background generator works with: the background of a photo as its matte
//! shows it, with the product dilated so none of its pixels is in the region to generate;
//! random brush strokes, as general inpainting models are trained on; and how far a matte
//! can be trusted (the leak filter).

use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Alpha above this (of 255) counts as product when the background mask is made: a low
/// bar, so the faint edge of the product stays out of the region to generate.
pub const PRODUCT_ABOVE: u8 = 25;
/// Alpha values strictly between these (10 % and 90 %) are neither product nor background.
const UNCERTAIN: std::ops::RangeInclusive<u8> = 26..=229;

/// The region to generate (`1.0`) of a `width` x `height` matte, row-major: every pixel
/// farther than `dilate_px` from the product.
pub fn background_mask(alpha: &GrayImage, dilate_px: usize) -> Vec<f32> {
    let (w, h) = (alpha.width() as usize, alpha.height() as usize);
    let product: Vec<bool> = alpha.as_raw().iter().map(|&a| a > PRODUCT_ABOVE).collect();
    let grown = if dilate_px > 0 { fleet_imaging::matte::dilate_mask(&product, w, h, dilate_px) } else { product };
    grown.iter().map(|&p| if p { 0.0 } else { 1.0 }).collect()
}

/// Dilation in pixels for `pct` percent of the long side of a `w` x `h` sample (at least
/// one pixel when `pct > 0`).
pub fn dilate_px(pct: f32, w: u32, h: u32) -> usize {
    if pct <= 0.0 {
        return 0;
    }
    ((pct / 100.0 * w.max(h) as f32).round() as usize).max(1)
}

/// How far a matte can be trusted as a product/background split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatteConfidence {
    /// Share of the product's footprint (alpha above 10 %) that is neither product nor
    /// background: a hesitant matte whose background mask would cut through the product.
    pub uncertain_share: f64,
    /// Share of the image the product covers (alpha above 50 %).
    pub coverage: f64,
}

impl MatteConfidence {
    /// `1 - uncertain_share`, 0 when the matte found no product or nothing else.
    pub fn score(&self) -> f64 {
        if self.coverage <= 0.0 || self.coverage >= 0.95 {
            0.0
        } else {
            1.0 - self.uncertain_share
        }
    }

    /// Why the leak filter drops a sample with this matte at `threshold`, if it does.
    pub fn leak(&self, threshold: f64) -> Option<String> {
        if self.coverage <= 0.0 {
            Some("the matting model finds no product: nothing to keep".into())
        } else if self.coverage >= 0.95 {
            Some(format!("the product covers {:.0} % of the image: no background to learn", 100.0 * self.coverage))
        } else if self.uncertain_share > threshold {
            Some(format!(
                "uncertain_share {:.2} > {threshold:.2}: the matte is unsure where the product ends, so its \
                 background mask would teach the generator to grow the product",
                self.uncertain_share
            ))
        } else {
            None
        }
    }
}

/// The confidence of an 8-bit matte.
pub fn matte_confidence(alpha: &GrayImage) -> MatteConfidence {
    let (mut footprint, mut uncertain, mut product) = (0usize, 0usize, 0usize);
    for &a in alpha.as_raw() {
        footprint += usize::from(a > PRODUCT_ABOVE);
        uncertain += usize::from(UNCERTAIN.contains(&a));
        product += usize::from(a > 127);
    }
    let n = alpha.as_raw().len().max(1) as f64;
    MatteConfidence {
        uncertain_share: if footprint == 0 { 1.0 } else { uncertain as f64 / footprint as f64 },
        coverage: product as f64 / n,
    }
}

/// Random brush strokes over a `w` x `h` image (`1.0` = to generate), covering about 25 to
/// 60 % of it wherever they fall, product or background: general inpainting training masks.
pub fn scribble_mask(w: u32, h: u32, seed: u64) -> Vec<f32> {
    let (wf, hf) = (w as f32, h as f32);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c71_b61e);
    let mut mask = vec![0.0f32; (w * h) as usize];
    let target = rng.gen_range(0.25..0.6);
    let long = wf.max(hf);
    let mut covered = 0.0;
    let mut strokes = 0;
    while covered < target && strokes < 24 {
        strokes += 1;
        let radius = rng.gen_range(0.06..0.16) * long;
        let (mut x, mut y) = (rng.gen_range(0.0..wf), rng.gen_range(0.0..hf));
        let mut angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        for _ in 0..rng.gen_range(3..8) {
            angle += rng.gen_range(-1.2..1.2);
            let length = rng.gen_range(0.15..0.4) * long;
            let (nx, ny) = ((x + angle.cos() * length).clamp(0.0, wf), (y + angle.sin() * length).clamp(0.0, hf));
            paint_segment(&mut mask, w, h, (x, y), (nx, ny), radius);
            (x, y) = (nx, ny);
        }
        covered = mask.iter().sum::<f32>() / mask.len() as f32;
    }
    mask
}

/// Sets every pixel within `radius` of the segment `a`-`b`.
fn paint_segment(mask: &mut [f32], w: u32, h: u32, a: (f32, f32), b: (f32, f32), radius: f32) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-6);
    let x0 = (a.0.min(b.0) - radius).floor().max(0.0) as u32;
    let x1 = ((a.0.max(b.0) + radius).ceil() as u32).min(w);
    let y0 = (a.1.min(b.1) - radius).floor().max(0.0) as u32;
    let y1 = ((a.1.max(b.1) + radius).ceil() as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
            let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            if cx * cx + cy * cy <= radius * radius {
                mask[(y * w + x) as usize] = 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(w: u32, h: u32, r: f32, edge: f32) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let d = ((x as f32 - w as f32 / 2.0).powi(2) + (y as f32 - h as f32 / 2.0).powi(2)).sqrt();
            image::Luma([(255.0 * ((r - d) / edge + 0.5).clamp(0.0, 1.0)) as u8])
        })
    }

    #[test]
    fn the_background_mask_keeps_a_margin_around_every_product_pixel() {
        let alpha = disc(40, 30, 8.0, 1.0);
        for margin in [0, 2, 4] {
            let mask = background_mask(&alpha, margin);
            for (i, &m) in mask.iter().enumerate() {
                let (x, y) = (i % 40, i / 40);
                if m == 1.0 {
                    // No product pixel within `margin` of a pixel to generate.
                    for (j, &a) in alpha.as_raw().iter().enumerate() {
                        let (px, py) = (j % 40, j / 40);
                        if a > PRODUCT_ABOVE {
                            assert!(px.abs_diff(x) > margin || py.abs_diff(y) > margin, "leak at {x},{y}");
                        }
                    }
                }
            }
            let generated = mask.iter().filter(|&&m| m == 1.0).count();
            assert!(generated > 600 && generated < 1200 - 150, "{margin}: {generated}");
        }
        assert!(
            background_mask(&alpha, 4).iter().sum::<f32>() < background_mask(&alpha, 0).iter().sum::<f32>(),
            "dilation shrinks the region to generate"
        );
    }

    #[test]
    fn a_hesitant_matte_is_dropped_by_the_leak_filter_and_a_crisp_one_kept() {
        let crisp = matte_confidence(&disc(64, 64, 16.0, 1.0));
        let blurry = matte_confidence(&disc(64, 64, 16.0, 14.0));
        assert!(crisp.uncertain_share < 0.15, "{crisp:?}");
        assert!(blurry.uncertain_share > 0.5, "{blurry:?}");
        assert_eq!(crisp.leak(0.35), None);
        assert!(blurry.leak(0.35).unwrap().contains("uncertain_share"));
        let empty = matte_confidence(&GrayImage::new(16, 16));
        assert!(empty.leak(0.35).unwrap().contains("no product"));
        assert_eq!(empty.score(), 0.0);
        assert!(crisp.score() > blurry.score());
    }

    #[test]
    fn scribbles_are_seeded_and_cover_a_share_of_the_image() {
        let a = scribble_mask(48, 32, 7);
        assert_eq!(a, scribble_mask(48, 32, 7));
        assert_ne!(a, scribble_mask(48, 32, 8));
        for seed in 0..20 {
            let m = scribble_mask(32, 32, seed);
            let share = m.iter().sum::<f32>() / m.len() as f32;
            assert!((0.2..=0.95).contains(&share), "seed {seed}: {share}");
        }
    }
}
