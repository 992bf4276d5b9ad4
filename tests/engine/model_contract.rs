//! Any TorchScript model that honours the model contract loads unchanged: here a model with
//! another input size (96x160), another normalisation, a logits output returned as a bare
//! tensor and its embedding in a separate TorchScript file gives the reference's masks within
//! tolerance. A manifest that lies about the outputs is refused with the reason.

use std::path::Path;

use fleet_dev::reference::score;
use fleet_dev::reference::unet::UNet;
use fleet_engine::{Engine, EngineError, EngineOptions, InferenceThread, ItemOutput};
use fleet_imaging::composite::{Background, CompositeOptions};
use fleet_protocol::manifest::{AlphaKind, EmbeddingSpec, InputSpec, ModelManifest, OutputSpec};
use fleet_protocol::DeviceSpec;
use fleet_synth::render_sample;
use fleet_tests_engine::{png_item, reference_dir, reference_engine};
use tch::{nn, CModule, Device, Kind, Tensor};

const H: i64 = 160;
const W: i64 = 96;

/// Writes the variant model (and its embedding model) into `dir`, from the reference weights.
fn export_variant(dir: &Path) -> ModelManifest {
    let reference = ModelManifest::from_json(&std::fs::read(reference_dir().join("manifest.json")).unwrap()).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = UNet::new(&vs.root());
    vs.load(reference_dir().join("weights.safetensors")).unwrap();
    vs.freeze();
    let side = reference.input.height as i64;
    // The variant takes plain [0,1] pixels and converts to what the network was trained on.
    let to_reference = move |x: &Tensor| ((x - 0.5) / 0.25).upsample_bilinear2d([side, side], false, None, None);
    let example = Tensor::zeros([1, 3, H, W], (Kind::Float, Device::Cpu));
    let _guard = tch::no_grad_guard();
    let mut alpha = CModule::create_by_tracing("Variant", "forward", &[example.shallow_clone()], &mut |xs| {
        let logits = net.forward_t(&to_reference(&xs[0]), false).logits;
        vec![logits.upsample_bilinear2d([H, W], false, None, None)]
    })
    .unwrap();
    alpha.set_eval();
    alpha.save(dir.join("variant.pt")).unwrap();
    let mut embed = CModule::create_by_tracing("VariantEmbedding", "forward", &[example], &mut |xs| {
        vec![net.forward_t(&to_reference(&xs[0]), false).embedding]
    })
    .unwrap();
    embed.set_eval();
    embed.save(dir.join("embed.pt")).unwrap();
    let manifest = ModelManifest {
        name: "variant".into(),
        version: "0.1.0".into(),
        file: "variant.pt".into(),
        input: InputSpec {
            height: H as u32,
            width: W as u32,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            fixed: false,
        },
        output: Some(OutputSpec {
            alpha: AlphaKind::Logits,
            alpha_index: None,
            embedding: EmbeddingSpec::Model {
                file: "embed.pt".into(),
                dim: reference.matting_output().embedding.dim(),
            },
            postprocess: Default::default(),
        }),
        generator: None,
        metrics: None,
        trainable_file: None,
        ..reference
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    manifest
}

fn run(engine: &Engine, seeds: std::ops::Range<u64>) -> Vec<(ItemOutput, image::GrayImage)> {
    let samples: Vec<_> = seeds.map(|i| render_sample(0xC0DE, i, 320, 1200)).collect();
    let items = samples.iter().map(|s| png_item("x.png", s)).collect();
    let opts = EngineOptions {
        composite: CompositeOptions { background: Background::Transparent, ..Default::default() },
        ..Default::default()
    };
    let outs = engine.process_batch(items, &opts).unwrap();
    outs.into_iter().zip(samples).map(|(o, s)| (o.unwrap(), s.alpha)).collect()
}

fn matte(out: &ItemOutput) -> image::GrayImage {
    image::load_from_memory(&out.matte_png).unwrap().to_luma8()
}

#[test]
fn a_model_with_another_size_and_logits_gives_the_reference_masks() {
    let dir = tempfile::tempdir().unwrap();
    export_variant(dir.path());
    let variant = Engine::new(InferenceThread::start(dir.path(), DeviceSpec::Cpu).unwrap());
    assert_eq!(variant.inference().manifest().model_ref().to_string(), "variant@0.1.0");
    let reference = reference_engine();
    let (ours, theirs) = (run(&variant, 0..12), run(&reference, 0..12));
    let mut agreement = 0.0;
    let mut error_gap = 0.0f64;
    for ((v, truth), (r, _)) in ours.iter().zip(&theirs) {
        let (vm, rm) = (matte(v), matte(r));
        assert_eq!(vm.dimensions(), truth.dimensions(), "alpha comes back at the input size");
        agreement += score(&vm, &rm).0;
        error_gap = error_gap.max((score(&vm, truth).1 - score(&rm, truth).1).abs());
        let cos: f32 = v.embedding.iter().zip(&r.embedding).map(|(a, b)| a * b).sum();
        assert!(cos > 0.9, "embedding of the variant drifted from the reference: cosine {cos}");
        assert_eq!(v.record.model, "variant@0.1.0");
    }
    let agreement = agreement / ours.len() as f64;
    assert!(agreement >= 0.93, "variant masks agree with the reference at IoU {agreement:.3}");
    assert!(error_gap <= 0.02, "variant alpha error differs from the reference by {error_gap:.3}");
}

#[test]
fn a_manifest_that_misdescribes_the_outputs_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = export_variant(dir.path());
    manifest.output.as_mut().unwrap().embedding = EmbeddingSpec::Model { file: "embed.pt".into(), dim: 7 };
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let engine = Engine::new(InferenceThread::start(dir.path(), DeviceSpec::Cpu).unwrap());
    let items = vec![png_item("x.png", &render_sample(1, 1, 320, 400))];
    match engine.process_batch(items, &EngineOptions::default()) {
        Err(EngineError::Contract { model, reason }) => {
            assert_eq!(model, "variant@0.1.0");
            assert!(reason.contains("embedding must be [1,7]"), "{reason}");
        }
        other => panic!("expected a contract error, got {other:?}"),
    }
}

#[test]
fn a_missing_model_file_is_a_clear_load_error() {
    let dir = tempfile::tempdir().unwrap();
    export_variant(dir.path());
    std::fs::remove_file(dir.path().join("embed.pt")).unwrap();
    let err = InferenceThread::start(dir.path(), DeviceSpec::Cpu).err().expect("load must fail");
    assert!(matches!(err, EngineError::Model { .. }), "{err}");
    assert!(err.to_string().contains("embed.pt"), "{err}");
}
