//! Attribution: which training images (and so which licensed contributors) an output owes
//! its look to. A fine-tuned model's manifest names its lineage's training set ([`TrainingSetSpec`]:
//! an approximate-nearest-neighbour index of every training sample's embedding, the parent's
//! samples included); each output is embedded in the same space, its nearest training samples
//! found, and their contributors credited by the lineage's [`ShareRule`]. What a worker writes
//! beside each output is an [`AttributionRecord`].

use serde::{Deserialize, Serialize};

/// Files and settings of a model lineage's training set, in the model's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSetSpec {
    /// The ANN index file next to the manifest (usearch, cosine, f32).
    pub index: String,
    /// One JSON line per indexed sample, in index-key order (key = line number from 0).
    pub samples: String,
    /// The model whose embeddings fill the index; outputs are embedded by it too.
    pub embedding_model: String,
    /// `sha256:<hex>` of the file that computes the embeddings (the embedder of
    /// `embedding_model`): an output embedded by another model with the same embedder is in
    /// the same space, and a child inherits its parent's samples only within one space.
    pub embedding_space: String,
    /// Embedding width.
    pub dim: u32,
    /// Samples indexed, the ancestors' included.
    pub count: u64,
    /// The models that added samples, oldest first (`name@version`; the last is this one).
    pub lineage: Vec<String>,
    /// How similarities become contributors' shares.
    #[serde(default)]
    pub rule: ShareRule,
}

/// How an output's nearest training samples become shares. The `top_k` nearest samples with
/// cosine similarity at least `min_similarity` (licences revoked left out, so their weight
/// goes to the others) are weighted by a softmax of their similarities at `temperature`,
/// summed per contributor and normalised to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRule {
    /// Nearest samples considered (1..=100).
    pub top_k: u32,
    /// Cosine similarity a sample needs to be credited at all (-1..=1).
    pub min_similarity: f32,
    /// Softmax temperature (0.001..=10): lower concentrates shares on the nearest samples.
    pub temperature: f32,
}

impl Default for ShareRule {
    fn default() -> Self {
        ShareRule { top_k: 8, min_similarity: 0.5, temperature: 0.05 }
    }
}

impl ShareRule {
    /// Why the rule cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.top_k) {
            return Err("top_k must be within 1..=100".into());
        }
        if !(-1.0..=1.0).contains(&self.min_similarity) {
            return Err("min_similarity must be within -1..=1".into());
        }
        if !(0.001..=10.0).contains(&self.temperature) {
            return Err("temperature must be within 0.001..=10".into());
        }
        Ok(())
    }
}

/// One indexed training sample (a line of the training set's samples file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedSample {
    /// The training image's key.
    pub image: String,
    /// Who contributed it.
    pub contributor: String,
    /// Under which licence.
    pub licence: String,
    /// The model of the lineage whose fine-tune added it.
    pub model: String,
}

/// Whether an output could be attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionStatus {
    /// Shares were assigned.
    Attributed,
    /// The model has no registered training set: nothing to trace the output to.
    NoTrainingSet,
    /// No training sample is similar enough (or every similar one was revoked).
    NoSimilarSample,
    /// The output was embedded by a model whose embedder is not the training set's, so the
    /// two cannot be compared (run the job with the training set's embedding model).
    OtherEmbeddingSpace,
}

/// A training sample near an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The sample.
    #[serde(flatten)]
    pub sample: IndexedSample,
    /// Cosine similarity to the output's embedding.
    pub similarity: f32,
    /// Its licence was revoked: listed, never credited.
    pub revoked: bool,
    /// Its softmax weight before the per-contributor sum (0 when not credited).
    pub weight: f64,
}

/// One contributor's share of an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The contributor.
    pub contributor: String,
    /// Their share, in (0, 1]; an output's shares sum to 1.
    pub share: f64,
}

/// What is written beside an output (`attribution[.k].json`) and summarised in the task manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionRecord {
    /// The output image's key.
    pub output: String,
    /// The model whose training set the output was matched against.
    pub model: String,
    /// What the record says.
    pub status: AttributionStatus,
    /// Why, in words, when not attributed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model that embedded the output and the training set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// The rule applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<ShareRule>,
    /// Samples in the training set searched.
    #[serde(default)]
    pub training_samples: u64,
    /// The nearest samples, most similar first.
    #[serde(default)]
    pub neighbours: Vec<Neighbour>,
    /// Per-contributor shares, largest first; empty unless attributed.
    #[serde(default)]
    pub shares: Vec<Share>,
    /// Whether revocations were checked against the royalty ledger.
    pub revocations_checked: bool,
}

impl AttributionRecord {
    /// A record for an output whose model has no registered training set.
    pub fn untraceable(output: &str, model: &str) -> Self {
        AttributionRecord {
            output: output.to_string(),
            model: model.to_string(),
            status: AttributionStatus::NoTrainingSet,
            reason: Some(format!(
                "{model} has no registered training set: its outputs cannot be traced to training images"
            )),
            embedding_model: None,
            rule: None,
            training_samples: 0,
            neighbours: Vec::new(),
            shares: Vec::new(),
            revocations_checked: false,
        }
    }
}
