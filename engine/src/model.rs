//! Loading a TorchScript matting model through its manifest and running one forward pass.
//! This is the only place that knows how a model's outputs are laid out.

use std::path::{Path, PathBuf};

use fleet_protocol::manifest::{AlphaKind, EmbeddingSpec, ModelManifest, Postprocess, Precision};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::EngineError;

/// A model ready to run on one device.
#[derive(Debug)]
pub struct LoadedModel {
    /// The manifest it was loaded with.
    pub manifest: ModelManifest,
    /// Where the manifest and weights were read from.
    pub dir: PathBuf,
    module: CModule,
    embedder: Option<CModule>,
    device: Device,
    /// What the weights were cast to on load; inputs are cast to it before each pass.
    kind: Kind,
}

/// Outputs of one forward pass, copied back to the host.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Alpha per image, 8-bit, at the model's output resolution.
    pub alphas: Vec<Vec<u8>>,
    /// Height and width of each alpha map.
    pub alpha_size: (u32, u32),
    /// L2-normalised embedding per image.
    pub embeddings: Vec<Vec<f32>>,
}

impl LoadedModel {
    /// Reads `manifest.json` in `dir`, checks it, and loads the TorchScript file(s) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, EngineError> {
        let manifest_path = dir.join("manifest.json");
        let bytes = std::fs::read(&manifest_path)
            .map_err(|e| EngineError::model(dir, format!("cannot read manifest.json: {e}")))?;
        let manifest = ModelManifest::from_json(&bytes).map_err(|e| EngineError::model(dir, e.to_string()))?;
        if manifest.task != fleet_protocol::manifest::Task::Matting {
            return Err(EngineError::model(dir, format!("{} is not a matting model", manifest.model_ref())));
        }
        let kind = match manifest.precision_on(device.is_cuda()) {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        };
        let load = |file: &str| {
            let mut module = crate::code::load(&dir.join(file), device)
                .map_err(|e| EngineError::model(dir, format!("cannot load TorchScript {file}: {e}")))?;
            module.set_eval();
            if kind != Kind::Float {
                module.to(device, kind, false);
            }
            Ok::<_, EngineError>(module)
        };
        let module = load(&manifest.file)?;
        let embedder = match &manifest.matting_output().embedding {
            EmbeddingSpec::Model { file, .. } => Some(load(file)?),
            EmbeddingSpec::Output { .. } => None,
        };
        Ok(LoadedModel { manifest, dir: dir.to_path_buf(), module, embedder, device, kind })
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs a normalised batch `[B,3,H,W]` (host memory, f32) and returns alpha and embeddings;
    /// a batch larger than the manifest's `max_batch` runs as several passes.
    pub fn forward(&self, batch: &Tensor) -> Result<ForwardOutput, EngineError> {
        let b = batch.size()[0];
        let max = self.manifest.max_batch.map_or(b, i64::from).max(1);
        if b <= max {
            return self.forward_one(batch);
        }
        let mut all: Option<ForwardOutput> = None;
        for part in batch.split(max, 0) {
            let out = self.forward_one(&part)?;
            match &mut all {
                None => all = Some(out),
                Some(all) => {
                    all.alphas.extend(out.alphas);
                    all.embeddings.extend(out.embeddings);
                }
            }
        }
        Ok(all.expect("a batch larger than max_batch has at least one part"))
    }

    fn forward_one(&self, batch: &Tensor) -> Result<ForwardOutput, EngineError> {
        let _guard = tch::no_grad_guard();
        let b = batch.size()[0];
        let xs = batch.to_device(self.device).to_kind(self.kind);
        let output = self
            .module
            .forward_is(&[IValue::Tensor(xs.shallow_clone())])
            .map_err(|e| self.contract(format!("forward failed: {e}")))?;
        let alpha = self.pick(&output, self.manifest.matting_output().alpha_index, "alpha")?;
        let alpha = alpha.to_kind(Kind::Float);
        let alpha = match self.manifest.matting_output().alpha {
            AlphaKind::Probability => alpha,
            AlphaKind::Logits => alpha.sigmoid(),
        };
        let shape = alpha.size();
        if shape.len() != 4 || shape[0] != b || shape[1] != 1 {
            return Err(self.contract(format!("alpha must be [{b},1,H,W], got {shape:?}")));
        }
        let embedding = match (&self.manifest.matting_output().embedding, &self.embedder) {
            (EmbeddingSpec::Output { index, .. }, _) => self.pick(&output, Some(*index), "embedding")?,
            (EmbeddingSpec::Model { .. }, Some(embedder)) => {
                embedder.forward_ts(&[xs]).map_err(|e| self.contract(format!("embedding model failed: {e}")))?
            }
            (EmbeddingSpec::Model { .. }, None) => unreachable!("embedder is loaded with the manifest"),
        };
        let dim = self.manifest.matting_output().embedding.dim() as i64;
        if embedding.size() != [b, dim] {
            return Err(self.contract(format!("embedding must be [{b},{dim}], got {:?}", embedding.size())));
        }
        let alpha = match self.manifest.matting_output().postprocess {
            Postprocess::None => alpha,
            Postprocess::MinMax => min_max(&alpha),
        };
        let alpha_u8 = (alpha.clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).to_device(Device::Cpu).contiguous();
        let (h, w) = (shape[2] as usize, shape[3] as usize);
        let flat = Vec::<u8>::try_from(alpha_u8.view([-1])).map_err(|e| self.contract(e.to_string()))?;
        let alphas = flat.chunks_exact(h * w).map(<[u8]>::to_vec).collect();
        let norm = embedding.to_kind(Kind::Float).norm_scalaropt_dim(2, [1i64], true).clamp_min(1e-12);
        let unit = (embedding.to_kind(Kind::Float) / norm).to_device(Device::Cpu).contiguous();
        let flat = Vec::<f32>::try_from(unit.view([-1])).map_err(|e| self.contract(e.to_string()))?;
        let embeddings = flat.chunks_exact(dim as usize).map(<[f32]>::to_vec).collect();
        Ok(ForwardOutput { alphas, alpha_size: (h as u32, w as u32), embeddings })
    }

    fn pick(&self, output: &IValue, index: Option<usize>, what: &str) -> Result<Tensor, EngineError> {
        let element = match (output, index) {
            (IValue::Tensor(t), None) => return Ok(t.shallow_clone()),
            (IValue::Tuple(items) | IValue::GenericList(items), Some(i)) => items.get(i),
            (IValue::TensorList(items), Some(i)) => {
                return items
                    .get(i)
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| self.contract(format!("{what} index {i} is past the {} outputs", items.len())))
            }
            _ => None,
        };
        match element {
            Some(IValue::Tensor(t)) => Ok(t.shallow_clone()),
            _ => {
                let place = index.map_or("as the whole output".to_string(), |i| format!("at output index {i}"));
                Err(self.contract(format!("{what} not found {place}: the model returned {}", describe(output))))
            }
        }
    }

    fn contract(&self, reason: String) -> EngineError {
        EngineError::Contract { model: self.manifest.model_ref().to_string(), reason }
    }
}

/// Stretches each map of `[B,1,H,W]` to [0,1] by its own minimum and maximum (a flat map
/// stays as it is, clamped).
fn min_max(alpha: &Tensor) -> Tensor {
    let flat = alpha.flatten(1, -1);
    let lo = flat.amin([1i64], true).view([-1, 1, 1, 1]);
    let hi = flat.amax([1i64], true).view([-1, 1, 1, 1]);
    let span = &hi - &lo;
    let flat_map = span.le(1e-6);
    let stretched = (alpha - &lo) / span.clamp_min(1e-6);
    stretched.where_self(&flat_map.logical_not(), alpha)
}

fn describe(v: &IValue) -> String {
    match v {
        IValue::Tensor(t) => format!("a tensor {:?}", t.size()),
        IValue::Tuple(items) | IValue::GenericList(items) => format!("a tuple of {}", items.len()),
        IValue::TensorList(items) => format!("a list of {} tensors", items.len()),
        _ => "a value that is not a tensor".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_stretches_each_map_by_its_own_range_and_leaves_flat_maps() {
        let a = Tensor::from_slice(&[0.2f32, 0.4, 0.6, 0.3, 0.5, 0.5, 0.5, 0.5]).view([2, 1, 2, 2]);
        let out = Vec::<f32>::try_from(min_max(&a).view([-1])).unwrap();
        let want = [0.0, 0.5, 1.0, 0.25, 0.5, 0.5, 0.5, 0.5];
        for (got, want) in out.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{out:?}");
        }
    }
}
