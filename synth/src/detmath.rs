//! Deterministic maths: a 2-D vector type and the few transcendental functions the
//! generator needs, built only from `+ - * /`, `sqrt` and rounding. Platform `libm`s may
//! differ in the last bit of `sin` or `exp`; these do not, so a scene renders to the same
//! bytes on every machine.

use std::ops::{Add, Mul, Neg, Sub};

/// π in single precision, for per-pixel angle work.
pub(crate) const PI32: f32 = std::f32::consts::PI;

/// A 2-D point or vector (scene or object units; y grows downwards).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct V2 {
    /// Horizontal component.
    pub x: f32,
    /// Vertical component (down is positive).
    pub y: f32,
}

impl V2 {
    /// Builds a vector from its components.
    pub const fn new(x: f32, y: f32) -> V2 {
        V2 { x, y }
    }

    /// Dot product.
    pub fn dot(self, o: V2) -> f32 {
        self.x * o.x + self.y * o.y
    }

    /// Euclidean length.
    pub fn len(self) -> f32 {
        self.dot(self).sqrt()
    }

    /// Component-wise absolute value.
    pub fn abs(self) -> V2 {
        V2::new(self.x.abs(), self.y.abs())
    }

    /// Component-wise maximum with a scalar.
    pub fn max_s(self, v: f32) -> V2 {
        V2::new(self.x.max(v), self.y.max(v))
    }

    /// Component-wise product.
    pub fn mul_v(self, o: V2) -> V2 {
        V2::new(self.x * o.x, self.y * o.y)
    }

    /// Component-wise quotient.
    pub fn div_v(self, o: V2) -> V2 {
        V2::new(self.x / o.x, self.y / o.y)
    }

    /// Rotates by the rotation whose (cos, sin) is `r`.
    pub fn rotate(self, r: V2) -> V2 {
        V2::new(self.x * r.x - self.y * r.y, self.x * r.y + self.y * r.x)
    }

    /// Rotates by the inverse of the rotation whose (cos, sin) is `r`.
    pub fn unrotate(self, r: V2) -> V2 {
        V2::new(self.x * r.x + self.y * r.y, -self.x * r.y + self.y * r.x)
    }

    /// The vector turned a quarter turn.
    pub fn perp(self) -> V2 {
        V2::new(-self.y, self.x)
    }
}

impl Add for V2 {
    type Output = V2;
    fn add(self, o: V2) -> V2 {
        V2::new(self.x + o.x, self.y + o.y)
    }
}

impl Sub for V2 {
    type Output = V2;
    fn sub(self, o: V2) -> V2 {
        V2::new(self.x - o.x, self.y - o.y)
    }
}

impl Mul<f32> for V2 {
    type Output = V2;
    fn mul(self, s: f32) -> V2 {
        V2::new(self.x * s, self.y * s)
    }
}

impl Neg for V2 {
    type Output = V2;
    fn neg(self) -> V2 {
        V2::new(-self.x, -self.y)
    }
}

/// Sine and cosine of `x` radians (accurate to ~1e-15 for |x| < 1e3).
pub(crate) fn sin_cos(x: f64) -> (f64, f64) {
    let q = (x / std::f64::consts::FRAC_PI_2).round();
    let r = x - q * std::f64::consts::FRAC_PI_2;
    let r2 = r * r;
    let s = r
        * (1.0
            + r2 * (-1.0 / 6.0
                + r2 * (1.0 / 120.0
                    + r2 * (-1.0 / 5040.0
                        + r2 * (1.0 / 362_880.0 + r2 * (-1.0 / 39_916_800.0 + r2 / 6_227_020_800.0))))));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0
                + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40_320.0 + r2 * (-1.0 / 3_628_800.0 + r2 / 479_001_600.0)))));
    match (q as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// The unit vector at `angle` radians, as a rotation (cos, sin).
pub(crate) fn unit(angle: f64) -> V2 {
    let (s, c) = sin_cos(angle);
    V2::new(c as f32, s as f32)
}

/// `e^x` for |x| < 700.
pub(crate) fn exp(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let k = (x / std::f64::consts::LN_2).round();
    let r = x - k * std::f64::consts::LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=14 {
        term *= r / f64::from(i);
        sum += term;
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

/// Natural logarithm of a positive, normal `x`.
pub(crate) fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..12 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// `x^y` for `x >= 0` (0 for non-positive `x`).
pub(crate) fn powf(x: f64, y: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else {
        exp(y * ln(x))
    }
}

/// Angle of (x, y) in (-π, π], accurate to ~1e-6 rad; cheap enough to run per pixel.
pub(crate) fn atan2(y: f32, x: f32) -> f32 {
    let (ax, ay) = (x.abs(), y.abs());
    let big = ax.max(ay);
    if big == 0.0 {
        return 0.0;
    }
    let a = ax.min(ay) / big;
    let s = a * a;
    let poly = ((((-0.011_721_2 * s + 0.052_653_32) * s - 0.116_432_87) * s + 0.193_543_46) * s - 0.332_623_47) * s
        + 0.999_977_26;
    let mut r = poly * a;
    if ay > ax {
        r = std::f32::consts::FRAC_PI_2 - r;
    }
    if x < 0.0 {
        r = PI32 - r;
    }
    if y < 0.0 {
        -r
    } else {
        r
    }
}

/// `x.floor()` without a libm call (baseline x86-64 has no rounding instruction);
/// exact for |x| < 2^31.
pub(crate) fn floor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// Hermite smoothstep of `t` clamped to [0, 1].
pub(crate) fn smooth01(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_match_std_closely() {
        for i in -200..200 {
            let x = f64::from(i) * 0.173;
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-12 && (c - x.cos()).abs() < 1e-12, "sin_cos {x}");
            assert!((exp(x * 0.1) / (x * 0.1).exp() - 1.0).abs() < 1e-12, "exp {x}");
            let y = f64::from(i + 201) * 0.37;
            assert!((ln(y) - y.ln()).abs() < 1e-12, "ln {y}");
            let (fy, fx) = ((x * 0.7).sin() as f32, x.cos() as f32);
            assert!((atan2(fy, fx) - fy.atan2(fx)).abs() < 2e-6, "atan2 {fy} {fx}");
        }
        assert!((powf(2.0, 10.0) - 1024.0).abs() < 1e-9);
        for x in [-2.5f32, -2.0, -0.3, 0.0, 0.7, 3.0, 1e6 + 0.5] {
            assert_eq!(floor(x), x.floor());
        }
    }
}
