//! The six backdrop classes as procedural surfaces: each is drawn (its look chosen) from a
//! seeded generator, then painted point by point.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::surface::{frac, hash01, to_int, Surface};
use crate::detmath::{floor, smooth01, unit, V2};
use crate::paint::{fbm, hash2, hsv, mix, scale, value_noise, Rgb};

/// Planks across one axis with wavy grain streaks along it.
pub(super) struct Wood {
    base: Rgb,
    dark: Rgb,
    rot: V2,
    planks: f32,
    seam: f32,
    grain: f32,
    warp: f32,
    seed: u32,
}

impl Wood {
    /// Draws a look from `r`.
    pub(super) fn draw(r: &mut ChaCha8Rng) -> Wood {
        let base = hsv(r.gen_range(0.05..0.1), r.gen_range(0.35..0.65), r.gen_range(0.45..0.85));
        let across = if r.gen_bool(0.5) { 0.0 } else { std::f64::consts::FRAC_PI_2 };
        Wood {
            base,
            dark: scale(base, r.gen_range(0.5..0.68)),
            rot: unit(across + r.gen_range(-0.05..0.05)),
            planks: r.gen_range(3.0..7.0),
            seam: r.gen_range(0.04..0.08),
            grain: r.gen_range(4.0..8.0),
            warp: r.gen_range(0.6..1.4),
            seed: r.gen(),
        }
    }
}

impl Surface for Wood {
    fn at(&self, p: V2) -> Rgb {
        let q = p.unrotate(self.rot);
        let b = q.y * self.planks;
        let k = floor(b) as i32;
        let f = frac(b);
        let along = q.x + 10.0 * hash01(k, 1, self.seed);
        let t = f * self.grain + self.warp * fbm(V2::new(along * 1.5, b * 2.0), self.seed, 2);
        let streak = 1.0 - 2.0 * to_int(t);
        let streak = streak * streak;
        let fine = value_noise(V2::new(along * 2.0, b * 25.0), self.seed ^ 0x55);
        let c = mix(self.base, self.dark, 0.6 * streak * streak + 0.3 * fine);
        let tone = 0.85 + 0.3 * hash01(k, 0, self.seed);
        let edge = f.min(1.0 - f);
        scale(c, tone * (0.45 + 0.55 * smooth01(edge / self.seam)))
    }
}

/// Near-white stone with warped thin veins and a faint cloudy tone.
pub(super) struct Marble {
    base: Rgb,
    vein: Rgb,
    dir: V2,
    freq: f32,
    warp: f32,
    width: f32,
    seed: u32,
}

impl Marble {
    /// Draws a look from `r`.
    pub(super) fn draw(r: &mut ChaCha8Rng) -> Marble {
        let hue = r.gen_range(0.0..1.0);
        Marble {
            base: hsv(hue, r.gen_range(0.0..0.035), r.gen_range(0.86..0.97)),
            vein: hsv(hue, r.gen_range(0.0..0.08), r.gen_range(0.35..0.6)),
            dir: unit(r.gen_range(0.0..std::f64::consts::PI)),
            freq: r.gen_range(1.5..3.0),
            warp: r.gen_range(1.0..2.2),
            width: r.gen_range(0.02..0.045),
            seed: r.gen(),
        }
    }
}

impl Surface for Marble {
    fn at(&self, p: V2) -> Rgb {
        let w = fbm(p * 2.5, self.seed, 3);
        let main = p.dot(self.dir) * self.freq + self.warp * w;
        let minor = p.dot(self.dir.perp() * 0.6 + self.dir * 0.8) * self.freq * 2.3 + self.warp * 1.7 * w;
        let v1 = (1.0 - to_int(main) / self.width).max(0.0);
        let v2 = 0.5 * (1.0 - to_int(minor) / (0.6 * self.width)).max(0.0);
        mix(scale(self.base, 0.97 + 0.06 * w), self.vein, 0.8 * v1.max(v2))
    }
}

/// Grey mottled noise with pits and light specks on a cell grid.
pub(super) struct Concrete {
    base: Rgb,
    freq: f32,
    amp: f32,
    cells: f32,
    density: f32,
    seed: u32,
}

impl Concrete {
    /// Draws a look from `r`.
    pub(super) fn draw(r: &mut ChaCha8Rng) -> Concrete {
        Concrete {
            base: hsv(r.gen_range(0.0..1.0), r.gen_range(0.0..0.07), r.gen_range(0.4..0.62)),
            freq: r.gen_range(3.0..6.0),
            amp: r.gen_range(0.12..0.22),
            cells: r.gen_range(35.0..60.0),
            density: r.gen_range(0.12..0.25),
            seed: r.gen(),
        }
    }
}

impl Surface for Concrete {
    fn at(&self, p: V2) -> Rgb {
        let m = fbm(p * self.freq, self.seed, 3);
        let mut f = 1.0 + self.amp * (2.0 * m - 1.0);
        let g = p * self.cells;
        let (cx, cy) = (floor(g.x), floor(g.y));
        let h = hash2(cx as i32, cy as i32, self.seed ^ 0xc0de);
        if ((h >> 8) as f32 / (1u32 << 24) as f32) < self.density {
            let centre =
                V2::new(cx + 0.35 + 0.3 * (h & 0xf) as f32 / 15.0, cy + 0.35 + 0.3 * (h >> 4 & 0xf) as f32 / 15.0);
            let radius = 0.15 + 0.2 * (h >> 8 & 0xf) as f32 / 15.0;
            if (g - centre).len() < radius {
                f *= if h & 0x3 == 0 { 1.25 } else { 0.6 };
            }
        }
        scale(self.base, f)
    }
}

/// Saturated plain-weave cloth with gingham or tartan bands.
pub(super) struct Fabric {
    base: Rgb,
    band: Rgb,
    rot: V2,
    threads: f32,
    checks: f32,
    duty: f32,
    tartan: bool,
    seed: u32,
}

impl Fabric {
    /// Draws a look from `r`.
    pub(super) fn draw(r: &mut ChaCha8Rng) -> Fabric {
        // blue, navy, red, burgundy, green, teal, purple: (hue, min value, max value)
        const HUES: [(f32, f32, f32); 7] = [
            (0.6, 0.45, 0.85),
            (0.64, 0.25, 0.45),
            (0.99, 0.5, 0.85),
            (0.95, 0.28, 0.45),
            (0.36, 0.35, 0.7),
            (0.49, 0.35, 0.7),
            (0.77, 0.35, 0.7),
        ];
        let (hue, lo, hi) = HUES[r.gen_range(0..HUES.len())];
        let value = r.gen_range(lo..hi);
        let base = hsv(hue + r.gen_range(-0.02..0.02), r.gen_range(0.55..0.9), value);
        let band = mix(base, [255.0; 3], r.gen_range(0.6..0.85));
        Fabric {
            base,
            band,
            rot: unit(r.gen_range(-0.08..0.08)),
            threads: r.gen_range(40.0..70.0),
            checks: r.gen_range(5.0..9.0),
            duty: r.gen_range(0.35..0.5),
            tartan: r.gen_bool(0.4),
            seed: r.gen(),
        }
    }
}

impl Surface for Fabric {
    fn at(&self, p: V2) -> Rgb {
        let q = p.unrotate(self.rot);
        let t = q * self.threads;
        let (ix, iy) = (floor(t.x), floor(t.y));
        let warp_on_top = (ix as i32 + iy as i32) & 1 == 0;
        let across = if warp_on_top { t.y - iy } else { t.x - ix };
        let mut shade = 0.8 + 0.8 * across * (1.0 - across);
        let band = |u: f32| if frac(u * self.checks) < self.duty { 1.0f32 } else { 0.0 };
        let mut k = 0.5 * (band(q.x) + band(q.y));
        if self.tartan {
            // a dark overcheck where two fine bands cross
            let dark = band(q.x * 2.0 + 0.25).min(band(q.y * 2.0 + 0.25));
            k *= 1.0 - dark;
            shade *= 1.0 - 0.5 * dark;
        }
        let fuzz = 0.94 + 0.12 * value_noise(q * 9.0, self.seed);
        scale(mix(self.base, self.band, k), shade * fuzz)
    }
}

/// Smooth two-colour ramp, vertical or diagonal, across the whole image.
pub(super) struct Gradient {
    a: Rgb,
    b: Rgb,
    dir: V2,
    lo: f32,
    span: f32,
}

impl Gradient {
    /// Draws a look from `r` for an image `extent` short sides across.
    pub(super) fn draw(r: &mut ChaCha8Rng, extent: V2) -> Gradient {
        let hue = r.gen_range(0.0..1.0);
        let (a, b) = if r.gen_bool(0.5) {
            let v = r.gen_range(0.85..0.97);
            let a = hsv(hue, r.gen_range(0.12..0.35), v);
            (a, hsv(hue + r.gen_range(0.05..0.3), r.gen_range(0.12..0.35), v - r.gen_range(0.1..0.25)))
        } else {
            let v = r.gen_range(0.8..0.97);
            (hsv(hue, r.gen_range(0.0..0.05), v), hsv(hue, r.gen_range(0.0..0.05), v - r.gen_range(0.12..0.3)))
        };
        let angle = match r.gen_range(0..3) {
            0 => std::f64::consts::FRAC_PI_2,
            1 => std::f64::consts::FRAC_PI_4,
            _ => 3.0 * std::f64::consts::FRAC_PI_4,
        };
        let dir = unit(angle + r.gen_range(-0.1..0.1));
        let ends = [V2::default(), V2::new(extent.x, 0.0), V2::new(0.0, extent.y), extent].map(|c| c.dot(dir));
        let lo = ends.iter().copied().fold(f32::MAX, f32::min);
        let hi = ends.iter().copied().fold(f32::MIN, f32::max);
        let (a, b) = if r.gen_bool(0.5) { (a, b) } else { (b, a) };
        Gradient { a, b, dir, lo, span: (hi - lo).max(1e-6) }
    }
}

impl Surface for Gradient {
    fn at(&self, p: V2) -> Rgb {
        mix(self.a, self.b, smooth01((p.dot(self.dir) - self.lo) / self.span))
    }
}

/// One shelf board: top edge and thickness as fractions of the height.
#[derive(Clone, Copy)]
struct Board {
    top: f32,
    thick: f32,
}

/// Light wall with horizontal boards, each casting a soft shadow below it.
pub(super) struct Shelf {
    wall: Rgb,
    board: Rgb,
    boards: Vec<Board>,
    shadow: f32,
    depth: f32,
    height: f32,
    seed: u32,
}

impl Shelf {
    /// Draws a look from `r` for an image `extent` short sides across.
    pub(super) fn draw(r: &mut ChaCha8Rng, extent: V2) -> Shelf {
        let wall = hsv(r.gen_range(0.0..1.0), r.gen_range(0.0..0.08), r.gen_range(0.8..0.95));
        let board = if r.gen_bool(0.5) {
            hsv(r.gen_range(0.05..0.1), r.gen_range(0.3..0.55), r.gen_range(0.3..0.6))
        } else {
            hsv(r.gen_range(0.0..1.0), r.gen_range(0.0..0.05), r.gen_range(0.35..0.6))
        };
        let two = r.gen_bool(0.5);
        let mut board_at = |lo: f32, hi: f32| Board { top: r.gen_range(lo..hi), thick: r.gen_range(0.06..0.1) };
        let boards = if two { vec![board_at(0.22, 0.36), board_at(0.6, 0.75)] } else { vec![board_at(0.45, 0.7)] };
        Shelf {
            wall,
            board,
            boards,
            shadow: r.gen_range(0.04..0.1),
            depth: r.gen_range(0.3..0.5),
            height: extent.y,
            seed: r.gen(),
        }
    }
}

impl Surface for Shelf {
    fn at(&self, p: V2) -> Rgb {
        let v = p.y / self.height;
        let mut c = scale(self.wall, 0.98 + 0.04 * value_noise(p * 2.0, self.seed) - 0.05 * v);
        for b in &self.boards {
            let below = v - (b.top + b.thick);
            if v >= b.top && below < 0.0 {
                let lip = if v - b.top < 0.25 * b.thick { 1.12 } else { 1.0 };
                let grain = 0.95 + 0.1 * value_noise(V2::new(p.x * 3.0, v * 80.0), self.seed ^ 0xb0);
                c = scale(self.board, lip * grain);
            } else if below >= 0.0 && below < self.shadow {
                let fade = 1.0 - below / self.shadow;
                c = scale(c, 1.0 - self.depth * fade * fade);
            }
        }
        c
    }
}
