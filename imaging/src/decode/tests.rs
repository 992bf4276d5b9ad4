use std::io::Cursor;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba, RgbaImage};

use super::*;

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]))
}

fn encoded(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.into().write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95).encode_image(img).expect("encode jpeg");
    out
}

fn ok(bytes: &[u8]) -> Decoded {
    decode(bytes, &DecodeLimits::default()).expect("decodes")
}

fn err(bytes: &[u8], limits: &DecodeLimits) -> ImageError {
    decode(bytes, limits).expect_err("must be refused")
}

#[test]
fn jpeg_round_trip_is_close() {
    let src = gradient(64, 48);
    let got = ok(&jpeg(&src));
    assert_eq!((got.format, got.had_alpha, got.bit_depth), (InputFormat::Jpeg, false, 8));
    assert_eq!(got.rgb.dimensions(), (64, 48));
    let worst = src.as_raw().iter().zip(got.rgb.as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(worst.unwrap() <= 16, "jpeg drifted by {worst:?}");
}

#[test]
fn png_and_webp_round_trips_are_exact() {
    let src = gradient(50, 30);
    let png = ok(&encoded(src.clone(), ImageFormat::Png));
    assert_eq!((png.format, png.had_alpha, png.bit_depth), (InputFormat::Png, false, 8));
    assert_eq!(png.rgb, src);
    let webp = ok(&encoded(src.clone(), ImageFormat::WebP));
    assert_eq!((webp.format, webp.had_alpha), (InputFormat::Webp, false));
    assert_eq!(webp.rgb, src);
}

#[test]
fn alpha_is_dropped_and_reported() {
    let rgba = RgbaImage::from_fn(20, 10, |x, _| Rgba([x as u8 * 10, 7, 9, if x < 10 { 0 } else { 255 }]));
    let got = ok(&encoded(rgba.clone(), ImageFormat::Png));
    assert!(got.had_alpha);
    assert_eq!(got.rgb, DynamicImage::ImageRgba8(rgba.clone()).into_rgb8());
    let webp = ok(&encoded(rgba, ImageFormat::WebP));
    assert!(webp.had_alpha);
    let la = image::GrayAlphaImage::from_pixel(4, 4, LumaA([90, 128]));
    let got = ok(&encoded(la, ImageFormat::Png));
    assert!(got.had_alpha);
    assert!(got.rgb.pixels().all(|p| p.0 == [90, 90, 90]));
}

#[test]
fn grayscale_and_16_bit_png_become_rgb8() {
    let gray = GrayImage::from_fn(16, 8, |x, _| Luma([x as u8 * 16]));
    let got = ok(&encoded(gray, ImageFormat::Png));
    assert_eq!(got.bit_depth, 8);
    assert_eq!(got.rgb.get_pixel(3, 2).0, [48, 48, 48]);

    let values = [0u16, 257 * 200, 0x8080, u16::MAX];
    let deep = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(4, 1, |x, _| {
        let v = values[x as usize];
        Rgb([v, v, v])
    });
    let got = ok(&encoded(DynamicImage::ImageRgb16(deep), ImageFormat::Png));
    assert_eq!(got.bit_depth, 16);
    let reds: Vec<u8> = got.rgb.pixels().map(|p| p.0[0]).collect();
    assert_eq!(reds, [0, 200, 128, 255]);
}

/// Inserts an EXIF APP1 segment with the given orientation right after SOI.
fn with_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    let mut app1 = vec![0xFF, 0xE1, 0x00, 34];
    app1.extend_from_slice(b"Exif\0\0MM\0\x2a\0\0\0\x08");
    app1.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0, 0, 0, 0, 0]);
    assert_eq!(app1.len(), 2 + 34);
    [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
}

#[test]
fn exif_orientation_is_applied() {
    // 64x32, top-left 16x16 red, the rest blue.
    let src = RgbImage::from_fn(64, 32, |x, y| if x < 16 && y < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    let plain = ok(&jpeg(&src));
    assert_eq!(plain.rgb.dimensions(), (64, 32));
    let rotated = ok(&with_orientation(&jpeg(&src), 6));
    // Orientation 6 means "rotate 90 degrees clockwise to display".
    assert_eq!(rotated.rgb.dimensions(), (32, 64));
    let is_red = |p: &Rgb<u8>| p.0[0] > 200 && p.0[2] < 60;
    let is_blue = |p: &Rgb<u8>| p.0[2] > 200 && p.0[0] < 60;
    assert!(is_red(rotated.rgb.get_pixel(24, 8)), "{:?}", rotated.rgb.get_pixel(24, 8));
    assert!(is_blue(rotated.rgb.get_pixel(8, 8)));
    assert!(is_blue(rotated.rgb.get_pixel(24, 40)));
}

#[test]
fn empty_truncated_and_oversized_files_are_refused() {
    let limits = DecodeLimits::default();
    assert_eq!(err(&[], &limits), ImageError::Empty);
    assert_eq!(ImageError::Empty.code(), "empty");

    let whole = jpeg(&gradient(64, 64));
    let cut = err(&whole[..whole.len() / 2], &limits);
    assert_eq!(cut.code(), "corrupt", "{cut}");

    let mut png = encoded(gradient(32, 32), ImageFormat::Png);
    let half = err(&png[..png.len() / 2], &limits);
    assert_eq!(half.code(), "corrupt", "{half}");
    let last = png.len() - 20;
    png[last] ^= 0xFF;
    assert_eq!(err(&png, &limits).code(), "corrupt");

    let small = DecodeLimits { max_file_bytes: 100, ..limits };
    let too_big = err(&whole, &small);
    assert_eq!(too_big.code(), "too_large");
    assert!(matches!(too_big, ImageError::TooLarge { limit: 100, .. }));
}

#[test]
fn other_formats_are_named() {
    let limits = DecodeLimits::default();
    let cases: [(&[u8], &str); 5] = [
        (b"hello, this is not a photo\n", "text"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "gif"),
        (b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0", "bmp"),
        (b"II*\0\x08\0\0\0", "tiff"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "xml/html/svg text"),
    ];
    for (bytes, seen) in cases {
        let e = err(bytes, &limits);
        assert_eq!(e, ImageError::UnsupportedFormat { seen: seen.into() });
        assert_eq!(e.code(), "unsupported_format");
        assert!(e.to_string().contains(seen), "{e}");
    }
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let png = crate::encode::png_header_only(100_000, 100_000);

    let start = Instant::now();
    let e = err(&png, &DecodeLimits::default());
    assert!(start.elapsed() < Duration::from_millis(50), "took {:?}", start.elapsed());
    assert_eq!(e, ImageError::TooManyPixels { width: 100_000, height: 100_000, limit: 50_000_000 });
    assert_eq!(e.code(), "too_many_pixels");
    assert_eq!(e.to_string(), "image header declares 100000x100000 = 10000.0 MP, over the 50.0 MP limit");
}

#[test]
fn pixel_limit_applies_to_every_format() {
    let tight = DecodeLimits { max_pixels: 1000, ..DecodeLimits::default() };
    let src = gradient(64, 48);
    for bytes in [jpeg(&src), encoded(src.clone(), ImageFormat::Png), encoded(src.clone(), ImageFormat::WebP)] {
        assert_eq!(err(&bytes, &tight), ImageError::TooManyPixels { width: 64, height: 48, limit: 1000 });
    }
}

#[test]
fn masks_are_decoded_under_the_photo_limits() {
    let bomb = crate::encode::png_header_only(100_000, 100_000);
    let e = decode_mask(&bomb, &DecodeLimits::default()).unwrap_err();
    assert_eq!(e.code(), "too_many_pixels");
    let tight = DecodeLimits { max_file_bytes: 10, ..DecodeLimits::default() };
    let mask = image::GrayImage::from_fn(20, 10, |x, _| image::Luma([(x * 12) as u8]));
    let png = encoded(mask.clone(), ImageFormat::Png);
    assert_eq!(decode_mask(&png, &tight).unwrap_err().code(), "too_large");
    assert_eq!(decode_mask(&png, &DecodeLimits::default()).unwrap(), mask, "a good mask decodes exactly");
}
