//! Renders a few samples as side-by-side image | mask PNGs and prints render timings.
//!
//! `cargo run --release -p fleet-synth --example preview -- <out dir> <seed> <first index> <count>`

use std::path::PathBuf;
use std::time::Instant;

use fleet_synth::Scene;
use image::{Rgb, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/tmp/synth-preview", String::as_str));
    let seed: u64 = args.get(2).map_or(Ok(0), |s| s.parse())?;
    let first: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let count: u64 = args.get(4).map_or(Ok(4), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    if args.get(5).map(String::as_str) == Some("sheet") {
        let path = dir.join(format!("sheet-{seed}-{first}.png"));
        contact_sheet(seed, first, count).save(&path)?;
        println!("{}", path.display());
        return Ok(());
    }
    for index in first..first + count {
        let scene = Scene::generate(seed, index);
        let (w, h) = scene.natural_size(320, 1600);
        let sample = scene.render(w, h);
        let mut sheet = RgbImage::new(2 * w, h);
        for (x, y, p) in sample.image.enumerate_pixels() {
            sheet.put_pixel(x, y, *p);
            let a = sample.alpha.get_pixel(x, y)[0];
            sheet.put_pixel(w + x, y, Rgb([a, a, a]));
        }
        let path = dir.join(format!("sample-{seed}-{index:04}.png"));
        sheet.save(&path)?;
        println!("{} {w}x{h}: {}", path.display(), scene.describe());
    }
    time("1600x1200", 20, |i| {
        Scene::generate(seed, i).render(1600, 1200);
    });
    time("128x128", 500, |i| {
        Scene::generate(seed, i).render(128, 128);
    });
    time("generate only", 500, |i| {
        Scene::generate(seed, i);
    });
    Ok(())
}

/// Thumbnails (image | mask, 192 px long side) of `count` samples, four per row.
fn contact_sheet(seed: u64, first: u64, count: u64) -> RgbImage {
    const CELL: u32 = 192;
    let rows = count.div_ceil(4) as u32;
    let mut sheet = RgbImage::from_pixel(4 * 2 * CELL + 3 * 8, rows * (CELL + 8), Rgb([255, 0, 255]));
    for k in 0..count {
        let scene = Scene::generate(seed, first + k);
        let (w, h) = scene.natural_size(CELL, CELL);
        let sample = scene.render(w, h);
        let (ox, oy) = ((k % 4) as u32 * (2 * CELL + 8), (k / 4) as u32 * (CELL + 8));
        for (x, y, p) in sample.image.enumerate_pixels() {
            sheet.put_pixel(ox + x, oy + y, *p);
            let a = sample.alpha.get_pixel(x, y)[0];
            sheet.put_pixel(ox + CELL + x, oy + y, Rgb([a, a, a]));
        }
    }
    sheet
}

fn time(label: &str, n: u64, f: impl Fn(u64)) {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!("{label}: {per:.3} ms per sample over {n} samples (one thread)");
}
