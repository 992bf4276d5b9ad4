//! Placing the product on its new background without altering it: where the matte says
//! "surely product" the output pixel is the input pixel bit for bit; where it says "surely
//! background" it is the new background; on the edge band in between the decontaminated
//! foreground colour is blended over the new background.

mod background;
mod decontam;
mod grid;
pub mod shadow;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;

use image::{GrayImage, RgbImage, RgbaImage};
use rayon::prelude::*;

use self::decontam::{Decontam, Scratch};
pub use self::shadow::{Shadow, ShadowKind};
use crate::resize::resize_gray;

/// What the product is placed on.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Background {
    /// No background: an RGBA cut-out whose alpha channel is the matte.
    #[default]
    Transparent,
    /// A flat sRGB colour.
    Color([u8; 3]),
    /// A catalog image, scaled to cover the photo and centre-cropped.
    Image(Arc<RgbImage>),
    /// The photo's own background, blurred, with the product left out of the average so it
    /// casts no halo of its own colour.
    Blur {
        /// Blur radius (Gaussian sigma) as a percentage of the photo's long side.
        sigma_pct: f32,
    },
}

/// How `composite` treats the matte.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeOptions {
    /// The new background.
    pub background: Background,
    /// Alpha at or above this keeps the input pixel exactly (the product is never altered).
    /// The default, 240 (0.94), is rembg's foreground threshold: a matting model's interior
    /// rarely reaches 1.0 exactly, and a product blended with 2-6% of a new background is
    /// altered.
    pub preserve_at: u8,
    /// Alpha below this is pure background (fully transparent in a cut-out).
    pub clear_below: u8,
    /// Whether to remove the old background's colour from edge pixels (blur fusion).
    pub decontaminate: bool,
    /// A shadow cast on the new background (on a cut-out: semi-transparent black where the
    /// matte is surely background).
    pub shadow: Option<Shadow>,
}

impl Default for CompositeOptions {
    fn default() -> Self {
        CompositeOptions {
            background: Background::default(),
            preserve_at: 240,
            clear_below: 5,
            decontaminate: true,
            shadow: None,
        }
    }
}

/// A composited photo: RGB on an opaque background, RGBA for a transparent cut-out.
#[derive(Debug, Clone, PartialEq)]
pub enum Composited {
    /// The product on an opaque background.
    Rgb(RgbImage),
    /// A cut-out: colour plus the matte as alpha.
    Rgba(RgbaImage),
}

impl Composited {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        match self {
            Composited::Rgb(img) => img.width(),
            Composited::Rgba(img) => img.width(),
        }
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        match self {
            Composited::Rgb(img) => img.height(),
            Composited::Rgba(img) => img.height(),
        }
    }
}

/// Alpha values treated as an edge: `lo <= a < hi`.
#[derive(Debug, Clone, Copy)]
struct Band {
    lo: u8,
    hi: u8,
}

impl Band {
    #[inline]
    fn contains(self, a: u8) -> bool {
        a >= self.lo && a < self.hi
    }
}

/// A half-open pixel rectangle.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl Rect {
    fn expand(self, by: usize, width: usize, height: usize) -> Rect {
        Rect {
            x0: self.x0.saturating_sub(by),
            y0: self.y0.saturating_sub(by),
            x1: (self.x1 + by).min(width),
            y1: (self.y1 + by).min(height),
        }
    }
}

/// Composites the photo over `opts.background` using `alpha` (resized to the photo if its
/// size differs); the output has the photo's size.
pub fn composite(rgb: &RgbImage, alpha: &GrayImage, opts: &CompositeOptions) -> Composited {
    let (w, h) = rgb.dimensions();
    let alpha = if alpha.dimensions() == (w, h) { Cow::Borrowed(alpha) } else { Cow::Owned(resize_gray(alpha, w, h)) };
    let band = Band { lo: opts.clear_below, hi: opts.preserve_at };
    let (width, height) = (w as usize, h as usize);
    let has_edges = alpha.as_raw().iter().any(|&a| band.contains(a));
    // Pass 1 of decontamination and the background plane are independent whole-image jobs.
    let (decontam, plane) = rayon::join(
        || (opts.decontaminate && has_edges).then(|| Decontam::new(rgb.as_raw(), alpha.as_raw(), width, height)),
        || background::plane(&opts.background, rgb, &alpha),
    );
    let job = Job { rgb: rgb.as_raw(), alpha: alpha.as_raw(), width, height, band, decontam: decontam.as_ref() };
    let shadow = opts.shadow.map(|s| shadow::shadow_mask(&alpha, &s));
    // A shadow darkens the background plane before the product goes over it, so pixels kept
    // from the input are untouched; a flat colour becomes a plane for it.
    let plane = match (shadow.as_ref(), plane, &opts.background) {
        (Some(mask), Some(plane), _) => {
            let mut plane = plane.into_owned();
            shadow::darken(&mut plane, mask);
            Some(Cow::Owned(plane))
        }
        (Some(mask), None, Background::Color(c)) => {
            let mut plane = RgbImage::from_pixel(w, h, image::Rgb(*c));
            shadow::darken(&mut plane, mask);
            Some(Cow::Owned(plane))
        }
        (_, plane, _) => plane,
    };
    match (&opts.background, plane) {
        (_, Some(plane)) => Composited::Rgb(image_of(w, h, job.render::<3, _>(&Plane(plane.as_raw())))),
        (Background::Color(c), None) => Composited::Rgb(image_of(w, h, job.render::<3, _>(&Flat(*c)))),
        (_, None) => {
            let mut cutout: RgbaImage = image_of(w, h, job.render::<4, _>(&Flat([0; 3])));
            if let Some(mask) = shadow {
                // Where the matte is surely background the cut-out is clear: the shadow shows
                // there as black at its darkness; the product and its edge are left alone.
                for ((p, a), m) in cutout.pixels_mut().zip(alpha.pixels()).zip(mask.pixels()) {
                    if a.0[0] < band.lo {
                        p.0 = [0, 0, 0, m.0[0]];
                    }
                }
            }
            Composited::Rgba(cutout)
        }
    }
}

fn image_of<P: image::Pixel<Subpixel = u8>>(w: u32, h: u32, raw: Vec<u8>) -> image::ImageBuffer<P, Vec<u8>> {
    image::ImageBuffer::from_raw(w, h, raw).expect("render writes width*height pixels")
}

/// Background colours by pixel index.
trait BgPixels: Sync {
    fn at(&self, i: usize) -> [u8; 3];
    /// Writes the RGB background of pixels `start..` into `out` (3 bytes per pixel).
    fn fill(&self, start: usize, out: &mut [u8]);
}

struct Flat([u8; 3]);

impl BgPixels for Flat {
    #[inline(always)]
    fn at(&self, _: usize) -> [u8; 3] {
        self.0
    }

    fn fill(&self, _: usize, out: &mut [u8]) {
        for o in out.chunks_exact_mut(3) {
            o.copy_from_slice(&self.0);
        }
    }
}

struct Plane<'a>(&'a [u8]);

impl BgPixels for Plane<'_> {
    #[inline(always)]
    fn at(&self, i: usize) -> [u8; 3] {
        [self.0[3 * i], self.0[3 * i + 1], self.0[3 * i + 2]]
    }

    fn fill(&self, start: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0[3 * start..][..out.len()]);
    }
}

/// Everything one composite reads.
struct Job<'a> {
    rgb: &'a [u8],
    alpha: &'a [u8],
    width: usize,
    height: usize,
    band: Band,
    decontam: Option<&'a Decontam<'a>>,
}

impl Job<'_> {
    /// Renders `N`-channel output (3: RGB over `bg`; 4: RGBA cut-out) in parallel strips.
    fn render<const N: usize, B: BgPixels>(&self, bg: &B) -> Vec<u8> {
        let mut out = vec![0u8; self.width * self.height * N];
        if out.is_empty() {
            return out;
        }
        let tile = self.decontam.map_or(32, Decontam::tile_size);
        out.par_chunks_mut(tile * self.width * N).enumerate().for_each_init(
            Scratch::default,
            |scratch, (strip, chunk)| {
                let y0 = strip * tile;
                for (dy, row) in chunk.chunks_exact_mut(self.width * N).enumerate() {
                    self.basic_row::<N, B>(row, (y0 + dy) * self.width, bg);
                }
                if let Some(decontam) = self.decontam {
                    let y1 = y0 + chunk.len() / (self.width * N);
                    self.edge_strip::<N, B>(chunk, y0, y1, tile, decontam, scratch, bg);
                }
            },
        );
        out
    }

    /// Preserve, clear or blend (with the observed colour as foreground) one row. Runs of
    /// sure pixels, the bulk of any photo, are copied or filled whole.
    #[inline]
    fn basic_row<const N: usize, B: BgPixels>(&self, out: &mut [u8], start: usize, bg: &B) {
        const RUN: usize = 32;
        let px = &self.rgb[start * 3..(start + self.width) * 3];
        let al = &self.alpha[start..start + self.width];
        let runs = out.chunks_mut(RUN * N).zip(px.chunks(RUN * 3)).zip(al.chunks(RUN));
        for (i, ((o, p), a)) in runs.enumerate() {
            let at = start + i * RUN;
            let (min, max) = a.iter().fold((u8::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            if N == 3 && min >= self.band.hi {
                o.copy_from_slice(p);
            } else if max < self.band.lo {
                // A cut-out's clear pixels are (0, 0, 0, 0), which the zeroed buffer holds.
                if N == 3 {
                    bg.fill(at, o);
                }
            } else {
                self.mixed_pixels::<N, B>(o, p, a, at, bg);
            }
        }
    }

    #[inline]
    fn mixed_pixels<const N: usize, B: BgPixels>(&self, out: &mut [u8], px: &[u8], al: &[u8], start: usize, bg: &B) {
        let Band { lo, hi } = self.band;
        let pixels = out.chunks_exact_mut(N).zip(px.chunks_exact(3)).zip(al);
        for (x, ((o, p), &a)) in pixels.enumerate() {
            if a >= hi {
                o[..3].copy_from_slice(p);
            } else if a < lo {
                o[..3].copy_from_slice(&bg.at(start + x));
            } else if N == 3 {
                let b = bg.at(start + x);
                let (a, na) = (u32::from(a), 255 - u32::from(a));
                for k in 0..3 {
                    o[k] = ((u32::from(p[k]) * a + u32::from(b[k]) * na + 127) / 255) as u8;
                }
            } else {
                o[..3].copy_from_slice(p);
            }
            if N == 4 {
                o[3] = if a < lo { 0 } else { a };
            }
        }
    }

    /// Overwrites the edge pixels of one strip with decontaminated colours.
    #[allow(clippy::too_many_arguments)]
    fn edge_strip<const N: usize, B: BgPixels>(
        &self,
        chunk: &mut [u8],
        y0: usize,
        y1: usize,
        tile: usize,
        decontam: &Decontam<'_>,
        scratch: &mut Scratch,
        bg: &B,
    ) {
        for x0 in (0..self.width).step_by(tile) {
            let rect = Rect { x0, y0, x1: (x0 + tile).min(self.width), y1 };
            decontam.tile(rect, self.height, self.band, scratch, |x, y, f| {
                let i = y * self.width + x;
                let o = &mut chunk[(i - y0 * self.width) * N..][..N];
                if N == 4 {
                    for k in 0..3 {
                        o[k] = (f[k] + 0.5) as u8;
                    }
                } else {
                    let a = f32::from(self.alpha[i]) / 255.0;
                    let b = bg.at(i);
                    for k in 0..3 {
                        o[k] = (f[k] * a + f32::from(b[k]) * (1.0 - a) + 0.5) as u8;
                    }
                }
            });
        }
    }
}
