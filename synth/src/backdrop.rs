//! Studio backdrops for background generation: six procedural surface classes, a small
//! prompt vocabulary that names them, and product photos composited onto them. This is
//! training data beside the job flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`:
//! the worker's small conditional inpainting model learns to paint a backdrop from a
//! prompt, and its small classifier learns to name one.
//!
//! Every pattern is laid out in units of the image's short side, never in pixels, so a
//! 32x32 render shows the same planks, veins, checks and shelf boards as a 256x256 one.
//! Renders whose short side is under `SUPERSAMPLE_SIDE` are supersampled and box-filtered
//! so that fine texture averages out instead of aliasing. Like the rest of the crate, a
//! render is a function of its arguments only and uses no libm transcendental functions.

use image::{imageops, GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::detmath::{floor, smooth01, unit, V2};
use crate::paint::{fbm, hash2, hsv, mix, scale, value_noise, Rgb};
use crate::raster::to_u8;
use crate::rng::mix_seed;

/// Short side (in samples) below which renders are supersampled.
const SUPERSAMPLE_SIDE: u32 = 96;
/// Sample count from which rows are painted in parallel.
const PARALLEL_SAMPLES: u64 = 1 << 15;
/// Stream id separating backdrop draws from the scene generator's.
const LOOK_STREAM: u64 = 0xbac4_d20b;
/// Stream id for the backdrop seed of a composited scene.
const SCENE_STREAM: u64 = 0x5ce4_e0b1;
/// Stream id for the prompt template choice.
const PROMPT_STREAM: u64 = 0x960e_7a11;

/// A backdrop class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backdrop {
    /// Brown or tan planks with grain streaks along one axis.
    Wood,
    /// Near-white stone with thin grey veins.
    Marble,
    /// Mid-grey mottled surface with small speckles.
    Concrete,
    /// Saturated woven cloth with a check pattern.
    Fabric,
    /// Smooth two-colour gradient, pastel or grey.
    Gradient,
    /// Light wall with one or two shelf boards.
    Shelf,
}

impl Backdrop {
    /// Every class, in `index` order.
    pub const ALL: [Backdrop; 6] =
        [Backdrop::Wood, Backdrop::Marble, Backdrop::Concrete, Backdrop::Fabric, Backdrop::Gradient, Backdrop::Shelf];

    /// Lower-case class noun, as it appears in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Backdrop::Wood => "wood",
            Backdrop::Marble => "marble",
            Backdrop::Concrete => "concrete",
            Backdrop::Fabric => "fabric",
            Backdrop::Gradient => "gradient",
            Backdrop::Shelf => "shelf",
        }
    }

    /// Position in `ALL` (the classifier's label).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class with this exact noun.
    pub fn from_name(name: &str) -> Option<Backdrop> {
        Backdrop::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Every word a prompt can contain: the class nouns, then the template words.
pub const PROMPT_WORDS: &[&str] = &[
    "wood",
    "marble",
    "concrete",
    "fabric",
    "gradient",
    "shelf",
    "a",
    "studio",
    "background",
    "backdrop",
    "surface",
    "product",
    "on",
];

/// Prompt templates as (words before the noun, words after it).
const TEMPLATES: [(&str, &str); 7] = [
    ("", ""),
    ("", " background"),
    ("studio ", " surface"),
    ("a ", " backdrop"),
    ("studio ", " background"),
    ("product on ", ""),
    ("product on a ", " surface"),
];

/// A prompt for `kind`, one of a few templates chosen by `seed`, e.g. "studio wood surface".
pub fn prompt(kind: Backdrop, seed: u64) -> String {
    let t = mix_seed(seed, kind.index() as u64, PROMPT_STREAM) % TEMPLATES.len() as u64;
    let (before, after) = TEMPLATES[t as usize];
    format!("{before}{}{after}", kind.name())
}

/// The class a prompt names: `None` unless exactly one class noun appears (ignoring case
/// and punctuation around words).
pub fn class_of_prompt(prompt: &str) -> Option<Backdrop> {
    let mut found = None;
    for word in prompt.split_whitespace() {
        let word = word.trim_matches(|c: char| c.is_ascii_punctuation()).to_ascii_lowercase();
        if let Some(kind) = Backdrop::from_name(&word) {
            if found.is_some_and(|f| f != kind) {
                return None;
            }
            found = Some(kind);
        }
    }
    found
}

/// Renders a `kind` backdrop at `width` x `height`; the same arguments give the same bytes.
pub fn render_backdrop(kind: Backdrop, width: u32, height: u32, seed: u64) -> RgbImage {
    let r = &mut ChaCha8Rng::seed_from_u64(mix_seed(seed, kind.index() as u64, LOOK_STREAM));
    let short = width.min(height).max(1) as f32;
    let extent = V2::new(width as f32 / short, height as f32 / short);
    match kind {
        Backdrop::Wood => paint(&Wood::draw(r), width, height),
        Backdrop::Marble => paint(&Marble::draw(r), width, height),
        Backdrop::Concrete => paint(&Concrete::draw(r), width, height),
        Backdrop::Fabric => paint(&Fabric::draw(r), width, height),
        Backdrop::Gradient => paint(&Gradient::draw(r, extent), width, height),
        Backdrop::Shelf => paint(&Shelf::draw(r, extent), width, height),
    }
}

/// A product photo on a backdrop, with what it shows.
#[derive(Clone, Debug)]
pub struct BackdropScene {
    /// The composited photo.
    pub image: RgbImage,
    /// Product coverage, 0 (backdrop) to 255 (opaque product).
    pub alpha: GrayImage,
    /// The backdrop's class.
    pub backdrop: Backdrop,
    /// A prompt naming the backdrop.
    pub prompt: String,
}

/// Renders product `index` of catalog `seed` (see [`crate::render_sample`]) at `width` x `height`,
/// composited over a `kind` backdrop that also varies with `index`. The product loses
/// its own background and shadows; pixels where alpha is 255 are the product's exactly.
pub fn render_scene(kind: Backdrop, width: u32, height: u32, seed: u64, index: u64) -> BackdropScene {
    let (w, h) = (width.max(1), height.max(1));
    let (product, alpha) = product_layer(seed, index, w, h);
    let backdrop_seed = scene_backdrop_seed(seed, index);
    let mut image = render_backdrop(kind, w, h, backdrop_seed);
    composite(&mut image, &product, &alpha);
    BackdropScene { image, alpha, backdrop: kind, prompt: prompt(kind, backdrop_seed) }
}

/// One photo of the reference background generator's training set.
#[derive(Clone, Debug)]
pub struct TrainingPhoto {
    /// File name, `<backdrop>-<i>.png`.
    pub name: String,
    /// The photo.
    pub image: RgbImage,
    /// Its prompt.
    pub prompt: String,
    /// Who it is credited to (`synth-<backdrop>`).
    pub contributor: String,
}

/// The reference generator's training set: `per_class` product photos on each backdrop,
/// the classes interleaved, sizes 64x48, 56x56 and 48x64 in turn, each with its prompt.
pub fn training_photos(per_class: usize, seed: u64) -> Vec<TrainingPhoto> {
    const SIZES: [(u32, u32); 3] = [(64, 48), (56, 56), (48, 64)];
    let jobs: Vec<(usize, usize, Backdrop)> = (0..per_class)
        .flat_map(|i| Backdrop::ALL.into_iter().map(move |kind| (i, kind)))
        .enumerate()
        .map(|(n, (i, k))| (n, i, k))
        .collect();
    jobs.into_par_iter()
        .map(|(n, i, kind)| {
            let (w, h) = SIZES[n % SIZES.len()];
            let scene = render_scene(kind, w, h, seed.wrapping_mul(1000).wrapping_add(n as u64), n as u64);
            TrainingPhoto {
                name: format!("{}-{i}.png", kind.name()),
                image: scene.image,
                prompt: scene.prompt,
                contributor: format!("synth-{}", kind.name()),
            }
        })
        .collect()
}

/// `out = alpha * product + (1 - alpha) * out`, rounded; exact where alpha is 0 or 255.
fn composite(out: &mut RgbImage, product: &RgbImage, alpha: &GrayImage) {
    let pixels = out.chunks_exact_mut(3).zip(product.chunks_exact(3)).zip(alpha.as_raw());
    for ((dst, src), &a) in pixels {
        let a = u32::from(a);
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = ((a * u32::from(s) + (255 - a) * u32::from(*d) + 127) / 255) as u8;
        }
    }
}

/// The product sample resized to `w` x `h`: its photo and its alpha.
fn product_layer(seed: u64, index: u64, w: u32, h: u32) -> (RgbImage, GrayImage) {
    let long = w.max(h);
    let sample = crate::render_sample(seed, index, long, long);
    let filter = imageops::FilterType::Triangle;
    (imageops::resize(&sample.image, w, h, filter), imageops::resize(&sample.alpha, w, h, filter))
}

/// The backdrop seed of scene (`seed`, `index`).
fn scene_backdrop_seed(seed: u64, index: u64) -> u64 {
    mix_seed(seed, index, SCENE_STREAM)
}

/// A backdrop pattern in short-side units (the short side spans 0..1, y down).
trait Surface {
    /// Colour (0..=255 channels) at `p`.
    fn at(&self, p: V2) -> Rgb;
}

/// Paints `s` over the image, box-filtering `ss` x `ss` samples per pixel on small
/// renders; rows of large renders are painted in parallel (each pixel depends only on
/// its position, so the bytes do not depend on the thread count).
fn paint<S: Surface + Sync>(s: &S, width: u32, height: u32) -> RgbImage {
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
fn frac(x: f32) -> f32 {
    x - floor(x)
}

/// Distance from `x` to the nearest integer, in [0, 0.5].
fn to_int(x: f32) -> f32 {
    let f = frac(x);
    f.min(1.0 - f)
}

/// A uniform value in [0, 1) for a lattice point.
fn hash01(x: i32, y: i32, seed: u32) -> f32 {
    (hash2(x, y, seed) >> 8) as f32 / (1u32 << 24) as f32
}

/// Planks across one axis with wavy grain streaks along it.
struct Wood {
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
    fn draw(r: &mut ChaCha8Rng) -> Wood {
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
struct Marble {
    base: Rgb,
    vein: Rgb,
    dir: V2,
    freq: f32,
    warp: f32,
    width: f32,
    seed: u32,
}

impl Marble {
    fn draw(r: &mut ChaCha8Rng) -> Marble {
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
struct Concrete {
    base: Rgb,
    freq: f32,
    amp: f32,
    cells: f32,
    density: f32,
    seed: u32,
}

impl Concrete {
    fn draw(r: &mut ChaCha8Rng) -> Concrete {
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
struct Fabric {
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
    fn draw(r: &mut ChaCha8Rng) -> Fabric {
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
struct Gradient {
    a: Rgb,
    b: Rgb,
    dir: V2,
    lo: f32,
    span: f32,
}

impl Gradient {
    fn draw(r: &mut ChaCha8Rng, extent: V2) -> Gradient {
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
struct Shelf {
    wall: Rgb,
    board: Rgb,
    boards: Vec<Board>,
    shadow: f32,
    depth: f32,
    height: f32,
    seed: u32,
}

impl Shelf {
    fn draw(r: &mut ChaCha8Rng, extent: V2) -> Shelf {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean RGB, mean absolute horizontal and vertical luminance gradient, luminance std.
    fn features(img: &RgbImage) -> [f32; 6] {
        let (w, h) = img.dimensions();
        let lum: Vec<f32> = img
            .pixels()
            .map(|p| (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) / 255.0)
            .collect();
        let n = lum.len() as f32;
        let mut rgb = [0.0f32; 3];
        for p in img.pixels() {
            for k in 0..3 {
                rgb[k] += f32::from(p[k]) / 255.0 / n;
            }
        }
        let (w, h) = (w as usize, h as usize);
        let (mut gx, mut gy) = (0.0, 0.0);
        for y in 0..h {
            for x in 0..w {
                if x + 1 < w {
                    gx += (lum[y * w + x + 1] - lum[y * w + x]).abs() / ((w - 1) * h) as f32;
                }
                if y + 1 < h {
                    gy += (lum[(y + 1) * w + x] - lum[y * w + x]).abs() / (w * (h - 1)) as f32;
                }
            }
        }
        let mean = lum.iter().sum::<f32>() / n;
        let std = (lum.iter().map(|l| (l - mean) * (l - mean)).sum::<f32>() / n).sqrt();
        [rgb[0], rgb[1], rgb[2], gx, gy, std]
    }

    /// Nearest-centroid classifier on standardised features.
    struct Centroids {
        mean: [f32; 6],
        std: [f32; 6],
        centres: Vec<[f32; 6]>,
    }

    impl Centroids {
        fn train(data: &[(Backdrop, [f32; 6])]) -> Centroids {
            let n = data.len() as f32;
            let (mut mean, mut std) = ([0.0f32; 6], [0.0f32; 6]);
            for (_, f) in data {
                for i in 0..6 {
                    mean[i] += f[i] / n;
                }
            }
            let mut sums = [[0.0f32; 6]; 6];
            let mut counts = [0.0f32; 6];
            for (k, f) in data {
                counts[k.index()] += 1.0;
                for i in 0..6 {
                    sums[k.index()][i] += f[i];
                }
            }
            let raw: Vec<[f32; 6]> = sums.iter().zip(counts).map(|(s, n)| s.map(|v| v / n)).collect();
            for (k, f) in data {
                for i in 0..6 {
                    std[i] += (f[i] - raw[k.index()][i]).powi(2) / n;
                }
            }
            let std = std.map(|v| v.sqrt().max(1e-6));
            let centres = raw.iter().map(|c| std::array::from_fn(|i| (c[i] - mean[i]) / std[i])).collect();
            Centroids { mean, std, centres }
        }

        fn classify(&self, f: &[f32; 6]) -> Backdrop {
            let z: Vec<f32> = (0..6).map(|i| (f[i] - self.mean[i]) / self.std[i]).collect();
            let dist = |c: &[f32; 6]| c.iter().zip(&z).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
            let best = (0..6).min_by(|&a, &b| dist(&self.centres[a]).total_cmp(&dist(&self.centres[b]))).unwrap();
            Backdrop::ALL[best]
        }
    }

    fn train_32() -> Centroids {
        let data: Vec<_> = Backdrop::ALL
            .into_iter()
            .flat_map(|k| (0..40u64).map(move |s| (k, features(&render_backdrop(k, 32, 32, s)))))
            .collect();
        Centroids::train(&data)
    }

    fn accuracy(c: &Centroids, seeds: std::ops::Range<u64>, render: impl Fn(Backdrop, u64) -> RgbImage) -> f32 {
        let (mut right, mut total) = (0, 0);
        for k in Backdrop::ALL {
            for s in seeds.clone() {
                let got = c.classify(&features(&render(k, s)));
                right += usize::from(got == k);
                total += 1;
            }
        }
        right as f32 / total as f32
    }

    #[test]
    fn names_round_trip() {
        for (i, k) in Backdrop::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Backdrop::from_name(k.name()), Some(k));
        }
        assert_eq!(Backdrop::from_name("velvet"), None);
    }

    #[test]
    fn same_seed_same_bytes_and_seeds_differ() {
        for k in Backdrop::ALL {
            let a = render_backdrop(k, 64, 48, 9);
            assert_eq!(a.as_raw(), render_backdrop(k, 64, 48, 9).as_raw(), "{k:?}");
            assert_ne!(a.as_raw(), render_backdrop(k, 64, 48, 10).as_raw(), "{k:?}");
        }
    }

    #[test]
    fn sizes_are_honoured() {
        for k in Backdrop::ALL {
            for (w, h) in [(48, 32), (32, 48), (32, 32), (1, 7), (256, 256)] {
                assert_eq!(render_backdrop(k, w, h, 3).dimensions(), (w, h), "{k:?}");
            }
        }
        let scene = render_scene(Backdrop::Wood, 48, 32, 1, 2);
        assert_eq!((scene.image.dimensions(), scene.alpha.dimensions()), ((48, 32), (48, 32)));
    }

    #[test]
    fn prompts_use_the_vocabulary_and_name_their_class() {
        for k in Backdrop::ALL {
            for s in 0..200 {
                let p = prompt(k, s);
                assert!(p.split(' ').all(|w| PROMPT_WORDS.contains(&w)), "{p}");
                assert_eq!(p.split(' ').filter(|w| Backdrop::from_name(w).is_some()).count(), 1, "{p}");
                assert_eq!(class_of_prompt(&p), Some(k), "{p}");
            }
        }
        assert_eq!(class_of_prompt("Studio Marble, background"), Some(Backdrop::Marble));
        assert_eq!(class_of_prompt("wood on marble"), None);
        assert_eq!(class_of_prompt("studio background"), None);
    }

    #[test]
    fn classes_are_separable_at_32px() {
        let c = train_32();
        let acc = accuracy(&c, 1000..1040, |k, s| render_backdrop(k, 32, 32, s));
        assert!(acc >= 0.8, "held-out accuracy {acc}");
    }

    #[test]
    fn downscaled_renders_keep_their_class() {
        let c = train_32();
        let acc = accuracy(&c, 2000..2010, |k, s| {
            imageops::resize(&render_backdrop(k, 192, 192, s), 32, 32, imageops::FilterType::Triangle)
        });
        assert!(acc >= 0.8, "accuracy on 192px renders downscaled to 32px {acc}");
    }

    #[test]
    fn scene_keeps_product_pixels_and_shows_backdrop_elsewhere() {
        for (i, k) in Backdrop::ALL.into_iter().enumerate() {
            let (w, h, seed, index) = (96, 64, 5, i as u64);
            let scene = render_scene(k, w, h, seed, index);
            let (product, alpha) = product_layer(seed, index, w, h);
            let backdrop = render_backdrop(k, w, h, scene_backdrop_seed(seed, index));
            assert_eq!(scene.alpha.as_raw(), alpha.as_raw());
            assert!(alpha.as_raw().iter().any(|&a| a > 0), "{k:?} alpha is empty");
            assert!(alpha.as_raw().contains(&0), "{k:?} shows no backdrop");
            for (j, &a) in alpha.as_raw().iter().enumerate() {
                let px = &scene.image.as_raw()[j * 3..j * 3 + 3];
                match a {
                    255 => assert_eq!(px, &product.as_raw()[j * 3..j * 3 + 3], "{k:?} pixel {j}"),
                    0 => assert_eq!(px, &backdrop.as_raw()[j * 3..j * 3 + 3], "{k:?} pixel {j}"),
                    _ => {}
                }
            }
            assert_eq!(scene.backdrop, k);
            assert_eq!(class_of_prompt(&scene.prompt), Some(k));
        }
    }

    #[test]
    fn product_layer_matches_a_resized_sample() {
        let sample = crate::render_sample(4, 1, 60, 60);
        let (image, alpha) = product_layer(4, 1, 60, 40);
        let filter = imageops::FilterType::Triangle;
        assert_eq!(image.as_raw(), imageops::resize(&sample.image, 60, 40, filter).as_raw());
        assert_eq!(alpha.as_raw(), imageops::resize(&sample.alpha, 60, 40, filter).as_raw());
    }
}
