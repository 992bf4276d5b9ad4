//! Shared set-up for the engine tier: libtorch and the reference model, no services. Where
//! the reference model lives and how to turn synthetic samples into encoded inputs.
//!
//! The reference model is built once by `./fleet test` (or `./fleet model`) before the
//! tests run; the tests never train it themselves.

use std::path::PathBuf;

use fleet_engine::{Engine, InferenceThread, InputItem};
use fleet_imaging::composite::Composited;
use fleet_imaging::encode::{encode, OutputFormat};
use fleet_protocol::DeviceSpec;
use fleet_synth::Sample;

/// Root of the local model registry the tests read (`FLEET_MODEL_DIR`, as `./fleet` sets it).
pub fn models_root() -> PathBuf {
    match std::env::var_os("FLEET_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/gpu-fleet/models"),
    }
}

/// The Python with PyTorch that `./fleet` installs (`FLEET_PYTHON`), for exporting models
/// the way customers do.
pub fn python() -> PathBuf {
    match std::env::var_os("FLEET_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/gpu-fleet/venv-torch-2.11.0/bin/python"),
    }
}

/// Folder of the cached reference model; panics with the fix when it is missing.
pub fn reference_dir() -> PathBuf {
    let dir = fleet_dev::reference::model_dir(&models_root());
    assert!(
        dir.join("manifest.json").exists(),
        "reference model missing at {}: run `./fleet model` (./fleet test does it first)",
        dir.display()
    );
    dir
}

/// The reference model on the CPU behind a fresh engine.
pub fn reference_engine() -> Engine {
    Engine::new(InferenceThread::start(&reference_dir(), DeviceSpec::Cpu).expect("reference model loads"))
}

/// A synthetic sample encoded as PNG (lossless, so pixels can be compared exactly).
pub fn png_item(id: &str, sample: &Sample) -> InputItem {
    let bytes = encode(&Composited::Rgb(sample.image.clone()), OutputFormat::Png).expect("png encodes");
    InputItem { id: id.to_string(), bytes }
}
