//! Colours, procedural materials (gradients, stripes, checks, value noise) and the
//! palettes products and backgrounds draw their colours from. Patterns are box-filtered
//! over the pixel footprint so they do not alias at small render sizes.

use crate::detmath::{floor, smooth01, unit, V2};
use crate::rng::Draw;

/// A linear RGB colour with channels in 0..=255.
pub(crate) type Rgb = [f32; 3];

/// Colour from hue (turns), saturation and value in [0, 1].
pub(crate) fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h6 = (h - h.floor()) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// Linear interpolation between two colours.
pub(crate) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// Colour times a brightness factor.
pub(crate) fn scale(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

/// Colour clamped into 0..=255.
pub(crate) fn clamp_rgb(c: Rgb) -> Rgb {
    [c[0].clamp(0.0, 255.0), c[1].clamp(0.0, 255.0), c[2].clamp(0.0, 255.0)]
}

/// 32-bit integer hash of a lattice point.
pub(crate) fn hash2(x: i32, y: i32, seed: u32) -> u32 {
    let mut h =
        (x as u32).wrapping_mul(0x8da6_b343) ^ (y as u32).wrapping_mul(0xd816_3841) ^ seed.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297a_2d39);
    h ^ (h >> 15)
}

/// Smooth value noise in [0, 1] with features about one unit apart.
pub(crate) fn value_noise(p: V2, seed: u32) -> f32 {
    let (fx, fy) = (floor(p.x), floor(p.y));
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (p.x - fx, p.y - fy);
    let (ux, uy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let v = |dx: i32, dy: i32| (hash2(ix + dx, iy + dy, seed) >> 8) as f32 / (1u32 << 24) as f32;
    let top = v(0, 0) + (v(1, 0) - v(0, 0)) * ux;
    let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * ux;
    top + (bottom - top) * uy
}

/// Fractal sum of `octaves` value-noise layers, normalised to [0, 1].
pub(crate) fn fbm(p: V2, seed: u32, octaves: u32) -> f32 {
    let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, 1.0);
    for o in 0..octaves {
        sum += amp * value_noise(p * f, seed.wrapping_add(o * 0x9e37));
        norm += amp;
        amp *= 0.5;
        f *= 2.03;
    }
    sum / norm
}

/// Share of [u - w/2, u + w/2] where the unit-period square wave (on for the first
/// `duty` of each period) is on: an exact box filter.
pub(crate) fn filtered_square(u: f32, w: f32, duty: f32) -> f32 {
    if w < 1e-5 {
        return if u - floor(u) < duty { 1.0 } else { 0.0 };
    }
    let integral = |x: f32| {
        let f = floor(x);
        f * duty + (x - f).min(duty)
    };
    ((integral(u + 0.5 * w) - integral(u - 0.5 * w)) / w).clamp(0.0, 1.0)
}

/// A procedural material evaluated in object (or scene) coordinates.
#[derive(Clone, Debug)]
pub(crate) enum Paint {
    /// One colour.
    Solid(Rgb),
    /// `a` to `b` along `axis` (t = dot(q - origin, axis)).
    Linear { a: Rgb, b: Rgb, origin: V2, axis: V2 },
    /// `a` at `origin` to `b` at distance 1 / `inv_r`.
    Radial { a: Rgb, b: Rgb, origin: V2, inv_r: f32 },
    /// Stripes of `b` on `a`; `axis` is the stripe normal divided by the period.
    Stripes { a: Rgb, b: Rgb, axis: V2, duty: f32 },
    /// Checkerboard; `ax`, `ay` are the cell axes divided by the cell size.
    Checks { a: Rgb, b: Rgb, ax: V2, ay: V2 },
    /// Value noise blending `a` into `b`.
    Noise { a: Rgb, b: Rgb, freq: f32, seed: u32, octaves: u32 },
}

impl Paint {
    /// Colour at `q`, box-filtered over a pixel footprint of `px` units.
    pub fn eval(&self, q: V2, px: f32) -> Rgb {
        match self {
            Paint::Solid(c) => *c,
            Paint::Linear { a, b, origin, axis } => mix(*a, *b, (q - *origin).dot(*axis).clamp(0.0, 1.0)),
            Paint::Radial { a, b, origin, inv_r } => mix(*a, *b, smooth01((q - *origin).len() * inv_r)),
            Paint::Stripes { a, b, axis, duty } => mix(*a, *b, filtered_square(q.dot(*axis), px * axis.len(), *duty)),
            Paint::Checks { a, b, ax, ay } => {
                let fx = filtered_square(q.dot(*ax), px * ax.len(), 0.5);
                let fy = filtered_square(q.dot(*ay), px * ay.len(), 0.5);
                mix(*a, *b, fx + fy - 2.0 * fx * fy)
            }
            Paint::Noise { a, b, freq, seed, octaves } => mix(*a, *b, fbm(q * *freq, *seed, *octaves)),
        }
    }
}

/// A product colour: neutrals, saturated or pastel.
pub(crate) fn product_colour(d: &mut Draw) -> Rgb {
    match d.weighted(&[(0u8, 12), (1, 8), (2, 5), (3, 7), (4, 48), (5, 20)]) {
        0 => hsv(d.unit(), d.range(0.0, 0.06), d.range(0.88, 1.0)),
        1 => hsv(d.unit(), d.range(0.0, 0.15), d.range(0.08, 0.22)),
        2 => hsv(d.unit(), d.range(0.0, 0.06), d.range(0.3, 0.75)),
        3 => hsv(d.range(0.06, 0.12), d.range(0.2, 0.55), d.range(0.5, 0.9)),
        4 => hsv(d.unit(), d.range(0.45, 0.92), d.range(0.35, 0.95)),
        _ => hsv(d.unit(), d.range(0.15, 0.4), d.range(0.78, 0.97)),
    }
}

/// A background colour: mostly light studio neutrals, some pastels and darker tones.
pub(crate) fn background_colour(d: &mut Draw) -> Rgb {
    match d.weighted(&[(0u8, 50), (1, 25), (2, 25)]) {
        0 => hsv(d.unit(), d.range(0.0, 0.1), d.range(0.78, 0.97)),
        1 => hsv(d.unit(), d.range(0.1, 0.35), d.range(0.7, 0.95)),
        _ => hsv(d.unit(), d.range(0.05, 0.5), d.range(0.2, 0.6)),
    }
}

/// A colour near `c`: brighter or darker by up to `spread`, slightly tinted.
pub(crate) fn related(d: &mut Draw, c: Rgb, spread: f32) -> Rgb {
    let f = d.range(1.0 - spread, 1.0 + spread);
    let tint = [d.range(-8.0, 8.0), d.range(-8.0, 8.0), d.range(-8.0, 8.0)];
    clamp_rgb([c[0] * f + tint[0], c[1] * f + tint[1], c[2] * f + tint[2]])
}

/// A low-contrast neighbour of `c`: visibly different (summed channel distance of at
/// least ~30) but close.
pub(crate) fn near(d: &mut Draw, c: Rgb) -> Rgb {
    let mean = (c[0] + c[1] + c[2]) / 3.0;
    let sign = if mean > 200.0 {
        -1.0
    } else if mean < 50.0 {
        1.0
    } else {
        d.sign()
    };
    let shift = sign * d.range(12.0, 24.0);
    clamp_rgb([c[0] + shift + d.range(-5.0, 5.0), c[1] + shift + d.range(-5.0, 5.0), c[2] + shift + d.range(-5.0, 5.0)])
}

/// A random material around `base`; `size` is the object's extent (pattern scale) and
/// `plain` limits the choice to low-detail materials.
pub(crate) fn sample_paint(d: &mut Draw, base: Rgb, accent: Rgb, size: f32, plain: bool) -> Paint {
    let kinds: &[(u8, u32)] =
        if plain { &[(0, 60), (1, 30), (5, 10)] } else { &[(0, 35), (1, 20), (2, 10), (3, 12), (4, 6), (5, 17)] };
    let free = d.range(-90.0, 90.0);
    let angle = f64::from(d.pick(&[0.0f32, 90.0, 45.0, -45.0, free])).to_radians();
    let dir = unit(angle);
    match d.weighted(kinds) {
        0 => Paint::Solid(base),
        1 => {
            let span = size * d.range(0.6, 1.4);
            let origin = dir * (-0.5 * span);
            Paint::Linear { a: base, b: related(d, base, 0.35), origin, axis: dir * (1.0 / span) }
        }
        2 => {
            let origin = V2::new(d.range(-0.2, 0.2), d.range(-0.3, 0.0)) * size;
            Paint::Radial { a: related(d, base, 0.15), b: base, origin, inv_r: 1.0 / (size * d.range(0.4, 0.9)) }
        }
        3 => {
            let period = size * d.range(0.04, 0.2);
            let b = if d.chance(0.6) { accent } else { related(d, base, 0.4) };
            Paint::Stripes { a: base, b, axis: dir * (1.0 / period), duty: d.range(0.2, 0.6) }
        }
        4 => {
            let cell = size * d.range(0.04, 0.14);
            let b = if d.chance(0.5) { accent } else { related(d, base, 0.4) };
            Paint::Checks { a: base, b, ax: dir * (1.0 / cell), ay: dir.perp() * (1.0 / cell) }
        }
        _ => Paint::Noise {
            a: base,
            b: related(d, base, 0.3),
            freq: d.range(3.0, 25.0) / size,
            seed: d.bits(),
            octaves: 2 + d.index(2) as u32,
        },
    }
}
