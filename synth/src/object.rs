//! The product object: a stack of parts (shape, material, opacity, shading, decal) in
//! object units, placed into the scene by a centre, rotation, scale and mirror. The
//! renderer asks it for per-part distances, the top part, opacity and colour at a point.

use crate::detmath::{floor, V2};
use crate::paint::{clamp_rgb, filtered_square, hash2, mix, scale, Paint, Rgb};
use crate::shapes::{Prim, Shape};

/// Most parts an object has (fixed so the renderer can keep distances on the stack).
pub(crate) const MAX_PARTS: usize = 4;

/// The kinds of product the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    /// Rounded, possibly rotated box or package.
    Box,
    /// Bottle: body, neck and cap (sometimes glass).
    Bottle,
    /// Can, tin or jar: cylinder with elliptic ends.
    Can,
    /// Mug with a handle whose hole shows the background.
    Mug,
    /// Bag with a thin strap or handle loop.
    Bag,
    /// Shoe-like smooth irregular blob with a sole.
    Shoe,
    /// Rounded organic product (soap, stone, cosmetic).
    Blob,
}

impl ObjectKind {
    /// Every kind, in a fixed order.
    #[cfg(test)]
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Box,
        ObjectKind::Bottle,
        ObjectKind::Can,
        ObjectKind::Mug,
        ObjectKind::Bag,
        ObjectKind::Shoe,
        ObjectKind::Blob,
    ];

    /// Lower-case name used in samples and catalogs.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Box => "box",
            ObjectKind::Bottle => "bottle",
            ObjectKind::Can => "can",
            ObjectKind::Mug => "mug",
            ObjectKind::Bag => "bag",
            ObjectKind::Shoe => "shoe",
            ObjectKind::Blob => "blob",
        }
    }
}

/// How a part darkens with its 3-D form.
#[derive(Clone, Debug)]
pub(crate) enum Profile {
    /// No form shading.
    Flat,
    /// Cylinder around the vertical line x = `cx` with half width `hw`.
    Cylinder { cx: f32, hw: f32, k: f32 },
    /// Dome centred at `c` with radius `r`.
    Dome { c: V2, r: f32, k: f32 },
}

/// A soft specular highlight, blended towards white.
#[derive(Clone, Debug)]
pub(crate) struct Highlight {
    /// Centre in object units.
    pub c: V2,
    /// Radii (a tall `r.y` gives a cylinder's band).
    pub r: V2,
    /// Peak blend towards white.
    pub strength: f32,
}

/// Printed detail on a part.
#[derive(Clone, Debug)]
pub(crate) enum Decal {
    /// Label rectangle, optionally with lines of "text" spaced `line` apart.
    Label { c: V2, half: V2, r: f32, paint: Paint, text: Option<Rgb>, line: f32 },
    /// Everything below `y0` takes `colour` (a shoe's sole).
    Band { y0: f32, colour: Rgb },
}

/// One layer of the object.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    /// Silhouette in object units.
    pub shape: Shape,
    /// Material.
    pub paint: Paint,
    /// Opacity of the material (1 for opaque; glass is lower).
    pub opacity: f32,
    /// Form shading.
    pub profile: Profile,
    /// Optional print.
    pub decal: Option<Decal>,
    /// Optional specular highlight.
    pub highlight: Option<Highlight>,
    /// Whether the part is a thin strap whose width is set in scene units.
    pub thin: bool,
}

impl Part {
    /// An opaque, flat-shaded part.
    pub fn new(shape: Shape, paint: Paint) -> Part {
        Part { shape, paint, opacity: 1.0, profile: Profile::Flat, decal: None, highlight: None, thin: false }
    }

    /// A part made of one primitive.
    pub fn of(prim: Prim, paint: Paint) -> Part {
        Part::new(Shape::one(prim), paint)
    }
}

/// Directional shading across the whole object: darker towards `dir`.
#[derive(Clone, Debug)]
pub(crate) struct Light {
    /// Unit direction (object units) towards the darker side.
    pub dir: V2,
    /// Darkening at the far side, 0..1.
    pub strength: f32,
    /// Half extent of the object along `dir`.
    pub span: f32,
}

/// A product object placed in the scene.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    /// What it is.
    pub kind: ObjectKind,
    /// Parts, bottom first (later parts cover earlier ones).
    pub parts: Vec<Part>,
    /// Scene position of the object origin.
    pub centre: V2,
    /// Rotation (cos, sin).
    pub rot: V2,
    /// Scene units per object unit.
    pub scale: f32,
    /// Mirrored left-right.
    pub mirror: bool,
    /// Global shading.
    pub light: Light,
    /// Conservative scene-space bounds of the silhouette (min, max).
    pub bounds: (V2, V2),
    /// Where it touches the ground: bottom-centre point and half width (scene units).
    pub foot: (V2, f32),
}

impl Object {
    /// Object coordinates of scene point `p`.
    pub fn local(&self, p: V2) -> V2 {
        let q = (p - self.centre).unrotate(self.rot) * (1.0 / self.scale);
        if self.mirror {
            V2::new(-q.x, q.y)
        } else {
            q
        }
    }

    /// Scene coordinates of object point `q`.
    pub fn to_scene(&self, q: V2) -> V2 {
        let q = if self.mirror { V2::new(-q.x, q.y) } else { q };
        self.centre + (q * self.scale).rotate(self.rot)
    }

    /// Distance bound (object units) of each part at `q`, written into `out`.
    pub fn part_sdfs(&self, q: V2, out: &mut [f32; MAX_PARTS]) {
        for (slot, part) in out.iter_mut().zip(&self.parts) {
            *slot = part.shape.sdf(q);
        }
    }

    /// Distance bound (object units) of the whole silhouette at `q`.
    pub fn sdf(&self, q: V2) -> f32 {
        self.parts.iter().fold(f32::MAX, |acc, p| acc.min(p.shape.sdf(q)))
    }

    /// Index of the topmost part containing the point, given its part distances.
    pub fn top_part(&self, d: &[f32; MAX_PARTS]) -> Option<usize> {
        (0..self.parts.len()).rev().find(|&k| d[k] < 0.0)
    }

    /// Conservative bounds of the silhouette in object units.
    pub fn local_bounds(&self) -> (V2, V2) {
        let mut lo = V2::new(f32::MAX, f32::MAX);
        let mut hi = V2::new(f32::MIN, f32::MIN);
        for p in &self.parts {
            let (a, b) = p.shape.bounds();
            lo = V2::new(lo.x.min(a.x), lo.y.min(a.y));
            hi = V2::new(hi.x.max(b.x), hi.y.max(b.y));
        }
        (lo, hi)
    }

    /// Opacity of part `k` at `q` (labels on glass are opaque).
    pub fn opacity(&self, k: usize, q: V2) -> f32 {
        let part = &self.parts[k];
        if part.opacity >= 1.0 {
            return 1.0;
        }
        match &part.decal {
            Some(Decal::Label { c, half, r, .. }) if label_sdf(q, *c, *half, *r) < 0.0 => 1.0,
            _ => part.opacity,
        }
    }

    /// Colour of part `k` at `q`; `px` is the pixel footprint in object units.
    pub fn colour(&self, k: usize, q: V2, px: f32) -> Rgb {
        let part = &self.parts[k];
        let mut c = part.paint.eval(q, px);
        if let Some(decal) = &part.decal {
            c = apply_decal(decal, c, q, px);
        }
        let t = (q.dot(self.light.dir) / self.light.span).clamp(-1.0, 1.0) * 0.5 + 0.5;
        let mut f = 1.0 - self.light.strength * t;
        f *= match &part.profile {
            Profile::Flat => 1.0,
            Profile::Cylinder { cx, hw, k } => {
                let u = ((q.x - cx) / hw).clamp(-1.0, 1.0);
                1.0 - k * u * u
            }
            Profile::Dome { c, r, k } => {
                let u = ((q - *c).len() / r).min(1.0);
                1.0 - k * u * u
            }
        };
        c = scale(c, f);
        if let Some(h) = &part.highlight {
            let u = (q - h.c).div_v(h.r);
            let u2 = u.dot(u);
            if u2 < 1.0 {
                let b = (1.0 - u2) * (1.0 - u2);
                c = mix(c, [255.0, 255.0, 255.0], h.strength * b);
            }
        }
        clamp_rgb(c)
    }
}

/// Signed distance to a label rectangle.
fn label_sdf(q: V2, c: V2, half: V2, r: f32) -> f32 {
    Prim::RoundBox { c, half, r }.sdf(q)
}

/// Paints a decal over `c` at `q`, anti-aliased over `px`.
fn apply_decal(decal: &Decal, c: Rgb, q: V2, px: f32) -> Rgb {
    match decal {
        Decal::Band { y0, colour } => mix(c, *colour, ((q.y - y0) / px + 0.5).clamp(0.0, 1.0)),
        Decal::Label { c: lc, half, r, paint, text, line } => {
            let cover = (0.5 - label_sdf(q, *lc, *half, *r) / px).clamp(0.0, 1.0);
            if cover <= 0.0 {
                return c;
            }
            let mut l = paint.eval(q, px);
            if let Some(ink) = text {
                l = mix(l, *ink, text_cover(q - *lc, *half, *line, px));
            }
            mix(c, l, cover)
        }
    }
}

/// Coverage of fake text lines (left-aligned bars of varying length) inside a label.
fn text_cover(lq: V2, half: V2, line: f32, px: f32) -> f32 {
    let inner = V2::new(half.x * 0.75, half.y * 0.6);
    if lq.x.abs() >= inner.x || lq.y.abs() >= inner.y {
        return 0.0;
    }
    let u = (lq.y + inner.y) / line;
    let row = floor(u) as i32;
    // Bars sit mid-row so a pixel's footprint never reaches the next row's bar.
    let len = 0.35 + 0.65 * (hash2(row, 7, 11) >> 8) as f32 / (1u32 << 24) as f32;
    let along = (lq.x + inner.x) / (2.0 * inner.x);
    let x_cover = ((len - along) * 2.0 * inner.x / px + 0.5).clamp(0.0, 1.0);
    filtered_square(u - 0.275, px / line, 0.45) * x_cover
}
