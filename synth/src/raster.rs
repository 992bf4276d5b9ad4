//! Raster helpers shared by the background and object passes: the pixel-to-scene
//! mapping, blurred coverage stamps (repeated box blurs approximate a Gaussian in O(n)),
//! film grain, and bilinear upsampling of the low-resolution background.

use crate::detmath::{floor, V2};
use crate::paint::hash2;

/// A pixel grid laid over the scene rectangle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    /// Width in pixels.
    pub w: usize,
    /// Height in pixels.
    pub h: usize,
    /// Scene units per pixel horizontally.
    pub sx: f32,
    /// Scene units per pixel vertically.
    pub sy: f32,
}

impl Grid {
    /// A `w` x `h` grid over a scene of size `dims`.
    pub fn new(w: usize, h: usize, dims: V2) -> Grid {
        Grid { w, h, sx: dims.x / w as f32, sy: dims.y / h as f32 }
    }

    /// Scene position of a (possibly fractional) pixel coordinate.
    pub fn at(&self, x: f32, y: f32) -> V2 {
        V2::new(x * self.sx, y * self.sy)
    }

    /// Largest pixel side in scene units.
    pub fn footprint(&self) -> f32 {
        self.sx.max(self.sy)
    }
}

/// The object's rendered alpha, looked up by scene position (shadows are cast from it,
/// so they cost no extra shape evaluations).
pub(crate) struct Coverage<'a> {
    alpha: &'a [u8],
    grid: Grid,
}

impl<'a> Coverage<'a> {
    /// Wraps an alpha buffer laid out on `grid`.
    pub fn new(alpha: &'a [u8], grid: Grid) -> Coverage<'a> {
        Coverage { alpha, grid }
    }

    /// The raw alpha bytes.
    pub fn alpha(&self) -> &'a [u8] {
        self.alpha
    }

    /// Alpha (0..1) of the pixel containing `p`; 0 outside the image.
    pub fn at(&self, p: V2) -> f32 {
        let (x, y) = (floor(p.x / self.grid.sx), floor(p.y / self.grid.sy));
        if x < 0.0 || y < 0.0 || x >= self.grid.w as f32 || y >= self.grid.h as f32 {
            return 0.0;
        }
        f32::from(self.alpha[y as usize * self.grid.w + x as usize]) / 255.0
    }
}

/// A blurred coverage patch positioned on a grid (it may hang over the edges).
pub(crate) struct Stamp {
    x0: i32,
    y0: i32,
    w: usize,
    h: usize,
    data: Vec<f32>,
}

impl Stamp {
    /// Evaluates `cov` over the pixels of `grid` near the scene box `lo..hi`, then blurs
    /// with two box passes of radius `blur_px` (a triangle filter, close enough to a
    /// Gaussian for shadows).
    pub fn new(grid: &Grid, lo: V2, hi: V2, blur_px: usize, cov: impl Fn(V2) -> f32) -> Stamp {
        let m = (2 * blur_px + 1) as i32;
        let x0 = ((lo.x / grid.sx).floor() as i32 - m).max(-m);
        let x1 = ((hi.x / grid.sx).ceil() as i32 + m).min(grid.w as i32 + m);
        let y0 = ((lo.y / grid.sy).floor() as i32 - m).max(-m);
        let y1 = ((hi.y / grid.sy).ceil() as i32 + m).min(grid.h as i32 + m);
        let (w, h) = ((x1 - x0).max(0) as usize, (y1 - y0).max(0) as usize);
        let mut data = Vec::with_capacity(w * h);
        for y in y0..y1 {
            for x in x0..x1 {
                data.push(cov(grid.at(x as f32 + 0.5, y as f32 + 0.5)));
            }
        }
        blur(&mut data, (w, h), blur_px, 2);
        Stamp { x0, y0, w, h, data }
    }

    /// Calls `f(pixel index, coverage)` for every grid pixel the stamp touches.
    pub fn apply(&self, grid: &Grid, mut f: impl FnMut(usize, f32)) {
        for sy in 0..self.h {
            let y = self.y0 + sy as i32;
            if y < 0 || y >= grid.h as i32 {
                continue;
            }
            for sx in 0..self.w {
                let x = self.x0 + sx as i32;
                let v = self.data[sy * self.w + sx];
                if x >= 0 && x < grid.w as i32 && v > 1e-4 {
                    f(y as usize * grid.w + x as usize, v.min(1.0));
                }
            }
        }
    }
}

/// Blurs a `w` x `h` single-channel buffer in place (zero outside) with `passes` box
/// passes of radius `r`.
pub(crate) fn blur(data: &mut [f32], (w, h): (usize, usize), r: usize, passes: usize) {
    if r == 0 || w == 0 || h == 0 {
        return;
    }
    let mut tmp = Vec::with_capacity(w.max(h));
    let mut col = vec![0.0; h];
    for _ in 0..passes {
        for row in data.chunks_exact_mut(w) {
            blur_1d(row, &mut tmp, r);
        }
        for x in 0..w {
            for y in 0..h {
                col[y] = data[y * w + x];
            }
            blur_1d(&mut col, &mut tmp, r);
            for y in 0..h {
                data[y * w + x] = col[y];
            }
        }
    }
}

/// One box pass of radius `r` over a line, zero-padded, with a running sum.
fn blur_1d(line: &mut [f32], tmp: &mut Vec<f32>, r: usize) {
    let n = line.len();
    tmp.clear();
    tmp.extend_from_slice(line);
    let norm = 1.0 / (2 * r + 1) as f32;
    let mut acc: f32 = tmp[..=r.min(n - 1)].iter().sum();
    for i in 0..n {
        line[i] = acc * norm;
        if i + r + 1 < n {
            acc += tmp[i + r + 1];
        }
        if i >= r {
            acc -= tmp[i - r];
        }
    }
}

/// Film grain offset in [-amp, amp] for pixel (x, y).
pub(crate) fn grain(x: usize, y: usize, seed: u32, amp: f32) -> f32 {
    let h = hash2(x as i32, y as i32, seed);
    amp * ((h >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
}

/// Rounds a channel value to a byte.
pub(crate) fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Source offsets (times 3, for RGB) and weight for each destination sample, centres
/// aligned.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let ratio = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let s = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f32);
            let i0 = s as usize;
            (i0 * 3, (i0 + 1).min(src - 1) * 3, s - i0 as f32)
        })
        .collect()
}

/// Bilinearly resizes an interleaved RGB float buffer into `out` (`w` x `h` RGB bytes),
/// adding grain. Pixels whose `skip` byte is 255 (hidden under the opaque object) are
/// left untouched.
pub(crate) fn upsample(
    low: &[f32],
    (bw, bh): (usize, usize),
    (w, h): (usize, usize),
    out: &mut [u8],
    skip: &[u8],
    (seed, amp): (u32, f32),
) {
    let (xs, ys) = if (bw, bh) == (w, h) {
        ((0..w).map(|x| (x * 3, x * 3, 0.0)).collect(), (0..h).map(|y| (y, y, 0.0)).collect())
    } else {
        (taps(bw, w), taps(bh, h).into_iter().map(|(a, b, f)| (a / 3, b / 3, f)).collect::<Vec<_>>())
    };
    let mut row = vec![0.0f32; bw * 3];
    let rows = out.chunks_exact_mut(w * 3).zip(skip.chunks_exact(w));
    for (y, ((dst, skip), &(y0, y1, fy))) in rows.zip(&ys).enumerate() {
        let (r0, r1) = (&low[y0 * bw * 3..(y0 + 1) * bw * 3], &low[y1 * bw * 3..(y1 + 1) * bw * 3]);
        for ((v, a), b) in row.iter_mut().zip(r0).zip(r1) {
            *v = a + (b - a) * fy;
        }
        for (x, ((px, &s), &(x0, x1, fx))) in dst.chunks_exact_mut(3).zip(skip).zip(&xs).enumerate() {
            if s == 255 {
                continue;
            }
            let g = grain(x, y, seed, amp);
            let (a, b) = (&row[x0..x0 + 3], &row[x1..x1 + 3]);
            for k in 0..3 {
                px[k] = to_u8(a[k] + (b[k] - a[k]) * fx + g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_mass_and_spreads() {
        let (w, h) = (41, 31);
        let mut data = vec![0.0; w * h];
        data[15 * w + 20] = 1.0;
        blur(&mut data, (w, h), 2, 3);
        let total: f32 = data.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "mass {total}");
        assert!(data[15 * w + 22] > 0.0 && data[15 * w + 20] < 0.2);
    }

    #[test]
    fn upsample_of_flat_is_flat() {
        let low = vec![100.0; 4 * 3 * 3];
        let mut out = vec![0u8; 17 * 9 * 3];
        upsample(&low, (4, 3), (17, 9), &mut out, &[0; 17 * 9], (1, 0.0));
        assert!(out.iter().all(|&v| v == 100));
    }
}
