//! Crate-level checks of scenes and renders: determinism, compositing, coverage share,
//! resolution independence, variety and thin parts.

use std::collections::BTreeSet;

use image::GrayImage;

use crate::object::ObjectKind;
use crate::render::render_layers;
use crate::scene::Scene;

fn small(scene: &Scene) -> (u32, u32) {
    scene.natural_size(120, 200)
}

#[test]
fn same_seed_and_index_render_identical_bytes() {
    for index in [0u64, 3, 17] {
        let a = Scene::generate(7, index);
        let b = Scene::generate(7, index);
        let (w, h) = small(&a);
        let (ra, rb) = (a.render(w, h), b.render(w, h));
        assert_eq!(ra.image.as_raw(), rb.image.as_raw());
        assert_eq!(ra.alpha.as_raw(), rb.alpha.as_raw());
        assert_eq!(a.describe(), b.describe());
    }
    let x = Scene::generate(7, 1).render(96, 96);
    let y = Scene::generate(7, 2).render(96, 96);
    let z = Scene::generate(8, 1).render(96, 96);
    assert_ne!(x.image.as_raw(), y.image.as_raw());
    assert_ne!(x.image.as_raw(), z.image.as_raw());
}

#[test]
fn image_is_alpha_composite_of_object_over_background() {
    for index in 0..24 {
        let scene = Scene::generate(11, index);
        let (w, h) = small(&scene);
        let layers = render_layers(&scene, w, h);
        let sample = scene.render(w, h);
        assert_eq!(layers.alpha.as_raw(), sample.alpha.as_raw());
        let (mut zeros, mut full) = (0, 0);
        for (i, &a) in layers.alpha.as_raw().iter().enumerate() {
            let px = &sample.image.as_raw()[i * 3..i * 3 + 3];
            let obj = &layers.object.as_raw()[i * 3..i * 3 + 3];
            let bg = &layers.background.as_raw()[i * 3..i * 3 + 3];
            match a {
                0 => {
                    zeros += 1;
                    assert_eq!(px, bg, "scene {index} pixel {i}");
                }
                255 => {
                    full += 1;
                    assert_eq!(px, obj, "scene {index} pixel {i}");
                }
                _ => {
                    for k in 0..3 {
                        let want = (f32::from(a) * f32::from(obj[k]) + f32::from(255 - a) * f32::from(bg[k])) / 255.0;
                        assert!((f32::from(px[k]) - want).abs() <= 1.0, "scene {index} pixel {i}");
                    }
                }
            }
        }
        assert!(zeros > 0 && full > 0, "scene {index}: {zeros} clear, {full} opaque");
    }
}

fn coverage_share(alpha: &GrayImage) -> f32 {
    let covered = alpha.as_raw().iter().filter(|&&a| a > 0).count();
    covered as f32 / alpha.as_raw().len() as f32
}

#[test]
fn object_covers_designed_share_of_frame() {
    let shares: Vec<f32> = (0..50)
        .map(|i| {
            let scene = Scene::generate(3, i);
            let (w, h) = small(&scene);
            coverage_share(&scene.render(w, h).alpha)
        })
        .collect();
    for (i, s) in shares.iter().enumerate() {
        assert!((0.08..=0.7).contains(s), "sample {i} covers {s}");
    }
    let mean = shares.iter().sum::<f32>() / shares.len() as f32;
    assert!((0.18..=0.5).contains(&mean), "mean share {mean}");
    let in_design = shares.iter().filter(|s| (0.15..=0.6).contains(*s)).count();
    assert!(in_design >= 40, "{in_design} of 50 in 15%..60%");
}

/// Halves a mask by 2x2 averaging.
fn halve(a: &GrayImage) -> GrayImage {
    GrayImage::from_fn(a.width() / 2, a.height() / 2, |x, y| {
        let s: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .iter()
            .map(|&(dx, dy)| u32::from(a.get_pixel(2 * x + dx, 2 * y + dy)[0]))
            .sum();
        image::Luma([((s + 2) / 4) as u8])
    })
}

#[test]
fn masks_agree_across_resolutions() {
    for index in 0..16 {
        let scene = Scene::generate(21, index);
        let (w, h) = scene.natural_size(160, 240);
        let lo = scene.render(w, h).alpha;
        let hi = halve(&scene.render(2 * w, 2 * h).alpha);
        let (mut inter, mut union) = (0u32, 0u32);
        for (a, b) in lo.as_raw().iter().zip(hi.as_raw()) {
            let (a, b) = (*a >= 128, *b >= 128);
            inter += u32::from(a && b);
            union += u32::from(a || b);
        }
        let iou = inter as f32 / union.max(1) as f32;
        assert!(iou > 0.97, "scene {index} ({}) iou {iou}", scene.describe());
    }
}

#[test]
fn hundred_scenes_cover_every_kind() {
    let scenes: Vec<Scene> = (0..100).map(|i| Scene::generate(5, i)).collect();
    let kinds: BTreeSet<&str> = scenes.iter().map(|s| s.object.kind.name()).collect();
    let names: Vec<&str> = ObjectKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, crate::OBJECT_KINDS);
    assert_eq!(kinds, crate::OBJECT_KINDS.into_iter().collect());
    let backgrounds: BTreeSet<&str> = scenes.iter().map(|s| s.background.kind.name()).collect();
    assert_eq!(backgrounds, crate::BACKGROUND_KINDS.into_iter().collect());
    let glass = scenes.iter().filter(|s| s.describe().contains("glass")).count();
    assert!((1..10).contains(&glass), "{glass} glass scenes");
    let hard = scenes.iter().filter(|s| s.describe().contains("contrast") || s.describe().contains("white on")).count();
    assert!(hard >= 5, "{hard} hard scenes");
    let thin = scenes.iter().filter(|s| s.object.parts.iter().any(|p| p.thin)).count();
    assert!(thin >= 3, "{thin} scenes with a strap");
}

/// Number of alpha-0 pixels not 4-connected to the image border (holes in the object).
fn enclosed_background(alpha: &GrayImage) -> usize {
    let (w, h) = (alpha.width() as usize, alpha.height() as usize);
    let clear: Vec<bool> = alpha.as_raw().iter().map(|&a| a == 0).collect();
    let mut seen = vec![false; w * h];
    let mut stack: Vec<usize> =
        (0..w * h).filter(|&i| clear[i] && (i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1)).collect();
    stack.iter().for_each(|&i| seen[i] = true);
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        let next = [(x > 0, i.wrapping_sub(1)), (x + 1 < w, i + 1), (y > 0, i.wrapping_sub(w)), (y + 1 < h, i + w)];
        for (ok, j) in next {
            if ok && clear[j] && !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    (0..w * h).filter(|&i| clear[i] && !seen[i]).count()
}

#[test]
fn handles_and_straps_leave_holes_showing_background() {
    let (mut with_loop, mut holed) = (0, 0);
    for index in 0..100 {
        let scene = Scene::generate(9, index);
        if !matches!(scene.object.kind, ObjectKind::Mug | ObjectKind::Bag) {
            continue;
        }
        with_loop += 1;
        let (w, h) = scene.natural_size(256, 256);
        if enclosed_background(&scene.render(w, h).alpha) > 0 {
            holed += 1;
        }
    }
    assert!(with_loop >= 10, "{with_loop} mugs and bags");
    assert!(holed * 10 >= with_loop * 7, "{holed} of {with_loop} have a visible hole");
}

#[test]
fn natural_size_respects_range_and_aspect() {
    for index in 0..40 {
        let scene = Scene::generate(1, index);
        let (w, h) = scene.natural_size(320, 1600);
        assert!((320..=1600).contains(&w.max(h)), "{w}x{h}");
        let ar = w as f32 / h as f32;
        assert!((ar / scene.aspect_ratio() - 1.0).abs() < 0.01, "{w}x{h} vs {}", scene.aspect_ratio());
        assert!((0.49..=2.01).contains(&scene.aspect_ratio()));
    }
    let scene = Scene::generate(1, 0);
    assert_eq!(scene.natural_size(500, 500).0.max(scene.natural_size(500, 500).1), 500);
}
