//! What each tenant may use, and its weight against the others: read from a TOML file
//! (`deploy/tenants.example.toml`), the same for the scheduler and the API.
//!
//! ```toml
//! [defaults]                       # every tenant, unless its own table says otherwise
//! weight = 1                       # share of device time when tenants compete
//! max_queued_items = 200000        # items in tasks not yet ended (submissions over it: 429)
//! interactive_jobs_per_minute = 30 # interactive jobs over it are refused (429)
//! [tenants.tenant-b]
//! weight = 3
//! max_running_tasks = 64
//! ```
//!
//! An absent limit is no limit. Unknown keys are refused, with the key named.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::keys::TenantId;

/// One tenant's limits and weight; every field optional (absent: the defaults', else none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Share of the fleet's device time when tenants compete (default 1): with weights 1
    /// and 3, the second gets three quarters while both have work waiting. Idle capacity is
    /// lent to whoever has work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Tasks holding a lease at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_tasks: Option<u32>,
    /// Items in the tenant's tasks not yet ended; a submission is refused (429) at or over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_items: Option<u64>,
    /// Items in one job (a longer key list is refused; a prefix or manifest that grows past
    /// it fails its job while it is split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_job_items: Option<u64>,
    /// Items dispatched per rolling hour; past it, the tenant's tasks wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_hour: Option<u64>,
    /// Interactive jobs accepted per minute; more are refused (429), so interactive priority
    /// cannot be used to jump the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive_jobs_per_minute: Option<u32>,
    /// Device memory a fine-tune may hold (MiB): a fine-tune declaring more, or a whole
    /// device, is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune_max_memory_mib: Option<u64>,
    /// Licences (SPDX identifiers, compared without case) the tenant may fine-tune on: a
    /// sample under any other is refused (`licence_not_allowed`). Absent: any licence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_licences: Option<Vec<String>>,
}

impl Limits {
    /// These limits, each absent one taken from `defaults`.
    pub fn or(&self, defaults: &Limits) -> Limits {
        Limits {
            weight: self.weight.or(defaults.weight),
            max_running_tasks: self.max_running_tasks.or(defaults.max_running_tasks),
            max_queued_items: self.max_queued_items.or(defaults.max_queued_items),
            max_job_items: self.max_job_items.or(defaults.max_job_items),
            images_per_hour: self.images_per_hour.or(defaults.images_per_hour),
            interactive_jobs_per_minute: self.interactive_jobs_per_minute.or(defaults.interactive_jobs_per_minute),
            fine_tune_max_memory_mib: self.fine_tune_max_memory_mib.or(defaults.fine_tune_max_memory_mib),
            allowed_licences: self.allowed_licences.clone().or_else(|| defaults.allowed_licences.clone()),
        }
    }

    /// The weight (1 when absent).
    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(1.0)
    }

    fn check(&self, at: &str) -> Result<(), PolicyError> {
        let bad =
            |key: &str, reason: &str| PolicyError::Value { key: format!("{at}.{key}"), reason: reason.to_string() };
        if let Some(w) = self.weight {
            if !(w.is_finite() && w > 0.0 && w <= 1000.0) {
                return Err(bad("weight", "a weight is a number above 0, at most 1000"));
            }
        }
        let positive = [
            ("max_running_tasks", self.max_running_tasks.map(u64::from)),
            ("max_queued_items", self.max_queued_items),
            ("max_job_items", self.max_job_items),
            ("images_per_hour", self.images_per_hour),
            ("interactive_jobs_per_minute", self.interactive_jobs_per_minute.map(u64::from)),
            ("fine_tune_max_memory_mib", self.fine_tune_max_memory_mib),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                return Err(bad(key, "a limit of 0 refuses everything: leave the key out for no limit"));
            }
        }
        if let Some(licences) = &self.allowed_licences {
            if licences.is_empty() || licences.iter().any(|l| l.trim().is_empty()) {
                return Err(bad(
                    "allowed_licences",
                    "list at least one licence, none empty: leave the key out for any",
                ));
            }
        }
        Ok(())
    }
}

/// Every tenant's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// What every tenant gets unless its own table says otherwise.
    #[serde(default)]
    pub defaults: Limits,
    /// Per tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, Limits>,
}

/// A tenants file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or a key or type the file may not have.
    #[error("{0}")]
    Syntax(String),
    /// A value out of range.
    #[error("{key}: {reason}")]
    Value {
        /// The key, dotted (`tenants.tenant-a.weight`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl Policies {
    /// Parses and checks a tenants file's text.
    pub fn from_toml(text: &str) -> Result<Policies, PolicyError> {
        let policies: Policies = toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policies.defaults.check("defaults")?;
        for (name, limits) in &policies.tenants {
            TenantId::new(name)
                .map_err(|e| PolicyError::Value { key: format!("tenants.{name}"), reason: e.to_string() })?;
            limits.check(&format!("tenants.{name}"))?;
        }
        Ok(policies)
    }

    /// The limits of `tenant`: its own, completed by the defaults.
    pub fn limits(&self, tenant: &str) -> Limits {
        match self.tenants.get(tenant) {
            Some(own) => own.or(&self.defaults),
            None => self.defaults.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_takes_what_it_does_not_set_from_the_defaults() {
        let p = Policies::from_toml(
            "[defaults]\nweight = 1\nmax_queued_items = 100\n[tenants.tenant-b]\nweight = 3\nmax_running_tasks = 4\n",
        )
        .unwrap();
        let b = p.limits("tenant-b");
        assert_eq!((b.weight(), b.max_running_tasks, b.max_queued_items), (3.0, Some(4), Some(100)));
        let other = p.limits("tenant-z");
        assert_eq!((other.weight(), other.max_running_tasks, other.max_queued_items), (1.0, None, Some(100)));
        assert_eq!(Policies::default().limits("x").weight(), 1.0);
    }

    #[test]
    fn a_bad_file_names_the_key() {
        let unknown = Policies::from_toml("[tenants.tenant-a]\nwieght = 2\n").unwrap_err();
        assert!(unknown.to_string().contains("wieght"), "{unknown}");
        let zero = Policies::from_toml("[tenants.tenant-a]\nmax_running_tasks = 0\n").unwrap_err();
        assert!(zero.to_string().starts_with("tenants.tenant-a.max_running_tasks:"), "{zero}");
        let weight = Policies::from_toml("[defaults]\nweight = -1\n").unwrap_err();
        assert!(weight.to_string().starts_with("defaults.weight:"), "{weight}");
        let name = Policies::from_toml("[tenants.\"Tenant A\"]\nweight = 2\n").unwrap_err();
        assert!(name.to_string().starts_with("tenants.Tenant A:"), "{name}");
        let typed = Policies::from_toml("[defaults]\nweight = \"heavy\"\n").unwrap_err();
        assert!(typed.to_string().contains("weight"), "{typed}");
    }
}
