//! Engine errors. Per-image problems are not errors of the engine: they become
//! [`ItemFailure`](super::pipeline::ItemFailure)s and the rest of the batch goes on.

use std::path::Path;

/// Why the engine as a whole cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model folder is unusable (manifest or TorchScript file).
    #[error("model at {dir} cannot be loaded: {reason}")]
    Model {
        /// Folder that was read.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// The model loaded but what it returns does not follow the contract its manifest declares.
    #[error("model {model} breaks the model contract: {reason}")]
    Contract {
        /// `name@version`.
        model: String,
        /// What was expected and what came.
        reason: String,
    },
    /// The configured device cannot be used.
    #[error("device {spec} is not usable: {reason}")]
    Device {
        /// Device as configured.
        spec: String,
        /// Why not.
        reason: String,
    },
    /// The inference thread is gone (it panicked or was shut down).
    #[error("the inference thread has stopped")]
    Stopped,
}

impl EngineError {
    pub(crate) fn model(dir: &Path, reason: String) -> Self {
        EngineError::Model { dir: dir.display().to_string(), reason }
    }

    /// Whether trying the same work again (on this or another worker) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Stopped | EngineError::Device { .. })
    }
}
