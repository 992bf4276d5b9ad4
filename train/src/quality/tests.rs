use super::*;

const SIDE: usize = 128;
const RADIUS: f64 = 32.0;
const CENTRE: f64 = 64.0;

fn distance(i: usize, cx: f64) -> f64 {
    let (x, y) = ((i % SIDE) as f64 + 0.5, (i / SIDE) as f64 + 0.5);
    ((x - cx).powi(2) + (y - CENTRE).powi(2)).sqrt()
}

/// The base model's alpha: a disc with a one-pixel soft edge.
fn prediction() -> Vec<f32> {
    (0..SIDE * SIDE).map(|i| (RADIUS + 0.5 - distance(i, CENTRE)).clamp(0.0, 1.0) as f32).collect()
}

/// A hard disc mask of `radius` centred at `(cx, CENTRE)`.
fn disc(radius: f64, cx: f64) -> Vec<u8> {
    (0..SIDE * SIDE).map(|i| if distance(i, cx) < radius { 255 } else { 0 }).collect()
}

/// A box blur of `radius`, rows then columns, as a careless annotator's soft brush.
fn blurred(mask: &[u8], radius: usize) -> Vec<u8> {
    let blur = |src: &[f32], along_rows: bool| {
        let at = |line: usize, pos: usize| if along_rows { line * SIDE + pos } else { pos * SIDE + line };
        let mut out = vec![0.0f32; src.len()];
        for line in 0..SIDE {
            for pos in 0..SIDE {
                let window = pos.saturating_sub(radius)..(pos + radius + 1).min(SIDE);
                let sum: f32 = window.map(|k| src[at(line, k)]).sum();
                out[at(line, pos)] = sum / (2 * radius + 1) as f32;
            }
        }
        out
    };
    let values: Vec<f32> = mask.iter().map(|&m| f32::from(m)).collect();
    blur(&blur(&values, true), false).iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect()
}

fn score(mask: &[u8]) -> MaskQuality {
    mask_quality(&prediction(), mask, SIDE, SIDE)
}

#[test]
fn a_perfect_mask_scores_one_and_a_good_soft_edged_one_stays_high() {
    let perfect = score(&disc(RADIUS, CENTRE));
    assert!(perfect.score > 0.99, "{perfect:?}");
    assert_eq!((perfect.leak_share, perfect.uncertain_share), (0.0, 0.0));
    // The base model's own anti-aliased matte: a thin ring of in-between values, no more.
    let soft: Vec<u8> = prediction().iter().map(|&a| (a * 255.0).round() as u8).collect();
    let soft = score(&soft);
    assert!(soft.score > 0.9 && soft.uncertain_share > 0.0, "{soft:?}");
}

#[test]
fn a_mask_shifted_by_a_quarter_of_the_object_is_dropped_for_disagreement() {
    let q = score(&disc(RADIUS, CENTRE + RADIUS / 2.0));
    assert!(q.agreement_iou < 0.6 && q.score < 0.6, "{q:?}");
    let (kept, dropped) = split_by_quality(&[q], 0.8);
    assert!(kept.is_empty());
    assert!(dropped[0].1.contains("agreement_iou 0."), "{}", dropped[0].1);
}

#[test]
fn a_mask_dilated_ten_pixels_is_dropped_for_leaking() {
    let q = score(&disc(RADIUS + 10.0, CENTRE));
    assert!(q.leak_share > 0.25 && q.score < 0.6, "{q:?}");
    assert!(q.aligned_iou > 0.8, "without its leak the mask agrees: {q:?}");
    let (_, dropped) = split_by_quality(&[q], 0.8);
    assert!(dropped[0].1.contains("leak_share 0."), "{}", dropped[0].1);
}

#[test]
fn a_blurred_mask_is_dropped_for_hesitating() {
    let q = score(&blurred(&disc(RADIUS, CENTRE), 8));
    assert!(q.agreement_iou > 0.9, "the blur keeps the object where it was: {q:?}");
    assert!(q.uncertain_share > 0.3 && q.score < 0.7, "{q:?}");
    let (_, dropped) = split_by_quality(&[q], 0.8);
    assert!(dropped[0].1.contains("uncertain_share 0."), "{}", dropped[0].1);
}

#[test]
fn split_keeps_indices_at_or_above_the_threshold_in_order() {
    let good = score(&disc(RADIUS, CENTRE));
    let leaky = score(&disc(RADIUS + 10.0, CENTRE));
    let at = MaskQuality { score: 0.8, ..good };
    let (kept, dropped) = split_by_quality(&[leaky, good, at, leaky], 0.8);
    assert_eq!(kept, [1, 2]);
    assert_eq!(dropped.iter().map(|d| d.0).collect::<Vec<_>>(), [0, 3]);
    assert!(dropped[0].1.starts_with("score 0.") && dropped[0].1.contains("below 0.80"), "{}", dropped[0].1);
}

#[test]
fn an_empty_mask_over_an_object_scores_zero_and_empty_on_empty_agrees() {
    let empty = vec![0u8; SIDE * SIDE];
    assert_eq!(score(&empty).score, 0.0);
    let nothing = mask_quality(&vec![0.0; SIDE * SIDE], &empty, SIDE, SIDE);
    assert_eq!(nothing.score, 1.0);
}

#[test]
fn dilation_reaches_exactly_the_margin() {
    let (w, h) = (9, 7);
    let mut fg = vec![false; w * h];
    fg[3 * w + 4] = true;
    let near = dilate(&fg, w, h, 2);
    let set: Vec<(usize, usize)> = (0..w * h).filter(|&i| near[i]).map(|i| (i % w, i / w)).collect();
    assert_eq!(set.len(), 25);
    assert!(set.iter().all(|&(x, y)| (2..=6).contains(&x) && (1..=5).contains(&y)));
    // At the border the window is cut, not wrapped.
    let mut corner = vec![false; w * h];
    corner[0] = true;
    assert_eq!(dilate(&corner, w, h, 2).iter().filter(|&&b| b).count(), 9);
}
