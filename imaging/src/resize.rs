//! SIMD resizing with `fast_image_resize`: photos down to the model's input size, the model's
//! alpha back up to the photo's size, background images to the photo's size.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, ImageBuffer, Pixel, RgbImage, RgbaImage};

thread_local! {
    // A resizer keeps scratch buffers between calls; one per thread avoids reallocating them.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resizes an RGB image: Catmull-Rom when shrinking (sharp, antialiased), bilinear when growing.
pub fn resize_rgb(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let filter =
        if u64::from(width) * u64::from(height) < pixels(src) { FilterType::CatmullRom } else { FilterType::Bilinear };
    resize_any(src, width, height, PixelType::U8x3, filter, None)
}

/// Resizes a grayscale image (an alpha matte) bilinearly.
pub fn resize_gray(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    resize_any(src, width, height, PixelType::U8, FilterType::Bilinear, None)
}

/// Resizes an RGBA image bilinearly, weighting colours by alpha so transparent pixels do not
/// bleed into the edges.
pub fn resize_rgba(src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    resize_any(src, width, height, PixelType::U8x4, FilterType::Bilinear, None)
}

/// Scales `src` to cover `width`x`height` and crops the centre (CSS `object-fit: cover`).
pub fn cover_fit_rgb(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (f64::from(src.width()), f64::from(src.height()));
    let scale = (f64::from(width) / sw).max(f64::from(height) / sh);
    let (cw, ch) = (f64::from(width) / scale, f64::from(height) / scale);
    let crop = ((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch);
    let filter = if scale < 1.0 { FilterType::CatmullRom } else { FilterType::Bilinear };
    resize_any(src, width, height, PixelType::U8x3, filter, Some(crop))
}

fn pixels<P: Pixel<Subpixel = u8>>(img: &ImageBuffer<P, Vec<u8>>) -> u64 {
    u64::from(img.width()) * u64::from(img.height())
}

fn resize_any<P: Pixel<Subpixel = u8>>(
    src: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
    pixel_type: PixelType,
    filter: FilterType,
    crop: Option<(f64, f64, f64, f64)>,
) -> ImageBuffer<P, Vec<u8>> {
    if width == 0 || height == 0 || src.width() == 0 || src.height() == 0 {
        return ImageBuffer::new(width, height);
    }
    if crop.is_none() && src.dimensions() == (width, height) {
        return src.clone();
    }
    let src_view = ImageRef::new(src.width(), src.height(), src.as_raw(), pixel_type)
        .expect("an image buffer always holds width*height pixels");
    let mut dst = Image::new(width, height, pixel_type);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    if let Some((left, top, w, h)) = crop {
        options = options.crop(left, top, w, h);
    }
    RESIZER
        .with_borrow_mut(|resizer| resizer.resize(&src_view, &mut dst, &options))
        .expect("source and destination share one pixel type and are non-empty");
    ImageBuffer::from_raw(width, height, dst.into_vec()).expect("the destination holds width*height pixels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_flat_colours_survive() {
        let src = RgbImage::from_pixel(640, 480, image::Rgb([10, 200, 30]));
        let down = resize_rgb(&src, 320, 240);
        assert_eq!(down.dimensions(), (320, 240));
        assert!(down.pixels().all(|p| p.0 == [10, 200, 30]));
        let up = resize_gray(&GrayImage::from_pixel(8, 8, image::Luma([77])), 100, 50);
        assert_eq!(up.dimensions(), (100, 50));
        assert!(up.pixels().all(|p| p.0 == [77]));
        assert_eq!(resize_rgb(&src, 0, 10).dimensions(), (0, 10));
    }

    #[test]
    fn cover_fit_crops_the_centre() {
        // A wide image: left third red, middle third green, right third blue.
        let src = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let out = cover_fit_rgb(&src, 50, 50);
        assert_eq!(out.dimensions(), (50, 50));
        // The kernel may read just past the crop box, so only the outermost columns may mix.
        for (x, _, p) in out.enumerate_pixels() {
            if (1..49).contains(&x) {
                assert_eq!(p.0, [0, 255, 0], "column {x}");
            } else {
                assert!(p.0[1] >= 230 && p.0[0] <= 25 && p.0[2] <= 25, "column {x}: {p:?}");
            }
        }
    }
}
