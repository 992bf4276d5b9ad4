//! The new background as a full-size plane: a catalog image cover-fitted to the photo, or the
//! photo's own background blurred (computed on a coarse grid, then upsampled).

use std::borrow::Cow;

use image::{GrayImage, RgbImage};

use super::grid::{background_estimate, Grid};
use super::Background;
use crate::resize::{cover_fit_rgb, resize_rgb};

/// The background plane the product is placed on, or `None` for flat colours and transparency.
pub(super) fn plane<'a>(background: &'a Background, rgb: &RgbImage, alpha: &GrayImage) -> Option<Cow<'a, RgbImage>> {
    let (w, h) = rgb.dimensions();
    match background {
        Background::Transparent | Background::Color(_) => None,
        Background::Image(image) if image.dimensions() == (w, h) => Some(Cow::Borrowed(image.as_ref())),
        Background::Image(image) => Some(Cow::Owned(cover_fit_rgb(image, w, h))),
        Background::Blur { sigma_pct } => Some(Cow::Owned(blurred(rgb, alpha, *sigma_pct))),
    }
}

/// A Gaussian-like blur (three box passes) of the photo with the product left out: colours
/// are averaged with weight `1 - alpha`, so the product does not smear a halo of its own
/// colour into the background around it.
fn blurred(rgb: &RgbImage, alpha: &GrayImage, sigma_pct: f32) -> RgbImage {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let sigma = sigma_pct / 100.0 * w.max(h) as f32;
    // NaN counts as no blur: the photo's background as it is.
    if sigma.is_nan() || sigma < 0.5 {
        return rgb.clone();
    }
    // Averaging cells of `scale` pixels is itself a small box blur; keep it well under sigma.
    let scale = ((sigma / 3.0) as usize).clamp(1, 128);
    let mut grid = Grid::build(rgb.as_raw(), alpha.as_raw(), w, h, scale);
    for radius in gaussian_boxes(sigma / scale as f32) {
        grid.box_blur(radius);
    }
    let field = grid.map(background_estimate);
    let small = RgbImage::from_fn(field.width as u32, field.height as u32, |x, y| {
        let v = field.values[y as usize * field.width + x as usize];
        image::Rgb(v.map(|c| (c + 0.5) as u8))
    });
    resize_rgb(&small, w as u32, h as u32)
}

/// Radii of three box filters whose succession approximates a Gaussian of `sigma`
/// (Kutskir's "boxes for Gauss": widths `wl` and `wl + 2` mixed to match the variance).
pub(super) fn gaussian_boxes(sigma: f32) -> [usize; 3] {
    const N: f32 = 3.0;
    let ideal = (12.0 * sigma * sigma / N + 1.0).sqrt();
    let mut lower = ideal.floor() as i64;
    if lower % 2 == 0 {
        lower -= 1;
    }
    let lower = lower.max(1);
    let l = lower as f32;
    let m =
        ((12.0 * sigma * sigma - N * l * l - 4.0 * N * l - 3.0 * N) / (-4.0 * l - 4.0)).round().clamp(0.0, N) as usize;
    std::array::from_fn(|i| {
        let width = if i < m { lower } else { lower + 2 };
        (width as usize - 1) / 2
    })
}
