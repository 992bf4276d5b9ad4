//! Why a state store operation failed, and whether trying again may help.

use fleet_protocol::state::InvalidTransition;

/// Attempts at a compare-and-set before giving up on a hot key.
pub(crate) const CAS_ATTEMPTS: usize = 32;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record does not parse.
    #[error("job record {key} is corrupt: {reason}")]
    Corrupt {
        /// Redis key.
        key: String,
        /// Parse error.
        reason: String,
    },
    /// No such job.
    #[error("no job {id} for tenant {tenant}")]
    NotFound {
        /// Tenant.
        tenant: String,
        /// Job id.
        id: String,
    },
    /// The state machine refused the event.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// Other writers kept changing the record.
    #[error("job {0} changed under every one of {CAS_ATTEMPTS} update attempts")]
    Contended(String),
}

impl JobStoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobStoreError::Redis(e) => e.is_io_error() || e.is_timeout() || e.is_connection_dropped(),
            JobStoreError::Contended(_) => true,
            _ => false,
        }
    }
}

/// The error for a record under `key` that does not parse.
pub(crate) fn corrupt(key: &str) -> impl FnOnce(serde_json::Error) -> JobStoreError + '_ {
    move |e| JobStoreError::Corrupt { key: key.to_string(), reason: e.to_string() }
}
