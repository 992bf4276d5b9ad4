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
    /// Sums `rgb` (3 bytes per pixel) and `alpha` over cells of `scale`x`scale` pixels. Large
    /// cells are sampled on a sparser lattice (every `scale/4`-th row and column): the blur
    /// that follows averages away the difference at a fraction of the cost.
    pub(super) fn build(rgb: &[u8], alpha: &[u8], width: usize, height: usize, scale: usize) -> Grid {
        let (gw, gh) = (width.div_ceil(scale), height.div_ceil(scale));
        let step = (scale / 4).max(1);
        let mut cells = vec![[0.0; CH]; gw * gh];
        cells.par_chunks_mut(gw).enumerate().for_each(|(cy, out)| {
            // Integer sums are exact; a cell of up to 256x256 pixels cannot overflow u32.
            let mut sums = vec![[0u32; CH - 1]; gw];
            let rows = (cy * scale..((cy + 1) * scale).min(height)).step_by(step);
            for y in rows.clone() {
                let px = rgb[y * width * 3..(y + 1) * width * 3].chunks(scale * 3);
                let al = alpha[y * width..(y + 1) * width].chunks(scale);
                for (sum, (px, al)) in sums.iter_mut().zip(px.zip(al)) {
                    accumulate(sum, px, al, step);
                }
            }
            let n_rows = rows.len();
            for (cx, (cell, s)) in out.iter_mut().zip(&sums).enumerate() {
                let cols = ((cx + 1) * scale).min(width) - cx * scale;
                let mut c = [(n_rows * cols.div_ceil(step)) as f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
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
    pub(super) fn map<const N: usize>(&self, f: impl Fn(&Cell) -> [f32; N] + Sync + Send) -> Field<N> {
        Field {
            width: self.width,
            height: self.height,
            scale: self.scale,
            values: self.cells.par_iter().map(f).collect(),
        }
    }
}

#[inline]
fn accumulate(sum: &mut [u32; CH - 1], px: &[u8], al: &[u8], step: usize) {
    if step == 1 {
        accumulate_dense(sum, px, al);
        return;
    }
    let [mut sa, mut sra, mut sga, mut sba, mut sr, mut sg, mut sb] = *sum;
    let mut x = 0;
    while x < al.len() {
        let (r, g, b, a) = (u32::from(px[3 * x]), u32::from(px[3 * x + 1]), u32::from(px[3 * x + 2]), u32::from(al[x]));
        sa += a;
        sra += r * a;
        sga += g * a;
        sba += b * a;
        sr += r;
        sg += g;
        sb += b;
        x += step;
    }
    *sum = [sa, sra, sga, sba, sr, sg, sb];
}

#[inline]
fn accumulate_dense(sum: &mut [u32; CH - 1], px: &[u8], al: &[u8]) {
    let [mut sa, mut sra, mut sga, mut sba, mut sr, mut sg, mut sb] = *sum;
    for (p, &a) in px.chunks_exact(3).zip(al) {
        let (r, g, b, a) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]), u32::from(a));
        sa += a;
        sra += r * a;
        sga += g * a;
        sba += b * a;
        sr += r;
        sg += g;
        sb += b;
    }
    *sum = [sa, sra, sga, sba, sr, sg, sb];
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

    /// The field interpolated vertically at row tap `ty` for the grid columns `first..=last`;
    /// pixels of one row then need only the horizontal step ([`lerp_line`]).
    pub(super) fn row_line(&self, ty: Tap, first: usize, last: usize, out: &mut Vec<[f32; N]>) {
        let row = |y: u32| &self.values[y as usize * self.width..][first..=last];
        out.clear();
        out.extend(
            row(ty.lo).iter().zip(row(ty.hi)).map(|(t, b)| std::array::from_fn(|k| t[k] + (b[k] - t[k]) * ty.w_hi)),
        );
    }

    /// The first and last grid columns the taps of pixel columns `x0..x1` read.
    pub(super) fn column_span(&self, x0: usize, x1: usize) -> (usize, usize) {
        (self.tap_x(x0).lo as usize, self.tap_x(x1 - 1).hi as usize)
    }
}

/// Interpolates a [`Field::row_line`] (starting at grid column `first`) at column tap `tx`.
#[inline]
pub(super) fn lerp_line<const N: usize>(line: &[[f32; N]], first: usize, tx: Tap) -> [f32; N] {
    let (a, b) = (&line[tx.lo as usize - first], &line[tx.hi as usize - first]);
    std::array::from_fn(|k| a[k] + (b[k] - a[k]) * tx.w_hi)
}

/// Cell centres sit at `(i + 0.5) * scale - 0.5` in pixel coordinates.
fn tap(pixel: usize, scale: usize, len: usize) -> Tap {
    let g = ((pixel as f32 + 0.5) / scale as f32 - 0.5).max(0.0);
    let lo = (g as usize).min(len - 1);
    Tap { lo: lo as u32, hi: (lo + 1).min(len - 1) as u32, w_hi: (g - lo as f32).clamp(0.0, 1.0) }
}
