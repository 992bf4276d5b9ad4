//! Contact sheets for reviewing a batch by eye: one row per photo with the input, the matte
//! and the result side by side.

use image::imageops::replace;
use image::{GrayImage, Rgb, RgbImage, RgbaImage};

use crate::composite::Composited;
use crate::resize::{resize_gray, resize_rgb, resize_rgba};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Side of the checkerboard squares shown behind transparent results.
const CHECKER: u32 = 8;

/// A contact sheet: one row per image with before | alpha | after thumbnails (after over a checkerboard when it has alpha), fixed row height, gaps, white margins.
pub fn contact_sheet(rows: &[(&RgbImage, &GrayImage, &Composited)], row_height: u32) -> RgbImage {
    let gap = (row_height / 16).max(4);
    let margin = 2 * gap;
    let thumbs: Vec<[RgbImage; 3]> =
        rows.iter().map(|(before, alpha, after)| row_thumbnails(before, alpha, after, row_height)).collect();
    let content_width =
        thumbs.iter().map(|row| row.iter().map(RgbImage::width).sum::<u32>() + 2 * gap).max().unwrap_or(0);
    let n = thumbs.len() as u32;
    let height = 2 * margin + n * row_height + n.saturating_sub(1) * gap;
    let mut sheet = RgbImage::from_pixel(2 * margin + content_width, height, WHITE);
    for (i, row) in thumbs.iter().enumerate() {
        let y = margin + i as u32 * (row_height + gap);
        let mut x = margin;
        for thumb in row {
            replace(&mut sheet, thumb, i64::from(x), i64::from(y));
            x += thumb.width() + gap;
        }
    }
    sheet
}

fn row_thumbnails(before: &RgbImage, alpha: &GrayImage, after: &Composited, row_height: u32) -> [RgbImage; 3] {
    let width_for = |w: u32, h: u32| -> u32 {
        let scaled = u64::from(w) * u64::from(row_height) / u64::from(h.max(1));
        u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
    };
    let before_thumb = resize_rgb(before, width_for(before.width(), before.height()), row_height);
    let alpha_small = resize_gray(alpha, width_for(alpha.width(), alpha.height()), row_height);
    let alpha_thumb = RgbImage::from_fn(alpha_small.width(), alpha_small.height(), |x, y| {
        let v = alpha_small.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    });
    let after_width = width_for(after.width(), after.height());
    let after_thumb = match after {
        Composited::Rgb(rgb) => resize_rgb(rgb, after_width, row_height),
        Composited::Rgba(rgba) => over_checkerboard(&resize_rgba(rgba, after_width, row_height)),
    };
    [before_thumb, alpha_thumb, after_thumb]
}

/// Flattens a cut-out over the usual grey/white checkerboard so transparency is visible.
fn over_checkerboard(rgba: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let check: u32 = if (x / CHECKER + y / CHECKER).is_multiple_of(2) { 255 } else { 204 };
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        Rgb(std::array::from_fn(|k| ((u32::from(p[k]) * a + check * (255 - a) + 127) / 255) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_margins_rows_and_a_checkerboard() {
        let before = RgbImage::from_pixel(200, 100, Rgb([200, 10, 10]));
        let alpha = GrayImage::from_pixel(200, 100, image::Luma([0]));
        let cutout = Composited::Rgba(RgbaImage::from_pixel(200, 100, image::Rgba([0, 0, 0, 0])));
        let flat = Composited::Rgb(RgbImage::from_pixel(200, 100, Rgb([0, 0, 255])));
        let sheet = contact_sheet(&[(&before, &alpha, &cutout), (&before, &alpha, &flat)], 64);
        let (gap, margin) = (4, 8);
        assert_eq!(sheet.width(), 2 * margin + 3 * 128 + 2 * gap);
        assert_eq!(sheet.height(), 2 * margin + 2 * 64 + gap);
        assert_eq!(sheet.get_pixel(0, 0), &WHITE);
        assert_eq!(sheet.get_pixel(margin + 10, margin + 10).0, [200, 10, 10]);
        assert_eq!(sheet.get_pixel(margin + 128 + gap + 10, margin + 10).0, [0, 0, 0]);
        // The transparent result shows both checkerboard shades.
        let x = margin + 2 * (128 + gap);
        let shades: Vec<u8> = (0..16).map(|dx| sheet.get_pixel(x + dx, margin).0[0]).collect();
        assert!(shades.contains(&255) && shades.contains(&204), "{shades:?}");
        let y = margin + 64 + gap + 10;
        assert_eq!(sheet.get_pixel(x + 10, y).0, [0, 0, 255]);
        assert_eq!(contact_sheet(&[], 64).dimensions(), (2 * margin, 2 * margin));
    }
}
