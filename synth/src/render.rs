//! Rendering a scene at a pixel size: background first, then the object pass, which
//! walks 8x8 tiles, skips tiles the distance bound proves empty, paints tiles proven
//! inside one part directly, and supersamples (4x4) only pixels within ~0.75 px of an
//! edge. The image is composited with the quantised alpha, so it is exactly
//! `alpha * object + (1 - alpha) * background` per pixel.

use image::{GrayImage, RgbImage};

use crate::detmath::V2;
use crate::object::{Object, MAX_PARTS};
use crate::paint::{mix, Rgb};
use crate::raster::{grain, to_u8, Coverage, Grid};
use crate::scene::Scene;
use crate::Sample;

/// Tile side in pixels for the empty/inside/edge classification.
const TILE: usize = 8;
/// Supersampling grid per side for edge pixels.
const SUB: usize = 4;

/// The separate layers of a render (for checks of the compositing).
#[cfg(test)]
pub(crate) struct Layers {
    /// Background with shadows (left black under opaque object pixels).
    pub background: RgbImage,
    /// Object colour where alpha > 0 (black elsewhere).
    pub object: RgbImage,
    /// Object alpha.
    pub alpha: GrayImage,
}

/// Renders `scene` at `width` x `height` (each at least 1).
pub(crate) fn render(scene: &Scene, width: u32, height: u32) -> Sample {
    let (w, h) = (width.max(1), height.max(1));
    let grid = Grid::new(w as usize, h as usize, scene.dims);
    let (alpha, hits) = object_layer(scene, &grid);
    let mut image = RgbImage::new(w, h);
    paint_background(scene, &grid, &alpha, image.as_mut());
    let (img, alp) = (image.as_mut(), alpha.as_raw());
    for (i, c) in hits {
        let i = i as usize;
        blend(&mut img[i * 3..i * 3 + 3], alp[i], c);
    }
    Sample {
        image,
        alpha,
        object: scene.object_name().to_string(),
        background: scene.background.kind.name().to_string(),
    }
}

/// Renders the background, object and alpha layers separately.
#[cfg(test)]
pub(crate) fn render_layers(scene: &Scene, width: u32, height: u32) -> Layers {
    let (w, h) = (width.max(1), height.max(1));
    let grid = Grid::new(w as usize, h as usize, scene.dims);
    let (alpha, hits) = object_layer(scene, &grid);
    let mut background = RgbImage::new(w, h);
    paint_background(scene, &grid, &alpha, background.as_mut());
    let mut object = RgbImage::new(w, h);
    for (i, c) in hits {
        let i = i as usize;
        object.as_mut()[i * 3..i * 3 + 3].copy_from_slice(&c);
    }
    Layers { background, object, alpha }
}

/// The object's alpha and the colour of every pixel it touches.
fn object_layer(scene: &Scene, grid: &Grid) -> (GrayImage, Vec<(u32, [u8; 3])>) {
    let mut alpha = GrayImage::new(grid.w as u32, grid.h as u32);
    let mut hits = Vec::new();
    let alp = alpha.as_mut();
    object_pass(scene, grid, |i, a, c| {
        alp[i] = a;
        hits.push((i as u32, c));
    });
    (alpha, hits)
}

/// Composites `c` over the pixel with byte alpha `a`.
pub(crate) fn blend(px: &mut [u8], a: u8, c: [u8; 3]) {
    let (a, na) = (u32::from(a), 255 - u32::from(a));
    for (dst, src) in px.iter_mut().zip(c) {
        *dst = ((a * u32::from(src) + na * u32::from(*dst) + 127) / 255) as u8;
    }
}

fn paint_background(scene: &Scene, grid: &Grid, alpha: &GrayImage, out: &mut [u8]) {
    let size = (grid.w, grid.h);
    let grain = (scene.grain_seed, scene.grain);
    let cover = Coverage::new(alpha.as_raw(), *grid);
    scene.background.render(&scene.object, &cover, scene.dims, size, out, grain);
}

/// How a tile relates to the silhouette.
enum TileClass {
    Empty,
    Inside(usize),
    Mixed,
}

fn classify(obj: &Object, q: V2, radius: f32) -> TileClass {
    let mut d = [f32::MAX; MAX_PARTS];
    obj.part_sdfs(q, &mut d);
    let n = obj.parts.len();
    if d[..n].iter().all(|&v| v > radius) {
        return TileClass::Empty;
    }
    match obj.top_part(&d) {
        Some(k) if d[k] < -radius && d[k + 1..n].iter().all(|&v| v > radius) => TileClass::Inside(k),
        _ => TileClass::Mixed,
    }
}

/// Calls `sink(pixel index, alpha, colour)` for every pixel the object touches.
fn object_pass<F: FnMut(usize, u8, [u8; 3])>(scene: &Scene, grid: &Grid, mut sink: F) {
    let obj = &scene.object;
    let (lo, hi) = obj.bounds;
    let x0 = (lo.x / grid.sx - 1.0).floor().max(0.0) as usize;
    let y0 = (lo.y / grid.sy - 1.0).floor().max(0.0) as usize;
    let x1 = ((hi.x / grid.sx + 1.0).ceil().max(0.0) as usize).min(grid.w);
    let y1 = ((hi.y / grid.sy + 1.0).ceil().max(0.0) as usize).min(grid.h);
    let px = grid.footprint() / obj.scale;
    let band = 0.75 * px;
    let radius = (TILE as f32 * 0.5 * std::f32::consts::SQRT_2) * px + band;
    let seed = scene.grain_seed ^ 0x5bd1_e995;
    let mut ty = y0;
    while ty < y1 {
        let mut tx = x0;
        while tx < x1 {
            let (tw, th) = (TILE.min(x1 - tx), TILE.min(y1 - ty));
            let q = obj.local(grid.at(tx as f32 + tw as f32 * 0.5, ty as f32 + th as f32 * 0.5));
            let class = classify(obj, q, radius);
            for y in ty..ty + th {
                for x in tx..tx + tw {
                    let hit = match class {
                        TileClass::Empty => None,
                        TileClass::Inside(k) => {
                            let q = obj.local(grid.at(x as f32 + 0.5, y as f32 + 0.5));
                            Some((obj.opacity(k, q), obj.colour(k, q, px)))
                        }
                        TileClass::Mixed => edge_pixel(obj, grid, x, y, px, band),
                    };
                    if let Some((a, c)) = hit {
                        let g = grain(x, y, seed, scene.grain);
                        let a8 = to_u8(a * 255.0);
                        if a8 > 0 {
                            sink(y * grid.w + x, a8, [to_u8(c[0] + g), to_u8(c[1] + g), to_u8(c[2] + g)]);
                        }
                    }
                }
            }
            tx += TILE;
        }
        ty += TILE;
    }
}

/// Alpha and colour of a pixel in a mixed tile; supersampled near edges.
fn edge_pixel(obj: &Object, grid: &Grid, x: usize, y: usize, px: f32, band: f32) -> Option<(f32, Rgb)> {
    let n = obj.parts.len();
    let q = obj.local(grid.at(x as f32 + 0.5, y as f32 + 0.5));
    let mut d = [f32::MAX; MAX_PARTS];
    obj.part_sdfs(q, &mut d);
    if d[..n].iter().all(|v| v.abs() >= band) {
        let k = obj.top_part(&d)?;
        return Some((obj.opacity(k, q), obj.colour(k, q, px)));
    }
    // A part whose bound at the centre exceeds the farthest subsample offset (0.53 px)
    // keeps its sign over all subsamples; only the others are evaluated again.
    let fixed = 0.55 * px;
    let mut weight = [0.0f32; MAX_PARTS];
    let mut ds = d;
    for sy in 0..SUB {
        for sx in 0..SUB {
            let p = grid.at(x as f32 + (sx as f32 + 0.5) / SUB as f32, y as f32 + (sy as f32 + 0.5) / SUB as f32);
            let qs = obj.local(p);
            for k in (0..n).filter(|&k| d[k].abs() < fixed) {
                ds[k] = obj.parts[k].shape.sdf(qs);
            }
            if let Some(k) = obj.top_part(&ds) {
                weight[k] += obj.opacity(k, qs);
            }
        }
    }
    let total: f32 = weight.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut colour = [0.0; 3];
    let mut acc = 0.0;
    for (k, &w) in weight.iter().enumerate().take(n).filter(|(_, w)| **w > 0.0) {
        acc += w;
        colour = mix(colour, obj.colour(k, q, px), w / acc);
    }
    Some((total / (SUB * SUB) as f32, colour))
}
