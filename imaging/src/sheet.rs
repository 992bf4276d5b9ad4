//! Contact sheets for reviewing a batch by eye: one row per photo with the input, the matte
//! and the result side by side.

use image::imageops::replace;
use image::{GrayImage, Rgb, RgbImage, RgbaImage};

use crate::composite::Composited;
use crate::resize::{resize_gray, resize_rgb, resize_rgba};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Side of the checkerboard squares shown behind transparent results.
const CHECKER: u32 = 8;

/// Width of a thumbnail cell over its height: wider inputs are letterboxed inside it,
/// taller ones pillarboxed, so a 4000 x 60 strip takes the same room as a square photo.
pub const CELL_ASPECT: u32 = 2;
/// Rows on one sheet at most; callers pick which rows (e.g. the least certain) to show.
pub const MAX_ROWS: usize = 64;

/// A contact sheet: one row per image with before | alpha | after thumbnails (after over a
/// checkerboard when it has alpha). Every thumbnail fits, aspect kept, in a fixed cell of
/// `CELL_ASPECT * row_height` by `row_height`, centred on white; rows past [`MAX_ROWS`] are
/// left off. So the sheet's size depends only on `row_height` and the row count:
/// `(2 * margin + 3 * cell + 2 * gap) x (2 * margin + rows * row_height + (rows - 1) * gap)`.
pub fn contact_sheet(rows: &[(&RgbImage, &GrayImage, &Composited)], row_height: u32) -> RgbImage {
    let row_height = row_height.max(1);
    let gap = (row_height / 16).max(4);
    let margin = 2 * gap;
    let cell = CELL_ASPECT * row_height;
    let rows = &rows[..rows.len().min(MAX_ROWS)];
    let n = rows.len() as u32;
    let width = if n == 0 { 2 * margin } else { 2 * margin + 3 * cell + 2 * gap };
    let height = 2 * margin + n * row_height + n.saturating_sub(1) * gap;
    let mut sheet = RgbImage::from_pixel(width, height, WHITE);
    for (i, (before, alpha, after)) in rows.iter().enumerate() {
        let y = margin + i as u32 * (row_height + gap);
        for (k, thumb) in row_thumbnails(before, alpha, after, cell, row_height).iter().enumerate() {
            let x = margin + k as u32 * (cell + gap);
            let (dx, dy) = ((cell - thumb.width()) / 2, (row_height - thumb.height()) / 2);
            replace(&mut sheet, thumb, i64::from(x + dx), i64::from(y + dy));
        }
    }
    sheet
}

/// The size of a `w x h` image scaled to fit a `cell_w x cell_h` cell, aspect kept, at
/// least one pixel each way.
fn fit(w: u32, h: u32, cell_w: u32, cell_h: u32) -> (u32, u32) {
    let (w, h) = (u64::from(w.max(1)), u64::from(h.max(1)));
    let (cw, ch) = (u64::from(cell_w), u64::from(cell_h));
    // Scale by the tighter of the two ratios: cw / w or ch / h.
    let (out_w, out_h) = if w * ch >= h * cw { (cw, h * cw / w) } else { (w * ch / h, ch) };
    (out_w.clamp(1, cw) as u32, out_h.clamp(1, ch) as u32)
}

fn row_thumbnails(
    before: &RgbImage,
    alpha: &GrayImage,
    after: &Composited,
    cell: u32,
    row_height: u32,
) -> [RgbImage; 3] {
    let size = |w: u32, h: u32| fit(w, h, cell, row_height);
    let (bw, bh) = size(before.width(), before.height());
    let before_thumb = resize_rgb(before, bw, bh);
    let (aw, ah) = size(alpha.width(), alpha.height());
    let alpha_small = resize_gray(alpha, aw, ah);
    let alpha_thumb = RgbImage::from_fn(alpha_small.width(), alpha_small.height(), |x, y| {
        let v = alpha_small.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    });
    let (rw, rh) = size(after.width(), after.height());
    let after_thumb = match after {
        Composited::Rgb(rgb) => resize_rgb(rgb, rw, rh),
        Composited::Rgba(rgba) => over_checkerboard(&resize_rgba(rgba, rw, rh)),
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
        let before = RgbImage::from_pixel(256, 128, Rgb([200, 10, 10]));
        let alpha = GrayImage::from_pixel(256, 128, image::Luma([0]));
        let cutout = Composited::Rgba(RgbaImage::from_pixel(256, 128, image::Rgba([0, 0, 0, 0])));
        let flat = Composited::Rgb(RgbImage::from_pixel(256, 128, Rgb([0, 0, 255])));
        let sheet = contact_sheet(&[(&before, &alpha, &cutout), (&before, &alpha, &flat)], 64);
        let (gap, margin, cell) = (4, 8, 128);
        assert_eq!(sheet.width(), 2 * margin + 3 * cell + 2 * gap);
        assert_eq!(sheet.height(), 2 * margin + 2 * 64 + gap);
        assert_eq!(sheet.get_pixel(0, 0), &WHITE);
        assert_eq!(sheet.get_pixel(margin + 10, margin + 10).0, [200, 10, 10]);
        assert_eq!(sheet.get_pixel(margin + cell + gap + 10, margin + 10).0, [0, 0, 0]);
        // The transparent result shows both checkerboard shades.
        let x = margin + 2 * (cell + gap);
        let shades: Vec<u8> = (0..16).map(|dx| sheet.get_pixel(x + dx, margin).0[0]).collect();
        assert!(shades.contains(&255) && shades.contains(&204), "{shades:?}");
        let y = margin + 64 + gap + 10;
        assert_eq!(sheet.get_pixel(x + 10, y).0, [0, 0, 255]);
        assert_eq!(contact_sheet(&[], 64).dimensions(), (2 * margin, 2 * margin));
    }

    #[test]
    fn extreme_aspect_ratios_fit_their_cells() {
        let wide = RgbImage::from_pixel(4000, 60, Rgb([10, 200, 10]));
        let wide_alpha = GrayImage::from_pixel(4000, 60, image::Luma([255]));
        let wide_after = Composited::Rgb(wide.clone());
        let tall = RgbImage::from_pixel(30, 3000, Rgb([10, 10, 200]));
        let tall_alpha = GrayImage::from_pixel(30, 3000, image::Luma([255]));
        let tall_after = Composited::Rgb(tall.clone());
        let square = RgbImage::from_pixel(500, 500, Rgb([1, 2, 3]));
        let square_alpha = GrayImage::from_pixel(500, 500, image::Luma([255]));
        let square_after = Composited::Rgb(square.clone());
        let rows = [
            (&wide, &wide_alpha, &wide_after),
            (&tall, &tall_alpha, &tall_after),
            (&square, &square_alpha, &square_after),
        ];
        let sheet = contact_sheet(&rows, 160);
        let (gap, margin, cell) = (10, 20, 320);
        assert_eq!(sheet.dimensions(), (2 * margin + 3 * cell + 2 * gap, 2 * margin + 3 * 160 + 2 * gap));
        // The strip fills its cell's width, letterboxed: white above and below it.
        let mid = margin + 80;
        assert_eq!(sheet.get_pixel(margin + 5, mid).0, [10, 200, 10]);
        assert_eq!(sheet.get_pixel(margin + 5, margin + 2), &WHITE);
        // The tall one is pillarboxed in the middle of its cell.
        let y = margin + 160 + gap + 80;
        // 30 x 3000 scales to 1 x 160, centred at (cell - 1) / 2.
        assert_eq!(sheet.get_pixel(margin + (cell - 1) / 2, y).0, [10, 10, 200]);
        assert_eq!(sheet.get_pixel(margin + 5, y), &WHITE);
    }

    #[test]
    fn rows_past_the_cap_are_left_off() {
        let img = RgbImage::from_pixel(8, 8, Rgb([0, 0, 0]));
        let alpha = GrayImage::from_pixel(8, 8, image::Luma([0]));
        let after = Composited::Rgb(img.clone());
        let rows = vec![(&img, &alpha, &after); MAX_ROWS + 10];
        let sheet = contact_sheet(&rows, 16);
        let (gap, margin) = (4, 8);
        let n = MAX_ROWS as u32;
        assert_eq!(sheet.height(), 2 * margin + n * 16 + (n - 1) * gap);
    }

    #[test]
    fn fit_keeps_the_aspect_inside_the_cell() {
        assert_eq!(fit(4000, 60, 320, 160), (320, 4));
        assert_eq!(fit(60, 4000, 320, 160), (2, 160));
        assert_eq!(fit(100, 50, 320, 160), (320, 160));
        assert_eq!(fit(1, 100000, 320, 160), (1, 160));
    }
}
