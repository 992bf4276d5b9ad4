//! The job message a client publishes, and its strict validation. A job is JSON; unknown
//! fields, out-of-range values and keys outside the submitter's prefix are refused with a
//! [`Rejection`] the submitter can read. The tenant never comes from the body: it is the
//! broker-authenticated user that published the message.
//!
//! ```json
//! {"id": "catalog-2026-11-23", "priority": "batch", "kind": "background_replace",
//!  "spec": {"input": {"prefix": "tenant-a/catalog/"},
//!           "background": {"mode": "color", "color": "#f2f2f2"},
//!           "output": {"format": "jpeg", "quality": 90},
//!           "model": "matting-ref@1.0.0"}}
//! ```

use serde::{Deserialize, Serialize};

use crate::keys::{check_key, check_tenant_key, check_tenant_prefix, KeyError, TenantId};
use crate::manifest::ModelRef;

/// Largest job message accepted, well under the broker's frame limits: big catalogs use a
/// manifest object or a prefix, not a key list.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most input keys a message may list.
pub const MAX_LISTED_KEYS: usize = 10_000;
/// Images per task, bounds.
pub const SHARD_SIZE_RANGE: (u32, u32) = (1, 1_000);
/// Largest output side a job may ask for.
pub const MAX_OUTPUT_SIDE: u32 = 8_192;

/// Who goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A person is waiting: goes ahead of any batch backlog.
    Interactive,
    /// Catalog re-renders and other bulk work.
    Batch,
}

/// A job as published: the envelope is checked first, then `spec` against its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Client idempotency key: the same id submitted twice by one tenant makes one job.
    pub id: String,
    /// Interactive or batch.
    pub priority: Priority,
    /// What to do.
    pub kind: JobKindName,
    /// The kind's spec, validated by [`validate`].
    pub spec: serde_json::Value,
}

/// Job kind names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKindName {
    /// Re-render images with a new background.
    BackgroundReplace,
    /// Train a matting model on the tenant's own image + mask pairs.
    FineTune,
}

/// The kinds of job, each with its typed spec.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Re-render images with a new background.
    BackgroundReplace(BackgroundReplaceSpec),
    /// Train a matting model (see [`crate::finetune`]).
    FineTune(crate::finetune::FineTuneSpec),
}

/// Which images a job covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InputSpec {
    /// An explicit list of keys.
    Keys(Vec<String>),
    /// Every object under a prefix.
    Prefix(String),
    /// An object listing one key per line.
    Manifest(String),
}

/// The new background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackgroundSpec {
    /// RGBA cutout.
    Transparent,
    /// A solid colour, `#rrggbb`.
    Color {
        /// `#rrggbb`.
        color: String,
    },
    /// A background image from the tenant's space, cover-fit.
    Image {
        /// Its key.
        key: String,
    },
    /// The original photo, blurred.
    Blur {
        /// Blur radius as a percentage of the long side, in (0, 20].
        #[serde(default = "default_blur")]
        strength_pct: f32,
    },
}

fn default_blur() -> f32 {
    2.0
}

/// Output encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `png`, `jpeg` or `webp`.
    pub format: OutputFormatName,
    /// JPEG quality, 1..=100 (ignored by png and webp).
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Downscale results so the long side is at most this; absent keeps the input size.
    #[serde(default)]
    pub max_side: Option<u32>,
}

fn default_quality() -> u8 {
    90
}

/// Output format names a job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormatName {
    /// PNG, with alpha when transparent.
    Png,
    /// JPEG, no alpha.
    Jpeg,
    /// Lossless WebP, with alpha when transparent.
    Webp,
}

/// The spec of a `background_replace` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundReplaceSpec {
    /// Which images.
    pub input: InputSpec,
    /// The new background.
    pub background: BackgroundSpec,
    /// How results are encoded.
    pub output: OutputSpec,
    /// Matting model as `name@version`.
    pub model: String,
    /// Images per task; the scheduler's default when absent.
    #[serde(default)]
    pub shard_size: Option<u32>,
    /// A shadow under the product, with any background.
    #[serde(default)]
    pub shadow: Option<ShadowSpec>,
}

/// A shadow the product casts on its new background.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// `drop` (the silhouette, offset and blurred) or `contact` (a soft ellipse at the base).
    pub kind: ShadowKindName,
    /// Darkness where the shadow is full, in [0, 1].
    #[serde(default = "default_shadow_opacity")]
    pub opacity: f32,
    /// Softness: blur as a percentage of the long side, in [0, 10].
    #[serde(default = "default_shadow_blur")]
    pub blur_pct: f32,
    /// `[right, down]` offset as percentages of the long side, each in [-20, 20] (drop).
    #[serde(default = "default_shadow_offset")]
    pub offset_pct: [f32; 2],
}

/// Shadow kinds a job may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowKindName {
    /// Offset, blurred silhouette.
    Drop,
    /// Soft ellipse under the base.
    Contact,
}

fn default_shadow_opacity() -> f32 {
    0.5
}

fn default_shadow_blur() -> f32 {
    1.5
}

fn default_shadow_offset() -> [f32; 2] {
    [1.5, 2.5]
}

/// Why a job was refused, for the submitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("job rejected ({code}): {reason}")]
pub struct Rejection {
    /// Stable code: `malformed`, `invalid`, `forbidden`, `too_large`.
    pub code: String,
    /// What to fix.
    pub reason: String,
}

impl Rejection {
    fn new(code: &str, reason: impl Into<String>) -> Self {
        Rejection { code: code.to_string(), reason: reason.into() }
    }
}

impl From<KeyError> for Rejection {
    fn from(e: KeyError) -> Self {
        let code = if matches!(e, KeyError::OutsideTenant { .. }) { "forbidden" } else { "invalid" };
        Rejection::new(code, e.to_string())
    }
}

/// A job that passed validation, with the tenant that submitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// Authenticated submitter.
    pub tenant: TenantId,
    /// The request as published.
    pub request: JobRequest,
    /// The typed spec.
    pub work: JobKind,
    /// Parsed model reference: the model a re-render uses, or the base of a fine-tune.
    pub model: ModelRef,
}

/// Parses and validates a message body published by `tenant`.
pub fn validate(body: &[u8], tenant: &TenantId) -> Result<ValidJob, Rejection> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new("too_large", format!("message is {} bytes, over {MAX_MESSAGE_BYTES}", body.len())));
    }
    let request: JobRequest = serde_json::from_slice(body).map_err(|e| Rejection::new("malformed", e.to_string()))?;
    check_id(&request.id)?;
    let malformed = |e: serde_json::Error| Rejection::new("malformed", format!("spec: {e}"));
    let (work, model) = match request.kind {
        JobKindName::BackgroundReplace => {
            let spec: BackgroundReplaceSpec = serde_json::from_value(request.spec.clone()).map_err(malformed)?;
            let model = spec.model.parse::<ModelRef>().map_err(|e| Rejection::new("invalid", e.to_string()))?;
            check_spec(&spec, tenant)?;
            (JobKind::BackgroundReplace(spec), model)
        }
        JobKindName::FineTune => {
            let spec: crate::finetune::FineTuneSpec =
                serde_json::from_value(request.spec.clone()).map_err(malformed)?;
            let base = crate::finetune::check(&spec, tenant)?;
            (JobKind::FineTune(spec), base)
        }
    };
    Ok(ValidJob { tenant: tenant.clone(), request, work, model })
}

/// Whether `id` is usable as a job id: 1 to 128 letters, digits, `-`, `_` or `.`, not
/// starting with `.`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}

fn check_id(id: &str) -> Result<(), Rejection> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Rejection::new("invalid", "id must be 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"))
    }
}

fn check_spec(spec: &BackgroundReplaceSpec, tenant: &TenantId) -> Result<(), Rejection> {
    match &spec.input {
        InputSpec::Keys(keys) => {
            if keys.is_empty() || keys.len() > MAX_LISTED_KEYS {
                return Err(Rejection::new(
                    "invalid",
                    format!("input.keys must list 1 to {MAX_LISTED_KEYS} keys (use a manifest or prefix for more)"),
                ));
            }
            keys.iter().try_for_each(|k| check_tenant_key(tenant, k))?;
            let mut seen = std::collections::HashSet::with_capacity(keys.len());
            if let Some(twice) = keys.iter().find(|k| !seen.insert(k.as_str())) {
                return Err(Rejection::new("invalid", format!("input.keys lists {twice:?} twice")));
            }
        }
        InputSpec::Prefix(prefix) => check_tenant_prefix(tenant, prefix)?,
        InputSpec::Manifest(key) => check_tenant_key(tenant, key)?,
    }
    match &spec.background {
        BackgroundSpec::Color { color } => check_color(color)?,
        BackgroundSpec::Image { key } => {
            check_key(key)?;
            check_tenant_key(tenant, key)?;
        }
        BackgroundSpec::Blur { strength_pct } if !(*strength_pct > 0.0 && *strength_pct <= 20.0) => {
            return Err(Rejection::new("invalid", "background.strength_pct must be in (0, 20]"));
        }
        BackgroundSpec::Transparent | BackgroundSpec::Blur { .. } => {}
    }
    if let Some(shadow) = &spec.shadow {
        let within = |v: f32, lo: f32, hi: f32| v >= lo && v <= hi;
        if !within(shadow.opacity, 0.0, 1.0) {
            return Err(Rejection::new("invalid", "shadow.opacity must be in [0, 1]"));
        }
        if !within(shadow.blur_pct, 0.0, 10.0) {
            return Err(Rejection::new("invalid", "shadow.blur_pct must be in [0, 10]"));
        }
        if !shadow.offset_pct.iter().all(|&o| within(o, -20.0, 20.0)) {
            return Err(Rejection::new("invalid", "shadow.offset_pct values must be in [-20, 20]"));
        }
    }
    let out = &spec.output;
    if !(1..=100).contains(&out.quality) {
        return Err(Rejection::new("invalid", "output.quality must be within 1..=100"));
    }
    if out.max_side.is_some_and(|s| !(16..=MAX_OUTPUT_SIDE).contains(&s)) {
        return Err(Rejection::new("invalid", format!("output.max_side must be within 16..={MAX_OUTPUT_SIDE}")));
    }
    if matches!(spec.background, BackgroundSpec::Transparent) && out.format == OutputFormatName::Jpeg {
        return Err(Rejection::new(
            "invalid",
            "a transparent background needs png or webp output: jpeg cannot carry alpha",
        ));
    }
    let (lo, hi) = SHARD_SIZE_RANGE;
    if spec.shard_size.is_some_and(|s| !(lo..=hi).contains(&s)) {
        return Err(Rejection::new("invalid", format!("shard_size must be within {lo}..={hi}")));
    }
    Ok(())
}

/// Parses `#rrggbb` (the `#` is optional).
pub fn parse_hex_color(hex: &str) -> Result<[u8; 3], String> {
    let digits = hex.strip_prefix('#').unwrap_or(hex);
    let bad = || format!("colour must be #rrggbb, got {hex:?}");
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let channel = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad());
    Ok([channel(0)?, channel(2)?, channel(4)?])
}

fn check_color(color: &str) -> Result<(), Rejection> {
    parse_hex_color(color).map(|_| ()).map_err(|e| Rejection::new("invalid", format!("background.color: {e}")))
}

#[cfg(test)]
mod tests;
