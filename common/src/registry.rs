//! The model registry in the object store: `models/<name>/<version>/` holds a model's files
//! and its `manifest.json`. Publishing uploads the manifest last, so a visible manifest means
//! a complete model; resolving `name@version` reads only the manifest (the scheduler does it at
//! submission, without libtorch); fetching copies the files into a local cache once per host.

use std::path::{Path, PathBuf};

use crate::keys::model_prefix;
use crate::manifest::{EmbeddingSpec, ManifestError, ModelManifest, ModelRef};
use crate::store::{content_type, ObjectStore, StoreError};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No model is published under that name and version.
    #[error("unknown model {model}: nothing is published at models/{}/{}/", .model.name, .model.version)]
    UnknownModel {
        /// What was asked for.
        model: ModelRef,
    },
    /// The manifest is missing fields or breaks the contract.
    #[error("model {model} has an unusable manifest: {source}")]
    BadManifest {
        /// The model.
        model: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file could not be read or written.
    #[error("model files at {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Every file a model folder needs, manifest last.
pub fn model_files(manifest: &ModelManifest) -> Vec<String> {
    let mut files = vec![manifest.file.clone()];
    if let EmbeddingSpec::Model { file, .. } = &manifest.output.embedding {
        files.push(file.clone());
    }
    files.push("manifest.json".to_string());
    files
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_path_buf(), source }
}

/// Uploads the model folder `dir` (rewriting the same keys if it is already there).
pub async fn publish<S: ObjectStore>(store: &S, dir: &Path) -> Result<ModelManifest, RegistryError> {
    let manifest_path = dir.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest = ModelManifest::from_json(&bytes)
        .map_err(|source| RegistryError::BadManifest { model: dir.display().to_string(), source })?;
    let prefix = model_prefix(&manifest.name, &manifest.version);
    for file in model_files(&manifest) {
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        store.put(&format!("{prefix}{file}"), bytes, content_type(&file)).await?;
    }
    Ok(manifest)
}

/// The manifest of a published model.
pub async fn resolve<S: ObjectStore>(store: &S, model: &ModelRef) -> Result<ModelManifest, RegistryError> {
    let key = format!("{}manifest.json", model_prefix(&model.name, &model.version));
    let bytes = match store.get(&key).await {
        Err(StoreError::NotFound { .. }) => return Err(RegistryError::UnknownModel { model: model.clone() }),
        other => other?,
    };
    let manifest = ModelManifest::from_json(&bytes)
        .map_err(|source| RegistryError::BadManifest { model: model.to_string(), source })?;
    if manifest.model_ref() != *model {
        let reason = format!("manifest names {}", manifest.model_ref());
        let source = ManifestError::Invalid { field: "name", reason };
        return Err(RegistryError::BadManifest { model: model.to_string(), source });
    }
    Ok(manifest)
}

/// The local folder of a published model under `cache_root`, downloading it the first time.
/// Files land in a temporary folder renamed into place, so a crash never leaves half a model.
pub async fn fetch<S: ObjectStore>(store: &S, model: &ModelRef, cache_root: &Path) -> Result<PathBuf, RegistryError> {
    let dir = cache_root.join(&model.name).join(&model.version);
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    let manifest = resolve(store, model).await?;
    let parent = dir.parent().expect("model dir has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".fetching-{}-{}", model.version, std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let prefix = model_prefix(&model.name, &model.version);
    for file in model_files(&manifest) {
        let bytes = store.get(&format!("{prefix}{file}")).await?;
        let path = tmp.join(&file);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    match std::fs::rename(&tmp, &dir) {
        // Another process fetched it first: theirs is as good as ours.
        Err(_) if dir.join("manifest.json").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        other => other.map_err(io(&dir))?,
    }
    Ok(dir)
}
