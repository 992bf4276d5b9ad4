//! The rule that turns an output's nearest training samples into contributors' shares
//! ([`ShareRule`]): revoked samples are listed but never credited; of the `top_k` nearest
//! samples still licensed, those at least `min_similarity` close are weighted by
//! `exp((s - s_max) / temperature)`, the weights are summed per contributor and normalised
//! to 1. Calibrated softmax over similarities is how Wang et al. (ICCV 2023) turn retrieval
//! scores into soft attribution.

use std::collections::BTreeMap;

use fleet_protocol::attribution::{AttributionRecord, AttributionStatus, IndexedSample, Neighbour, Share, ShareRule};

use crate::index::TrainingSet;
use crate::AttributionError;

/// Revoked licences: a contributor's whole contribution, or single images of theirs.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// Contributors who withdrew everything.
    pub contributors: std::collections::HashSet<String>,
    /// (contributor, image) pairs withdrawn one by one.
    pub images: std::collections::HashSet<(String, String)>,
}

impl Revocations {
    /// Whether `sample` may no longer be credited.
    pub fn covers(&self, sample: &IndexedSample) -> bool {
        self.contributors.contains(&sample.contributor)
            || self.images.contains(&(sample.contributor.clone(), sample.image.clone()))
    }
}

/// How many neighbours to fetch so that `top_k` licensed ones remain after revocations.
pub fn search_width(rule: &ShareRule, set: &TrainingSet) -> usize {
    ((rule.top_k as usize) * 4).min(set.len()).max(1)
}

/// The nearest samples of one output, before revocations are known.
pub fn neighbours(
    set: &TrainingSet,
    rule: &ShareRule,
    embedding: &[f32],
) -> Result<Vec<(IndexedSample, f32)>, AttributionError> {
    Ok(set.nearest(embedding, search_width(rule, set))?.into_iter().map(|(s, sim)| (s.clone(), sim)).collect())
}

/// The record of `output` from its nearest samples (most similar first) under `rule`.
pub fn attribute(
    output: &str,
    model: &str,
    set: &TrainingSet,
    rule: &ShareRule,
    found: Vec<(IndexedSample, f32)>,
    revoked: Option<&Revocations>,
) -> AttributionRecord {
    let mut listed: Vec<Neighbour> = Vec::new();
    let mut licensed = 0;
    for (sample, similarity) in found {
        if licensed == rule.top_k as usize {
            break;
        }
        let is_revoked = revoked.is_some_and(|r| r.covers(&sample));
        licensed += usize::from(!is_revoked);
        listed.push(Neighbour { sample, similarity, revoked: is_revoked, weight: 0.0 });
    }
    let credited = |n: &Neighbour| !n.revoked && n.similarity >= rule.min_similarity;
    let top = listed.iter().filter(|n| credited(n)).map(|n| n.similarity).fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for n in listed.iter_mut().filter(|n| credited(n)) {
        n.weight = ((f64::from(n.similarity) - f64::from(top)) / f64::from(rule.temperature)).exp();
        total += n.weight;
    }
    let mut per_contributor: BTreeMap<&str, f64> = BTreeMap::new();
    for n in listed.iter_mut().filter(|n| n.weight > 0.0) {
        n.weight /= total;
        *per_contributor.entry(n.sample.contributor.as_str()).or_default() += n.weight;
    }
    let mut shares: Vec<Share> =
        per_contributor.into_iter().map(|(c, share)| Share { contributor: c.to_string(), share }).collect();
    // Largest first; ties by name, so the order is the same on every worker.
    shares.sort_by(|a, b| b.share.total_cmp(&a.share).then_with(|| a.contributor.cmp(&b.contributor)));
    let (status, reason) = if shares.is_empty() {
        let revoked_near = listed.iter().filter(|n| n.revoked).count();
        (
            AttributionStatus::NoSimilarSample,
            Some(format!(
                "no licensed training sample is at least {} similar ({} of the nearest were revoked)",
                rule.min_similarity, revoked_near
            )),
        )
    } else {
        (AttributionStatus::Attributed, None)
    };
    AttributionRecord {
        output: output.to_string(),
        model: model.to_string(),
        status,
        reason,
        embedding_model: Some(set.embedding_model().to_string()),
        rule: Some(*rule),
        training_samples: set.len() as u64,
        neighbours: listed,
        shares,
        revocations_checked: revoked.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> TrainingSet {
        let rows = [
            ("a/1", "alice", [1.0f32, 0.0, 0.0]),
            ("a/2", "alice", [0.9, 0.1, 0.0]),
            ("b/1", "bob", [0.95, 0.05, 0.0]),
            ("c/1", "carol", [0.0, 0.0, 1.0]),
        ];
        let jsonl: String = rows
            .iter()
            .map(|(image, c, e)| {
                let n = e.iter().map(|x| x * x).sum::<f32>().sqrt();
                let e: Vec<f32> = e.iter().map(|x| x / n).collect();
                serde_json::json!({"image": image, "contributor": c, "licence": "cc-by-4.0", "embedding": e})
                    .to_string()
                    + "\n"
            })
            .collect();
        let mut set = TrainingSet::new(3, "m@1", "sha256:aa").unwrap();
        set.add_training_embeddings(&jsonl, "gen@1").unwrap();
        set
    }

    fn record(revoked: Option<&Revocations>) -> AttributionRecord {
        let set = set();
        let rule = ShareRule { top_k: 3, min_similarity: 0.5, temperature: 0.05 };
        let found = neighbours(&set, &rule, &[1.0, 0.0, 0.0]).unwrap();
        attribute("t/results/j/x/result.png", "gen@1", &set, &rule, found, revoked)
    }

    fn share(r: &AttributionRecord, who: &str) -> f64 {
        r.shares.iter().find(|s| s.contributor == who).map_or(0.0, |s| s.share)
    }

    #[test]
    fn shares_follow_similarity_sum_to_one_and_skip_the_dissimilar() {
        let r = record(Some(&Revocations::default()));
        assert_eq!(r.status, AttributionStatus::Attributed);
        let sum: f64 = r.shares.iter().map(|s| s.share).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        // alice has the nearest sample and a second near one; carol's is orthogonal.
        assert!(share(&r, "alice") > share(&r, "bob") && share(&r, "bob") > 0.0, "{:?}", r.shares);
        assert_eq!(share(&r, "carol"), 0.0);
        assert_eq!(r.shares[0].contributor, "alice");
        assert!(r.revocations_checked);
    }

    #[test]
    fn a_revoked_contributor_is_listed_never_credited_and_the_others_share_everything() {
        let before = record(Some(&Revocations::default()));
        let mut revoked = Revocations::default();
        revoked.contributors.insert("alice".into());
        let after = record(Some(&revoked));
        assert_eq!(share(&after, "alice"), 0.0);
        assert!((after.shares.iter().map(|s| s.share).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(share(&after, "bob") > share(&before, "bob"));
        assert!(after.neighbours.iter().any(|n| n.revoked && n.sample.contributor == "alice" && n.weight == 0.0));
    }

    #[test]
    fn one_revoked_image_leaves_the_contributors_other_images_credited() {
        let mut revoked = Revocations::default();
        revoked.images.insert(("alice".into(), "a/1".into()));
        let r = record(Some(&revoked));
        assert!(share(&r, "alice") > 0.0);
        assert!(r.neighbours.iter().any(|n| n.revoked && n.sample.image == "a/1"));
        assert!(r.neighbours.iter().any(|n| !n.revoked && n.sample.image == "a/2" && n.weight > 0.0));
    }

    #[test]
    fn nothing_similar_enough_credits_nobody_and_says_why() {
        let set = set();
        let rule = ShareRule { top_k: 3, min_similarity: 0.99, temperature: 0.05 };
        let found = neighbours(&set, &rule, &[0.0, 1.0, 0.0]).unwrap();
        let r = attribute("o", "gen@1", &set, &rule, found, None);
        assert_eq!(r.status, AttributionStatus::NoSimilarSample);
        assert!(r.shares.is_empty() && r.reason.is_some() && !r.revocations_checked);
    }
}
