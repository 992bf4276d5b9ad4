//! A model exported from Python with `torch.jit.trace`, returning an `(alpha, embedding)`
//! tuple as the README's RMBG recipe does, loads through the contract unchanged; a manifest
//! pointing at a tuple element that is not there is refused with the reason.

use std::path::Path;
use std::process::Command;

use fleet_engine::{Engine, EngineError, EngineOptions, InferenceThread, InputItem};
use fleet_imaging::composite::{Background, CompositeOptions};
use fleet_imaging::encode::OutputFormat;
use fleet_protocol::DeviceSpec;
use fleet_tests_engine::python;

/// A toy matting model: bright pixels are foreground; the embedding is per-channel mean and
/// standard deviation. Written by Python exactly as a customer's export would be.
const EXPORT: &str = r#"
import sys, torch
class Contract(torch.nn.Module):
    def forward(self, x):
        alpha = torch.sigmoid((x.mean(1, keepdim=True) - 0.5) * 40.0)
        embedding = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return alpha, embedding
torch.jit.trace(Contract().eval(), torch.rand(1, 3, 64, 48)).save(sys.argv[1])
"#;

fn export(dir: &Path, alpha_index: usize) {
    let status = Command::new(python())
        .args(["-c", EXPORT])
        .arg(dir.join("model.pt"))
        .status()
        .expect("the project's Python runs (./fleet installs it)");
    assert!(status.success(), "python export failed");
    let manifest = serde_json::json!({
        "name": "bright-things", "version": "2", "task": "matting",
        "input": {"height": 64, "width": 48, "scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "output": {"alpha": "probability", "alpha_index": alpha_index, "embedding": {"source": "output", "index": 1, "dim": 6}},
        "parameters": 0, "memory_per_image_mib": 0.1, "weights_mib": 0.0
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// White square on black, 300x200, as PNG.
fn white_square() -> InputItem {
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        if (100..200).contains(&x) && (50..150).contains(&y) {
            image::Rgb([255; 3])
        } else {
            image::Rgb([0; 3])
        }
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    InputItem { id: "square.png".into(), bytes }
}

#[test]
fn a_python_exported_tuple_model_loads_through_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), 0);
    let engine = Engine::new(InferenceThread::start(dir.path(), DeviceSpec::Cpu).unwrap());
    let opts = EngineOptions {
        composite: CompositeOptions { background: Background::Color([0, 0, 255]), ..Default::default() },
        format: OutputFormat::Png,
        ..Default::default()
    };
    let out = engine.process_batch(vec![white_square()], &opts).unwrap().remove(0).unwrap();
    assert_eq!(out.record.model, "bright-things@2");
    let matte = image::load_from_memory(&out.matte_png).unwrap().to_luma8();
    assert_eq!(matte.dimensions(), (300, 200));
    assert!(matte.get_pixel(150, 100).0[0] > 240, "centre of the square is foreground");
    assert!(matte.get_pixel(20, 20).0[0] < 15, "corner is background");
    let result = image::load_from_memory(&out.image).unwrap().to_rgb8();
    assert_eq!(result.get_pixel(150, 100).0, [255, 255, 255], "product pixel kept");
    assert_eq!(result.get_pixel(20, 20).0, [0, 0, 255], "background replaced");
    assert_eq!(out.embedding.len(), 6);
    let norm: f32 = out.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn a_tuple_index_past_the_outputs_is_a_contract_error() {
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), 2);
    let engine = Engine::new(InferenceThread::start(dir.path(), DeviceSpec::Cpu).unwrap());
    match engine.process_batch(vec![white_square()], &EngineOptions::default()) {
        Err(EngineError::Contract { reason, .. }) => {
            assert!(reason.contains("alpha not found at output index 2"), "{reason}");
            assert!(reason.contains("a tuple of 2"), "{reason}");
        }
        other => panic!("expected a contract error, got {other:?}"),
    }
}

/// A model whose forward pass reads a file from the worker's disk and hands its bytes back as
/// the embedding: what a tenant's model could do to a worker's config file or another
/// tenant's cached model. Scripted (not traced), so the read is in its code; TorchScript
/// compiles from a source file.
const LEAK: &str = r#"
import sys, torch
class Leak(torch.nn.Module):
    def forward(self, x):
        secret = torch.from_file(SECRET, False, 64, dtype=torch.uint8).to(torch.float32)
        alpha = torch.ones(x.shape[0], 1, x.shape[2], x.shape[3])
        return alpha, secret.unsqueeze(0).repeat(x.shape[0], 1)
torch.jit.script(Leak()).save(sys.argv[1])
"#;

#[test]
fn a_model_whose_code_reads_a_file_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), 0);
    let secret = dir.path().join("fleet.toml");
    std::fs::write(&secret, format!("s3_secret = \"{}\"\n", "s".repeat(64))).unwrap();
    let source = dir.path().join("leak.py");
    std::fs::write(&source, LEAK.replace("SECRET", &format!("{:?}", secret.display().to_string()))).unwrap();
    let status = Command::new(python()).arg(&source).arg(dir.path().join("model.pt")).status().unwrap();
    assert!(status.success(), "python export failed");
    // libtorch alone loads and runs it: the file's bytes come back as the embedding.
    let module = tch::CModule::load(dir.path().join("model.pt")).unwrap();
    let input = tch::IValue::Tensor(tch::Tensor::zeros([1, 3, 64, 48], tch::kind::FLOAT_CPU));
    let tch::IValue::Tuple(parts) = module.forward_is(&[input]).unwrap() else { panic!("a tuple") };
    let tch::IValue::Tensor(leaked) = &parts[1] else { panic!("a tensor") };
    assert_eq!(leaked.double_value(&[0, 0]), f64::from(b's'), "the model read the file");
    // The fleet refuses it before any forward pass.
    let Err(refused) = InferenceThread::start(dir.path(), DeviceSpec::Cpu) else {
        panic!("a file-reading model loaded")
    };
    let refused = refused.to_string();
    assert!(refused.contains("from_file") && refused.contains("reads a file"), "{refused}");
}
