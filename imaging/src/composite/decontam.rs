//! Foreground colour estimation for edge pixels by blur fusion (Forte & Pitié 2020,
//! "Approximate fast foreground colour estimation"), so the old background does not
//! fringe the product once it stands on a new one.
//!
//! Pass 1 (radius ~90 px at 1 MP) runs on a coarse [`Grid`]; pass 2 (radius ~6 px) runs at
//! full resolution but only in tiles that contain edge pixels, with running box sums, so the
//! cost follows the length of the product's outline rather than the image area.

use super::grid::{fg_bg_estimate, Cell, Field, Grid, Tap, CH};
use super::{Band, Rect};

/// First-pass radius as a share of `sqrt(width*height)` (90 px at 1 MP, as in the paper).
const LARGE_RADIUS: f32 = 0.09;
/// Second-pass radius as a share of `sqrt(width*height)` (6 px at 1 MP).
const SMALL_RADIUS: f32 = 0.006;
/// Smallest denominator used in ratios, to keep empty windows finite.
const TINY: f32 = 1e-4;

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
    cells: Vec<Cell>,
    prefix: Vec<Cell>,
    taps: Vec<Tap>,
    acc: Vec<Cell>,
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
        horizontal_sums(scratch, region.x1 - region.x0, self.radius);
        self.vertical_sums_and_emit(tile, region, band, scratch, &mut emit);
    }

    /// Pass-1 result for every pixel of `region`, as the channels pass 2 blurs:
    /// `[a, F*a (3), 1-a, B*(1-a) (3)]`.
    fn fill_region(&self, region: Rect, scratch: &mut Scratch) {
        scratch.taps.clear();
        scratch.taps.extend((region.x0..region.x1).map(|x| self.field.tap_x(x)));
        scratch.cells.clear();
        for y in region.y0..region.y1 {
            let ty = self.field.tap_y(y);
            let start = y * self.width;
            let px = &self.rgb[(start + region.x0) * 3..(start + region.x1) * 3];
            let al = &self.alpha[start + region.x0..start + region.x1];
            for ((p, &a8), &tx) in px.chunks_exact(3).zip(al).zip(&scratch.taps) {
                let cell = match a8 {
                    255 => [1.0, p[0].into(), p[1].into(), p[2].into(), 0.0, 0.0, 0.0, 0.0],
                    0 => {
                        let e = self.field.sample(ty, tx);
                        [0.0, 0.0, 0.0, 0.0, 1.0, e[3], e[4], e[5]]
                    }
                    _ => first_pass_cell(p, a8, &self.field.sample(ty, tx)),
                };
                scratch.cells.push(cell);
            }
        }
    }

    fn vertical_sums_and_emit(
        &self,
        tile: Rect,
        region: Rect,
        band: Band,
        scratch: &mut Scratch,
        emit: &mut impl FnMut(usize, usize, [f32; 3]),
    ) {
        let (rw, rh, r) = (region.x1 - region.x0, region.y1 - region.y0, self.radius);
        let (cx0, tw) = (tile.x0 - region.x0, tile.x1 - tile.x0);
        let cells = &scratch.cells;
        let row = |ry: usize| &cells[ry * rw + cx0..][..tw];
        let acc = &mut scratch.acc;
        acc.clear();
        acc.resize(tw, [0.0; CH]);
        let first = tile.y0 - region.y0;
        for ry in first.saturating_sub(r)..(first + r + 1).min(rh) {
            add_row(acc, row(ry), 1.0);
        }
        for y in tile.y0..tile.y1 {
            let ry = y - region.y0;
            if ry > first {
                if ry + r < rh {
                    add_row(acc, row(ry + r), 1.0);
                }
                if ry > r {
                    add_row(acc, row(ry - r - 1), -1.0);
                }
            }
            let start = y * self.width + tile.x0;
            let px = &self.rgb[start * 3..(start + tw) * 3];
            let al = &self.alpha[start..start + tw];
            for (dx, ((p, &a8), s)) in px.chunks_exact(3).zip(al).zip(acc.iter()).enumerate() {
                if band.contains(a8) {
                    emit(tile.x0 + dx, y, second_pass(p, a8, s));
                }
            }
        }
    }
}

/// `F = clamp(F^ + a*(I - a*F^ - (1-a)*B^))`: the blurred estimate corrected so that it
/// recomposes exactly to the observed colour where possible.
#[inline]
fn correct(i: f32, a: f32, f: f32, b: f32) -> f32 {
    (f + a * (i - a * f - (1.0 - a) * b)).clamp(0.0, 255.0)
}

fn first_pass_cell(p: &[u8], a8: u8, e: &[f32; 6]) -> Cell {
    let a = f32::from(a8) / 255.0;
    let na = 1.0 - a;
    let f: [f32; 3] = std::array::from_fn(|k| correct(p[k].into(), a, e[k], e[3 + k]));
    [a, f[0] * a, f[1] * a, f[2] * a, na, e[3] * na, e[4] * na, e[5] * na]
}

fn second_pass(p: &[u8], a8: u8, s: &Cell) -> [f32; 3] {
    let a = f32::from(a8) / 255.0;
    let (fg, bg) = (1.0 / s[0].max(TINY), 1.0 / s[4].max(TINY));
    std::array::from_fn(|k| correct(p[k].into(), a, s[1 + k] * fg, s[5 + k] * bg))
}

/// Replaces each cell of each `width`-long row by its horizontal window sum.
fn horizontal_sums(scratch: &mut Scratch, width: usize, radius: usize) {
    let prefix = &mut scratch.prefix;
    prefix.clear();
    prefix.resize(width + 1, [0.0; CH]);
    for row in scratch.cells.chunks_mut(width) {
        for (x, cell) in row.iter().enumerate() {
            prefix[x + 1] = std::array::from_fn(|k| prefix[x][k] + cell[k]);
        }
        for (x, cell) in row.iter_mut().enumerate() {
            let (hi, lo) = (&prefix[(x + radius + 1).min(width)], &prefix[x.saturating_sub(radius)]);
            *cell = std::array::from_fn(|k| hi[k] - lo[k]);
        }
    }
}

#[inline]
fn add_row(acc: &mut [Cell], row: &[Cell], sign: f32) {
    for (a, c) in acc.iter_mut().zip(row) {
        for k in 0..CH {
            a[k] += sign * c[k];
        }
    }
}
