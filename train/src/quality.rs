//! Mask-quality scoring: a model trained on errors makes errors, so each training sample's
//! mask is compared with what the base model predicts for its image, and the doubtful ones
//! are kept out of phase 2 (training on the best samples only), each with its reason.

use fleet_imaging::matte::dilate_mask as dilate;

/// How far, in pixels, the mask's object may reach past the model's prediction before
/// it counts as a leak: the two legitimately disagree on an edge by a pixel or two.
pub const LEAK_MARGIN_PX: usize = 3;
/// Mask values strictly between these (10 % and 90 % of 255) are neither object nor background.
const UNCERTAIN: std::ops::RangeInclusive<u8> = 26..=229;

/// How far a sample's mask can be trusted, each factor in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskQuality {
    /// IoU of the base model's object (`alpha > 0.5`) and the mask's (`mask > 127`).
    pub agreement_iou: f64,
    /// Share of the mask's footprint (pixels above 10 % of full scale) that lies strictly
    /// between 10 % and 90 %: a blurry, hesitant mask. Measured on the footprint rather than
    /// on the whole image, so a small object on a large background is not excused.
    pub uncertain_share: f64,
    /// Share of the mask's object pixels more than [`LEAK_MARGIN_PX`] outside the base
    /// model's object: the mask spilling onto the background.
    pub leak_share: f64,
    /// IoU once the leaking pixels are left out of the mask. It decides which factor a
    /// rejection names: a leak lowers `agreement_iou` too, and a mask whose disagreement is
    /// mostly its leak is reported as leaking, not as disagreeing.
    pub aligned_iou: f64,
    /// `agreement_iou * (1 - uncertain_share) * (1 - leak_share)`.
    pub score: f64,
}

impl MaskQuality {
    /// The factor that costs the most, as `name value: what it means`.
    fn worst_factor(&self) -> String {
        let penalties = [(1.0 - self.aligned_iou, 0), (self.uncertain_share, 1), (self.leak_share, 2)];
        // Strictly larger wins, so ties (all zero included) name the plain disagreement.
        let worst = penalties.iter().fold(penalties[0], |w, &p| if p.0 > w.0 { p } else { w });
        match worst.1 {
            2 => format!(
                "leak_share {:.2}: the mask leaks past the object ({:.0} % of its object lies more than \
                 {LEAK_MARGIN_PX} px outside the model's prediction)",
                self.leak_share,
                100.0 * self.leak_share
            ),
            1 => format!(
                "uncertain_share {:.2}: the mask is blurry ({:.0} % of it is neither object nor background)",
                self.uncertain_share,
                100.0 * self.uncertain_share
            ),
            _ => format!(
                "agreement_iou {:.2}: the mask disagrees with the model's prediction of the object",
                self.agreement_iou
            ),
        }
    }
}

/// Scores a mask (`u8`, 255 = object) against the base model's alpha (`[0, 1]`) for the
/// same `width` x `height` image, both row-major.
///
/// # Panics
///
/// When either slice is not `width * height` long: the loader resizes both to the bucket.
pub fn mask_quality(pred: &[f32], mask: &[u8], width: usize, height: usize) -> MaskQuality {
    assert_eq!(pred.len(), width * height, "prediction size");
    assert_eq!(mask.len(), width * height, "mask size");
    let pred_fg: Vec<bool> = pred.iter().map(|&a| a > 0.5).collect();
    let near = dilate(&pred_fg, width, height, LEAK_MARGIN_PX);
    let (mut inter, mut union, mut object, mut leaked, mut footprint, mut uncertain) = (0, 0, 0, 0, 0, 0);
    for i in 0..mask.len() {
        let m = mask[i] > 127;
        inter += usize::from(m && pred_fg[i]);
        union += usize::from(m || pred_fg[i]);
        object += usize::from(m);
        leaked += usize::from(m && !near[i]);
        footprint += usize::from(mask[i] >= *UNCERTAIN.start());
        uncertain += usize::from(UNCERTAIN.contains(&mask[i]));
    }
    // Empty against empty agrees perfectly; an empty mask neither leaks nor hesitates.
    let share = |part: usize, whole: usize| if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
    let iou = |inter: usize, union: usize| if union == 0 { 1.0 } else { inter as f64 / union as f64 };
    let agreement_iou = iou(inter, union);
    let uncertain_share = share(uncertain, footprint);
    let leak_share = share(leaked, object);
    // Leaked pixels lie outside the (dilated) prediction, so removing them from the mask
    // removes them from the union and leaves the intersection alone.
    let aligned_iou = iou(inter, union - leaked);
    let score = (agreement_iou * (1.0 - uncertain_share) * (1.0 - leak_share)).clamp(0.0, 1.0);
    MaskQuality { agreement_iou, uncertain_share, leak_share, aligned_iou, score }
}

/// Splits samples by score: the indices at or above `threshold`, and the others with a
/// reason naming their worst factor and its value.
pub fn split_by_quality(scores: &[MaskQuality], threshold: f64) -> (Vec<usize>, Vec<(usize, String)>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (i, q) in scores.iter().enumerate() {
        if q.score >= threshold {
            kept.push(i);
        } else {
            dropped.push((i, format!("score {:.2} below {threshold:.2}; {}", q.score, q.worst_factor())));
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests;
