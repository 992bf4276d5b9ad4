//! The engine end to end on the reference model: foreground preservation, every background
//! mode and output format, per-image records and embeddings, and bad inputs failing alone.

use std::sync::Arc;

use fleet_engine::{EngineOptions, InputItem, ItemOutput};
use fleet_imaging::composite::{Background, CompositeOptions};
use fleet_imaging::encode::{png_header_only, OutputFormat};
use fleet_synth::render_sample;
use fleet_tests_engine::{png_item, reference_engine};
use image::GenericImageView;

const SEED: u64 = 0x7E57;

fn opts(background: Background, format: OutputFormat) -> EngineOptions {
    EngineOptions {
        batch_size: 4,
        composite: CompositeOptions { background, ..Default::default() },
        format,
        ..Default::default()
    }
}

#[test]
fn confident_foreground_pixels_are_the_input_pixels_bit_for_bit() {
    let engine = reference_engine();
    let samples: Vec<_> = (0..6).map(|i| render_sample(SEED, i, 320, 900)).collect();
    let items: Vec<InputItem> = samples.iter().enumerate().map(|(i, s)| png_item(&format!("s{i}.png"), s)).collect();
    let backgrounds = [
        Background::Color([10, 200, 30]),
        Background::Blur { sigma_pct: 3.0 },
        Background::Image(Arc::new(image::RgbImage::from_pixel(50, 20, image::Rgb([0, 0, 255])))),
        Background::Transparent,
    ];
    for background in backgrounds {
        let o = opts(background.clone(), OutputFormat::Png);
        let preserve_at = o.composite.preserve_at;
        let results = engine.process_batch(items.clone(), &o).unwrap();
        let (mut checked, mut truth_fg) = (0usize, 0usize);
        for (sample, result) in samples.iter().zip(results) {
            let out = result.unwrap();
            let produced = image::load_from_memory(&out.image).unwrap().to_rgba8();
            let matte = image::load_from_memory(&out.matte_png).unwrap().to_luma8();
            for (x, y, t) in sample.alpha.enumerate_pixels() {
                if t.0[0] != 255 {
                    continue;
                }
                truth_fg += 1;
                if matte.get_pixel(x, y).0[0] >= preserve_at {
                    checked += 1;
                    let p = produced.get_pixel(x, y).0;
                    assert_eq!(
                        &p[..3],
                        &sample.image.get_pixel(x, y).0[..],
                        "pixel ({x},{y}) changed with {background:?}"
                    );
                }
            }
        }
        // The check must cover most of the products, or it would prove little.
        assert!(checked * 10 >= truth_fg * 8, "only {checked} of {truth_fg} foreground pixels were confident");
    }
}

fn run_one(background: Background, format: OutputFormat) -> (ItemOutput, image::DynamicImage, (u32, u32)) {
    let engine = reference_engine();
    let sample = render_sample(SEED, 11, 400, 700);
    let size = sample.image.dimensions();
    let out =
        engine.process_batch(vec![png_item("one.png", &sample)], &opts(background, format)).unwrap().remove(0).unwrap();
    let decoded = image::load_from_memory(&out.image).unwrap();
    (out, decoded, size)
}

#[test]
fn every_background_mode_and_format_round_trips_with_size_and_alpha() {
    let modes = [
        Background::Transparent,
        Background::Color([255, 255, 255]),
        Background::Image(Arc::new(image::RgbImage::from_pixel(1000, 100, image::Rgb([40, 40, 40])))),
        Background::Blur { sigma_pct: 2.0 },
    ];
    let formats = [OutputFormat::Png, OutputFormat::Webp, OutputFormat::Jpeg { quality: 85 }];
    for mode in &modes {
        for &format in &formats {
            let o = opts(mode.clone(), format);
            if o.validate().is_err() {
                assert!(matches!((mode, format), (Background::Transparent, OutputFormat::Jpeg { .. })));
                continue;
            }
            let (out, decoded, size) = run_one(mode.clone(), format);
            assert_eq!(decoded.dimensions(), size, "{mode:?} {format:?}");
            let transparent = matches!(mode, Background::Transparent);
            assert_eq!(decoded.color().has_alpha(), transparent, "{mode:?} {format:?}");
            assert_eq!(out.record.output.has_alpha, transparent);
            assert_eq!((out.record.output.width, out.record.output.height), size);
            if transparent {
                // The cutout's alpha channel is the matte, cleared where the matte is background.
                let matte = image::load_from_memory(&out.matte_png).unwrap().to_luma8();
                let rgba = decoded.to_rgba8();
                let clear_below = CompositeOptions::default().clear_below;
                let expected = |m: u8| if m < clear_below { 0 } else { m };
                assert!(rgba.pixels().zip(matte.pixels()).all(|(p, m)| p.0[3] == expected(m.0[0])));
            }
        }
    }
}

#[test]
fn records_carry_model_timings_uncertainty_and_a_unit_embedding() {
    let (out, _, size) = run_one(Background::Color([0, 0, 0]), OutputFormat::Png);
    let r = &out.record;
    assert_eq!(r.model, "matting-ref@1.0.0");
    assert_eq!((r.input.width, r.input.height), size);
    assert!((0.0..=1.0).contains(&r.uncertainty));
    assert!(r.timings_ms.decode_ms > 0.0 && r.timings_ms.forward_ms > 0.0 && r.timings_ms.encode_ms > 0.0);
    assert_eq!(out.embedding.len(), r.embedding_dim);
    let norm: f32 = out.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
    let matte = image::load_from_memory(&out.matte_png).unwrap();
    assert_eq!(matte.color(), image::ColorType::L8);
}

#[test]
fn similar_images_have_closer_embeddings_than_different_ones() {
    let engine = reference_engine();
    let a = render_sample(SEED, 21, 500, 500);
    let flipped = image::imageops::flip_horizontal(&a.image);
    let b = fleet_synth::Sample { image: flipped, ..a.clone() };
    let items = vec![png_item("a", &a), png_item("a-flipped", &b)];
    let mut others: Vec<_> = (30..36).map(|i| png_item("other", &render_sample(SEED + 1, i, 500, 500))).collect();
    let mut all = items;
    all.append(&mut others);
    let outs: Vec<_> = engine
        .process_batch(all, &opts(Background::Transparent, OutputFormat::Png))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
    let twin = dot(&outs[0].embedding, &outs[1].embedding);
    let mean_other = outs[2..].iter().map(|o| dot(&outs[0].embedding, &o.embedding)).sum::<f32>() / 6.0;
    assert!(twin > mean_other, "mirror similarity {twin} not above mean similarity to others {mean_other}");
}

#[test]
fn each_bad_input_fails_alone_with_its_reason() {
    let engine = reference_engine();
    let good = |i: u64| png_item(&format!("good-{i}.png"), &render_sample(SEED, 40 + i, 320, 500));
    let jpeg = {
        let s = render_sample(SEED, 50, 320, 500);
        fleet_imaging::encode::encode(
            &fleet_imaging::composite::Composited::Rgb(s.image),
            OutputFormat::Jpeg { quality: 90 },
        )
        .unwrap()
    };
    let bomb = png_header_only(100_000, 100_000);
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let items = vec![
        good(0),
        InputItem { id: "truncated.jpg".into(), bytes: jpeg[..jpeg.len() / 2].to_vec() },
        InputItem { id: "empty.jpg".into(), bytes: Vec::new() },
        good(1),
        InputItem { id: "notes.jpg".into(), bytes: b"this is a text file, not a photo\n".to_vec() },
        InputItem { id: "bomb.png".into(), bytes: bomb },
        InputItem { id: "anim.gif".into(), bytes: gif },
        good(2),
    ];
    let results = engine.process_batch(items, &opts(Background::Transparent, OutputFormat::Png)).unwrap();
    let expected = [
        None,
        Some("corrupt"),
        Some("empty"),
        None,
        Some("unsupported_format"),
        Some("too_many_pixels"),
        Some("unsupported_format"),
        None,
    ];
    assert_eq!(results.len(), expected.len());
    for (result, want) in results.iter().zip(expected) {
        match (result, want) {
            (Ok(out), None) => assert!(out.record.id.starts_with("good-")),
            (Err(f), Some(code)) => {
                assert_eq!(f.code, code, "{}: {}", f.id, f.reason);
                assert!(!f.reason.is_empty());
            }
            (other, want) => panic!("expected {want:?}, got {other:?}"),
        }
    }
    let bomb = results[5].as_ref().unwrap_err();
    assert!(bomb.reason.contains("100000"), "reason should name the declared size: {}", bomb.reason);
}

#[test]
fn a_batch_of_only_bad_inputs_fails_every_item_without_a_forward_pass() {
    let engine = reference_engine();
    let items =
        vec![InputItem { id: "a".into(), bytes: vec![] }, InputItem { id: "b".into(), bytes: b"garbage".to_vec() }];
    let results = engine.process_batch(items, &opts(Background::Transparent, OutputFormat::Png)).unwrap();
    assert!(results.iter().all(Result::is_err));
    assert_eq!(results[0].as_ref().unwrap_err().id, "a");
}
