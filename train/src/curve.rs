//! The training curve a fine-tuning job attaches to its report: loss on top (log scale),
//! learning rate below, on a shared step axis, with a vertical line where phase 2 starts.
//! Drawn pixel by pixel: no font, no plotting library, nothing to install on a GPU host.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

/// Width of the picture in pixels.
pub const WIDTH: u32 = 800;
/// Height of the picture in pixels; each panel takes about half.
pub const HEIGHT: u32 = 600;
/// Colour of the loss curve (top panel).
pub const LOSS_COLOUR: Rgb<u8> = Rgb([31, 119, 180]);
/// Colour of the learning-rate curve (bottom panel).
pub const LR_COLOUR: Rgb<u8> = Rgb([255, 127, 14]);
/// Colour of the line between the phases, in both panels.
pub const BOUNDARY_COLOUR: Rgb<u8> = Rgb([214, 39, 40]);
const FRAME_COLOUR: Rgb<u8> = Rgb([170, 170, 170]);
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const MARGIN: u32 = 20;

/// A rectangle of pixels `(x0, y0, x1, y1)`, both corners included.
type Rect = (u32, u32, u32, u32);

/// A PNG of the loss (`(step, loss)`, log scale; non-positive values are skipped) above the
/// learning rate (`(step, lr)`, linear from 0), with a vertical line at `phase_boundary`.
pub fn curve_png(loss: &[(u32, f64)], lr: &[(u32, f64)], phase_boundary: Option<u32>) -> Vec<u8> {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, BACKGROUND);
    let steps = loss.iter().chain(lr).map(|p| p.0).chain(phase_boundary);
    let (first, last) = steps.fold((u32::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let x_axis = if first > last { (0.0, 1.0) } else { (f64::from(first), f64::from(last.max(first + 1))) };

    let log_loss: Vec<(u32, f64)> =
        loss.iter().filter(|p| p.1 > 0.0 && p.1.is_finite()).map(|&(s, l)| (s, l.log10())).collect();
    let lr: Vec<(u32, f64)> = lr.iter().filter(|p| p.1.is_finite()).copied().collect();
    let (top, bottom) = panels();
    let loss_panel = Panel::new(top, x_axis, padded(value_range(&log_loss, None)));
    let lr_panel = Panel::new(bottom, x_axis, padded(value_range(&lr, Some(0.0))));
    for panel in [&loss_panel, &lr_panel] {
        panel.frame(&mut img);
        if let Some(step) = phase_boundary {
            let x = panel.x(step);
            for y in panel.rect.1..=panel.rect.3 {
                img.put_pixel(x, y, BOUNDARY_COLOUR);
            }
        }
    }
    loss_panel.polyline(&mut img, &log_loss, LOSS_COLOUR);
    lr_panel.polyline(&mut img, &lr, LR_COLOUR);

    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).expect("encoding a PNG into memory cannot fail");
    png
}

/// The top and bottom panels.
fn panels() -> (Rect, Rect) {
    let mid = HEIGHT / 2;
    ((MARGIN, MARGIN, WIDTH - MARGIN, mid - MARGIN / 2), (MARGIN, mid + MARGIN / 2, WIDTH - MARGIN, HEIGHT - MARGIN))
}

/// Smallest and largest value, `floor` included when given.
fn value_range(points: &[(u32, f64)], floor: Option<f64>) -> (f64, f64) {
    let init = floor.map_or((f64::INFINITY, f64::NEG_INFINITY), |f| (f, f));
    let (lo, hi) = points.iter().fold(init, |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

/// 5 % of room above and below, and a unit of room when every value is the same.
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// One panel: where it lies in the picture and what it maps onto it.
struct Panel {
    rect: Rect,
    x_axis: (f64, f64),
    y_axis: (f64, f64),
}

impl Panel {
    fn new(rect: Rect, x_axis: (f64, f64), y_axis: (f64, f64)) -> Self {
        Panel { rect, x_axis, y_axis }
    }

    fn x(&self, step: u32) -> u32 {
        let t = (f64::from(step) - self.x_axis.0) / (self.x_axis.1 - self.x_axis.0);
        let (x0, x1) = (f64::from(self.rect.0), f64::from(self.rect.2));
        (x0 + t.clamp(0.0, 1.0) * (x1 - x0)).round() as u32
    }

    fn y(&self, value: f64) -> u32 {
        let t = (value - self.y_axis.0) / (self.y_axis.1 - self.y_axis.0);
        let (y0, y1) = (f64::from(self.rect.1), f64::from(self.rect.3));
        // Larger values higher up: pixel rows grow downwards.
        (y1 - t.clamp(0.0, 1.0) * (y1 - y0)).round() as u32
    }

    fn frame(&self, img: &mut RgbImage) {
        let (x0, y0, x1, y1) = self.rect;
        for x in x0..=x1 {
            img.put_pixel(x, y0, FRAME_COLOUR);
            img.put_pixel(x, y1, FRAME_COLOUR);
        }
        for y in y0..=y1 {
            img.put_pixel(x0, y, FRAME_COLOUR);
            img.put_pixel(x1, y, FRAME_COLOUR);
        }
    }

    /// Joins the points in step order with two-pixel-thick segments.
    fn polyline(&self, img: &mut RgbImage, points: &[(u32, f64)], colour: Rgb<u8>) {
        let mut points = points.to_vec();
        points.sort_by_key(|p| p.0);
        let pixels: Vec<(i64, i64)> =
            points.iter().map(|&(s, v)| (i64::from(self.x(s)), i64::from(self.y(v)))).collect();
        let mut plot = |x: i64, y: i64| {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (px, py) = (x + dx, y + dy);
                let inside = |v: i64, lo: u32, hi: u32| v >= i64::from(lo) && v <= i64::from(hi);
                if inside(px, self.rect.0, self.rect.2) && inside(py, self.rect.1, self.rect.3) {
                    img.put_pixel(px as u32, py as u32, colour);
                }
            }
        };
        if let [only] = pixels.as_slice() {
            plot(only.0, only.1);
        }
        for pair in pixels.windows(2) {
            bresenham(pair[0], pair[1], &mut plot);
        }
    }
}

/// Every pixel of the segment from `a` to `b`.
fn bresenham(a: (i64, i64), b: (i64, i64), plot: &mut impl FnMut(i64, i64)) {
    let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
    let (sx, sy) = ((b.0 - a.0).signum(), (b.1 - a.1).signum());
    let (mut x, mut y, mut err) = (a.0, a.1, dx + dy);
    loop {
        plot(x, y);
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, ImageFormat::Png).expect("a valid PNG").to_rgb8()
    }

    /// Pixels of `colour` in the top half and in the bottom half.
    fn pixels_with(img: &RgbImage, colour: Rgb<u8>) -> (usize, usize) {
        let rows: Vec<u32> = img.enumerate_pixels().filter(|p| *p.2 == colour).map(|p| p.1).collect();
        (rows.iter().filter(|&&y| y < HEIGHT / 2).count(), rows.iter().filter(|&&y| y >= HEIGHT / 2).count())
    }

    type Series = Vec<(u32, f64)>;

    fn training() -> (Series, Series) {
        // Loss falling by a factor 10 every 100 steps; a warm-up then a decay.
        let loss = (0..=300).map(|s| (s, 10f64.powf(-f64::from(s) / 100.0))).collect();
        let lr = (0..=300).map(|s| (s, if s < 20 { 1e-3 * f64::from(s + 1) / 20.0 } else { 1e-3 })).collect();
        (loss, lr)
    }

    #[test]
    fn draws_loss_on_top_and_learning_rate_below_with_the_boundary_in_both() {
        let (loss, lr) = training();
        let img = decode(&curve_png(&loss, &lr, Some(200)));
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let (loss_top, loss_bottom) = pixels_with(&img, LOSS_COLOUR);
        let (lr_top, lr_bottom) = pixels_with(&img, LR_COLOUR);
        let (bound_top, bound_bottom) = pixels_with(&img, BOUNDARY_COLOUR);
        assert!(loss_top > 100 && loss_bottom == 0, "loss: {loss_top} / {loss_bottom}");
        assert!(lr_top == 0 && lr_bottom > 100, "lr: {lr_top} / {lr_bottom}");
        assert!(bound_top > 100 && bound_bottom > 100, "boundary: {bound_top} / {bound_bottom}");
        // The boundary is a vertical line two thirds of the way along the step axis.
        let (top, _) = panels();
        let expected = f64::from(top.0) + 2.0 / 3.0 * f64::from(top.2 - top.0);
        let columns: Vec<u32> = img.enumerate_pixels().filter(|p| *p.2 == BOUNDARY_COLOUR).map(|p| p.0).collect();
        assert!(columns.iter().all(|&x| (f64::from(x) - expected).abs() <= 1.0), "{expected}");
    }

    #[test]
    fn the_loss_axis_is_logarithmic() {
        let (loss, lr) = training();
        let img = decode(&curve_png(&loss, &lr, None));
        assert_eq!(pixels_with(&img, BOUNDARY_COLOUR), (0, 0));
        let (top, _) = panels();
        let height_at = |step: f64| {
            let x = (f64::from(top.0) + step / 300.0 * f64::from(top.2 - top.0)).round() as u32;
            let ys: Vec<u32> = (top.1..=top.3).filter(|&y| *img.get_pixel(x, y) == LOSS_COLOUR).collect();
            assert!(!ys.is_empty(), "no loss at step {step}");
            f64::from(ys[0])
        };
        let (start, middle, end) = (height_at(0.0), height_at(150.0), height_at(300.0));
        // An exponential decay is a straight line on a log axis: the middle is half-way
        // down (on a linear axis it would lie near the bottom).
        assert!(start < middle && middle < end);
        assert!((middle - (start + end) / 2.0).abs() < 4.0, "{start} {middle} {end}");
    }

    #[test]
    fn empty_flat_and_odd_series_still_make_a_picture() {
        let img = decode(&curve_png(&[], &[], None));
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let odd = [(5, 0.5), (6, 0.0), (7, f64::NAN), (8, 0.5)];
        let img = decode(&curve_png(&odd, &[(5, 1e-3)], Some(6)));
        assert!(pixels_with(&img, LOSS_COLOUR).0 > 0);
        assert!(pixels_with(&img, LR_COLOUR).1 > 0, "a single point is drawn");
    }
}
