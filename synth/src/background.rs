//! Backgrounds: the fill (flat, gradients, noise, stripes, tabletop), out-of-focus
//! clutter and the object's drop and contact shadows. All of it is painted on a grid of
//! at most `BG_LONG` pixels and upsampled, which both keeps it cheap and gives the soft,
//! depth-of-field look that lets the crisp product read as the subject.

use crate::detmath::{smooth01, unit, V2};
use crate::object::Object;
use crate::paint::{background_colour, fbm, filtered_square, hsv, mix, product_colour, related, scale, Rgb};
use crate::raster::{upsample, Coverage, Grid, Stamp};
use crate::rng::Draw;
use crate::shapes::{Polar, Prim};

/// Long side of the background grid (larger renders are upsampled from it).
const BG_LONG: usize = 400;

/// The kinds of background the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BgKind {
    /// One colour.
    Flat,
    /// Linear gradient.
    Gradient,
    /// Radial studio sweep (bright centre, darker edges).
    Studio,
    /// Value noise (fabric, plaster, paper).
    Noise,
    /// Stripes.
    Stripes,
    /// Wall above a table surface.
    Tabletop,
    /// Photo-like out-of-focus clutter.
    Clutter,
}

impl BgKind {
    /// Lower-case name used in samples and catalogs.
    pub fn name(self) -> &'static str {
        match self {
            BgKind::Flat => "flat",
            BgKind::Gradient => "gradient",
            BgKind::Studio => "studio",
            BgKind::Noise => "noise",
            BgKind::Stripes => "stripes",
            BgKind::Tabletop => "tabletop",
            BgKind::Clutter => "clutter",
        }
    }
}

/// How the base layer is filled.
#[derive(Clone, Debug)]
enum Fill {
    Flat,
    Linear { dir: V2, lo: f32, span: f32 },
    Studio { centre: V2, radius: f32 },
    Noise { freq: V2, seed: u32 },
    Stripes { axis: V2, duty: f32 },
    Tabletop { horizon: f32, soft: f32, table: Rgb, table2: Rgb, grain: Option<(V2, u32)> },
}

/// An out-of-focus shape behind the product.
#[derive(Clone, Debug)]
struct Blob {
    prim: Prim,
    colour: Rgb,
    opacity: f32,
    blur: f32,
}

/// Drop and contact shadow parameters (scene units).
#[derive(Clone, Debug)]
struct Shadow {
    offset: V2,
    blur: f32,
    strength: f32,
    contact: Option<(f32, f32)>,
}

/// A background description.
#[derive(Clone, Debug)]
pub(crate) struct Background {
    /// What kind it is.
    pub kind: BgKind,
    /// Dominant colour.
    pub base: Rgb,
    second: Rgb,
    fill: Fill,
    blobs: Vec<Blob>,
    shadow: Option<Shadow>,
    vignette: f32,
}

impl Background {
    /// Draws a background for a scene of size `dims`; `white` forces a white-ish studio.
    pub fn sample(d: &mut Draw, dims: V2, white: bool) -> Background {
        let kind = if white {
            d.pick(&[BgKind::Flat, BgKind::Gradient, BgKind::Studio, BgKind::Tabletop])
        } else {
            d.weighted(&[
                (BgKind::Flat, 12),
                (BgKind::Gradient, 18),
                (BgKind::Studio, 16),
                (BgKind::Noise, 10),
                (BgKind::Stripes, 8),
                (BgKind::Tabletop, 16),
                (BgKind::Clutter, 20),
            ])
        };
        let base = if white { hsv(d.unit(), d.range(0.0, 0.05), d.range(0.9, 0.98)) } else { background_colour(d) };
        let second = related(d, base, if white { 0.06 } else { 0.3 });
        let fill = sample_fill(d, kind, dims, base, white);
        let blobs = if kind == BgKind::Clutter { sample_blobs(d, dims, base) } else { Vec::new() };
        let shadow = d.chance(if kind == BgKind::Clutter { 0.5 } else { 0.8 }).then(|| Shadow {
            offset: V2::new(d.range(-0.04, 0.04), d.range(0.0, 0.035)),
            blur: d.range(0.01, 0.04),
            strength: d.range(0.15, 0.45),
            contact: d.chance(0.7).then(|| (d.range(0.2, 0.5), d.range(0.004, 0.012))),
        });
        let vignette = if d.chance(0.3) { d.range(0.05, 0.25) } else { 0.0 };
        Background { kind, base, second, fill, blobs, shadow, vignette }
    }

    /// Puts a tabletop's horizon behind the placed object, so it stands on the table.
    pub fn settle(&mut self, d: &mut Draw, obj: &Object, dims: V2) {
        if let Fill::Tabletop { horizon, .. } = &mut self.fill {
            let height = obj.bounds.1.y - obj.bounds.0.y;
            *horizon = (obj.foot.0.y - height * d.range(0.15, 0.6)).clamp(dims.y * 0.15, dims.y * 0.9);
        }
    }

    /// Paints the background into `out` (`w` x `h` RGB bytes), with the shadows of `obj`
    /// whose rendered alpha is `cover`.
    pub fn render(
        &self,
        obj: &Object,
        cover: &Coverage,
        dims: V2,
        (w, h): (usize, usize),
        out: &mut [u8],
        (seed, grain): (u32, f32),
    ) {
        let long = w.max(h);
        let (bw, bh) = if long <= BG_LONG {
            (w, h)
        } else {
            let f = BG_LONG as f32 / long as f32;
            (((w as f32 * f).round() as usize).max(1), ((h as f32 * f).round() as usize).max(1))
        };
        let grid = Grid::new(bw, bh, dims);
        let mut buf = self.fill_grid(&grid, dims);
        for blob in &self.blobs {
            // Out of focus: the edge ramps over the blur width straight from the distance
            // bound, which is far cheaper than blurring a raster and looks the same.
            let (lo, hi) = blob.prim.bounds();
            let soft = blob.blur + grid.footprint();
            let stamp = Stamp::new(&grid, lo - V2::new(soft, soft), hi + V2::new(soft, soft), 0, |p| {
                smooth01(0.5 - blob.prim.sdf(p) / (2.0 * soft))
            });
            stamp.apply(&grid, |i, v| {
                let c = mix(pixel(&buf, i), blob.colour, v * blob.opacity);
                buf[i * 3..i * 3 + 3].copy_from_slice(&c);
            });
        }
        if let Some(shadow) = &self.shadow {
            cast_shadow(shadow, obj, cover, &grid, &mut buf);
        }
        upsample(&buf, (bw, bh), (w, h), out, cover.alpha(), (seed, grain));
    }

    /// The base fill plus vignette on the grid, as interleaved RGB floats.
    fn fill_grid(&self, grid: &Grid, dims: V2) -> Vec<f32> {
        let px = grid.footprint();
        let mut buf = Vec::with_capacity(grid.w * grid.h * 3);
        for y in 0..grid.h {
            for x in 0..grid.w {
                let p = grid.at(x as f32 + 0.5, y as f32 + 0.5);
                let mut c = self.fill_at(p, px);
                if self.vignette > 0.0 {
                    let u = (p - dims * 0.5).div_v(dims * 0.5);
                    c = scale(c, 1.0 - self.vignette * u.dot(u) * 0.5);
                }
                buf.extend_from_slice(&c);
            }
        }
        buf
    }

    fn fill_at(&self, p: V2, px: f32) -> Rgb {
        let (a, b) = (self.base, self.second);
        match &self.fill {
            Fill::Flat => a,
            Fill::Linear { dir, lo, span } => mix(a, b, ((p.dot(*dir) - lo) / span).clamp(0.0, 1.0)),
            Fill::Studio { centre, radius } => mix(a, b, smooth01((p - *centre).len() / radius)),
            Fill::Noise { freq, seed } => mix(a, b, fbm(p.mul_v(*freq), *seed, 3)),
            Fill::Stripes { axis, duty } => mix(a, b, filtered_square(p.dot(*axis), px * axis.len(), *duty)),
            Fill::Tabletop { horizon, soft, table, table2, grain } => {
                let wall = mix(a, b, (p.y / horizon).clamp(0.0, 1.0) * 0.5);
                let depth = ((p.y - horizon) / (1.0 - horizon).max(0.05)).clamp(0.0, 1.0);
                let mut t = mix(*table2, *table, depth);
                if let Some((freq, seed)) = grain {
                    t = scale(t, 0.9 + 0.2 * fbm(p.mul_v(*freq), *seed, 2));
                }
                mix(wall, t, smooth01((p.y - horizon) / soft + 0.5))
            }
        }
    }
}

/// Darkens `buf` with the object's blurred, offset silhouette and a contact shadow.
fn cast_shadow(s: &Shadow, obj: &Object, cover: &Coverage, grid: &Grid, buf: &mut [f32]) {
    let px = grid.footprint();
    let (lo, hi) = obj.bounds;
    let r = (s.blur / px).round() as usize;
    let drop = Stamp::new(grid, lo + s.offset, hi + s.offset, r, |p| cover.at(p - s.offset));
    drop.apply(grid, |i, v| darken(buf, i, v * s.strength));
    if let Some((contact, blur)) = s.contact {
        let (c, half) = obj.foot;
        let ell = Prim::Ellipse { c, r: V2::new(half.max(0.01), (hi.y - lo.y) * 0.03 + 0.004) };
        let (elo, ehi) = ell.bounds();
        let soft = V2::new(blur + px, blur + px);
        let stamp = Stamp::new(grid, elo - soft, ehi + soft, 0, |p| smooth01(0.5 - ell.sdf(p) / (2.0 * soft.x)));
        stamp.apply(grid, |i, v| darken(buf, i, v * contact));
    }
}

fn pixel(buf: &[f32], i: usize) -> Rgb {
    [buf[i * 3], buf[i * 3 + 1], buf[i * 3 + 2]]
}

fn darken(buf: &mut [f32], i: usize, amount: f32) {
    for v in &mut buf[i * 3..i * 3 + 3] {
        *v *= 1.0 - amount;
    }
}

fn sample_fill(d: &mut Draw, kind: BgKind, dims: V2, base: Rgb, white: bool) -> Fill {
    let kind =
        if kind == BgKind::Clutter { d.pick(&[BgKind::Gradient, BgKind::Tabletop, BgKind::Noise]) } else { kind };
    match kind {
        BgKind::Gradient => {
            let angle = if d.chance(0.5) { 90.0 } else { d.range(0.0, 360.0) };
            let dir = unit(f64::from(angle).to_radians());
            let corners = [V2::default(), V2::new(dims.x, 0.0), V2::new(0.0, dims.y), dims];
            let lo = corners.iter().map(|c| c.dot(dir)).fold(f32::MAX, f32::min);
            let hi = corners.iter().map(|c| c.dot(dir)).fold(f32::MIN, f32::max);
            Fill::Linear { dir, lo, span: (hi - lo).max(1e-3) }
        }
        BgKind::Studio => Fill::Studio {
            centre: V2::new(dims.x * d.range(0.35, 0.65), dims.y * d.range(0.3, 0.5)),
            radius: d.range(0.5, 0.9),
        },
        BgKind::Noise => {
            let f = d.range(3.0, 15.0);
            let freq = if d.chance(0.3) { V2::new(f * 0.25, f * 2.0) } else { V2::new(f, f) };
            Fill::Noise { freq, seed: d.bits() }
        }
        BgKind::Stripes => {
            let free = d.range(0.0, 180.0);
            let angle = d.pick(&[0.0f32, 90.0, 45.0, free]);
            let period = d.range(0.03, 0.12);
            Fill::Stripes { axis: unit(f64::from(angle).to_radians()) * (1.0 / period), duty: d.range(0.3, 0.6) }
        }
        BgKind::Tabletop => {
            let table = if white {
                related(d, base, 0.05)
            } else if d.chance(0.5) {
                hsv(d.range(0.06, 0.1), d.range(0.3, 0.6), d.range(0.35, 0.75))
            } else {
                background_colour(d)
            };
            let grain = d.chance(0.5).then(|| (V2::new(d.range(2.0, 6.0), d.range(30.0, 80.0)), d.bits()));
            Fill::Tabletop {
                horizon: dims.y * d.range(0.45, 0.8),
                soft: d.range(0.005, 0.03),
                table,
                table2: related(d, table, 0.2),
                grain,
            }
        }
        _ => Fill::Flat,
    }
}

fn sample_blobs(d: &mut Draw, dims: V2, base: Rgb) -> Vec<Blob> {
    let n = 3 + d.index(6);
    let mut blobs: Vec<Blob> = (0..n)
        .map(|_| {
            let c = V2::new(d.range(-0.1, dims.x + 0.1), d.range(-0.1, dims.y + 0.1));
            let s = d.range(0.05, 0.35);
            let prim = match d.index(4) {
                0 => Prim::Ellipse { c, r: V2::new(s, s * d.range(0.4, 1.0)) },
                1 => Prim::RoundBox { c, half: V2::new(s, s * d.range(0.3, 1.5)), r: s * d.range(0.0, 0.3) },
                2 => Prim::RoundBox { c, half: V2::new(dims.x, s * d.range(0.03, 0.1)), r: 0.0 },
                _ => Prim::Polar(Polar::new(
                    c,
                    s,
                    s * d.range(0.5, 1.0),
                    d.range(1.8, 3.0),
                    &[(3, 0.08, d.range(0.0, 6.0))],
                )),
            };
            let colour = mix(product_colour(d), base, d.range(0.2, 0.6));
            Blob { prim, colour, opacity: d.range(0.5, 0.95), blur: d.range(0.012, 0.05) }
        })
        .collect();
    // Far (blurrier) layers first.
    blobs.sort_by(|a, b| b.blur.total_cmp(&a.blur));
    blobs
}
