use std::sync::Arc;

use image::{GrayImage, Luma, Rgb, RgbImage};
use proptest::prelude::*;

use super::background::gaussian_boxes;
use super::*;

/// Deterministic pseudo-random bytes (xorshift), so proptest only has to shrink a seed.
fn noise(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 56) as u8
    }
}

/// A matte with large sure regions and a share of edge values, like a real one.
fn random_matte(w: u32, h: u32, seed: u64) -> GrayImage {
    let mut next = noise(seed ^ 0x9E37_79B9);
    GrayImage::from_fn(w, h, |_, _| {
        Luma([match next() % 4 {
            0 => 0,
            1 => 255,
            _ => next(),
        }])
    })
}

fn backgrounds(w: u32, h: u32) -> Vec<Background> {
    let other = RgbImage::from_fn(w * 2 + 3, h / 2 + 1, |x, y| Rgb([x as u8, y as u8, 99]));
    vec![
        Background::Transparent,
        Background::Color([12, 34, 56]),
        Background::Image(Arc::new(other)),
        Background::Blur { sigma_pct: 3.0 },
    ]
}

fn rgb_of(out: &Composited, x: u32, y: u32) -> [u8; 3] {
    match out {
        Composited::Rgb(img) => img.get_pixel(x, y).0,
        Composited::Rgba(img) => {
            let p = img.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sure_foreground_is_bit_exact_and_sure_background_is_background(
        w in 1u32..70, h in 1u32..70, seed in any::<u64>(),
        preserve_at in 128u8..=255, clear_below in 0u8..64, decontaminate in any::<bool>(),
    ) {
        let mut next = noise(seed);
        let rgb = RgbImage::from_fn(w, h, |_, _| Rgb([next(), next(), next()]));
        let alpha = random_matte(w, h, seed);
        for background in backgrounds(w, h) {
            let shadow = (seed % 3 == 0).then_some(Shadow {
                kind: if seed % 2 == 0 { ShadowKind::Drop } else { ShadowKind::Contact },
                opacity: 0.6,
                blur_pct: 2.0,
                offset_pct: [3.0, 4.0],
            });
            let opts = CompositeOptions { background: background.clone(), preserve_at, clear_below, decontaminate, shadow };
            let out = composite(&rgb, &alpha, &opts);
            prop_assert_eq!((out.width(), out.height()), (w, h));
            // Where the matte is surely background, the shadow's darkness (none without one).
            let mask = shadow.map(|s| shadow::shadow_mask(&alpha, &s));
            let dark = |x: u32, y: u32| mask.as_ref().map_or(0u16, |m| u16::from(m.get_pixel(x, y).0[0]));
            for (x, y, a) in alpha.enumerate_pixels() {
                let a = a.0[0];
                if a >= preserve_at {
                    prop_assert_eq!(rgb_of(&out, x, y), rgb.get_pixel(x, y).0, "at {},{} a={}", x, y, a);
                }
                match (&out, &background) {
                    (Composited::Rgba(img), Background::Transparent) => {
                        let expected = if a < clear_below { dark(x, y) as u8 } else { a };
                        prop_assert_eq!(img.get_pixel(x, y).0[3], expected);
                    }
                    (Composited::Rgb(_), Background::Color(c)) if a < clear_below => {
                        let shaded = c.map(|v| ((u16::from(v) * (255 - dark(x, y)) + 127) / 255) as u8);
                        prop_assert_eq!(rgb_of(&out, x, y), shaded);
                    }
                    (Composited::Rgb(_), Background::Transparent) => prop_assert!(false, "rgb for transparent"),
                    (Composited::Rgba(_), _) => prop_assert!(false, "rgba for an opaque background"),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn clear_pixels_take_the_background_image_cover_fitted() {
    // Photo 60x60 fully background; backdrop 300x100 in three vertical stripes.
    let rgb = RgbImage::from_pixel(60, 60, Rgb([200, 200, 200]));
    let alpha = GrayImage::new(60, 60);
    let stripes = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let opts = CompositeOptions { background: Background::Image(Arc::new(stripes)), ..Default::default() };
    let Composited::Rgb(out) = composite(&rgb, &alpha, &opts) else { panic!("expected rgb") };
    assert_eq!(out.dimensions(), (60, 60));
    for x in 1..59 {
        assert_eq!(out.get_pixel(x, 30).0, [0, 255, 0], "column {x}");
    }
}

#[test]
fn transparent_clear_pixels_are_fully_transparent() {
    let rgb = RgbImage::from_pixel(10, 10, Rgb([1, 2, 3]));
    let alpha = GrayImage::from_fn(10, 10, |x, _| Luma([if x < 5 { 0 } else { 255 }]));
    let Composited::Rgba(out) = composite(&rgb, &alpha, &CompositeOptions::default()) else {
        panic!("expected rgba");
    };
    assert_eq!(out.get_pixel(2, 2).0, [0, 0, 0, 0]);
    assert_eq!(out.get_pixel(7, 2).0, [1, 2, 3, 255]);
}

#[test]
fn matte_of_another_size_is_scaled_to_the_photo() {
    let rgb = RgbImage::from_pixel(40, 20, Rgb([9, 9, 9]));
    let alpha = GrayImage::from_pixel(10, 10, Luma([255]));
    let out = composite(&rgb, &alpha, &CompositeOptions::default());
    assert_eq!((out.width(), out.height()), (40, 20));
    assert_eq!(rgb_of(&out, 39, 19), [9, 9, 9]);
}

/// A red disc on green with a soft edge, as a camera would see it.
fn red_disc_on_green(size: u32) -> (RgbImage, GrayImage) {
    let c = size as f32 / 2.0;
    let alpha = GrayImage::from_fn(size, size, |x, y| {
        let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
        Luma([(((size as f32 * 0.3 - d) / 8.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    let rgb = RgbImage::from_fn(size, size, |x, y| {
        let a = f32::from(alpha.get_pixel(x, y).0[0]) / 255.0;
        Rgb([(a * 230.0).round() as u8, ((1.0 - a) * 200.0).round() as u8, 20])
    });
    (rgb, alpha)
}

#[test]
fn decontamination_removes_the_old_background_from_edges() {
    // 250 px is not a multiple of the tile size, so the last tiles are partial.
    let (rgb, alpha) = red_disc_on_green(250);
    let measure = |decontaminate: bool| -> (f64, u8, f64) {
        let opts = CompositeOptions { background: Background::Color([0, 0, 255]), decontaminate, ..Default::default() };
        let out = composite(&rgb, &alpha, &opts);
        let (mut green, mut worst, mut red_error, mut n) = (0.0, 0, 0.0, 0.0);
        for (x, y, a) in alpha.enumerate_pixels() {
            let a = a.0[0];
            if (opts.clear_below..opts.preserve_at).contains(&a) {
                let p = rgb_of(&out, x, y);
                green += f64::from(p[1]);
                worst = worst.max(p[1]);
                red_error += (f64::from(p[0]) - f64::from(a) / 255.0 * 230.0).abs();
                n += 1.0;
            }
        }
        (green / n, worst, red_error / n)
    };
    let (with, with_worst, with_red) = measure(true);
    let (without, without_worst, _) = measure(false);
    assert!(without > 20.0, "test image has no fringe to remove: {without}");
    assert!(with < without * 0.25, "mean green {with} with vs {without} without");
    // Every edge pixel improves, including those on tile borders.
    assert!(with_worst < without_worst / 2, "worst green {with_worst} vs {without_worst}");
    assert!(with_red < 8.0, "foreground colour drifted by {with_red}");
}

#[test]
fn blurred_background_is_the_photo_background_without_the_product() {
    let (rgb, alpha) = red_disc_on_green(200);
    let opts = CompositeOptions { background: Background::Blur { sigma_pct: 4.0 }, ..Default::default() };
    let out = composite(&rgb, &alpha, &opts);
    // Just outside the disc the blur shows green, not a red halo.
    let p = rgb_of(&out, 100 + 72, 100);
    assert!(p[0] < 30 && p[1] > 170, "{p:?}");
    let flat = RgbImage::from_pixel(50, 30, Rgb([40, 80, 120]));
    let out = composite(&flat, &GrayImage::new(50, 30), &opts);
    assert!(matches!(out, Composited::Rgb(ref img) if img.pixels().all(|p| p.0 == [40, 80, 120])));
}

#[test]
fn three_boxes_match_the_gaussian_variance() {
    for sigma in [1.0f32, 2.5, 4.0, 10.0, 33.3] {
        let variance: f32 = gaussian_boxes(sigma).iter().map(|&r| ((2 * r + 1).pow(2) - 1) as f32 / 12.0).sum();
        assert!((variance.sqrt() - sigma).abs() < 0.6, "sigma {sigma}: {}", variance.sqrt());
    }
}

#[test]
fn empty_images_composite_to_empty_images() {
    let out = composite(&RgbImage::new(0, 0), &GrayImage::new(0, 0), &CompositeOptions::default());
    assert_eq!((out.width(), out.height()), (0, 0));
}

/// A 200x160 photo: a mid-grey square product at (60..120, 40..100) on white.
fn square_scene() -> (RgbImage, GrayImage) {
    let inside = |x: u32, y: u32| (60..120).contains(&x) && (40..100).contains(&y);
    let rgb = RgbImage::from_fn(200, 160, |x, y| if inside(x, y) { Rgb([120, 90, 60]) } else { Rgb([255, 255, 255]) });
    let alpha = GrayImage::from_fn(200, 160, |x, y| image::Luma([if inside(x, y) { 255 } else { 0 }]));
    (rgb, alpha)
}

#[test]
fn a_drop_shadow_darkens_the_background_on_its_side_and_leaves_the_product_alone() {
    let (rgb, alpha) = square_scene();
    let shadow = Shadow { kind: ShadowKind::Drop, opacity: 0.5, blur_pct: 1.0, offset_pct: [5.0, 5.0] };
    let plain = CompositeOptions { background: Background::Color([240, 240, 240]), ..Default::default() };
    let shaded = CompositeOptions { shadow: Some(shadow), ..plain.clone() };
    let (a, b) = (composite(&rgb, &alpha, &plain), composite(&rgb, &alpha, &shaded));
    for (x, y, p) in alpha.enumerate_pixels() {
        if p.0[0] == 255 {
            assert_eq!(rgb_of(&b, x, y), rgb.get_pixel(x, y).0, "product pixel {x},{y} altered");
        }
    }
    // Below-right of the product (the offset is 10 px right, 10 px down) it is darker; above
    // and to the left, untouched.
    let below_right = rgb_of(&b, 125, 105)[0];
    assert!(below_right < 200, "shadowed background: {below_right}");
    assert_eq!(rgb_of(&b, 50, 30), rgb_of(&a, 50, 30), "no shadow on the far side");
    assert_eq!(rgb_of(&a, 125, 105), [240, 240, 240]);
}

#[test]
fn a_contact_shadow_sits_under_the_base_and_a_cutout_carries_it_as_alpha() {
    let (rgb, alpha) = square_scene();
    let shadow = Shadow { kind: ShadowKind::Contact, opacity: 0.8, blur_pct: 0.5, offset_pct: [0.0, 0.0] };
    let opts = CompositeOptions { background: Background::Transparent, shadow: Some(shadow), ..Default::default() };
    let Composited::Rgba(out) = composite(&rgb, &alpha, &opts) else { panic!("a cut-out") };
    let under = out.get_pixel(90, 101).0;
    assert!(under[3] > 60 && under[..3] == [0, 0, 0], "under the base: {under:?}");
    assert_eq!(out.get_pixel(90, 20).0[3], 0, "nothing above the product");
    assert_eq!(out.get_pixel(10, 101).0[3], 0, "nothing far to the side");
    assert_eq!(out.get_pixel(90, 70).0, [120, 90, 60, 255], "the product as it was");
}
