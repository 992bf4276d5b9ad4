//! Scene description and sampling: the frame (aspect and size draw), the background,
//! the product's palette (including the hard low-contrast and white-on-white cases) and
//! the placement that sizes the product to a target share of the frame.
//!
//! Scene units: the frame is `dims` with its long side 1; x runs right, y down.

use std::f32::consts::TAU;

use crate::background::Background;
use crate::detmath::{exp, unit, V2};
use crate::kinds::{build, Palette};
use crate::object::{Light, Object, ObjectKind, Part};
use crate::paint::{hsv, near, product_colour, related, Rgb};
use crate::rng::Draw;
use crate::Sample;

/// Cells per side of the grid used to measure a silhouette's area and extent.
const MEASURE_CELLS: usize = 64;

/// Hard cases the generator mixes in on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hard {
    /// An ordinary scene.
    None,
    /// Product colour close to the background colour.
    LowContrast,
    /// White product on a white-ish background.
    White,
}

/// A resolution-independent product photo: render it at any pixel size.
#[derive(Clone, Debug)]
pub struct Scene {
    pub(crate) aspect: f32,
    size_u: f32,
    pub(crate) dims: V2,
    pub(crate) object: Object,
    pub(crate) background: Background,
    pub(crate) hard: Hard,
    cropped: bool,
    pub(crate) grain: f32,
    pub(crate) grain_seed: u32,
}

impl Scene {
    /// The scene for sample `index` of the catalog with `seed`.
    pub fn generate(seed: u64, index: u64) -> Scene {
        let mut d = Draw::new(seed, index);
        let aspect = sample_aspect(&mut d);
        let size_u = d.unit();
        let dims = if aspect >= 1.0 { V2::new(1.0, 1.0 / aspect) } else { V2::new(aspect, 1.0) };
        let hard = d.weighted(&[(Hard::None, 84), (Hard::LowContrast, 10), (Hard::White, 6)]);
        let background = Background::sample(&mut d, dims, hard == Hard::White);
        let palette = sample_palette(&mut d, background.base, hard);
        let kind = d.weighted(&[
            (ObjectKind::Box, 16),
            (ObjectKind::Bottle, 15),
            (ObjectKind::Can, 12),
            (ObjectKind::Mug, 15),
            (ObjectKind::Bag, 14),
            (ObjectKind::Shoe, 14),
            (ObjectKind::Blob, 14),
        ]);
        let parts = build(kind, &mut d, &palette);
        let cropped = d.chance(0.1);
        let object = place(&mut d, kind, parts, dims, cropped);
        let mut background = background;
        background.settle(&mut d, &object, dims);
        let grain = d.range(0.5, 3.0);
        let grain_seed = d.bits();
        Scene { aspect, size_u, dims, object, background, hard, cropped, grain, grain_seed }
    }

    /// Pixel size this scene has in a catalog with the given long-side range (deterministic).
    pub fn natural_size(&self, min_long_side: u32, max_long_side: u32) -> (u32, u32) {
        let lo = min_long_side.min(max_long_side).max(1);
        let hi = min_long_side.max(max_long_side).max(1);
        let long = (lo + (self.size_u * (hi - lo + 1) as f32) as u32).min(hi);
        if self.aspect >= 1.0 {
            (long, ((long as f32 / self.aspect).round() as u32).max(1))
        } else {
            (((long as f32 * self.aspect).round() as u32).max(1), long)
        }
    }

    /// width / height
    pub fn aspect_ratio(&self) -> f32 {
        self.aspect
    }

    /// Render at exactly width x height (any size, e.g. 96x160 for training or 1600x1000
    /// for eval). The scene's normalised frame is mapped onto the whole image, so a size
    /// whose ratio differs from `aspect_ratio()` stretches the scene.
    pub fn render(&self, width: u32, height: u32) -> Sample {
        crate::render::render(self, width, height)
    }

    /// Short description, e.g. "bottle on gradient".
    pub fn describe(&self) -> String {
        let mut s = format!("{} on {}", self.object.kind.name(), self.background.kind.name());
        if self.object.parts.iter().any(|p| p.opacity < 1.0) {
            s.push_str(", glass");
        }
        match self.hard {
            Hard::LowContrast => s.push_str(", low contrast"),
            Hard::White => s.push_str(", white on white"),
            Hard::None => {}
        }
        if self.cropped {
            s.push_str(", cropped");
        }
        s
    }

    /// The product kind's name.
    pub(crate) fn object_name(&self) -> &'static str {
        self.object.kind.name()
    }
}

/// Width / height: mostly the common photo ratios, sometimes anything in 1:2..2:1.
fn sample_aspect(d: &mut Draw) -> f32 {
    if d.chance(0.2) {
        return exp(f64::from(d.range(-1.0, 1.0)) * std::f64::consts::LN_2) as f32;
    }
    d.weighted(&[
        (1.0, 30),
        (4.0 / 3.0, 12),
        (3.0 / 4.0, 14),
        (3.0 / 2.0, 8),
        (2.0 / 3.0, 10),
        (16.0 / 9.0, 6),
        (9.0 / 16.0, 4),
    ])
}

/// Squared colour distance.
fn dist2(a: Rgb, b: Rgb) -> f32 {
    (0..3).map(|k| (a[k] - b[k]) * (a[k] - b[k])).sum()
}

fn sample_palette(d: &mut Draw, bg: Rgb, hard: Hard) -> Palette {
    match hard {
        Hard::LowContrast => {
            let main = near(d, bg);
            Palette { main, accent: related(d, main, 0.12), plain: true }
        }
        Hard::White => {
            let main = hsv(d.unit(), d.range(0.0, 0.04), d.range(0.93, 1.0));
            let accent = product_colour(d);
            Palette { main, accent, plain: d.chance(0.5) }
        }
        Hard::None => {
            let mut main = product_colour(d);
            for _ in 0..4 {
                if dist2(main, bg) > 60.0 * 60.0 {
                    break;
                }
                main = product_colour(d);
            }
            let accent = if d.chance(0.5) { product_colour(d) } else { related(d, main, 0.4) };
            Palette { main, accent, plain: false }
        }
    }
}

/// A silhouette sampled on a grid of cells over its conservative bounds.
struct Measure {
    /// Area in object units².
    area: f32,
    /// Tight bounds (object units).
    lo: V2,
    hi: V2,
    /// Cell size (object units).
    cell: V2,
    /// Centres of the cells inside the silhouette.
    inside: Vec<V2>,
}

/// Samples the silhouette on the measuring grid; blocks of 4x4 cells that the distance
/// bound proves entirely inside or outside are settled with one evaluation.
fn measure(obj: &Object) -> Measure {
    const BLOCK: usize = 4;
    let (lo, hi) = obj.local_bounds();
    let cell = (hi - lo) * (1.0 / MEASURE_CELLS as f32);
    let centre = |i: f32, j: f32| lo + V2::new(cell.x * i, cell.y * j);
    let radius = cell.len() * BLOCK as f32 * 0.5;
    let mut inside = Vec::new();
    for bj in (0..MEASURE_CELLS).step_by(BLOCK) {
        for bi in (0..MEASURE_CELLS).step_by(BLOCK) {
            let d = obj.sdf(centre((bi + BLOCK / 2) as f32, (bj + BLOCK / 2) as f32));
            if d > radius {
                continue;
            }
            for j in bj..bj + BLOCK {
                for i in bi..bi + BLOCK {
                    let q = centre(i as f32 + 0.5, j as f32 + 0.5);
                    if d < -radius || obj.sdf(q) < 0.0 {
                        inside.push(q);
                    }
                }
            }
        }
    }
    let (mut tlo, mut thi) = (hi, lo);
    for q in &inside {
        tlo = V2::new(tlo.x.min(q.x), tlo.y.min(q.y));
        thi = V2::new(thi.x.max(q.x), thi.y.max(q.y));
    }
    let area = inside.len() as f32 * cell.x * cell.y;
    Measure { area, lo: tlo - cell * 0.5, hi: thi + cell * 0.5, cell, inside }
}

/// Scene bounds (padded by `pad`) and ground contact of a placed object.
fn footprint(obj: &Object, m: &Measure, pad: f32) -> ((V2, V2), (V2, f32)) {
    let pts: Vec<V2> = m.inside.iter().map(|&q| obj.to_scene(q)).collect();
    let mut lo = V2::new(f32::MAX, f32::MAX);
    let mut hi = V2::new(f32::MIN, f32::MIN);
    for p in &pts {
        lo = V2::new(lo.x.min(p.x), lo.y.min(p.y));
        hi = V2::new(hi.x.max(p.x), hi.y.max(p.y));
    }
    let near = hi.y - (hi.y - lo.y) * 0.06;
    let (mut fx0, mut fx1) = (f32::MAX, f32::MIN);
    for p in pts.iter().filter(|p| p.y >= near) {
        fx0 = fx0.min(p.x);
        fx1 = fx1.max(p.x);
    }
    let foot = (V2::new((fx0 + fx1) * 0.5, hi.y), (fx1 - fx0) * 0.5 + pad);
    let pad = V2::new(pad, pad);
    ((lo - pad, hi + pad), foot)
}

/// Half extents of a local box of half size `half` after rotation by `rot`.
fn rotated_extent(half: V2, rot: V2) -> V2 {
    let (c, s) = (rot.x.abs(), rot.y.abs());
    V2::new(c * half.x + s * half.y, s * half.x + c * half.y)
}

/// Where the centre of an object box of `size` goes: centred-ish with a downward bias,
/// or poking out of one side of the frame when `cropped`.
fn box_centre(d: &mut Draw, dims: V2, size: V2, cropped: bool) -> V2 {
    let slack = ((dims - size) * 0.5).max_s(0.0);
    let mut b = dims * 0.5 + V2::new(slack.x * d.range(-0.7, 0.7), slack.y * d.range(-0.5, 0.9));
    if cropped {
        let poke = d.range(0.03, 0.12);
        match d.index(4) {
            0 => b.x = size.x * (0.5 - poke),
            1 => b.x = dims.x - size.x * (0.5 - poke),
            2 => b.y = dims.y - size.y * (0.5 - poke),
            _ => b.y = size.y * (0.5 - poke),
        }
    }
    b
}

/// Sizes, rotates and positions the parts in a frame of size `dims`.
fn place(d: &mut Draw, kind: ObjectKind, parts: Vec<Part>, dims: V2, cropped: bool) -> Object {
    let light = Light { dir: unit(f64::from(d.range(0.0, TAU))), strength: d.range(0.05, 0.35), span: 0.5 };
    let mut obj = Object {
        kind,
        parts,
        centre: V2::default(),
        rot: V2::new(1.0, 0.0),
        scale: 1.0,
        mirror: d.chance(0.5),
        light,
        bounds: (V2::default(), V2::default()),
        foot: (V2::default(), 0.0),
    };
    let m = measure(&obj);
    let (area, lo, hi) = (m.area, m.lo, m.hi);
    let half = (hi - lo) * 0.5;
    let tilt = match kind {
        ObjectKind::Box | ObjectKind::Blob | ObjectKind::Shoe if d.chance(0.35) => d.range(-25.0, 25.0),
        _ => d.range(-4.0, 4.0),
    };
    let target = d.range(0.16, 0.55);
    let margin = if cropped { 1.1 } else { 0.94 };
    let fit = |deg: f32| {
        let rot = unit(f64::from(deg).to_radians());
        let ext = rotated_extent(half, rot);
        let s_fit = (dims.x * margin / (2.0 * ext.x)).min(dims.y * margin / (2.0 * ext.y));
        (rot, ext, (target * dims.x * dims.y / area.max(1e-6)).sqrt().min(s_fit))
    };
    let (mut rot, mut ext, mut s) = fit(tilt);
    let can_lie = matches!(kind, ObjectKind::Bottle | ObjectKind::Can | ObjectKind::Box | ObjectKind::Blob);
    let lying = fit(tilt + 90.0);
    if can_lie && lying.2 > s * 1.25 {
        (rot, ext, s) = lying;
    }
    let b = box_centre(d, dims, ext * (2.0 * s), cropped);
    let lc = (lo + hi) * 0.5;
    let lc = if obj.mirror { V2::new(-lc.x, lc.y) } else { lc };
    obj.centre = b - (lc * s).rotate(rot);
    obj.rot = rot;
    obj.scale = s;
    obj.light.span = half.x.max(half.y);
    let thin = d.range(0.005, 0.015);
    let mut pad = s * 2.0 * m.cell.x.max(m.cell.y);
    for part in obj.parts.iter_mut().filter(|p| p.thin) {
        part.shape.set_half_thickness(thin / s);
        pad += thin;
    }
    (obj.bounds, obj.foot) = footprint(&obj, &m, pad);
    obj
}
