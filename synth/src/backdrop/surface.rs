//! Painting a backdrop: the [`Surface`] a class implements, the supersampling painter that
//! turns one into pixels, and small pattern helpers the classes share.

use image::RgbImage;
use rayon::prelude::*;

use crate::detmath::{floor, V2};
use crate::paint::{hash2, Rgb};
use crate::raster::to_u8;

/// Short side (in samples) below which renders are supersampled.
const SUPERSAMPLE_SIDE: u32 = 96;
/// Sample count from which rows are painted in parallel.
const PARALLEL_SAMPLES: u64 = 1 << 15;

/// A backdrop pattern in short-side units (the short side spans 0..1, y down).
pub(super) trait Surface {
    /// Colour (0..=255 channels) at `p`.
    fn at(&self, p: V2) -> Rgb;
}

/// Paints `s` over the image, box-filtering `ss` x `ss` samples per pixel on small
/// renders; rows of large renders are painted in parallel (each pixel depends only on
/// its position, so the bytes do not depend on the thread count).
pub(super) fn paint<S: Surface + Sync>(s: &S, width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::new(width, height);
    if width == 0 || height == 0 {
        return img;
    }
    let ss = SUPERSAMPLE_SIDE.div_ceil(width.min(height)).clamp(1, 4);
    let step = 1.0 / (width.min(height) * ss) as f32;
    let norm = 1.0 / (ss * ss) as f32;
    let paint_row = |(y, row): (usize, &mut [u8])| {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let mut acc = [0.0f32; 3];
            for j in 0..ss {
                for i in 0..ss {
                    let sx = (x as u32 * ss + i) as f32 + 0.5;
                    let c = s.at(V2::new(sx, (y as u32 * ss + j) as f32 + 0.5) * step);
                    acc = [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]];
                }
            }
            px.copy_from_slice(&acc.map(|v| to_u8(v * norm)));
        }
    };
    let row_len = width as usize * 3;
    if u64::from(width) * u64::from(height) * u64::from(ss * ss) >= PARALLEL_SAMPLES {
        img.par_chunks_exact_mut(row_len).enumerate().for_each(paint_row);
    } else {
        img.chunks_exact_mut(row_len).enumerate().for_each(paint_row);
    }
    img
}

/// Fractional part.
pub(super) fn frac(x: f32) -> f32 {
    x - floor(x)
}

/// Distance from `x` to the nearest integer, in [0, 0.5].
pub(super) fn to_int(x: f32) -> f32 {
    let f = frac(x);
    f.min(1.0 - f)
}

/// A uniform value in [0, 1) for a lattice point.
pub(super) fn hash01(x: i32, y: i32, seed: u32) -> f32 {
    (hash2(x, y, seed) >> 8) as f32 / (1u32 << 24) as f32
}
