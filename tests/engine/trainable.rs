//! The reference model's `trainable.pt` is what fine-tuning starts from: it loads with
//! `tch::TrainableCModule` with its weights as trainable variables, computes exactly what the
//! traced `model.pt` computes, learns from a few optimiser steps, and the file it saves loads
//! through the engine's model contract unchanged.

use std::path::{Path, PathBuf};

use fleet_engine::InferenceThread;
use fleet_protocol::{DeviceSpec, ModelManifest};
use fleet_store::registry::model_files;
use fleet_synth::Scene;
use fleet_tests_engine::reference_dir;
use tch::nn::{self, OptimizerConfig};
use tch::{CModule, Device, Kind, Reduction, Tensor, TrainableCModule};

/// Tolerance between the trainable module and the traced one in eval mode.
const TOLERANCE: f64 = 1e-4;

fn manifest(dir: &Path) -> ModelManifest {
    ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn trainable_path(dir: &Path) -> PathBuf {
    let manifest = manifest(dir);
    let file = manifest.trainable_file.clone().expect("the reference manifest names its trainable file");
    assert!(model_files(&manifest).contains(&file), "publishing would leave {file} behind");
    dir.join(file)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Four synthetic scenes at the model input, normalised as the manifest says, with their masks.
fn fixed_batch(manifest: &ModelManifest) -> (Tensor, Tensor) {
    let (h, w) = (manifest.input.height, manifest.input.width);
    let samples: Vec<_> = (0..4).map(|i| Scene::generate(0x7A1E, i).render(w, h)).collect();
    let pixels: Vec<u8> = samples.iter().flat_map(|s| s.image.as_raw().clone()).collect();
    let alphas: Vec<u8> = samples.iter().flat_map(|s| s.alpha.as_raw().clone()).collect();
    let (h, w) = (h as i64, w as i64);
    let images = Tensor::from_slice(&pixels).view([4, h, w, 3]).permute([0, 3, 1, 2]).to_kind(Kind::Float);
    let mean = Tensor::from_slice(&manifest.input.mean).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&manifest.input.std).view([1, 3, 1, 1]);
    let x = (images * f64::from(manifest.input.scale) - mean) / std;
    let y = Tensor::from_slice(&alphas).view([4, 1, h, w]).to_kind(Kind::Float) / 255.0;
    (x, y)
}

#[test]
fn trainable_module_has_the_weights_as_variables_and_matches_the_traced_model() {
    let dir = reference_dir();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut module = TrainableCModule::load(trainable_path(&dir), vs.root()).unwrap();
    module.set_eval();

    // Every conv and batch-norm weight and bias, i.e. every tensor but the running statistics.
    let weights = Tensor::read_safetensors(dir.join("weights.safetensors")).unwrap();
    let learnable: Vec<_> =
        weights.iter().filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var")).collect();
    assert_eq!(learnable.len(), 9 * 6 + 2, "nine double convs of six tensors, and the head's two");
    assert_eq!(vs.trainable_variables().len(), learnable.len());
    let variables = vs.variables();
    for (name, tensor) in learnable {
        let var = variables.get(&name.replace('.', "_")).unwrap_or_else(|| panic!("{name} is not a variable"));
        assert!(var.requires_grad(), "{name} is not trainable");
        assert_eq!(max_abs_diff(var, tensor), 0.0, "{name} was not loaded from the weights");
    }

    let traced = CModule::load(dir.join("model.pt")).unwrap();
    let m = manifest(&dir);
    tch::manual_seed(7);
    let x = Tensor::randn([2, 3, m.input.height as i64, m.input.width as i64], (Kind::Float, Device::Cpu));
    let _no_grad = tch::no_grad_guard();
    let ours = module.forward_ts(&[&x]).unwrap();
    let reference = traced.forward_ts(&[&x]).unwrap();
    let diff = max_abs_diff(&ours, &reference);
    eprintln!("max |trainable - traced| = {diff:e}");
    assert!(diff <= TOLERANCE, "trainable module differs from model.pt by {diff}");
    // Scripted, not traced: other multiples of 16 work too, as fine-tuning crops may need.
    let other = module.forward_ts(&[Tensor::randn([1, 3, 64, 96], (Kind::Float, Device::Cpu))]).unwrap();
    assert_eq!(other.size(), [1, 1, 64, 96]);
}

#[test]
fn a_few_steps_reduce_the_loss_and_the_saved_file_loads_in_the_engine() {
    let dir = reference_dir();
    let m = manifest(&dir);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut module = TrainableCModule::load(trainable_path(&dir), vs.root()).unwrap();
    let (x, y) = fixed_batch(&m);
    // The fine-tuning target: the true masks, inverted, so the loss starts far from its floor.
    let y = 1.0 - y;
    let loss_of = |module: &TrainableCModule| {
        let prob = module.forward_ts(&[&x]).unwrap();
        prob.clamp(1e-6, 1.0 - 1e-6).binary_cross_entropy::<Tensor>(&y, None, Reduction::Mean)
    };

    module.set_train();
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = loss_of(&module);
        losses.push(loss.double_value(&[]));
        opt.backward_step(&loss);
    }
    let after = tch::no_grad(|| loss_of(&module)).double_value(&[]);
    eprintln!("losses {losses:?}, after {after}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(after < 0.8 * losses[0], "five steps did not reduce the loss: {losses:?} then {after}");

    module.set_eval();
    let saved = tempfile::tempdir().unwrap();
    module.save(saved.path().join("model.pt")).unwrap();
    let _no_grad = tch::no_grad_guard();
    let tuned = module.forward_ts(&[&x]).unwrap();
    let reloaded = CModule::load(saved.path().join("model.pt")).unwrap();
    assert_eq!(max_abs_diff(&reloaded.forward_ts(&[&x]).unwrap(), &tuned), 0.0, "saved file lost the training");
    let original = CModule::load(dir.join("model.pt")).unwrap().forward_ts(&[&x]).unwrap();
    assert!(max_abs_diff(&original, &tuned) > 0.1, "training left the outputs where they were");

    // The engine loads the fine-tuned file as a model of its own, through the same manifest.
    std::fs::copy(dir.join("embed.pt"), saved.path().join("embed.pt")).unwrap();
    let tuned_manifest = ModelManifest { trainable_file: None, ..m };
    std::fs::write(saved.path().join("manifest.json"), serde_json::to_vec(&tuned_manifest).unwrap()).unwrap();
    let inference = InferenceThread::start(saved.path(), DeviceSpec::Cpu).unwrap();
    let input = Vec::<f32>::try_from(x.contiguous().view([-1])).unwrap();
    let out = inference.infer(input, 4).unwrap().output;
    let expected = Vec::<f32>::try_from((tuned * 255.0).round().view([-1])).unwrap();
    let engine: Vec<f32> = out.alphas.concat().into_iter().map(f32::from).collect();
    assert_eq!(engine.len(), expected.len());
    let worst = engine.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst <= 1.0, "the engine's alpha differs from the module's by {worst} levels");
}
