//! Shape primitives as signed-distance bounds. Every `sdf` here is negative inside,
//! positive outside and 1-Lipschitz (never larger in magnitude than the true distance),
//! which is what lets the renderer skip whole tiles and supersample only edge pixels.
//! Unions (sharp or smooth) keep that property.

use crate::detmath::{atan2, powf, sin_cos, PI32, V2};

/// Beyond this scaled-bound distance an ellipse skips the exact solve: twice the largest
/// smooth-union radius the builders use, so blends never see the difference.
const ELLIPSE_EXACT_WITHIN: f32 = 0.25;

/// Angular samples in a polar shape's radius table.
const POLAR_STEPS: usize = 256;

/// One closed primitive shape in its own coordinates.
#[derive(Clone, Debug)]
pub(crate) enum Prim {
    /// Axis-aligned rectangle with rounded corners.
    RoundBox { c: V2, half: V2, r: f32 },
    /// Axis-aligned ellipse.
    Ellipse { c: V2, r: V2 },
    /// Symmetric trapezoid (half widths at top and bottom, half height), rounded by `r`.
    Trapezoid { c: V2, top: f32, bottom: f32, he: f32, r: f32 },
    /// Thick circular arc: `dir` points at the arc's middle, `sc` is (sin, cos) of the
    /// half aperture; the band is `2 * half_thick` wide.
    Arc { c: V2, dir: V2, sc: V2, radius: f32, half_thick: f32 },
    /// Rounded rectangular ring of wall thickness `thick`.
    RectRing { c: V2, half: V2, r: f32, thick: f32 },
    /// Star-shaped closed curve given by a radius table.
    Polar(Polar),
}

/// A star-shaped closed curve r = R(θ) around `c` (superellipse with radial harmonics).
#[derive(Clone, Debug)]
pub(crate) struct Polar {
    c: V2,
    radii: Vec<f32>,
    lip: f32,
    rmax: f32,
}

impl Polar {
    /// Superellipse |x/a|^n + |y/b|^n = 1 whose radius is modulated by
    /// `1 + Σ amp·cos(k·θ + phase)` for each `(k, amp, phase)` harmonic.
    pub fn new(c: V2, a: f32, b: f32, n: f32, harmonics: &[(u32, f32, f32)]) -> Polar {
        let step = 2.0 * std::f64::consts::PI / POLAR_STEPS as f64;
        let radii: Vec<f32> = (0..POLAR_STEPS)
            .map(|j| {
                let th = -std::f64::consts::PI + j as f64 * step;
                let (s, co) = sin_cos(th);
                let n = f64::from(n);
                let sum = powf((co / f64::from(a)).abs(), n) + powf((s / f64::from(b)).abs(), n);
                let base = powf(sum, -1.0 / n);
                let wobble: f64 = harmonics
                    .iter()
                    .map(|&(k, amp, ph)| f64::from(amp) * sin_cos(f64::from(k) * th + f64::from(ph)).1)
                    .sum();
                (base * (1.0 + wobble)) as f32
            })
            .collect();
        let mut lip = 0.0f32;
        for j in 0..POLAR_STEPS {
            let (r0, r1) = (radii[j], radii[(j + 1) % POLAR_STEPS]);
            let slope = (r1 - r0) / step as f32;
            let rm = r0.min(r1);
            lip = lip.max((1.0 / (rm * rm) + slope * slope / (rm * rm * rm * rm)).sqrt());
        }
        let rmax = radii.iter().copied().fold(0.0, f32::max);
        Polar { c, radii, lip: lip * 1.05, rmax }
    }

    fn sdf(&self, p: V2) -> f32 {
        let d = p - self.c;
        let t = (atan2(d.y, d.x) + PI32) * (POLAR_STEPS as f32 / (2.0 * PI32));
        let i = (t as usize).min(POLAR_STEPS - 1);
        let f = t - i as f32;
        let (r0, r1) = (self.radii[i], self.radii[(i + 1) % POLAR_STEPS]);
        (d.len() / (r0 + (r1 - r0) * f) - 1.0) / self.lip
    }
}

/// Exact distance to a rounded box centred at the origin.
fn round_box(p: V2, half: V2, r: f32) -> f32 {
    let q = p.abs() - half + V2::new(r, r);
    q.max_s(0.0).len() + q.x.max(q.y).min(0.0) - r
}

/// Distance to an ellipse with radii `ab` centred at the origin. Near the curve it runs
/// Newton iterations on the closest boundary point (basic operations only, so
/// deterministic); a converged closest point gives the exact distance. Far away, or if
/// the solve has not converged, the cheap scaled bound is returned.
fn ellipse(p: V2, ab: V2) -> f32 {
    let p = p.abs();
    let g = p.div_v(ab).len();
    let sign = if g < 1.0 { -1.0 } else { 1.0 };
    let bound = (g - 1.0) * ab.x.min(ab.y);
    if bound.abs() > ELLIPSE_EXACT_WITHIN {
        return bound;
    }
    let q = ab.mul_v(p - ab);
    let mut cs = if q.x < q.y { V2::new(0.01, 1.0) } else { V2::new(1.0, 0.01) };
    cs = cs * (1.0 / cs.len());
    for _ in 0..6 {
        let u = ab.mul_v(cs);
        let v = ab.mul_v(cs.perp());
        let a = (p - u).dot(v);
        let c = (p - u).dot(u) + v.dot(v);
        let b = (c * c - a * a).max(0.0).sqrt();
        cs = V2::new(cs.x * b - cs.y * a, cs.y * b + cs.x * a) * (1.0 / c);
    }
    let u = ab.mul_v(cs);
    let d = (p - u).len();
    let residual = (p - u).dot(ab.mul_v(cs.perp())).abs();
    let tolerance = 1e-3 * ab.mul_v(cs.perp()).len() * d.max(1e-3 * ab.x.min(ab.y));
    if residual <= tolerance {
        // Any boundary point is at least as far as the nearest; shrink for rounding.
        sign * d * 0.999
    } else {
        bound
    }
}

/// Exact distance to a trapezoid centred at the origin (y down: `top` is at -he).
fn trapezoid(p: V2, top: f32, bottom: f32, he: f32) -> f32 {
    let k1 = V2::new(bottom, he);
    let k2 = V2::new(bottom - top, 2.0 * he);
    let p = V2::new(p.x.abs(), p.y);
    let lim = if p.y < 0.0 { top } else { bottom };
    let ca = V2::new(p.x - p.x.min(lim), p.y.abs() - he);
    let t = ((k1 - p).dot(k2) / k2.dot(k2)).clamp(0.0, 1.0);
    let cb = p - k1 + k2 * t;
    let s = if cb.x < 0.0 && ca.y < 0.0 { -1.0 } else { 1.0 };
    s * ca.dot(ca).min(cb.dot(cb)).sqrt()
}

impl Prim {
    /// Signed distance bound at `p`.
    pub fn sdf(&self, p: V2) -> f32 {
        match self {
            Prim::RoundBox { c, half, r } => round_box(p - *c, *half, *r),
            Prim::Ellipse { c, r } => ellipse(p - *c, *r),
            Prim::Trapezoid { c, top, bottom, he, r } => trapezoid(p - *c, top - r, bottom - r, he - r) - r,
            Prim::Arc { c, dir, sc, radius, half_thick } => {
                let d = p - *c;
                let q = V2::new(d.dot(dir.perp()).abs(), d.dot(*dir));
                let core = if sc.y * q.x > sc.x * q.y { (q - *sc * *radius).len() } else { (q.len() - radius).abs() };
                core - half_thick
            }
            Prim::RectRing { c, half, r, thick } => {
                let q = p - *c;
                let inner = (*half - V2::new(*thick, *thick)).max_s(1e-4);
                round_box(q, *half, *r).max(-round_box(q, inner, (r - thick).max(0.0)))
            }
            Prim::Polar(shape) => shape.sdf(p),
        }
    }

    /// Conservative axis-aligned bounds (min, max).
    pub fn bounds(&self) -> (V2, V2) {
        let (c, h) = match self {
            Prim::RoundBox { c, half, .. } | Prim::RectRing { c, half, .. } => (*c, *half),
            Prim::Ellipse { c, r } => (*c, *r),
            Prim::Trapezoid { c, top, bottom, he, .. } => (*c, V2::new(top.max(*bottom), *he)),
            Prim::Arc { c, radius, half_thick, .. } => (*c, V2::new(radius + half_thick, radius + half_thick)),
            Prim::Polar(shape) => (shape.c, V2::new(shape.rmax, shape.rmax)),
        };
        (c - h, c + h)
    }

    /// Changes the band width of a thin primitive (arc or ring); others are unchanged.
    pub fn set_half_thickness(&mut self, t: f32) {
        match self {
            Prim::Arc { half_thick, .. } => *half_thick = t,
            Prim::RectRing { thick, .. } => *thick = 2.0 * t,
            _ => {}
        }
    }
}

/// Polynomial smooth minimum; its gradient is a convex mix of the inputs' gradients,
/// so it stays 1-Lipschitz.
fn smin(a: f32, b: f32, k: f32) -> f32 {
    if k <= 0.0 {
        return a.min(b);
    }
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

/// A sharp union of primitives, onto which further primitives may be blended smoothly
/// (fillets). Surfaces that coincide must stay in the sharp group: a smooth union of two
/// overlapping walls would bulge.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    prims: Vec<Prim>,
    blended: Vec<Prim>,
    blend: f32,
}

impl Shape {
    /// A shape made of one primitive.
    pub fn one(p: Prim) -> Shape {
        Shape::union(vec![p])
    }

    /// A sharp union of primitives.
    pub fn union(prims: Vec<Prim>) -> Shape {
        Shape { prims, blended: Vec::new(), blend: 0.0 }
    }

    /// Adds primitives joined to the shape by a smooth union of radius `blend`.
    pub fn blended(mut self, prims: Vec<Prim>, blend: f32) -> Shape {
        self.blended = prims;
        self.blend = blend;
        self
    }

    /// Signed distance bound of the shape.
    pub fn sdf(&self, p: V2) -> f32 {
        let sharp = self.prims.iter().fold(f32::MAX, |acc, q| acc.min(q.sdf(p)));
        self.blended.iter().fold(sharp, |acc, q| smin(acc, q.sdf(p), self.blend))
    }

    /// Conservative bounds of the shape.
    pub fn bounds(&self) -> (V2, V2) {
        let grow = V2::new(self.blend * 0.25, self.blend * 0.25);
        let mut lo = V2::new(f32::MAX, f32::MAX);
        let mut hi = V2::new(f32::MIN, f32::MIN);
        for p in self.prims.iter().chain(&self.blended) {
            let (a, b) = p.bounds();
            lo = V2::new(lo.x.min(a.x), lo.y.min(a.y));
            hi = V2::new(hi.x.max(b.x), hi.y.max(b.y));
        }
        (lo - grow, hi + grow)
    }

    /// Sets the band width of every thin primitive in the shape.
    pub fn set_half_thickness(&mut self, t: f32) {
        self.prims.iter_mut().chain(&mut self.blended).for_each(|p| p.set_half_thickness(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the 1-Lipschitz bound numerically on a grid of point pairs.
    fn assert_lipschitz(p: &Prim) {
        let (lo, hi) = p.bounds();
        let span = (hi - lo) * 1.5;
        for i in 0..40 {
            for j in 0..40 {
                let a = lo - span * 0.2 + V2::new(span.x * i as f32 / 40.0, span.y * j as f32 / 40.0);
                let b = a + V2::new(0.013, -0.007);
                let slope = (p.sdf(a) - p.sdf(b)).abs() / (a - b).len();
                assert!(slope <= 1.02, "{p:?} slope {slope} at {a:?}");
            }
        }
    }

    #[test]
    fn primitives_are_lipschitz_and_signed() {
        let c = V2::new(0.1, -0.05);
        let prims = [
            Prim::RoundBox { c, half: V2::new(0.3, 0.2), r: 0.05 },
            Prim::Ellipse { c, r: V2::new(0.4, 0.1) },
            Prim::Trapezoid { c, top: 0.2, bottom: 0.35, he: 0.3, r: 0.03 },
            Prim::Arc { c, dir: V2::new(1.0, 0.0), sc: V2::new(0.9, -0.43), radius: 0.3, half_thick: 0.03 },
            Prim::RectRing { c, half: V2::new(0.2, 0.3), r: 0.05, thick: 0.06 },
            Prim::Polar(Polar::new(c, 0.5, 0.2, 2.7, &[(1, 0.08, 0.3), (3, 0.04, 1.0)])),
        ];
        for p in &prims {
            assert_lipschitz(p);
            assert!(p.sdf(V2::new(5.0, 5.0)) > 0.0);
        }
        assert!(prims[0].sdf(c) < 0.0 && prims[5].sdf(c) < 0.0);
        // The ellipse distance is exact (not just a bound) along both axes.
        assert!((prims[1].sdf(c + V2::new(0.5, 0.0)) - 0.1).abs() < 1e-3);
        assert!((prims[1].sdf(c + V2::new(0.0, 0.3)) - 0.2).abs() < 1e-3);
        assert!((prims[1].sdf(c) + 0.1).abs() < 1e-3);
        // The ring's centre is a hole.
        assert!(prims[4].sdf(c) > 0.0);
    }
}
