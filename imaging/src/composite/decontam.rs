//! Foreground colour estimation for edge pixels by blur fusion (Forte & Pitié 2020,
//! "Approximate fast foreground colour estimation"), so the old background does not
//! fringe the product once it stands on a new one.
//!
//! Pass 1 (radius ~90 px at 1 MP) runs on a coarse [`Grid`]; pass 2 (radius ~6 px) runs at
//! full resolution but only in tiles that contain edge pixels, with running box sums, so the
//! cost follows the length of the product's outline rather than the image area.
//!
//! One shortcut against the paper: pass 2 takes its background estimate straight from pass 1
//! instead of re-blurring it. Pass 1's background is already a radius-90 blur, so a radius-6
//! box over it changes nothing visible, and skipping it halves the per-pixel work.

use super::grid::{fg_bg_estimate, lerp_line, Field, Grid, Tap};
use super::{Band, Rect};

/// First-pass radius as a share of `sqrt(width*height)` (90 px at 1 MP, as in the paper).
const LARGE_RADIUS: f32 = 0.09;
/// Second-pass radius as a share of `sqrt(width*height)` (6 px at 1 MP).
const SMALL_RADIUS: f32 = 0.006;
/// Smallest denominator used in ratios, to keep empty windows finite.
const TINY: f32 = 1e-4;

/// What pass 2 blurs for each pixel: `[a, F*a (3)]` with `F` the pass-1 foreground.
type Sums = [f32; 4];

/// The shared, read-only state of a decontamination: the photo, its matte and pass 1.
pub(super) struct Decontam<'a> {
    rgb: &'a [u8],
    alpha: &'a [u8],
    width: usize,
    field: Field<6>,
    radius: usize,
}

/// Buffers reused from tile to tile by one worker thread.
#[derive(Default)]
pub(super) struct Scratch {
    cells: Vec<Sums>,
    vertical: Vec<Sums>,
    taps: Vec<Tap>,
    acc: Vec<f32>,
    line: Vec<[f32; 6]>,
}

impl<'a> Decontam<'a> {
    /// Runs pass 1 over the whole image.
    pub(super) fn new(rgb: &'a [u8], alpha: &'a [u8], width: usize, height: usize) -> Self {
        let size = ((width * height) as f32).sqrt();
        let large = (LARGE_RADIUS * size).max(3.0);
        let scale = ((large / 10.0).round() as usize).clamp(1, 128);
        let mut grid = Grid::build(rgb, alpha, width, height, scale);
        grid.box_blur((large / scale as f32).round().max(1.0) as usize);
        Decontam {
            rgb,
            alpha,
            width,
            field: grid.map(fg_bg_estimate),
            radius: ((SMALL_RADIUS * size).round() as usize).max(1),
        }
    }

    /// Side of the square tiles pass 2 works on: large against the apron it reads around them.
    pub(super) fn tile_size(&self) -> usize {
        (4 * self.radius).max(32)
    }

    /// Runs pass 2 on one tile and calls `emit(x, y, foreground)` for each of its pixels whose
    /// alpha lies in `band`.
    pub(super) fn tile(
        &self,
        tile: Rect,
        height: usize,
        band: Band,
        scratch: &mut Scratch,
        mut emit: impl FnMut(usize, usize, [f32; 3]),
    ) {
        let any = (tile.y0..tile.y1).any(|y| {
            let row = &self.alpha[y * self.width..][tile.x0..tile.x1];
            row.iter().any(|&a| band.contains(a))
        });
        if !any {
            return;
        }
        let region = tile.expand(self.radius, self.width, height);
        self.fill_region(region, scratch);
        vertical_sums(tile, region, self.radius, scratch);
        self.emit_band(tile, region, band, scratch, &mut emit);
    }

    /// Pass-1 foreground, premultiplied, for every pixel of `region`. Sure pixels need no
    /// estimate (`F = I` where `a = 1`, `F*a = 0` where `a = 0`), so a cheap pass fills every
    /// cell and only partial-alpha pixels get the interpolated pass-1 estimate.
    fn fill_region(&self, region: Rect, scratch: &mut Scratch) {
        let rw = region.x1 - region.x0;
        scratch.taps.clear();
        scratch.taps.extend((region.x0..region.x1).map(|x| self.field.tap_x(x)));
        scratch.cells.clear();
        scratch.cells.resize(rw * (region.y1 - region.y0), [0.0; 4]);
        for (y, cells) in (region.y0..region.y1).zip(scratch.cells.chunks_exact_mut(rw)) {
            let start = y * self.width;
            let px = &self.rgb[(start + region.x0) * 3..(start + region.x1) * 3];
            let al = &self.alpha[start + region.x0..start + region.x1];
            let mut partial = false;
            for ((cell, p), &a8) in cells.iter_mut().zip(px.chunks_exact(3)).zip(al) {
                let a = f32::from(a8) * (1.0 / 255.0);
                *cell = [a, f32::from(p[0]) * a, f32::from(p[1]) * a, f32::from(p[2]) * a];
                partial |= a8 != 0 && a8 != 255;
            }
            if !partial {
                continue;
            }
            let (first, last) = self.field.column_span(region.x0, region.x1);
            self.field.row_line(self.field.tap_y(y), first, last, &mut scratch.line);
            let line = &scratch.line;
            for (((cell, p), &a8), &tx) in cells.iter_mut().zip(px.chunks_exact(3)).zip(al).zip(&scratch.taps) {
                if a8 != 0 && a8 != 255 {
                    let e = lerp_line(line, first, tx);
                    let a = cell[0];
                    let f: [f32; 3] = std::array::from_fn(|k| correct(p[k].into(), a, e[k], e[3 + k]));
                    *cell = [a, f[0] * a, f[1] * a, f[2] * a];
                }
            }
        }
    }

    /// For each band pixel: the horizontal window sum of the vertical sums, then the final
    /// foreground estimate.
    fn emit_band(
        &self,
        tile: Rect,
        region: Rect,
        band: Band,
        scratch: &mut Scratch,
        emit: &mut impl FnMut(usize, usize, [f32; 3]),
    ) {
        let rw = region.x1 - region.x0;
        let cx0 = tile.x0 - region.x0;
        let (first, last) = self.field.column_span(region.x0, region.x1);
        for (y, sums) in (tile.y0..tile.y1).zip(scratch.vertical.chunks_exact(rw)) {
            self.field.row_line(self.field.tap_y(y), first, last, &mut scratch.line);
            let start = y * self.width + tile.x0;
            let px = &self.rgb[start * 3..(start + tile.x1 - tile.x0) * 3];
            let al = &self.alpha[start..start + tile.x1 - tile.x0];
            for (dx, (p, &a8)) in px.chunks_exact(3).zip(al).enumerate() {
                if !band.contains(a8) {
                    continue;
                }
                let cx = cx0 + dx;
                let window = &sums[cx.saturating_sub(self.radius)..(cx + self.radius + 1).min(rw)];
                let s = window.iter().fold([0.0; 4], |acc, c| std::array::from_fn(|k| acc[k] + c[k]));
                let e = lerp_line(&scratch.line, first, scratch.taps[cx]);
                emit(tile.x0 + dx, y, second_pass(p, a8, &s, &e));
            }
        }
    }
}

/// Vertical window sums of the region's cells for each row of the tile, kept as running
/// sums so every step is a whole-row (vectorisable) add.
fn vertical_sums(tile: Rect, region: Rect, radius: usize, scratch: &mut Scratch) {
    let (rw, rh) = (region.x1 - region.x0, region.y1 - region.y0);
    let cells = scratch.cells.as_flattened();
    let row = |ry: usize| &cells[ry * rw * 4..(ry + 1) * rw * 4];
    let acc = &mut scratch.acc;
    acc.clear();
    acc.resize(rw * 4, 0.0);
    let first = tile.y0 - region.y0;
    for ry in first.saturating_sub(radius)..(first + radius + 1).min(rh) {
        add_row(acc, row(ry), 1.0);
    }
    scratch.vertical.clear();
    for ry in first..first + (tile.y1 - tile.y0) {
        if ry > first {
            if ry + radius < rh {
                add_row(acc, row(ry + radius), 1.0);
            }
            if ry > radius {
                add_row(acc, row(ry - radius - 1), -1.0);
            }
        }
        scratch.vertical.extend(acc.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]));
    }
}

/// `F = clamp(F^ + a*(I - a*F^ - (1-a)*B^))`: the blurred estimate corrected so that it
/// recomposes exactly to the observed colour where possible.
#[inline]
fn correct(i: f32, a: f32, f: f32, b: f32) -> f32 {
    (f + a * (i - a * f - (1.0 - a) * b)).clamp(0.0, 255.0)
}

/// Pass 2: foreground from the local sums, background from pass 1 (`e[3..]`).
fn second_pass(p: &[u8], a8: u8, s: &Sums, e: &[f32; 6]) -> [f32; 3] {
    let a = f32::from(a8) / 255.0;
    let fg = 1.0 / s[0].max(TINY);
    std::array::from_fn(|k| correct(p[k].into(), a, s[1 + k] * fg, e[3 + k]))
}

#[inline]
fn add_row(acc: &mut [f32], row: &[f32], sign: f32) {
    for (a, c) in acc.iter_mut().zip(row) {
        *a += sign * c;
    }
}
