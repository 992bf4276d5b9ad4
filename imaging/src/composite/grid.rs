//! A coarse grid of per-cell sums of the photo and its matte, blurred with box filters at
//! that coarse resolution. Large-radius blurs (the first blur-fusion pass, the blurred
//! background) are smooth, so computing them on cells of `scale`x`scale` pixels costs a
//! fraction of a full-resolution blur and loses nothing visible.
//!
//! Every quantity read from the grid is a ratio of two blurred sums (a normalised
//! convolution), so zero padding at the borders needs no correction.

use rayon::prelude::*;

/// Channels per cell: pixel count, sum of alpha, sum of colour*alpha (3), sum of colour (3).
pub(super) const CH: usize = 8;
/// One grid cell; alpha is in [0, 1] and colours in [0, 255].
pub(super) type Cell = [f32; CH];

/// Per-cell sums at `1/scale` resolution.
pub(super) struct Grid {
    width: usize,
    height: usize,
    scale: usize,
    cells: Vec<Cell>,
}

/// Bilinear interpolation weights of one pixel coordinate against a coarse axis.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tap {
    lo: u32,
    hi: u32,
    w_hi: f32,
}

/// Values derived from each cell, sampled bilinearly at full resolution.
pub(super) struct Field<const N: usize> {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) scale: usize,
    pub(super) values: Vec<[f32; N]>,
}

impl Grid {
    /// Sums `rgb` (3 bytes per pixel) and `alpha` over cells of `scale`x`scale` pixels.
    pub(super) fn build(rgb: &[u8], alpha: &[u8], width: usize, height: usize, scale: usize) -> Grid {
        let (gw, gh) = (width.div_ceil(scale), height.div_ceil(scale));
        let mut cells = vec![[0.0; CH]; gw * gh];
        cells.par_chunks_mut(gw).enumerate().for_each(|(cy, out)| {
            // Integer sums are exact; a cell of up to 256x256 pixels cannot overflow u32.
            let mut sums = vec![[0u32; CH - 1]; gw];
            let rows = cy * scale..((cy + 1) * scale).min(height);
            for y in rows.clone() {
                let px = rgb[y * width * 3..(y + 1) * width * 3].chunks(scale * 3);
                let al = alpha[y * width..(y + 1) * width].chunks(scale);
                for (sum, (px, al)) in sums.iter_mut().zip(px.zip(al)) {
                    accumulate(sum, px, al);
                }
            }
            for (cx, (cell, s)) in out.iter_mut().zip(&sums).enumerate() {
                let cols = ((cx + 1) * scale).min(width) - cx * scale;
                let mut c = [(rows.len() * cols) as f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
                for k in 0..4 {
                    c[1 + k] = s[k] as f32 / 255.0;
                }
                for k in 4..7 {
                    c[1 + k] = s[k] as f32;
                }
                *cell = c;
            }
        });
        Grid { width: gw, height: gh, scale, cells }
    }

    /// Replaces every cell by the sum over the `(2*radius+1)`-square around it.
    pub(super) fn box_blur(&mut self, radius: usize) {
        if radius == 0 {
            return;
        }
        let (w, h) = (self.width, self.height);
        let mut prefix = vec![[0.0; CH]; w + 1];
        for row in self.cells.chunks_mut(w) {
            for x in 0..w {
                prefix[x + 1] = add(&prefix[x], &row[x]);
            }
            for (x, cell) in row.iter_mut().enumerate() {
                *cell = sub(&prefix[(x + radius + 1).min(w)], &prefix[x.saturating_sub(radius)]);
            }
        }
        let mut prefix = vec![[0.0; CH]; (h + 1) * w];
        for i in 0..h * w {
            prefix[i + w] = add(&prefix[i], &self.cells[i]);
        }
        for (y, row) in self.cells.chunks_mut(w).enumerate() {
            let hi = &prefix[(y + radius + 1).min(h) * w..][..w];
            let lo = &prefix[y.saturating_sub(radius) * w..][..w];
            for ((cell, hi), lo) in row.iter_mut().zip(hi).zip(lo) {
                *cell = sub(hi, lo);
            }
        }
    }

    /// Derives a per-cell field from the (blurred) sums.
    pub(super) fn map<const N: usize>(&self, f: impl Fn(&Cell) -> [f32; N] + Sync) -> Field<N> {
        Field {
            width: self.width,
            height: self.height,
            scale: self.scale,
            values: self.cells.par_iter().map(f).collect(),
        }
    }
}

#[inline]
fn accumulate(sum: &mut [u32; CH - 1], px: &[u8], al: &[u8]) {
    let mut s = *sum;
    for (p, &a) in px.chunks_exact(3).zip(al) {
        let (r, g, b, a) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]), u32::from(a));
        s[0] += a;
        s[1] += r * a;
        s[2] += g * a;
        s[3] += b * a;
        s[4] += r;
        s[5] += g;
        s[6] += b;
    }
    *sum = s;
}

#[inline]
fn add(a: &Cell, b: &Cell) -> Cell {
    std::array::from_fn(|k| a[k] + b[k])
}

#[inline]
fn sub(a: &Cell, b: &Cell) -> Cell {
    std::array::from_fn(|k| a[k] - b[k])
}

/// Smallest denominator used in ratios, to keep empty windows finite.
const TINY: f32 = 1e-3;

/// Blur-fusion first-pass estimates from blurred sums: `[F^ (3), B^ (3)]` with
/// `F^ = blur(I*a)/blur(a)` and `B^ = blur(I*(1-a))/blur(1-a)`.
pub(super) fn fg_bg_estimate(c: &Cell) -> [f32; 6] {
    let fg = c[1].max(TINY);
    let bg = (c[0] - c[1]).max(TINY);
    std::array::from_fn(|k| {
        let v = if k < 3 { c[2 + k] / fg } else { (c[2 + k] - c[k - 1]) / bg };
        v.clamp(0.0, 255.0)
    })
}

/// The background as seen around the product: colour averaged with weight `1-a`, falling
/// back to the plain average where the window is (almost) all foreground.
pub(super) fn background_estimate(c: &Cell) -> [f32; 3] {
    let count = c[0].max(TINY);
    let bg_weight = (c[0] - c[1]).max(0.0);
    let t = (bg_weight / count * 10.0).min(1.0);
    std::array::from_fn(|k| {
        let weighted = (c[5 + k] - c[2 + k]) / bg_weight.max(TINY);
        let plain = c[5 + k] / count;
        (t * weighted + (1.0 - t) * plain).clamp(0.0, 255.0)
    })
}

impl<const N: usize> Field<N> {
    /// Interpolation weights for pixel column `x`.
    pub(super) fn tap_x(&self, x: usize) -> Tap {
        tap(x, self.scale, self.width)
    }

    /// Interpolation weights for pixel row `y`.
    pub(super) fn tap_y(&self, y: usize) -> Tap {
        tap(y, self.scale, self.height)
    }

    /// The bilinearly interpolated value at the pixel described by a row and a column tap.
    #[inline]
    pub(super) fn sample(&self, ty: Tap, tx: Tap) -> [f32; N] {
        let row = |y: u32| &self.values[y as usize * self.width..][..self.width];
        let (top, bottom) = (row(ty.lo), row(ty.hi));
        let lerp = |r: &[[f32; N]]| -> [f32; N] {
            let (a, b) = (&r[tx.lo as usize], &r[tx.hi as usize]);
            std::array::from_fn(|k| a[k] + (b[k] - a[k]) * tx.w_hi)
        };
        let (t, b) = (lerp(top), lerp(bottom));
        std::array::from_fn(|k| t[k] + (b[k] - t[k]) * ty.w_hi)
    }
}

/// Cell centres sit at `(i + 0.5) * scale - 0.5` in pixel coordinates.
fn tap(pixel: usize, scale: usize, len: usize) -> Tap {
    let g = ((pixel as f32 + 0.5) / scale as f32 - 0.5).max(0.0);
    let lo = (g as usize).min(len - 1);
    Tap {
        lo: lo as u32,
        hi: (lo + 1).min(len - 1) as u32,
        w_hi: (g - lo as f32).clamp(0.0, 1.0),
    }
}
