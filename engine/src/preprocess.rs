//! Turning decoded images into the model's input: resize to the model's size (aspect ratio
//! not kept, as BiRefNet and RMBG do) and normalise into a planar `[3,H,W]` f32 buffer, or,
//! for a model on a GPU, keep the resized 8-bit pixels for normalisation there.

use fleet_imaging::resize::resize_rgb;
use fleet_protocol::manifest::InputSpec;
use image::RgbImage;

/// Resizes `img` to the model input size and writes the normalised planes into `out`
/// (length `3 * H * W`).
pub fn normalize_into(img: &RgbImage, spec: &InputSpec, out: &mut [f32]) {
    let (w, h) = (spec.width, spec.height);
    let resized;
    let src = if img.dimensions() == (w, h) {
        img
    } else {
        resized = resize_rgb(img, w, h);
        &resized
    };
    let plane = (w * h) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    // Fold scale, mean and std into one multiply-add per value.
    let mul: [f32; 3] = std::array::from_fn(|c| spec.scale / spec.std[c]);
    let add: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in src.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * mul[0] + add[0];
        g[i] = px[1] as f32 * mul[1] + add[1];
        b[i] = px[2] as f32 * mul[2] + add[2];
    }
}

/// `img` resized to the model input size as interleaved 8-bit RGB (`H * W * 3` bytes), for
/// normalisation on the model's device.
pub fn resized_pixels(img: &RgbImage, spec: &InputSpec) -> Vec<u8> {
    if img.dimensions() == (spec.width, spec.height) {
        img.as_raw().clone()
    } else {
        resize_rgb(img, spec.width, spec.height).into_raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_scale_mean_and_std_per_channel() {
        let spec = InputSpec {
            height: 2,
            width: 2,
            scale: 1.0 / 255.0,
            mean: [0.5, 0.0, 0.25],
            std: [0.5, 1.0, 0.25],
            fixed: false,
        };
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51]));
        let mut out = vec![0.0; 12];
        normalize_into(&img, &spec, &mut out);
        for i in 0..4 {
            assert!((out[i] - 1.0).abs() < 1e-6);
            assert!(out[4 + i].abs() < 1e-6);
            assert!((out[8 + i] - (0.2 - 0.25) / 0.25).abs() < 1e-5);
        }
    }

    #[test]
    fn resizes_to_the_model_size() {
        let spec = InputSpec { height: 4, width: 8, scale: 1.0, mean: [0.0; 3], std: [1.0; 3], fixed: false };
        let img = RgbImage::from_pixel(37, 5, image::Rgb([10, 20, 30]));
        let mut out = vec![0.0; 3 * 32];
        normalize_into(&img, &spec, &mut out);
        assert!(out[..32].iter().all(|v| (v - 10.0).abs() < 0.6));
        assert!(out[64..].iter().all(|v| (v - 30.0).abs() < 0.6));
    }
}
