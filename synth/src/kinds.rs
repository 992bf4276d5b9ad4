//! Builders for each product kind: they lay out the parts of one object in object units
//! (about one unit across, origin near the middle, y down) and pick its materials.

use std::f32::consts::TAU;

use crate::detmath::{unit, V2};
use crate::object::{Decal, Highlight, ObjectKind, Part, Profile};
use crate::paint::{hsv, related, sample_paint, scale, Paint, Rgb};
use crate::rng::Draw;
use crate::shapes::{Polar, Prim, Shape};

/// The colours an object is made from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Palette {
    /// Main body colour.
    pub main: Rgb,
    /// Secondary colour (caps, stripes, labels).
    pub accent: Rgb,
    /// Low-detail materials only (hard low-contrast cases).
    pub plain: bool,
}

/// Builds the parts of one object of `kind`.
pub(crate) fn build(kind: ObjectKind, d: &mut Draw, pal: &Palette) -> Vec<Part> {
    match kind {
        ObjectKind::Box => build_box(d, pal),
        ObjectKind::Bottle => build_bottle(d, pal),
        ObjectKind::Can => build_can(d, pal),
        ObjectKind::Mug => build_mug(d, pal),
        ObjectKind::Bag => build_bag(d, pal),
        ObjectKind::Shoe => build_shoe(d, pal),
        ObjectKind::Blob => build_blob(d, pal),
    }
}

/// A label decal at `c` with half size `half`.
fn label(d: &mut Draw, c: V2, half: V2, pal: &Palette) -> Decal {
    let ground = if pal.plain {
        related(d, pal.main, 0.08)
    } else if d.chance(0.55) {
        hsv(d.unit(), d.range(0.0, 0.08), d.range(0.88, 1.0))
    } else {
        pal.accent
    };
    let ink = if d.chance(0.5) { hsv(d.unit(), d.range(0.0, 0.3), d.range(0.05, 0.3)) } else { pal.main };
    let text = if pal.plain || d.chance(0.3) { None } else { Some(ink) };
    let lines = 3.0 + d.index(4) as f32;
    Decal::Label {
        c,
        half,
        r: half.x.min(half.y) * d.range(0.0, 0.3),
        paint: Paint::Solid(ground),
        text,
        line: half.y * 1.2 / lines,
    }
}

/// A vertical highlight band for cylindrical parts.
fn band(d: &mut Draw, hw: f32, cy: f32, strength: (f32, f32)) -> Highlight {
    Highlight {
        c: V2::new(hw * d.sign() * d.range(0.25, 0.6), cy),
        r: V2::new(hw * d.range(0.06, 0.2), d.range(0.5, 0.9)),
        strength: d.range(strength.0, strength.1),
    }
}

/// A round highlight spot near `c`.
fn spot(d: &mut Draw, c: V2, size: f32) -> Highlight {
    let r = size * d.range(0.08, 0.2);
    Highlight { c, r: V2::new(r, r * d.range(0.6, 1.4)), strength: d.range(0.25, 0.7) }
}

fn build_box(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let (w, h) = (d.range(0.45, 1.0), d.range(0.45, 1.0));
    let m = w.max(h);
    let (w, h) = (w / m, h / m);
    let r = if d.chance(0.3) { 0.004 } else { d.range(0.0, 0.12) * w.min(h) };
    let paint = sample_paint(d, pal.main, pal.accent, 1.0, pal.plain);
    let mut body = Part::of(Prim::RoundBox { c: V2::default(), half: V2::new(w / 2.0, h / 2.0), r }, paint);
    if d.chance(0.5) {
        let c = V2::new(0.0, h * d.range(-0.1, 0.15));
        let half = V2::new(w * d.range(0.25, 0.42), h * d.range(0.12, 0.3));
        body.decal = Some(label(d, c, half, pal));
    }
    if d.chance(0.25) {
        body.highlight = Some(spot(d, V2::new(-w * 0.25, -h * 0.25), 1.0));
    }
    let mut parts = vec![body];
    if d.chance(0.3) {
        let lh = h * d.range(0.1, 0.2);
        let c = V2::new(0.0, -h / 2.0 + lh / 2.0 - 0.004);
        let lid = Prim::RoundBox { c, half: V2::new(w / 2.0 + 0.01, lh / 2.0), r: r.min(lh / 2.0) };
        let colour = if d.chance(0.5) { pal.accent } else { related(d, pal.main, 0.2) };
        parts.push(Part::of(lid, Paint::Solid(colour)));
    }
    parts
}

fn glass_tint(d: &mut Draw) -> Rgb {
    match d.index(4) {
        0 => hsv(d.range(0.28, 0.38), d.range(0.4, 0.7), d.range(0.35, 0.6)),
        1 => hsv(d.range(0.06, 0.1), d.range(0.6, 0.9), d.range(0.35, 0.6)),
        2 => hsv(d.range(0.55, 0.62), d.range(0.3, 0.6), d.range(0.5, 0.8)),
        _ => hsv(d.range(0.5, 0.6), d.range(0.02, 0.1), d.range(0.8, 0.95)),
    }
}

fn build_bottle(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let hw = d.range(0.14, 0.25);
    let (cap_h, neck_h, sh_h) = (d.range(0.06, 0.12), d.range(0.08, 0.2), d.range(0.04, 0.16));
    let cap_bottom = -0.5 + cap_h;
    let body_top = cap_bottom + neck_h + sh_h;
    let nw = hw * d.range(0.28, 0.55);
    let glass = !pal.plain && d.chance(0.35);
    // A sharp-topped box meets the shoulder ellipse at its widest point (a tangent
    // join); a second, rounded box gives the base its rounded corners.
    let base_r = hw * d.range(0.03, 0.25);
    let straight = V2::new(hw, (0.5 - base_r - body_top) / 2.0);
    let prims = vec![
        Prim::RoundBox { c: V2::new(0.0, body_top + straight.y), half: straight, r: 0.0 },
        Prim::RoundBox { c: V2::new(0.0, 0.5 - 2.0 * base_r), half: V2::new(hw, 2.0 * base_r), r: base_r },
        Prim::Ellipse { c: V2::new(0.0, body_top), r: V2::new(hw, sh_h) },
    ];
    let neck = Prim::RoundBox {
        c: V2::new(0.0, (cap_bottom - 0.01 + body_top) / 2.0),
        half: V2::new(nw, (body_top - cap_bottom + 0.01) / 2.0),
        r: nw * 0.2,
    };
    let paint = if glass { Paint::Solid(glass_tint(d)) } else { sample_paint(d, pal.main, pal.accent, 1.0, pal.plain) };
    let mut body = Part::new(Shape::union(prims).blended(vec![neck], d.range(0.02, 0.06)), paint);
    body.profile = Profile::Cylinder { cx: 0.0, hw, k: d.range(0.15, 0.45) };
    if glass {
        // Tinted glass: clearly see-through, yet opaque enough that the bottle body is
        // foreground in a binary mask (alpha > 0.5), as a catalog cutout treats it.
        body.opacity = d.range(0.6, 0.85);
    }
    if glass || d.chance(0.6) {
        let strength = if glass { (0.5, 0.9) } else { (0.2, 0.6) };
        body.highlight = Some(band(d, hw, body_top, strength));
    }
    if d.chance(0.65) {
        let c = V2::new(0.0, body_top + (0.5 - body_top) * d.range(0.4, 0.6));
        let half = V2::new(hw * d.pick(&[1.02, 0.8]), (0.5 - body_top) * d.range(0.15, 0.3));
        body.decal = Some(label(d, c, half, pal));
    }
    let cap_w = nw * d.range(1.05, 1.4);
    let cap = Prim::RoundBox {
        c: V2::new(0.0, -0.5 + cap_h / 2.0),
        half: V2::new(cap_w, cap_h / 2.0),
        r: cap_w * d.range(0.1, 0.3),
    };
    let cap_colour = match d.index(4) {
        0 => hsv(0.0, 0.0, d.range(0.05, 0.15)),
        1 => hsv(0.12, d.range(0.4, 0.6), d.range(0.6, 0.8)),
        2 => related(d, pal.main, 0.3),
        _ => pal.accent,
    };
    let mut cap = Part::of(cap, Paint::Solid(cap_colour));
    cap.profile = Profile::Cylinder { cx: 0.0, hw: cap_w, k: 0.3 };
    vec![body, cap]
}

fn build_can(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let hw = d.range(0.22, 0.55);
    let e = hw * d.range(0.1, 0.22);
    let prims = vec![
        Prim::RoundBox { c: V2::default(), half: V2::new(hw, 0.5 - e), r: 0.0 },
        Prim::Ellipse { c: V2::new(0.0, 0.5 - e), r: V2::new(hw, e) },
        Prim::Ellipse { c: V2::new(0.0, -0.5 + e), r: V2::new(hw, e) },
    ];
    let mut body = Part::new(Shape::union(prims), sample_paint(d, pal.main, pal.accent, 1.0, pal.plain));
    body.profile = Profile::Cylinder { cx: 0.0, hw, k: d.range(0.2, 0.5) };
    if d.chance(0.6) {
        body.highlight = Some(band(d, hw, 0.0, (0.2, 0.6)));
    }
    if d.chance(0.5) {
        let half = V2::new(hw * 1.05, d.range(0.15, 0.32));
        let c = V2::new(0.0, d.range(-0.05, 0.1));
        body.decal = Some(label(d, c, half, pal));
    }
    let mut parts = vec![body];
    if d.chance(0.7) {
        let metal = hsv(d.unit(), d.range(0.0, 0.08), d.range(0.55, 0.85));
        let colour = if d.chance(0.6) { metal } else { pal.accent };
        let lid = Prim::Ellipse { c: V2::new(0.0, -0.5 + e), r: V2::new(hw * 0.96, e * 0.88) };
        let origin = V2::new(0.0, -0.5 + e);
        let paint = Paint::Radial { a: related(d, colour, 0.1), b: scale(colour, 0.8), origin, inv_r: 1.0 / hw };
        parts.push(Part::of(lid, paint));
    }
    parts
}

fn build_mug(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let hw = d.range(0.3, 0.45);
    let bottom = hw * d.range(0.78, 1.0);
    let rim = d.chance(0.6);
    let round = d.range(0.01, 0.05);
    // The rim ellipse sits just inside the rounded top corners, so the sharp union has
    // neither ears nor a notch.
    let rim_r = V2::new(hw - round * 0.3, hw * d.range(0.1, 0.2));
    let rim_c = V2::new(0.0, -0.5 + round * 0.5);
    let mut prims = vec![Prim::Trapezoid { c: V2::default(), top: hw, bottom, he: 0.5, r: round }];
    if rim {
        prims.push(Prim::Ellipse { c: rim_c, r: rim_r });
    }
    let paint = sample_paint(d, pal.main, pal.accent, 1.0, pal.plain);
    let handle = if d.chance(0.65) {
        let (radius, ht) = (d.range(0.2, 0.32), d.range(0.035, 0.06));
        let a = f64::from(d.range(105.0, 135.0)).to_radians();
        let sc = unit(a);
        Prim::Arc {
            c: V2::new(bottom.min(hw) * 0.85, d.range(-0.08, 0.05)),
            dir: V2::new(1.0, 0.0),
            sc: V2::new(sc.y, sc.x),
            radius,
            half_thick: ht,
        }
    } else {
        let half = V2::new(d.range(0.13, 0.2), d.range(0.2, 0.3));
        let thick = d.range(0.04, 0.07);
        let c = V2::new(hw + half.x * 0.2, d.range(-0.1, 0.02));
        Prim::RectRing { c, half, r: d.range(0.03, 0.1), thick }
    };
    let mut body = Part::new(Shape::union(prims), paint.clone());
    body.profile = Profile::Cylinder { cx: 0.0, hw, k: d.range(0.15, 0.4) };
    if d.chance(0.5) {
        body.highlight = Some(band(d, hw, 0.0, (0.2, 0.5)));
    }
    if d.chance(0.3) {
        let half = V2::new(hw * d.range(0.35, 0.6), d.range(0.1, 0.2));
        let c = V2::new(0.0, d.range(-0.05, 0.1));
        body.decal = Some(label(d, c, half, pal));
    }
    let mut parts = vec![Part::of(handle, paint), body];
    if rim {
        let inside = if d.chance(0.5) { scale(pal.main, 0.45) } else { hsv(0.07, 0.7, d.range(0.15, 0.3)) };
        let hole = Prim::Ellipse { c: rim_c, r: V2::new(rim_r.x * 0.9, rim_r.y * 0.78) };
        parts.push(Part::of(hole, Paint::Solid(inside)));
    }
    parts
}

fn build_bag(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let tw = d.range(0.3, 0.42);
    let (bw, he) = (tw * d.range(1.0, 1.3), d.range(0.22, 0.32));
    let c = V2::new(0.0, 0.5 - he);
    let top_y = 0.5 - 2.0 * he;
    let body_shape = Prim::Trapezoid { c, top: tw, bottom: bw, he, r: d.range(0.01, 0.05) };
    let mut body = Part::of(body_shape, sample_paint(d, pal.main, pal.accent, 1.0, pal.plain));
    if d.chance(0.4) {
        let flap = Paint::Solid(related(d, pal.main, 0.2));
        let half = V2::new(tw * 0.95, he * 0.35);
        body.decal = Some(Decal::Label {
            c: V2::new(0.0, top_y + he * 0.35),
            half,
            r: 0.02,
            paint: flap,
            text: None,
            line: 1.0,
        });
    }
    let a = f64::from(d.range(100.0, 130.0)).to_radians();
    let sc = unit(a);
    let radius = tw * d.range(0.5, 0.85);
    let depth = d.range(0.03, 0.08);
    let thin = d.chance(0.7);
    let strap = Prim::Arc {
        c: V2::new(0.0, top_y + depth + radius * sc.x),
        dir: V2::new(0.0, -1.0),
        sc: V2::new(sc.y, sc.x),
        radius,
        half_thick: if thin { 0.015 } else { radius * d.range(0.08, 0.14) },
    };
    let strap_colour = if d.chance(0.5) { pal.accent } else { related(d, pal.main, 0.25) };
    let mut strap = Part::of(strap, Paint::Solid(strap_colour));
    strap.thin = thin;
    vec![strap, body]
}

fn build_shoe(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let b = d.range(0.13, 0.2);
    let harmonics = [
        (1, d.range(0.03, 0.09), d.range(0.0, TAU)),
        (2, d.range(0.0, 0.05), d.range(0.0, TAU)),
        (3, d.range(0.0, 0.03), d.range(0.0, TAU)),
    ];
    let sole = Prim::Polar(Polar::new(V2::new(0.0, 0.08), 0.5, b, d.range(2.2, 3.5), &harmonics));
    let collar = Prim::Ellipse {
        c: V2::new(-d.range(0.15, 0.3), 0.08 - b * d.range(0.6, 1.0)),
        r: V2::new(d.range(0.14, 0.22), d.range(0.1, 0.17)),
    };
    let shape = Shape::one(sole).blended(vec![collar], d.range(0.06, 0.12));
    let mut part = Part::new(shape, sample_paint(d, pal.main, pal.accent, 1.0, pal.plain));
    if d.chance(0.8) {
        let colour = match d.index(3) {
            0 => hsv(0.1, 0.05, 0.95),
            1 => hsv(0.0, 0.0, 0.1),
            _ => hsv(0.08, 0.5, 0.6),
        };
        part.decal = Some(Decal::Band { y0: 0.08 + b * d.range(0.35, 0.7), colour });
    }
    part.profile = Profile::Dome { c: V2::new(0.0, -0.05), r: 0.6, k: d.range(0.1, 0.3) };
    if d.chance(0.4) {
        let c = V2::new(d.range(-0.2, 0.2), -0.02);
        part.highlight = Some(spot(d, c, 0.8));
    }
    vec![part]
}

fn build_blob(d: &mut Draw, pal: &Palette) -> Vec<Part> {
    let (a, b) = (d.range(0.3, 0.5), d.range(0.3, 0.5));
    let harmonics: Vec<(u32, f32, f32)> =
        (2..6).map(|k| (k, d.range(0.0, 0.12) / k as f32, d.range(0.0, TAU))).collect();
    let shape = Prim::Polar(Polar::new(V2::default(), a, b, d.range(1.7, 4.0), &harmonics));
    let mut part = Part::of(shape, sample_paint(d, pal.main, pal.accent, 1.0, pal.plain));
    let hc = V2::new(d.range(-0.12, 0.12), d.range(-0.15, 0.0));
    part.profile = Profile::Dome { c: hc, r: a.max(b) * 1.2, k: d.range(0.2, 0.5) };
    if d.chance(0.6) {
        part.highlight = Some(spot(d, hc - V2::new(0.05, 0.08), a.max(b)));
    }
    if d.chance(0.25) {
        let half = V2::new(a * d.range(0.3, 0.5), b * d.range(0.15, 0.3));
        part.decal = Some(label(d, V2::default(), half, pal));
    }
    vec![part]
}
