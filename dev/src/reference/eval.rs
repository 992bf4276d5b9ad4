//! Held-out quality of a matting model on the synthetic catalog: mean IoU of `alpha > 0.5`
//! and mean absolute alpha error, measured at each image's full size through the same
//! resize-infer-resize path the engine uses.

use fleet_imaging::resize::resize_gray;
use fleet_protocol::manifest::Metrics;
use fleet_synth::render_sample;
use image::GrayImage;
use rayon::prelude::*;

use fleet_engine::preprocess::normalize_into;
use fleet_engine::{EngineError, InferenceThread};

/// Images per forward pass during evaluation.
const EVAL_BATCH: usize = 16;

/// Quality over a held-out set.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Mean IoU of the thresholded alpha against ground truth.
    pub iou: f64,
    /// Mean absolute alpha error in [0,1].
    pub mae: f64,
    /// Lowest per-image IoU seen.
    pub worst_iou: f64,
    /// Number of images.
    pub samples: usize,
    /// Catalog seed used.
    pub seed: u64,
}

impl EvalReport {
    /// The figures as stored in a manifest.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            iou: self.iou,
            mae: self.mae,
            samples: self.samples,
            dataset: format!("fleet-synth held-out catalog, seed {}, natural sizes", self.seed),
        }
    }
}

/// Scores `inference`'s model on `count` synthetic images of catalog `seed`.
pub fn evaluate(
    inference: &InferenceThread,
    seed: u64,
    count: usize,
    long_side: (u32, u32),
) -> Result<EvalReport, EngineError> {
    let spec = inference.manifest().input.clone();
    let plane = 3 * (spec.width * spec.height) as usize;
    let mut scores = Vec::with_capacity(count);
    for start in (0..count).step_by(EVAL_BATCH) {
        let indices: Vec<u64> = (start as u64..(start + EVAL_BATCH).min(count) as u64).collect();
        let samples: Vec<_> = indices.par_iter().map(|&i| render_sample(seed, i, long_side.0, long_side.1)).collect();
        let mut input = vec![0.0f32; plane * samples.len()];
        input.par_chunks_mut(plane).zip(&samples).for_each(|(out, s)| normalize_into(&s.image, &spec, out));
        let out = inference.infer(input, samples.len())?.output;
        let (h, w) = out.alpha_size;
        let batch_scores: Vec<(f64, f64)> = samples
            .par_iter()
            .zip(out.alphas)
            .map(|(s, alpha)| {
                let small = GrayImage::from_raw(w, h, alpha).expect("alpha buffer matches its size");
                let pred = resize_gray(&small, s.alpha.width(), s.alpha.height());
                score(&pred, &s.alpha)
            })
            .collect();
        scores.extend(batch_scores);
    }
    let n = scores.len().max(1) as f64;
    Ok(EvalReport {
        iou: scores.iter().map(|s| s.0).sum::<f64>() / n,
        mae: scores.iter().map(|s| s.1).sum::<f64>() / n,
        worst_iou: scores.iter().map(|s| s.0).fold(1.0, f64::min),
        samples: scores.len(),
        seed,
    })
}

/// IoU of `alpha > 0.5` and mean absolute error, for one predicted matte against the truth.
pub fn score(pred: &GrayImage, truth: &GrayImage) -> (f64, f64) {
    let (mut inter, mut union, mut abs) = (0u64, 0u64, 0u64);
    for (&p, &t) in pred.as_raw().iter().zip(truth.as_raw()) {
        let (pf, tf) = (p > 127, t > 127);
        inter += (pf && tf) as u64;
        union += (pf || tf) as u64;
        abs += p.abs_diff(t) as u64;
    }
    let iou = if union == 0 { 1.0 } else { inter as f64 / union as f64 };
    (iou, abs as f64 / (255.0 * pred.as_raw().len().max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_counts_overlap_and_error() {
        let truth = GrayImage::from_fn(4, 1, |x, _| image::Luma([if x < 2 { 255 } else { 0 }]));
        let pred = GrayImage::from_fn(4, 1, |x, _| image::Luma([if x < 3 { 255 } else { 0 }]));
        let (iou, mae) = score(&pred, &truth);
        assert!((iou - 2.0 / 3.0).abs() < 1e-9);
        assert!((mae - 0.25).abs() < 1e-9);
        assert_eq!(score(&truth, &truth), (1.0, 0.0));
    }
}
