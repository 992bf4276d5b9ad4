//! Post-processing of the model's alpha matte (morphological clean-up) and the uncertainty
//! score the worker reports with each job so doubtful cut-outs can be sent for review.

mod morph;
#[cfg(test)]
mod tests;

pub use morph::dilate_mask;

use image::GrayImage;
use serde::{Deserialize, Serialize};

/// A grayscale morphological clean-up applied to the matte before compositing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Morphology {
    /// Leave the matte as the model produced it.
    #[default]
    None,
    /// Erode then dilate: removes specks smaller than the square of side `2*radius+1`.
    Open {
        /// Half the side of the square structuring element, in pixels.
        radius: u32,
    },
    /// Dilate then erode: fills holes smaller than the square of side `2*radius+1`.
    Close {
        /// Half the side of the square structuring element, in pixels.
        radius: u32,
    },
}

/// Applies `morphology` to the matte in place; cost is O(pixels) whatever the radius.
pub fn refine(alpha: &mut GrayImage, morphology: Morphology) {
    let (width, height) = (alpha.width() as usize, alpha.height() as usize);
    let (radius, first_min) = match morphology {
        Morphology::None | Morphology::Open { radius: 0 } | Morphology::Close { radius: 0 } => return,
        Morphology::Open { radius } => (radius as usize, true),
        Morphology::Close { radius } => (radius as usize, false),
    };
    if width == 0 || height == 0 {
        return;
    }
    let data: &mut [u8] = alpha;
    morph::filter(data, width, height, radius, first_min);
    morph::filter(data, width, height, radius, !first_min);
}

/// Alpha below this (0.1 * 255) counts as clear background.
const UNSURE_LO: u8 = 25;
/// Alpha above this (0.9 * 255) counts as clear foreground.
const UNSURE_HI: u8 = 230;

/// Share of pixels whose alpha is neither clearly foreground nor background (alpha in (lo, hi) with lo=0.1*255, hi=0.9*255), in `[0, 1]`.
pub fn uncertainty(alpha: &GrayImage) -> f32 {
    let total = alpha.as_raw().len();
    if total == 0 {
        return 0.0;
    }
    // Counting in chunks keeps the per-chunk counter small so the loop vectorises.
    let unsure: usize = alpha
        .as_raw()
        .chunks(1 << 16)
        .map(|chunk| chunk.iter().map(|&a| u32::from(a > UNSURE_LO && a < UNSURE_HI)).sum::<u32>() as usize)
        .sum();
    unsure as f32 / total as f32
}
