//! A model lineage's training set: every training sample's embedding in an HNSW index
//! (usearch, cosine, f32) and, line for line, who contributed it under which licence. A
//! fine-tune starts from its parent's set (when both embed in one space) and adds its own
//! samples, so a model's set is its whole lineage's.

use std::path::Path;

use fleet_protocol::attribution::{IndexedSample, ShareRule, TrainingSetSpec};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::AttributionError;

/// File names of a training set next to a model's manifest.
pub const INDEX_FILE: &str = "training-set.usearch";
/// See [`INDEX_FILE`].
pub const SAMPLES_FILE: &str = "training-set.jsonl";

/// A lineage's indexed training samples.
pub struct TrainingSet {
    index: Index,
    samples: Vec<IndexedSample>,
    dim: usize,
    embedding_model: String,
    embedding_space: String,
    lineage: Vec<String>,
    rule: ShareRule,
}

/// One line of `training-embeddings.jsonl`, as a fine-tune writes it.
#[derive(serde::Deserialize)]
struct TrainingLine {
    image: String,
    contributor: Option<String>,
    licence: Option<String>,
    embedding: Vec<f32>,
}

/// usearch's result (its errors are C++ exceptions) as ours, saying what was being done.
fn ix<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<T, AttributionError> {
    result.map_err(|e| AttributionError::Index(format!("{what}: {e}")))
}

fn new_index(dim: usize) -> Result<Index, AttributionError> {
    let options =
        IndexOptions { dimensions: dim, metric: MetricKind::Cos, quantization: ScalarKind::F32, ..Default::default() };
    Index::new(&options).map_err(|e| AttributionError::Index(format!("creating a {dim}-d index: {e}")))
}

impl TrainingSet {
    /// An empty set whose embeddings are `dim` wide and come from `embedding_model`'s
    /// embedder, identified by `embedding_space`.
    pub fn new(dim: usize, embedding_model: &str, embedding_space: &str) -> Result<Self, AttributionError> {
        Ok(TrainingSet {
            index: new_index(dim)?,
            samples: Vec::new(),
            dim,
            embedding_model: embedding_model.to_string(),
            embedding_space: embedding_space.to_string(),
            lineage: Vec::new(),
            rule: ShareRule::default(),
        })
    }

    /// The set stored in `dir` as `spec` describes it.
    pub fn load(dir: &Path, spec: &TrainingSetSpec) -> Result<Self, AttributionError> {
        let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| AttributionError::Io(format!("{file}: {e}")));
        let samples: Vec<IndexedSample> = String::from_utf8_lossy(&read(&spec.samples)?)
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| AttributionError::Corrupt(format!("{} line {}: {e}", spec.samples, i + 1)))
            })
            .collect::<Result<_, _>>()?;
        let index = new_index(spec.dim as usize)?;
        ix("loading the index", index.load_from_buffer(&read(&spec.index)?))?;
        if index.size() != samples.len() || samples.len() as u64 != spec.count {
            return Err(AttributionError::Corrupt(format!(
                "the index holds {} vectors, the samples file {} lines and the manifest says {}",
                index.size(),
                samples.len(),
                spec.count
            )));
        }
        Ok(TrainingSet {
            index,
            samples,
            dim: spec.dim as usize,
            embedding_model: spec.embedding_model.clone(),
            embedding_space: spec.embedding_space.clone(),
            lineage: spec.lineage.clone(),
            rule: spec.rule,
        })
    }

    /// Adds every sample of `parent` (the lineage it inherits), which must embed in this
    /// set's space.
    pub fn inherit(&mut self, parent: &TrainingSet) -> Result<(), AttributionError> {
        if parent.embedding_space != self.embedding_space || parent.dim != self.dim {
            return Err(AttributionError::OtherSpace {
                parent: parent.embedding_model.clone(),
                child: self.embedding_model.clone(),
            });
        }
        let mut vector = vec![0f32; self.dim];
        self.reserve(parent.samples.len())?;
        for (key, sample) in parent.samples.iter().enumerate() {
            ix("reading the parent's vector", parent.index.get(key as u64, &mut vector))?;
            self.push(sample.clone(), &vector)?;
        }
        self.rule = parent.rule;
        for model in &parent.lineage {
            if !self.lineage.contains(model) {
                self.lineage.push(model.clone());
            }
        }
        Ok(())
    }

    /// Adds the samples of a fine-tune's `training-embeddings.jsonl`, credited to `model`
    /// (the model that fine-tune made); returns how many.
    pub fn add_training_embeddings(&mut self, jsonl: &str, model: &str) -> Result<usize, AttributionError> {
        let lines: Vec<TrainingLine> = jsonl
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| AttributionError::Corrupt(format!("training embeddings line {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        self.reserve(lines.len())?;
        for (i, line) in lines.iter().enumerate() {
            let (Some(contributor), Some(licence)) = (&line.contributor, &line.licence) else {
                return Err(AttributionError::Corrupt(format!(
                    "training embeddings line {}: no contributor or licence",
                    i + 1
                )));
            };
            let sample = IndexedSample {
                image: line.image.clone(),
                contributor: contributor.clone(),
                licence: licence.clone(),
                model: model.to_string(),
            };
            self.push(sample, &line.embedding)?;
        }
        self.lineage.push(model.to_string());
        Ok(lines.len())
    }

    fn reserve(&self, more: usize) -> Result<(), AttributionError> {
        ix("reserving room", self.index.reserve(self.samples.len() + more))
    }

    fn push(&mut self, sample: IndexedSample, embedding: &[f32]) -> Result<(), AttributionError> {
        if embedding.len() != self.dim || embedding.iter().any(|v| !v.is_finite()) {
            return Err(AttributionError::Corrupt(format!(
                "the embedding of {} has {} finite values, the set needs {}",
                sample.image,
                embedding.len(),
                self.dim
            )));
        }
        let key = self.samples.len() as u64;
        ix("adding a sample", self.index.add(key, embedding))?;
        self.samples.push(sample);
        Ok(())
    }

    /// Writes the index and samples files into `dir` and returns the manifest's section.
    pub fn write(&self, dir: &Path) -> Result<TrainingSetSpec, AttributionError> {
        let mut buffer = vec![0u8; self.index.serialized_length()];
        ix("saving the index", self.index.save_to_buffer(&mut buffer))?;
        let write = |file: &str, bytes: &[u8]| {
            std::fs::write(dir.join(file), bytes).map_err(|e| AttributionError::Io(format!("{file}: {e}")))
        };
        write(INDEX_FILE, &buffer)?;
        let mut lines = String::new();
        for sample in &self.samples {
            lines.push_str(&serde_json::to_string(sample).expect("a sample serialises"));
            lines.push('\n');
        }
        write(SAMPLES_FILE, lines.as_bytes())?;
        Ok(TrainingSetSpec {
            index: INDEX_FILE.into(),
            samples: SAMPLES_FILE.into(),
            embedding_model: self.embedding_model.clone(),
            embedding_space: self.embedding_space.clone(),
            dim: self.dim as u32,
            count: self.samples.len() as u64,
            lineage: self.lineage.clone(),
            rule: self.rule,
        })
    }

    /// The `n` samples nearest `embedding`, most similar first, as (sample, cosine similarity).
    pub fn nearest(&self, embedding: &[f32], n: usize) -> Result<Vec<(&IndexedSample, f32)>, AttributionError> {
        if embedding.len() != self.dim {
            return Err(AttributionError::OtherSpace {
                parent: format!("a {}-d training set", self.dim),
                child: format!("a {}-d output embedding", embedding.len()),
            });
        }
        let found = ix("searching", self.index.search(embedding, n))?;
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(&key, &distance)| self.samples.get(key as usize).map(|s| (s, 1.0 - distance)))
            .collect())
    }

    /// Samples indexed.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is indexed.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The model whose embedder fills the set.
    pub fn embedding_model(&self) -> &str {
        &self.embedding_model
    }

    /// The embedder's identity (`sha256:<hex>`).
    pub fn embedding_space(&self) -> &str {
        &self.embedding_space
    }

    /// How the lineage turns similarities into shares (inherited from the parent).
    pub fn rule(&self) -> ShareRule {
        self.rule
    }

    /// Sets the rule this set is written with.
    pub fn set_rule(&mut self, rule: ShareRule) {
        self.rule = rule;
    }

    /// The models that added samples, oldest first.
    pub fn lineage(&self) -> &[String] {
        &self.lineage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn jsonl(rows: &[(&str, &str, [f32; 4])]) -> String {
        rows.iter()
            .map(|(image, contributor, e)| {
                serde_json::json!({"image": image, "contributor": contributor, "licence": "cc-by-4.0", "embedding": unit(e)})
                    .to_string()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn a_child_inherits_its_parents_samples_and_both_are_found_after_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut parent = TrainingSet::new(4, "m@1", "sha256:aa").unwrap();
        parent
            .add_training_embeddings(
                &jsonl(&[("p/1", "c1", [1., 0., 0., 0.]), ("p/2", "c2", [0., 1., 0., 0.])]),
                "gen@1",
            )
            .unwrap();
        let spec = parent.write(dir.path()).unwrap();
        let parent = TrainingSet::load(dir.path(), &spec).unwrap();

        let mut child = TrainingSet::new(4, "m@1", "sha256:aa").unwrap();
        child.inherit(&parent).unwrap();
        child.add_training_embeddings(&jsonl(&[("c/3", "c3", [0., 0., 1., 0.])]), "gen@2").unwrap();
        let child_dir = tempfile::tempdir().unwrap();
        let spec = child.write(child_dir.path()).unwrap();
        assert_eq!((spec.count, spec.lineage.clone()), (3, vec!["gen@1".to_string(), "gen@2".to_string()]));
        let child = TrainingSet::load(child_dir.path(), &spec).unwrap();

        let near = child.nearest(&unit(&[0.1, 1., 0., 0.]), 3).unwrap();
        assert_eq!(near[0].0.image, "p/2");
        assert_eq!(near[0].0.model, "gen@1");
        assert!(near[0].1 > 0.99 && near[0].1 <= 1.0001, "{}", near[0].1);
        let near = child.nearest(&unit(&[0., 0., 1., 0.1]), 1).unwrap();
        assert_eq!((near[0].0.image.as_str(), near[0].0.contributor.as_str()), ("c/3", "c3"));
    }

    #[test]
    fn a_parent_from_another_embedding_space_is_not_inherited() {
        let parent = TrainingSet::new(4, "m@1", "sha256:aa").unwrap();
        let mut child = TrainingSet::new(4, "m@2", "sha256:bb").unwrap();
        assert!(matches!(child.inherit(&parent), Err(AttributionError::OtherSpace { .. })));
    }

    #[test]
    fn embeddings_of_the_wrong_width_and_files_that_disagree_are_refused() {
        let mut set = TrainingSet::new(4, "m@1", "sha256:aa").unwrap();
        let line = r#"{"image": "x", "contributor": "c", "licence": "l", "embedding": [1.0, 0.0]}"#;
        assert!(matches!(set.add_training_embeddings(line, "g@1"), Err(AttributionError::Corrupt(_))));
        let anonymous = r#"{"image": "x", "embedding": [1.0, 0.0, 0.0, 0.0]}"#;
        assert!(matches!(set.add_training_embeddings(anonymous, "g@1"), Err(AttributionError::Corrupt(_))));

        let dir = tempfile::tempdir().unwrap();
        set.add_training_embeddings(&jsonl(&[("a", "c", [1., 0., 0., 0.])]), "g@1").unwrap();
        let mut spec = set.write(dir.path()).unwrap();
        spec.count = 2;
        assert!(matches!(TrainingSet::load(dir.path(), &spec), Err(AttributionError::Corrupt(_))));
    }
}
