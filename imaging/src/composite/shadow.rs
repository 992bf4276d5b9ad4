//! Shadows cast by the product on its new background, as the commercial background-removal
//! APIs offer them: a drop shadow (the matte itself, offset and blurred) or a contact shadow
//! (a soft ellipse under the product's base). The shadow only ever darkens the background:
//! pixels the matte marks as surely product are the input's, bit for bit, with or without it.

use image::{GrayImage, RgbImage};

use super::background::gaussian_boxes;
use crate::resize::resize_gray;

/// Which shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowKind {
    /// The product's silhouette, offset and blurred: light from one side.
    Drop,
    /// A flat soft ellipse under the product's base: light from above.
    Contact,
}

/// A shadow and how it looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    /// Drop or contact.
    pub kind: ShadowKind,
    /// Darkness where the shadow is full, 0..=1.
    pub opacity: f32,
    /// Softness: Gaussian sigma as a percentage of the photo's long side.
    pub blur_pct: f32,
    /// Offset `[right, down]` as percentages of the long side (drop shadows).
    pub offset_pct: [f32; 2],
}

/// Largest side the shadow is computed at: it is smooth, so a coarse field upsampled costs
/// little and loses nothing visible.
const WORK_SIDE: u32 = 512;

/// The shadow's darkness per pixel (0 = none, 255 = black at full opacity) for a photo whose
/// matte is `alpha`.
pub fn shadow_mask(alpha: &GrayImage, shadow: &Shadow) -> GrayImage {
    let (w, h) = alpha.dimensions();
    let long = w.max(h).max(1) as f32;
    let scale = (WORK_SIDE as f32 / long).min(1.0);
    let (sw, sh) = (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1));
    let small = if (sw, sh) == (w, h) { alpha.clone() } else { resize_gray(alpha, sw, sh) };
    let long_small = sw.max(sh) as f32;
    let mut field: Vec<f32> = match shadow.kind {
        ShadowKind::Drop => offset(&small, shadow.offset_pct.map(|p| (p / 100.0 * long_small).round() as i64)),
        ShadowKind::Contact => contact(&small),
    };
    let sigma = shadow.blur_pct.max(0.0) / 100.0 * long_small;
    if sigma >= 0.5 {
        for radius in gaussian_boxes(sigma) {
            box_blur(&mut field, sw as usize, sh as usize, radius);
        }
    }
    let opacity = shadow.opacity.clamp(0.0, 1.0);
    let small = GrayImage::from_raw(sw, sh, field.iter().map(|v| (v * opacity * 255.0).round() as u8).collect())
        .expect("one value per pixel");
    if (sw, sh) == (w, h) {
        small
    } else {
        resize_gray(&small, w, h)
    }
}

/// The matte moved by `(dx, dy)` pixels, in [0, 1]; what moves in from outside is empty.
fn offset(alpha: &GrayImage, [dx, dy]: [i64; 2]) -> Vec<f32> {
    let (w, h) = (alpha.width() as i64, alpha.height() as i64);
    let mut out = vec![0.0; (w * h) as usize];
    for y in 0..h {
        let sy = y - dy;
        if !(0..h).contains(&sy) {
            continue;
        }
        for x in 0..w {
            let sx = x - dx;
            if (0..w).contains(&sx) {
                out[(y * w + x) as usize] = f32::from(alpha.get_pixel(sx as u32, sy as u32).0[0]) / 255.0;
            }
        }
    }
    out
}

/// A filled ellipse at the product's base: as wide as 90 % of the product, 6 % of its height
/// tall (at least 2 pixels), centred on the lowest row the product reaches.
fn contact(alpha: &GrayImage) -> Vec<f32> {
    let (w, h) = alpha.dimensions();
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in alpha.enumerate_pixels() {
        if p.0[0] >= 128 {
            let (x0, y0, x1, y1) = bounds.unwrap_or((x, y, x, y));
            bounds = Some((x0.min(x), y0.min(y), x1.max(x), y1.max(y)));
        }
    }
    let mut out = vec![0.0; (w * h) as usize];
    let Some((x0, y0, x1, y1)) = bounds else { return out };
    let cx = (x0 + x1) as f32 / 2.0;
    let rx = ((x1 - x0 + 1) as f32 * 0.45).max(1.0);
    let ry = ((y1 - y0 + 1) as f32 * 0.03).max(2.0);
    let cy = y1 as f32;
    for y in 0..h {
        for x in 0..w {
            let (u, v) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
            if u * u + v * v <= 1.0 {
                out[(y * w + x) as usize] = 1.0;
            }
        }
    }
    out
}

/// Mean over the `(2 radius + 1)`-square around each value (zero outside), in place.
fn box_blur(values: &mut [f32], w: usize, h: usize, radius: usize) {
    if radius == 0 || values.is_empty() {
        return;
    }
    let norm = 1.0 / (2 * radius + 1) as f32;
    let mut line = Vec::new();
    for row in values.chunks_mut(w) {
        line.clear();
        line.extend_from_slice(row);
        blur_line(&line, row.iter_mut(), radius, norm);
    }
    for x in 0..w {
        line.clear();
        line.extend((0..h).map(|y| values[y * w + x]));
        let mut out = vec![0.0; h];
        blur_line(&line, out.iter_mut(), radius, norm);
        for (y, v) in out.into_iter().enumerate() {
            values[y * w + x] = v;
        }
    }
}

fn blur_line<'a>(input: &[f32], out: impl Iterator<Item = &'a mut f32>, radius: usize, norm: f32) {
    let mut prefix = Vec::with_capacity(input.len() + 1);
    prefix.push(0.0f32);
    for v in input {
        prefix.push(prefix.last().expect("seeded") + v);
    }
    let n = input.len();
    for (i, o) in out.enumerate() {
        let (lo, hi) = (i.saturating_sub(radius), (i + radius + 1).min(n));
        *o = (prefix[hi] - prefix[lo]) * norm;
    }
}

/// Darkens the background plane by the shadow.
pub(super) fn darken(plane: &mut RgbImage, mask: &GrayImage) {
    for (p, m) in plane.pixels_mut().zip(mask.pixels()) {
        let keep = 255 - u16::from(m.0[0]);
        p.0 = p.0.map(|c| ((u16::from(c) * keep + 127) / 255) as u8);
    }
}
