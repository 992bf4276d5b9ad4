//! The reference model as TorchScript whose weights are parameters (`trainable.pt`), the
//! file fine-tuning loads with `tch::TrainableCModule`. tch's tracer bakes the weights of
//! `model.pt` in as constants, so `dev/python/export_trainable.py` rebuilds the same
//! network in PyTorch from `weights.safetensors`, checks it against `model.pt` and scripts it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_protocol::ModelManifest;

use crate::error::{DevError, IoAt, JsonWhat, Result};

/// File name of the trainable module next to `model.pt`.
pub const TRAINABLE_FILE: &str = "trainable.pt";

/// The export script, carried in the binary so a deployed worker needs no source tree. It
/// runs from a file, not `python -c`: `torch.jit.script` reads the source of the classes.
const SCRIPT: &str = include_str!("../../python/export_trainable.py");

/// The Python with PyTorch that `./fleet` installs: `FLEET_PYTHON`, else the cached venv.
pub fn python() -> PathBuf {
    match std::env::var_os("FLEET_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/gpu-fleet/venv-torch-2.11.0/bin/python"),
    }
}

/// Writes `out` from `dir/weights.safetensors`; the script refuses to write when its output
/// differs from `dir/model.pt` (traced at `height`x`width`) by more than 1e-4.
pub fn export(python: &Path, dir: &Path, out: &Path, height: u32, width: u32) -> Result<()> {
    let mut script =
        tempfile::Builder::new().prefix("export_trainable-").suffix(".py").tempfile().at(&std::env::temp_dir())?;
    script.write_all(SCRIPT.as_bytes()).at(script.path())?;
    script.flush().at(script.path())?;
    let output = Command::new(python)
        .arg(script.path())
        .arg(dir)
        .arg(out)
        .args(["--height", &height.to_string(), "--width", &width.to_string()])
        .output()
        .map_err(|cause| DevError::PythonStart { python: python.to_path_buf(), cause })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        return Err(DevError::Exporter { script: "export_trainable.py", status: output.status, stderr: tail });
    }
    let report = String::from_utf8_lossy(&output.stdout);
    tracing::info!(out = %out.display(), report = %report.trim(), "trainable module written");
    Ok(())
}

/// Adds `trainable.pt` to a model folder built before it existed, then records it in the
/// manifest, without retraining. Each file is written to a temporary sibling and renamed, and
/// the manifest last, so it never names a file that is not there.
pub fn add_in_place(python: &Path, dir: &Path, mut manifest: ModelManifest) -> Result<ModelManifest> {
    // Temporary files are private; the new ones get the manifest's mode, like their siblings.
    let manifest_path = dir.join("manifest.json");
    let mode = std::fs::metadata(&manifest_path).at(&manifest_path)?.permissions();
    let sibling = |prefix: &str, suffix: &str| {
        tempfile::Builder::new().prefix(prefix).suffix(suffix).permissions(mode.clone()).tempfile_in(dir)
    };
    let module = sibling(".trainable-", ".pt").at(dir)?;
    export(python, dir, module.path(), manifest.input.height, manifest.input.width)?;
    let trainable = dir.join(TRAINABLE_FILE);
    module.persist(&trainable).map_err(|e| DevError::io(&trainable, e.error))?;
    manifest.trainable_file = Some(TRAINABLE_FILE.to_string());
    let mut json = sibling(".manifest-", ".json").at(dir)?;
    json.write_all(&serde_json::to_vec_pretty(&manifest).what("encoding the manifest")?).at(json.path())?;
    json.persist(&manifest_path).map_err(|e| DevError::io(&manifest_path, e.error))?;
    Ok(manifest)
}
