//! The S3 layout, in one place, and the checks that keep each tenant inside its own prefix.
//!
//! ```text
//! models/<name>/<version>/{manifest.json, model.pt, ...}        shared model registry
//! <tenant>/...                                                   the tenant's inputs, any layout
//! <tenant>/results/<job>/<item>/result.{png|jpg|webp}            result image
//! <tenant>/results/<job>/<item>/result.<k>.{png|jpg|webp}        generated result k (from 1)
//! <tenant>/results/<job>/<item>/matte.png                        8-bit alpha matte
//! <tenant>/results/<job>/<item>/embedding[.<k>].npy              L2-normalised float32 embedding
//! <tenant>/results/<job>/<item>/attribution[.<k>].json           training samples and contributors' shares
//! <tenant>/results/<job>/_tasks/<task>.json                      per-task manifest
//! ```
//!
//! Each input has a folder of its own named by [`item_name`], which has no `/` and never
//! starts with `_`, so no input's outputs can land on another's or on a task manifest,
//! whatever the input keys are called (`x.jpg.matte` and `x.jpg.1` included).
//!
//! Keys a tenant names are checked, never trusted: no `.` or `..` segments, no empty
//! segments, no control characters or backslashes, at most 1,024 bytes, and under the
//! tenant's own prefix. Result keys are generated from validated ids only.

use std::fmt;

/// Longest key S3 accepts.
pub const MAX_KEY_BYTES: usize = 1024;

/// A tenant name as the broker authenticated it (`tenant-a`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// An object key or tenant name that breaks the layout rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is malformed whoever asks for it.
    #[error("key {key:?} is invalid: {reason}")]
    Invalid {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The key is well formed but belongs to another tenant's space.
    #[error("key {key:?} is outside tenant {tenant}'s prefix {tenant}/")]
    OutsideTenant {
        /// The key as given.
        key: String,
        /// The tenant asking.
        tenant: String,
    },
    /// The tenant name itself is not usable as a prefix.
    #[error("tenant name {0:?} must be 1 to 63 lowercase letters, digits or '-'")]
    BadTenant(String),
}

impl TenantId {
    /// Accepts `[a-z0-9-]{1,63}`, not starting with `-`; `models` is reserved for the registry.
    pub fn new(name: &str) -> Result<Self, KeyError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && name != "models"
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(TenantId(name.to_string()))
        } else {
            Err(KeyError::BadTenant(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the syntax of a key: segments separated by `/`, none empty, none `.` or `..`,
/// no control characters or backslashes, at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), KeyError> {
    let invalid = |reason| Err(KeyError::Invalid { key: key.to_string(), reason });
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("it is longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return invalid("it contains a control character or a backslash");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("it has an empty path segment (leading, trailing or doubled '/')"),
            "." | ".." => return invalid("it has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a key a tenant named: valid, and under `<tenant>/`.
pub fn check_tenant_key(tenant: &TenantId, key: &str) -> Result<(), KeyError> {
    check_key(key)?;
    match key.strip_prefix(tenant.as_str()).and_then(|rest| rest.strip_prefix('/')) {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(KeyError::OutsideTenant { key: key.to_string(), tenant: tenant.to_string() }),
    }
}

/// Checks a prefix a tenant named (it may end with `/`).
pub fn check_tenant_prefix(tenant: &TenantId, prefix: &str) -> Result<(), KeyError> {
    check_tenant_key(tenant, prefix.strip_suffix('/').unwrap_or(prefix))
}

/// Where a job's outputs go: `<tenant>/results/<job>/`.
pub fn results_prefix(tenant: &TenantId, job_id: &str) -> String {
    format!("{tenant}/results/{job_id}/")
}

/// Output keys of one input image, derived from the input key so a re-run rewrites the
/// same keys: `(result, matte, embedding)`.
pub fn output_keys(tenant: &TenantId, job_id: &str, input_key: &str, extension: &str) -> (String, String, String) {
    let folder = item_folder(tenant, job_id, input_key);
    (format!("{folder}result.{extension}"), format!("{folder}matte.png"), format!("{folder}embedding.npy"))
}

/// Keys of generated result `k` (from 1) of one input: `(result, embedding)`.
pub fn variant_keys(tenant: &TenantId, job_id: &str, input_key: &str, extension: &str, k: usize) -> (String, String) {
    let folder = item_folder(tenant, job_id, input_key);
    (format!("{folder}result.{k}.{extension}"), format!("{folder}embedding.{k}.npy"))
}

/// Key of the attribution record of an input's result `k` (0: the first result, `result.*`).
pub fn attribution_key(tenant: &TenantId, job_id: &str, input_key: &str, k: usize) -> String {
    let folder = item_folder(tenant, job_id, input_key);
    match k {
        0 => format!("{folder}attribution.json"),
        k => format!("{folder}attribution.{k}.json"),
    }
}

/// The folder of one input's outputs: `<tenant>/results/<job>/<item>/`.
pub fn item_folder(tenant: &TenantId, job_id: &str, input_key: &str) -> String {
    format!("{}{}/", results_prefix(tenant, job_id), item_name(tenant, input_key))
}

/// Where a job's task manifests go: `<tenant>/results/<job>/_tasks/`.
pub fn task_manifests_prefix(tenant: &TenantId, job_id: &str) -> String {
    format!("{}_tasks/", results_prefix(tenant, job_id))
}

/// The manifest of one task: `<tenant>/results/<job>/_tasks/<task, 6 digits>.json`.
pub fn task_manifest_key(tenant: &TenantId, job_id: &str, task: u32) -> String {
    format!("{}{task:06}.json", task_manifests_prefix(tenant, job_id))
}

/// A flat, collision-free item name for an input key: the key below the tenant prefix with
/// `%` and `_` percent-encoded, then `/` turned into `__` (`cat/a_b/1.jpg` ->
/// `cat__a%5Fb__1.jpg`). The mapping is one-to-one, so two inputs never share outputs, and a
/// name never starts with `_` (so never `_tasks`).
pub fn item_name(tenant: &TenantId, input_key: &str) -> String {
    let below = input_key.strip_prefix(&format!("{tenant}/")).unwrap_or(input_key);
    below.replace('%', "%25").replace('_', "%5F").replace('/', "__")
}

/// Whether a listed key is one of the job's own outputs, which a prefix job over
/// `<tenant>/results/` must not read back as input while it writes them.
pub fn is_own_output(tenant: &TenantId, job_id: &str, key: &str) -> bool {
    key.starts_with(&results_prefix(tenant, job_id))
}

/// Registry folder of a model: `models/<name>/<version>/`.
pub fn model_prefix(name: &str, version: &str) -> String {
    format!("models/{name}/{version}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn tenant_names_are_restricted() {
        for ok in ["tenant-a", "acme42", "a"] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "Tenant", "a/b", "a.b", "models", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenant_keys_must_stay_in_their_prefix() {
        let a = tenant("tenant-a");
        assert!(check_tenant_key(&a, "tenant-a/catalog/1.jpg").is_ok());
        let outside = ["tenant-b/catalog/1.jpg", "tenant-ab/x.jpg", "tenant-a", "tenant-a/", "models/x/1/model.pt"];
        for key in outside {
            assert!(check_tenant_key(&a, key).is_err(), "{key:?} should be refused");
        }
        let traversal =
            ["tenant-a/../tenant-b/x.jpg", "tenant-a/./x", "tenant-a//x", "/tenant-a/x", "tenant-a/x\n", "tenant-a\\x"];
        for key in traversal {
            assert!(matches!(check_tenant_key(&a, key), Err(KeyError::Invalid { .. })), "{key:?} should be invalid");
        }
        assert!(check_tenant_prefix(&a, "tenant-a/catalog/").is_ok());
        assert!(check_tenant_prefix(&a, "tenant-a/").is_err(), "the whole tenant space needs a named prefix");
        assert!(check_tenant_key(&a, &format!("tenant-a/{}", "x".repeat(1020))).is_err());
    }

    #[test]
    fn output_keys_are_deterministic_and_distinct_per_input() {
        let a = tenant("tenant-a");
        let (img, matte, emb) = output_keys(&a, "job-1", "tenant-a/cat/shoes/1.jpg", "png");
        assert_eq!(img, "tenant-a/results/job-1/cat__shoes__1.jpg/result.png");
        assert_eq!(matte, "tenant-a/results/job-1/cat__shoes__1.jpg/matte.png");
        assert_eq!(emb, "tenant-a/results/job-1/cat__shoes__1.jpg/embedding.npy");
        // Inputs that differ only by where '/' falls, by escapes, or by extension never collide.
        let inputs = ["a/b__c.jpg", "a__b/c.jpg", "a/b/c.jpg", "x.jpg", "x.png", "a/__", "a/_%5F", "a/%5F%5F"];
        let names: std::collections::HashSet<String> =
            inputs.iter().map(|k| item_name(&a, &format!("tenant-a/{k}"))).collect();
        assert_eq!(names.len(), inputs.len(), "{names:?}");
    }

    #[test]
    fn no_input_s_outputs_land_on_another_s_or_on_a_manifest() {
        let a = tenant("tenant-a");
        // Names that once collided: `x.jpg.matte` wrote the matte of `x.jpg`, `x.jpg.1` its
        // first variant; `_tasks` the task manifests' folder.
        let inputs = ["x.jpg", "x.jpg.matte", "x.jpg.1", "x.jpg.embedding", "x.jpg.1.embedding", "_tasks", "tasks"];
        let mut keys = std::collections::HashSet::new();
        for input in inputs {
            let key = format!("tenant-a/{input}");
            let (img, matte, emb) = output_keys(&a, "j", &key, "png");
            let (v_img, v_emb) = variant_keys(&a, "j", &key, "png", 1);
            for k in [img, matte, emb, v_img, v_emb] {
                assert!(!k.starts_with(&task_manifests_prefix(&a, "j")), "{k}");
                assert!(keys.insert(k.clone()), "{k} written by two inputs");
            }
        }
        assert!(keys.insert(task_manifest_key(&a, "j", 0)));
        assert!(is_own_output(&a, "j", &task_manifest_key(&a, "j", 3)));
        assert!(!is_own_output(&a, "j", "tenant-a/results/j2/x.jpg/result.png"));
    }
}
