//! The `fine_tune` job: train a matting model from the registry on a tenant's own image +
//! mask pairs (or, with `target: background_generator`, a diffusion inpainting generator on
//! images + prompts with masks made by a matting model), in two phases, and register the
//! result as the tenant's model.
//!
//! ```json
//! {"id": "ft-glass-1", "priority": "batch", "kind": "fine_tune",
//!  "spec": {"base_model": "matting-ref@1.0.0",
//!           "data": "tenant-a/datasets/glass.jsonl",
//!           "output": {"name": "glass", "version": "1"},
//!           "hyper": {"steps_phase1": 200, "steps_phase2": 100, "batch_size": 8, "lr": 0.001,
//!                     "warmup_steps": 20, "schedule": "cosine"}}}
//! ```
//!
//! The data set is a JSON-lines object in the tenant's space, one sample per line:
//! `{"image": "<key>", "mask": "<key>", "contributor": "c-17", "licence": "cc-by-4.0"}`.
//! Every hyper-parameter has bounds; anything outside them rejects the job with the reason.

use serde::{Deserialize, Serialize};

use crate::keys::{check_tenant_key, TenantId};
use crate::manifest::ModelRef;
use crate::rejection::Rejection;

/// The spec of a `fine_tune` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneSpec {
    /// The model to start from, `name@version`: the tenant's own or a shared one.
    pub base_model: String,
    /// Key of the JSON-lines data set in the tenant's space.
    pub data: String,
    /// Name and version the trained model is registered under, in the tenant's space.
    pub output: OutputModel,
    /// Training settings; every field has a default.
    #[serde(default)]
    pub hyper: Hyper,
    /// What it holds on a device while it trains, and whether interactive work may preempt
    /// it; by default a whole device, preemptible.
    #[serde(default)]
    pub resources: Resources,
    /// What kind of model it trains: `matting` (the default) or `background_generator`.
    #[serde(default)]
    pub target: Target,
    /// How a background generator's training masks are made; needed for that target.
    #[serde(default)]
    pub generator: Option<GeneratorTraining>,
}

/// What kind of model a fine-tune trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A matting model, on image + mask pairs.
    #[default]
    Matting,
    /// A diffusion inpainting background generator, on images + prompts; its masks come
    /// from a matting model.
    BackgroundGenerator,
}

/// Where a background generator's training masks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// The background of each image, as the matting model sees it, with the product dilated
    /// so none of its pixels is in the region to generate (the method's "advanced" masks).
    #[default]
    Background,
    /// Random brush strokes anywhere in the image, as general inpainting models are trained
    /// (kept for comparison: see EXPERIMENTS.md).
    Scribble,
}

/// Settings of a background generator's training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorTraining {
    /// Matting model (`name@version`) that makes the background masks, scores their
    /// quality and embeds the training images.
    pub mask_model: String,
    /// Background masks (default) or scribbles.
    #[serde(default)]
    pub masks: MaskSource,
    /// How far the product is dilated, as a percentage of the long side (0..=20).
    #[serde(default = "default_dilate_pct")]
    pub dilate_pct: f32,
    /// Leak filter: a sample whose matte has more than this share of uncertain pixels
    /// (alpha strictly between 0.1 and 0.9) around the product is dropped (0..=1).
    #[serde(default = "default_leak_threshold")]
    pub leak_threshold: f64,
}

fn default_dilate_pct() -> f32 {
    4.0
}

fn default_leak_threshold() -> f64 {
    0.35
}

/// What a fine-tune asks of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Device memory it declares it needs, MiB (256..=1,048,576): it shares the device with
    /// other work within that share. Absent: it takes a whole device, which runs nothing else
    /// while it trains.
    pub memory_mib: Option<u64>,
    /// Whether interactive work that finds no device may preempt it: it checkpoints, gives
    /// its device back and resumes from that checkpoint when a device is free again.
    pub preemptible: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { memory_mib: None, preemptible: true }
    }
}

impl Resources {
    /// Whether it takes a whole device.
    pub fn whole_device(&self) -> bool {
        self.memory_mib.is_none()
    }
}

/// Where the trained model is registered: `<tenant>/models/<name>/<version>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputModel {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
}

impl OutputModel {
    /// As a model reference.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef { name: self.name.clone(), version: self.version.clone() }
    }
}

/// How the learning rate moves after the linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Stays at the peak.
    Constant,
    /// Cosine decay from the peak to 5 % of it at the last step of the phase.
    #[default]
    Cosine,
    /// Triangular cycles of `cycle_steps` between 10 % of the peak and the peak.
    Cyclic,
}

/// Training settings, with bounds checked at submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hyper {
    /// Optimiser steps on every accepted sample (1..=100,000).
    pub steps_phase1: u32,
    /// Optimiser steps on the samples above `quality_threshold` only (0..=100,000).
    pub steps_phase2: u32,
    /// Samples per step (1..=64).
    pub batch_size: u32,
    /// Peak learning rate (1e-6..=1).
    pub lr: f64,
    /// Linear warm-up steps at the start of each phase (0..=steps of the phase).
    pub warmup_steps: u32,
    /// After the warm-up.
    pub schedule: Schedule,
    /// Length of one cycle of the cyclic schedule (2..=100,000).
    pub cycle_steps: u32,
    /// Decoupled weight decay (0..=1).
    pub weight_decay: f64,
    /// Share of samples held out for validation (0.05..=0.5).
    pub validation_fraction: f64,
    /// Seed of the split, the batches, the augmentations and the corruption.
    pub seed: u64,
    /// Pixels per training image: each sample is resized into the aspect-ratio bucket
    /// nearest its own, at this many pixels (1,024..=4,194,304; about 1 MP in production).
    pub pixel_budget: u32,
    /// Share of training images corrupted with noise so no contributor's photo is memorised
    /// (0..=0.9).
    pub corruption_ratio: f64,
    /// Mask-quality score a sample needs to take part in phase 2 (0..=1).
    pub quality_threshold: f64,
    /// A checkpoint every this many steps (1..=100,000).
    pub checkpoint_every: u32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            steps_phase1: 200,
            steps_phase2: 100,
            batch_size: 8,
            lr: 1e-3,
            warmup_steps: 20,
            schedule: Schedule::Cosine,
            cycle_steps: 100,
            weight_decay: 1e-4,
            validation_fraction: 0.2,
            seed: 0,
            pixel_budget: 1 << 20,
            corruption_ratio: 0.0,
            quality_threshold: 0.8,
            checkpoint_every: 50,
        }
    }
}

impl Hyper {
    /// Steps in both phases.
    pub fn total_steps(&self) -> u32 {
        self.steps_phase1 + self.steps_phase2
    }
}

/// One line of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Key of the image.
    pub image: String,
    /// Key of its mask (grey, same size; white = object); matting fine-tunes need one.
    #[serde(default)]
    pub mask: Option<String>,
    /// What the image's background shows (background generators).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Who contributed it.
    #[serde(default)]
    pub contributor: Option<String>,
    /// Under which licence.
    #[serde(default)]
    pub licence: Option<String>,
}

/// A sample refused before training, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Line of the data set, from 1.
    pub line: usize,
    /// The image key, where readable.
    pub image: String,
    /// `no_licence`, `no_contributor`, `invalid_key`, `unreadable`, `mask_mismatch`, ...
    pub code: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses a data set, keeping the samples that carry a licence (one of `allowed`, when the
/// tenant's policy lists them) and a contributor, whose keys are the tenant's and that have
/// what `target` trains on (a mask for matting); the others are refused with reasons.
pub fn parse_dataset(
    text: &str,
    tenant: &TenantId,
    target: Target,
    allowed: Option<&[String]>,
) -> (Vec<(usize, Sample)>, Vec<Refusal>) {
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let refuse = |image: &str, code: &str, reason: String| Refusal {
            line: line_no,
            image: image.to_string(),
            code: code.to_string(),
            reason,
        };
        let sample: Sample = match serde_json::from_str(trimmed) {
            Ok(s) => s,
            Err(e) => {
                refused.push(refuse("", "unreadable", format!("line {line_no}: {e}")));
                continue;
            }
        };
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let keys = check_tenant_key(tenant, &sample.image)
            .and_then(|_| sample.mask.as_deref().map_or(Ok(()), |m| check_tenant_key(tenant, m)));
        if let Err(e) = keys {
            refused.push(refuse(&sample.image, "invalid_key", e.to_string()));
        } else if target == Target::Matting && sample.mask.is_none() {
            refused.push(refuse(&sample.image, "no_mask", "a matting fine-tune needs a mask per image".into()));
        } else if sample.prompt.as_ref().is_some_and(|p| p.chars().count() > crate::limits::MAX_PROMPT_CHARS) {
            let reason = format!("prompt longer than {} characters", crate::limits::MAX_PROMPT_CHARS);
            refused.push(refuse(&sample.image, "invalid_prompt", reason));
        } else if !present(&sample.licence) {
            let reason = "no licence: a sample must say under which licence it may be trained on".to_string();
            refused.push(refuse(&sample.image, "no_licence", reason));
        } else if !present(&sample.contributor) {
            let reason = "no contributor: outputs could not be traced back to who made it".to_string();
            refused.push(refuse(&sample.image, "no_contributor", reason));
        } else if let Some(allowed) = allowed.filter(|a| {
            !a.iter().any(|l| l.trim().eq_ignore_ascii_case(sample.licence.as_deref().unwrap_or("").trim()))
        }) {
            let reason = format!(
                "licence {:?} is not one the tenant may train on ({})",
                sample.licence.as_deref().unwrap_or(""),
                allowed.join(", ")
            );
            refused.push(refuse(&sample.image, "licence_not_allowed", reason));
        } else {
            kept.push((line_no, sample));
        }
    }
    (kept, refused)
}

/// Checks a fine-tune spec published by `tenant`; returns the base model reference.
pub fn check(spec: &FineTuneSpec, tenant: &TenantId) -> Result<ModelRef, Rejection> {
    let invalid = |reason: String| Rejection { code: "invalid".into(), reason };
    let base = spec.base_model.parse::<ModelRef>().map_err(|e| invalid(format!("base_model: {e}")))?;
    check_tenant_key(tenant, &spec.data).map_err(Rejection::from)?;
    let name_ok = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !s.starts_with('.')
    };
    if !name_ok(&spec.output.name) || !name_ok(&spec.output.version) {
        return Err(invalid("output.name and output.version must be 1 to 64 letters, digits, '-', '_' or '.'".into()));
    }
    let h = &spec.hyper;
    let within = |what: &str, ok: bool, range: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(format!("hyper.{what} must be within {range}")))
        }
    };
    within("steps_phase1", (1..=100_000).contains(&h.steps_phase1), "1..=100000")?;
    within("steps_phase2", h.steps_phase2 <= 100_000, "0..=100000")?;
    within("batch_size", (1..=64).contains(&h.batch_size), "1..=64")?;
    within("lr", (1e-6..=1.0).contains(&h.lr), "1e-6..=1")?;
    within("warmup_steps", h.warmup_steps <= h.steps_phase1, "0..=steps_phase1")?;
    within("cycle_steps", (2..=100_000).contains(&h.cycle_steps), "2..=100000")?;
    within("weight_decay", (0.0..=1.0).contains(&h.weight_decay), "0..=1")?;
    within("validation_fraction", (0.05..=0.5).contains(&h.validation_fraction), "0.05..=0.5")?;
    within("pixel_budget", (1_024..=4_194_304).contains(&h.pixel_budget), "1024..=4194304")?;
    within("corruption_ratio", (0.0..=0.9).contains(&h.corruption_ratio), "0..=0.9")?;
    within("quality_threshold", (0.0..=1.0).contains(&h.quality_threshold), "0..=1")?;
    within("checkpoint_every", (1..=100_000).contains(&h.checkpoint_every), "1..=100000")?;
    match (spec.target, &spec.generator) {
        (Target::BackgroundGenerator, None) => {
            return Err(invalid("a background_generator fine-tune needs generator.mask_model".into()))
        }
        (Target::BackgroundGenerator, Some(g)) => {
            g.mask_model.parse::<ModelRef>().map_err(|e| invalid(format!("generator.mask_model: {e}")))?;
            if !(0.0..=20.0).contains(&g.dilate_pct) {
                return Err(invalid("generator.dilate_pct must be within 0..=20".into()));
            }
            if !(0.0..=1.0).contains(&g.leak_threshold) {
                return Err(invalid("generator.leak_threshold must be within 0..=1".into()));
            }
        }
        (Target::Matting, Some(_)) => {
            return Err(invalid("generator settings are for target background_generator only".into()))
        }
        (Target::Matting, None) => {}
    }
    if let Some(mib) = spec.resources.memory_mib {
        if !(256..=1_048_576).contains(&mib) {
            return Err(invalid("resources.memory_mib must be within 256..=1048576".into()));
        }
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("tenant-a").unwrap()
    }

    fn spec() -> FineTuneSpec {
        FineTuneSpec {
            base_model: "matting-ref@1.0.0".into(),
            data: "tenant-a/ds.jsonl".into(),
            output: OutputModel { name: "glass".into(), version: "1".into() },
            hyper: Hyper::default(),
            resources: Resources::default(),
            target: Target::Matting,
            generator: None,
        }
    }

    /// A change that puts one hyper-parameter out of bounds, and the field the refusal names.
    type OutOfBounds = (fn(&mut Hyper), &'static str);

    #[test]
    fn hyper_parameters_out_of_bounds_are_refused_with_the_field_named() {
        assert!(check(&spec(), &tenant()).is_ok());
        let cases: Vec<OutOfBounds> = vec![
            (|h| h.lr = 5.0, "hyper.lr"),
            (|h| h.batch_size = 0, "hyper.batch_size"),
            (|h| h.warmup_steps = h.steps_phase1 + 1, "hyper.warmup_steps"),
            (|h| h.validation_fraction = 0.9, "hyper.validation_fraction"),
            (|h| h.pixel_budget = 10, "hyper.pixel_budget"),
            (|h| h.corruption_ratio = 1.0, "hyper.corruption_ratio"),
            (|h| h.checkpoint_every = 0, "hyper.checkpoint_every"),
        ];
        for (break_it, field) in cases {
            let mut s = spec();
            break_it(&mut s.hyper);
            let e = check(&s, &tenant()).unwrap_err();
            assert!(e.reason.contains(field), "{field}: {e:?}");
        }
        let mut other = spec();
        other.data = "tenant-b/ds.jsonl".into();
        assert_eq!(check(&other, &tenant()).unwrap_err().code, "forbidden");
        let mut tiny_share = spec();
        tiny_share.resources.memory_mib = Some(10);
        assert!(check(&tiny_share, &tenant()).unwrap_err().reason.contains("resources.memory_mib"));
        let mut bad_name = spec();
        bad_name.output.name = "../x".into();
        assert!(check(&bad_name, &tenant()).is_err());
        let parsed: Result<FineTuneSpec, _> = serde_json::from_value(serde_json::json!({
            "base_model": "m@1", "data": "tenant-a/d", "output": {"name": "n", "version": "1"},
            "hyper": {"learning_rate": 0.1}
        }));
        assert!(parsed.is_err(), "unknown hyper-parameters are refused, not ignored");
    }

    #[test]
    fn unlicensed_and_anonymous_samples_are_refused_with_reasons() {
        let text = [
            r#"{"image": "tenant-a/i/1.png", "mask": "tenant-a/m/1.png", "contributor": "c1", "licence": "cc-by"}"#,
            r#"{"image": "tenant-a/i/2.png", "mask": "tenant-a/m/2.png", "contributor": "c2"}"#,
            r#"{"image": "tenant-a/i/3.png", "mask": "tenant-a/m/3.png", "licence": "cc-by"}"#,
            r#"{"image": "tenant-b/i/4.png", "mask": "tenant-a/m/4.png", "contributor": "c4", "licence": "cc-by"}"#,
            "# a comment",
            "not json",
            r#"{"image": "tenant-a/i/7.png", "prompt": "wood", "contributor": "c7", "licence": "cc-by"}"#,
        ]
        .join("\n");
        let (kept, refused) = parse_dataset(&text, &tenant(), Target::Matting, None);
        assert_eq!(kept.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [1]);
        let codes: Vec<(usize, &str)> = refused.iter().map(|r| (r.line, r.code.as_str())).collect();
        assert_eq!(
            codes,
            [(2, "no_licence"), (3, "no_contributor"), (4, "invalid_key"), (6, "unreadable"), (7, "no_mask")]
        );
        // A generator trains on images and prompts: no mask needed.
        let (kept, _) = parse_dataset(&text, &tenant(), Target::BackgroundGenerator, None);
        assert_eq!(kept.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [1, 7]);
        assert_eq!(kept[1].1.prompt.as_deref(), Some("wood"));
    }

    #[test]
    fn samples_under_a_licence_the_tenant_may_not_train_on_are_refused_with_the_list() {
        let text = [
            r#"{"image": "tenant-a/i/1.png", "prompt": "wood", "contributor": "c1", "licence": "CC-BY-4.0"}"#,
            r#"{"image": "tenant-a/i/2.png", "prompt": "wood", "contributor": "c2", "licence": "cc-by-nc-4.0"}"#,
        ]
        .join("\n");
        let allowed = ["cc-by-4.0".to_string(), "cc0-1.0".to_string()];
        let (kept, refused) = parse_dataset(&text, &tenant(), Target::BackgroundGenerator, Some(&allowed));
        assert_eq!(kept.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [1]);
        assert_eq!((refused[0].line, refused[0].code.as_str()), (2, "licence_not_allowed"));
        assert!(refused[0].reason.contains("cc-by-nc-4.0") && refused[0].reason.contains("cc0-1.0"));
        let (kept, _) = parse_dataset(&text, &tenant(), Target::BackgroundGenerator, None);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn a_generator_fine_tune_needs_its_mask_model_and_sane_mask_settings() {
        let mut g = spec();
        g.target = Target::BackgroundGenerator;
        assert!(check(&g, &tenant()).unwrap_err().reason.contains("mask_model"));
        let settings = GeneratorTraining {
            mask_model: "matting-ref@1.0.0".into(),
            masks: MaskSource::Background,
            dilate_pct: 4.0,
            leak_threshold: 0.35,
        };
        g.generator = Some(settings.clone());
        assert!(check(&g, &tenant()).is_ok());
        g.generator = Some(GeneratorTraining { dilate_pct: 25.0, ..settings.clone() });
        assert!(check(&g, &tenant()).unwrap_err().reason.contains("dilate_pct"));
        g.generator = Some(GeneratorTraining { mask_model: "no-version".into(), ..settings.clone() });
        assert!(check(&g, &tenant()).unwrap_err().reason.contains("mask_model"));
        let mut m = spec();
        m.generator = Some(settings);
        assert!(check(&m, &tenant()).unwrap_err().reason.contains("background_generator only"));
    }
}
