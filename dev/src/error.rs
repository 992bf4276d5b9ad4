//! The one error type of the developers' tools' library: why building a reference model,
//! running a benchmark or checking a generator failed. The binary turns it into its report.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Why a developers' tool failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// libtorch failed (building, tracing, saving or loading a module, an optimiser).
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// The engine failed (a device, a model folder, a forward pass, a generation).
    #[error(transparent)]
    Engine(#[from] fleet_engine::EngineError),
    /// A manifest breaks the model contract.
    #[error(transparent)]
    Manifest(#[from] fleet_protocol::ManifestError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] fleet_store::StoreError),
    /// The training loop failed (it reports its errors as text).
    #[error("training failed: {0}")]
    Training(String),
    /// A training run yielded although nobody asked it to.
    #[error("training yielded at step {step} with nobody asking")]
    Yielded {
        /// The step it stopped at.
        step: u32,
    },
    /// A thread running a loop panicked.
    #[error("{what} panicked")]
    Panicked {
        /// Which thread, e.g. `training thread`.
        what: &'static str,
    },
    /// A file or folder could not be read, written or renamed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Something could not be encoded as, or decoded from, JSON.
    #[error("{what}: {cause}")]
    Json {
        /// What was being encoded or decoded, e.g. `encoding the manifest`.
        what: &'static str,
        /// The parser's or serialiser's error.
        cause: serde_json::Error,
    },
    /// An image could not be written.
    #[error("writing {}: {cause}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The image crate's error.
        cause: image::ImageError,
    },
    /// The Python exporter could not be started.
    #[error("running {} (set FLEET_PYTHON to a Python with torch): {cause}", python.display())]
    PythonStart {
        /// The interpreter.
        python: PathBuf,
        /// Why it did not start.
        cause: std::io::Error,
    },
    /// A Python exporter ran and failed.
    #[error("{script} failed ({status}): {stderr}")]
    Exporter {
        /// The script, e.g. `export_trainable.py`.
        script: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr (its last lines, where it says so).
        stderr: String,
    },
    /// A thread pool or runtime of a benchmark could not start.
    #[error("starting the {what}: {cause}")]
    Threads {
        /// Which, e.g. `tokio runtime`.
        what: &'static str,
        /// Why not.
        cause: String,
    },
    /// An image of a benchmark run failed.
    #[error("benchmark image failed: {0}")]
    BenchImage(String),
    /// Images of a benchmark run failed.
    #[error("{failed} of {total} benchmark images failed")]
    BenchImages {
        /// Images that failed.
        failed: usize,
        /// Images in the run.
        total: usize,
    },
    /// The matting model's alpha does not hold its declared size.
    #[error("alpha size: {len} bytes for {width}x{height}")]
    AlphaSize {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes that came.
        len: usize,
    },
    /// Compositing over an opaque background gave an image with alpha.
    #[error("an opaque background gives an RGB result")]
    OpaqueComposite,
}

impl DevError {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        DevError::Io { path: path.into(), cause }
    }
}

/// Result of the developers' tools' library.
pub type Result<T, E = DevError> = std::result::Result<T, E>;

/// Attaches the path to an I/O error.
pub(crate) trait IoAt<T> {
    /// The error as [`DevError::Io`] at `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| DevError::io(path, e))
    }
}

/// Attaches what was being done to a JSON error.
pub(crate) trait JsonWhat<T> {
    /// The error as [`DevError::Json`] while doing `what`.
    fn what(self, what: &'static str) -> Result<T>;
}

impl<T> JsonWhat<T> for serde_json::Result<T> {
    fn what(self, what: &'static str) -> Result<T> {
        self.map_err(|cause| DevError::Json { what, cause })
    }
}
