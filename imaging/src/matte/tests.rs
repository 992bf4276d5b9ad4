use image::{GrayImage, Luma};
use proptest::prelude::*;

use super::*;

#[test]
fn uncertainty_of_binary_mask_is_zero_and_of_grey_mask_is_one() {
    let binary = GrayImage::from_fn(64, 48, |x, _| Luma([if x < 20 { 0 } else { 255 }]));
    assert_eq!(uncertainty(&binary), 0.0);
    assert_eq!(uncertainty(&GrayImage::from_pixel(64, 48, Luma([128]))), 1.0);
    assert_eq!(uncertainty(&GrayImage::new(0, 0)), 0.0);
    let half = GrayImage::from_fn(10, 10, |x, _| Luma([if x < 5 { 128 } else { 0 }]));
    assert!((uncertainty(&half) - 0.5).abs() < 1e-6);
    // The thresholds are exclusive: 25 and 230 are still "sure".
    let edges = GrayImage::from_fn(2, 1, |x, _| Luma([if x == 0 { 25 } else { 230 }]));
    assert_eq!(uncertainty(&edges), 0.0);
}

#[test]
fn open_removes_a_one_pixel_speck() {
    let mut alpha = GrayImage::new(32, 32);
    alpha.put_pixel(10, 10, Luma([255]));
    // A 6x6 solid block survives an opening of radius 1 unchanged.
    for y in 20..26 {
        for x in 20..26 {
            alpha.put_pixel(x, y, Luma([255]));
        }
    }
    let before = alpha.clone();
    refine(&mut alpha, Morphology::Open { radius: 1 });
    assert_eq!(alpha.get_pixel(10, 10).0, [0]);
    for (x, y, p) in alpha.enumerate_pixels() {
        if (20..26).contains(&x) && (20..26).contains(&y) {
            assert_eq!(p.0, before.get_pixel(x, y).0, "block pixel {x},{y} changed");
        } else {
            assert_eq!(p.0, [0], "background pixel {x},{y} changed");
        }
    }
}

#[test]
fn close_fills_a_one_pixel_hole() {
    let mut alpha = GrayImage::from_pixel(32, 32, Luma([255]));
    alpha.put_pixel(16, 16, Luma([0]));
    refine(&mut alpha, Morphology::Close { radius: 1 });
    assert!(alpha.pixels().all(|p| p.0 == [255]), "hole not filled or border eroded");
}

#[test]
fn none_and_zero_radius_leave_the_matte_alone() {
    let alpha = GrayImage::from_fn(9, 7, |x, y| Luma([(x * 29 + y * 7) as u8]));
    for morphology in [Morphology::None, Morphology::Open { radius: 0 }, Morphology::Close { radius: 0 }] {
        let mut copy = alpha.clone();
        refine(&mut copy, morphology);
        assert_eq!(copy, alpha);
    }
}

fn naive(alpha: &GrayImage, radius: u32, min: bool) -> GrayImage {
    let r = radius as i64;
    GrayImage::from_fn(alpha.width(), alpha.height(), |x, y| {
        let mut acc = if min { 255u8 } else { 0u8 };
        for dy in -r..=r {
            for dx in -r..=r {
                let (sx, sy) = (x as i64 + dx, y as i64 + dy);
                if sx < 0 || sy < 0 || sx >= alpha.width() as i64 || sy >= alpha.height() as i64 {
                    continue;
                }
                let v = alpha.get_pixel(sx as u32, sy as u32).0[0];
                acc = if min { acc.min(v) } else { acc.max(v) };
            }
        }
        Luma([acc])
    })
}

proptest! {
    #[test]
    fn van_herk_matches_naive_window(
        width in 1u32..24, height in 1u32..24, radius in 1u32..6, seed in any::<u64>(), open in any::<bool>()
    ) {
        let mut state = seed | 1;
        let alpha = GrayImage::from_fn(width, height, |_, _| {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            Luma([(state >> 56) as u8])
        });
        let expected = if open {
            naive(&naive(&alpha, radius, true), radius, false)
        } else {
            naive(&naive(&alpha, radius, false), radius, true)
        };
        let mut got = alpha.clone();
        refine(&mut got, if open { Morphology::Open { radius } } else { Morphology::Close { radius } });
        prop_assert_eq!(got, expected);
    }
}
