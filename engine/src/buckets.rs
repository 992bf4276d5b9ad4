//! Multi-aspect-ratio buckets: every training image is resized into the bucket whose aspect
//! ratio is nearest its own, all buckets holding about the same number of pixels, so a batch
//! mixes portraits and landscapes without cropping them square and every step costs the same.

/// Aspect ratios (width : height) of the buckets, from the tallest to the widest.
pub const RATIOS: [(u32, u32); 9] = [(1, 2), (9, 16), (2, 3), (3, 4), (1, 1), (4, 3), (3, 2), (16, 9), (2, 1)];
/// Every side is a multiple of this: the U-Net halves the image four times.
pub const SIDE_MULTIPLE: u32 = 16;
/// How far a bucket's area may stray from the pixel budget, where sides of
/// [`SIDE_MULTIPLE`] allow it.
pub const AREA_TOLERANCE: f64 = 0.10;

/// The buckets of `pixel_budget` pixels, one per ratio of [`RATIOS`], ordered from the
/// tallest to the widest; at small budgets two ratios may round to the same bucket, which
/// is then listed once.
///
/// Each bucket is the pair of multiples of [`SIDE_MULTIPLE`] (at least one multiple per
/// side) nearest the ratio among those whose area is within [`AREA_TOLERANCE`] of the
/// budget; when no pair near the ideal sides is, the pair nearest the budget.
pub fn buckets(pixel_budget: u32) -> Vec<(u32, u32)> {
    buckets_of(pixel_budget, SIDE_MULTIPLE)
}

/// [`buckets`] with sides that are multiples of `multiple` (a generator's down-sampling,
/// times its VAE's for latent models).
pub fn buckets_of(pixel_budget: u32, multiple: u32) -> Vec<(u32, u32)> {
    let multiple = multiple.max(1);
    let mut out: Vec<(u32, u32)> = RATIOS.iter().map(|&(a, b)| bucket(pixel_budget, a, b, multiple)).collect();
    out.sort_by(|x, y| aspect(x.0, x.1).total_cmp(&aspect(y.0, y.1)));
    out.dedup();
    out
}

/// The bucket of `buckets` whose aspect ratio is nearest that of a `w` x `h` image, in log
/// ratio (so 2:1 and 1:2 are as far from 1:1); ties go to the earlier bucket.
///
/// # Panics
///
/// When `buckets` is empty.
pub fn nearest(buckets: &[(u32, u32)], w: u32, h: u32) -> (u32, u32) {
    let target = aspect(w.max(1), h.max(1));
    let distance = |&(bw, bh): &(u32, u32)| (aspect(bw, bh) - target).abs();
    let mut best = *buckets.first().expect("at least one bucket");
    for b in &buckets[1..] {
        if distance(b) < distance(&best) {
            best = *b;
        }
    }
    best
}

/// Log aspect ratio, symmetric between portrait and landscape.
fn aspect(w: u32, h: u32) -> f64 {
    (f64::from(w) / f64::from(h)).ln()
}

/// The bucket of ratio `a : b` at `budget` pixels.
fn bucket(budget: u32, a: u32, b: u32, multiple: u32) -> (u32, u32) {
    let budget = f64::from(budget);
    let ratio = f64::from(a) / f64::from(b);
    let candidates = |ideal: f64| {
        let m = f64::from(multiple);
        let centre = (ideal / m).round() as i64;
        (centre - 2..=centre + 2).filter(|&k| k >= 1).map(|k| k as u32 * multiple).collect::<Vec<u32>>()
    };
    let widths = candidates((budget * ratio).sqrt());
    let heights = candidates((budget / ratio).sqrt());
    let area_error = |w: u32, h: u32| (f64::from(w) * f64::from(h) / budget - 1.0).abs();
    let ratio_error = |w: u32, h: u32| (aspect(w, h) - ratio.ln()).abs();
    let pairs = widths.iter().flat_map(|&w| heights.iter().map(move |&h| (w, h)));
    let within = pairs.clone().filter(|&(w, h)| area_error(w, h) <= AREA_TOLERANCE).min_by(|x, y| {
        let key = |&(w, h): &(u32, u32)| (ratio_error(w, h), area_error(w, h));
        let (kx, ky) = (key(x), key(y));
        kx.0.total_cmp(&ky.0).then(kx.1.total_cmp(&ky.1))
    });
    within.unwrap_or_else(|| {
        pairs
            .min_by(|x, y| {
                let key = |&(w, h): &(u32, u32)| (area_error(w, h), ratio_error(w, h));
                let (kx, ky) = (key(x), key(y));
                kx.0.total_cmp(&ky.0).then(kx.1.total_cmp(&ky.1))
            })
            .expect("at least one candidate per side")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(&(w, h): &(u32, u32)) -> f64 {
        f64::from(w) * f64::from(h)
    }

    #[test]
    fn one_megapixel_gives_nine_close_buckets_mirrored_around_the_square() {
        let budget = 1 << 20;
        let all = buckets(budget);
        assert_eq!(all.len(), 9, "{all:?}");
        assert!(all.contains(&(1024, 1024)));
        for (bucket, &(a, b)) in all.iter().zip(&RATIOS) {
            let (w, h) = *bucket;
            assert!(w % 16 == 0 && h % 16 == 0, "{bucket:?}");
            assert!((area(bucket) / f64::from(budget) - 1.0).abs() <= 0.10, "{bucket:?}");
            let ratio = f64::from(a) / f64::from(b);
            let off = (f64::from(w) / f64::from(h) / ratio - 1.0).abs();
            assert!(off < 0.03, "{bucket:?} is {off} off {a}:{b}");
            assert!(all.contains(&(h, w)), "{bucket:?} has no mirror");
        }
        assert_eq!(all[0].0 * 2, all[0].1, "1:2 is exact at 1 MP: {:?}", all[0]);
        let aspects: Vec<f64> = all.iter().map(|&(w, h)| f64::from(w) / f64::from(h)).collect();
        assert!(aspects.windows(2).all(|p| p[0] < p[1]), "{aspects:?}");
    }

    #[test]
    fn every_allowed_budget_gives_multiples_of_sixteen_near_the_budget() {
        for budget in [4_096, 10_000, 65_536, 300_000, 1 << 20, 2_000_000, 4_194_304] {
            let all = buckets(budget);
            assert!(!all.is_empty() && all.len() <= 9);
            assert!(all.contains(&nearest(&all, 1, 1)));
            for b in &all {
                assert!(b.0 >= 16 && b.1 >= 16 && b.0 % 16 == 0 && b.1 % 16 == 0, "{budget}: {b:?}");
                let off = (area(b) / f64::from(budget) - 1.0).abs();
                assert!(off <= 0.10, "{budget}: {b:?} is {off} off the budget");
            }
            let mut sorted = all.clone();
            sorted.dedup();
            assert_eq!(sorted, all, "no duplicates");
        }
        // The smallest budget still separates portrait, square and landscape.
        let tiny = buckets(4_096);
        assert!(tiny.contains(&(64, 64)));
        assert!(tiny.first().unwrap().0 < tiny.first().unwrap().1);
        assert!(tiny.last().unwrap().0 > tiny.last().unwrap().1);
    }

    #[test]
    fn nearest_picks_by_log_aspect_ratio() {
        let all = buckets(1 << 20);
        let ratio_of = |(w, h): (u32, u32)| f64::from(w) / f64::from(h);
        assert_eq!(nearest(&all, 1000, 1000), (1024, 1024));
        assert_eq!(nearest(&all, 1017, 983), (1024, 1024));
        assert!((ratio_of(nearest(&all, 1920, 1080)) - 16.0 / 9.0).abs() < 0.03);
        assert!((ratio_of(nearest(&all, 1080, 1920)) - 9.0 / 16.0).abs() < 0.03);
        assert!((ratio_of(nearest(&all, 3000, 2000)) - 1.5).abs() < 0.03);
        assert!((ratio_of(nearest(&all, 3000, 2250)) - 4.0 / 3.0).abs() < 0.03);
        // Far beyond the extremes: the extreme buckets.
        assert_eq!(nearest(&all, 100, 1000), all[0]);
        assert_eq!(nearest(&all, 5000, 100), all[8]);
        // In log ratio 1.2:1 lies 0.11 from 4:3 and 0.18 from 1:1; 1.1:1 lies 0.10 from 1:1.
        assert!((ratio_of(nearest(&all, 1200, 1000)) - 4.0 / 3.0).abs() < 0.03);
        assert_eq!(nearest(&all, 1100, 1000), (1024, 1024));
        assert_eq!(nearest(&[(64, 64)], 10, 1), (64, 64));
    }
}
