//! Why a submission was refused, in words the submitter can act on.

use serde::{Deserialize, Serialize};

use crate::keys::KeyError;

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
    pub(crate) fn new(code: &str, reason: impl Into<String>) -> Self {
        Rejection { code: code.to_string(), reason: reason.into() }
    }
}

impl From<KeyError> for Rejection {
    fn from(e: KeyError) -> Self {
        let code = if matches!(e, KeyError::OutsideTenant { .. }) { "forbidden" } else { "invalid" };
        Rejection::new(code, e.to_string())
    }
}
