//! A model's lineage on this worker: the embedding space a model folder embeds in, and the
//! training set a fine-tune leaves beside its model (its parent's samples plus its own).

use std::path::Path;
use std::sync::Arc;

use fleet_attribution::TrainingSet;
use fleet_protocol::manifest::{EmbeddingSpec, ModelManifest};
use sha2::{Digest, Sha256};

use super::failure::AttemptError;

/// What a warm model brings for attribution.
#[derive(Clone, Default)]
pub struct Lineage {
    /// The training set its manifest registers, loaded.
    pub training_set: Option<Arc<TrainingSet>>,
    /// `sha256:<hex>` of the file that computes its embeddings (matting models).
    pub embedding_space: Option<String>,
}

fn manifest_in(dir: &Path) -> Result<ModelManifest, String> {
    let bytes = std::fs::read(dir.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    ModelManifest::from_json(&bytes).map_err(|e| e.to_string())
}

/// The embedding space of the matting model in `dir`: the digest of its embedder file, or of
/// the model itself when the embedding is one of its outputs. `None` for a generator.
pub fn embedding_space(dir: &Path, manifest: &ModelManifest) -> Result<Option<(String, u32)>, String> {
    let Some(output) = &manifest.output else { return Ok(None) };
    let file = match &output.embedding {
        EmbeddingSpec::Model { file, .. } => file,
        EmbeddingSpec::Output { .. } => &manifest.file,
    };
    let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some((format!("sha256:{hex}"), output.embedding.dim() as u32)))
}

/// What a warm model folder brings: its training set (when its manifest names one) and its
/// embedding space.
pub fn load(dir: &Path, manifest: &ModelManifest) -> Result<Lineage, String> {
    let training_set = match &manifest.training_set {
        Some(spec) => Some(Arc::new(TrainingSet::load(dir, spec).map_err(|e| e.to_string())?)),
        None => None,
    };
    Ok(Lineage { training_set, embedding_space: embedding_space(dir, manifest)?.map(|(space, _)| space) })
}

/// Writes the trained model's training set into its folder `dir` and names it in the
/// manifest there: the parent's samples (from `parent_dir`, when the parent has a set in the
/// same embedding space) and this fine-tune's `training-embeddings.jsonl`, embedded by the
/// matting model in `embedder_dir` (`dir` itself for a matting fine-tune). Returns what the
/// fine-tune's report says about it.
pub fn build_training_set(
    dir: &Path,
    parent_dir: &Path,
    embedder_dir: &Path,
) -> Result<serde_json::Value, AttemptError> {
    let fail = |e: String| AttemptError::retry(format!("training set: {e}"));
    let mut manifest = manifest_in(dir).map_err(fail)?;
    let embedder = manifest_in(embedder_dir).map_err(fail)?;
    let (space, dim) = embedding_space(embedder_dir, &embedder)
        .map_err(fail)?
        .ok_or_else(|| fail(format!("{} computes no embeddings", embedder.model_ref())))?;
    let mut set =
        TrainingSet::new(dim as usize, &embedder.model_ref().to_string(), &space).map_err(|e| fail(e.to_string()))?;
    let parent = manifest_in(parent_dir).map_err(fail)?;
    let inherited = match &parent.training_set {
        None => {
            serde_json::json!({"samples": 0, "reason": format!("{} has no registered training set", parent.model_ref())})
        }
        Some(spec) => {
            let parent_set = TrainingSet::load(parent_dir, spec).map_err(|e| fail(e.to_string()))?;
            match set.inherit(&parent_set) {
                Ok(()) => serde_json::json!({"samples": parent_set.len(), "lineage": parent_set.lineage()}),
                Err(e @ fleet_attribution::AttributionError::OtherSpace { .. }) => {
                    tracing::warn!(parent = %parent.model_ref(), error = %e, "the parent's training set is not inherited");
                    serde_json::json!({"samples": 0, "reason": e.to_string()})
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    };
    let jsonl = std::fs::read_to_string(dir.join("training-embeddings.jsonl")).map_err(|e| fail(e.to_string()))?;
    let own =
        set.add_training_embeddings(&jsonl, &manifest.model_ref().to_string()).map_err(|e| fail(e.to_string()))?;
    let spec = set.write(dir).map_err(|e| fail(e.to_string()))?;
    let summary = serde_json::json!({
        "samples": spec.count, "own": own, "inherited": inherited, "lineage": spec.lineage,
        "embedding_model": spec.embedding_model, "embedding_space": spec.embedding_space, "rule": spec.rule,
    });
    manifest.training_set = Some(spec);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"))
        .map_err(|e| fail(e.to_string()))?;
    Ok(summary)
}
