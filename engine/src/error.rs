//! Engine errors. Per-image problems are not errors of the engine: they become
//! [`ItemFailure`](super::pipeline::ItemFailure)s and the rest of the batch goes on.

use std::path::Path;

/// Why the engine as a whole cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model folder is unusable (manifest, TorchScript file or tokenizer).
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
    /// A forward pass of a TorchScript module failed, or returned other than one tensor.
    #[error("torchscript forward pass failed: {reason}")]
    Forward {
        /// What libtorch said, or what came back instead of a tensor.
        reason: String,
    },
    /// The generator's tokenizer cannot encode a prompt.
    #[error("the prompt cannot be tokenised: {reason}")]
    Tokenize {
        /// What the tokenizer said.
        reason: String,
    },
    /// What was asked of the sampler or the generator cannot be done as asked (no results, no
    /// steps, a missing reference image or mask).
    #[error("invalid generation request: {reason}")]
    InvalidRequest {
        /// What is missing or out of range.
        reason: String,
    },
    /// A file or folder of the folder runner cannot be read or written.
    #[error("{path} cannot be read or written: {reason}")]
    Io {
        /// File or folder that was accessed.
        path: String,
        /// What went wrong.
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

    pub(crate) fn io(path: &Path, reason: impl ToString) -> Self {
        EngineError::Io { path: path.display().to_string(), reason: reason.to_string() }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        EngineError::InvalidRequest { reason: reason.into() }
    }

    /// Whether trying the same work again (on this or another worker) may succeed: device,
    /// thread and disk trouble may pass; a broken model, tokenizer or request will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Stopped | EngineError::Device { .. } | EngineError::Io { .. } => true,
            EngineError::Model { .. }
            | EngineError::Contract { .. }
            | EngineError::Forward { .. }
            | EngineError::Tokenize { .. }
            | EngineError::InvalidRequest { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_thread_and_disk_trouble_is_retryable() {
        let reason = || "x".to_string();
        assert!(EngineError::Stopped.is_retryable());
        assert!(EngineError::Device { spec: "cuda:0".into(), reason: reason() }.is_retryable());
        assert!(EngineError::io(Path::new("out/a.png"), "disk full").is_retryable());
        assert!(!EngineError::model(Path::new("gen"), reason()).is_retryable());
        assert!(!EngineError::Contract { model: "m@1".into(), reason: reason() }.is_retryable());
        assert!(!EngineError::Forward { reason: reason() }.is_retryable());
        assert!(!EngineError::Tokenize { reason: reason() }.is_retryable());
        assert!(!EngineError::invalid("no results asked for").is_retryable());
    }
}
