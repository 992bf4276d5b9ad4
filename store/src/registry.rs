//! The model registry in the object store, and each worker's content-addressed copy of it.
//! It sits on the `worker (S3 in, ...)` edge of the flow: the scheduler resolves a model at
//! submission, a worker fetches its files before loading it in libtorch.
//!
//! ```text
//! S3   models/<name>/<version>/<file>...       the model files (manifest.file, an embedding model)
//!      models/<name>/<version>/files.json      {"files": {"<file>": {"sha256": "<hex>", "size": N}}}
//!      models/<name>/<version>/manifest.json   uploaded last: a visible manifest means a complete model
//! disk <cache_root>/blobs/sha256/<hex>          one read-only file per distinct content
//!      <cache_root>/by-digest/<digest>/<file>   a model folder, files hard-linked from the blobs
//! ```
//!
//! `files.json` lists every file of the folder, `manifest.json` included, so a worker knows
//! what it needs before downloading anything. A folder's `<digest>` is the sha256 of its
//! listing in `sha256sum` form (`<hex>  <file>\n`, files in byte order), so the same bytes give
//! the same folder whatever the model is called, and a republished `name@version` with new
//! bytes gives a new folder. Fetching always reads the manifest and the listing (small), then
//! downloads only the blobs the host lacks, checks each against its recorded hash, and writes
//! blobs and folders through a temporary name and a rename, so two workers on one host can
//! fetch at once and a crash never leaves half a file. Models published before `files.json`
//! existed still fetch: their files are downloaded and hashed every time.

mod cache;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{content_type, ObjectStore, StoreError};
use fleet_protocol::keys::model_prefix;
use fleet_protocol::manifest::{EmbeddingSpec, ManifestError, ModelManifest, ModelRef};

use self::cache::Cache;

/// Name of the object, next to `manifest.json`, that records each file's sha256 and size.
pub const FILE_LIST: &str = "files.json";

/// Where a model is registered: the shared registry every tenant may use
/// (`models/<name>/<version>/`), or one tenant's own (`<tenant>/models/<name>/<version>/`,
/// where its fine-tuned models go), which no other tenant can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `models/...`.
    Shared,
    /// `<tenant>/models/...`.
    Tenant(fleet_protocol::keys::TenantId),
}

impl Scope {
    /// The key prefix of `model` in this scope.
    pub fn prefix(&self, model: &ModelRef) -> String {
        match self {
            Scope::Shared => model_prefix(&model.name, &model.version),
            Scope::Tenant(tenant) => format!("{tenant}/{}", model_prefix(&model.name, &model.version)),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Shared => f.write_str("shared"),
            Scope::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

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
    /// The published `files.json` does not parse or does not list a file the manifest names.
    #[error("model {model} has an unusable {FILE_LIST}: {reason}")]
    BadFileList {
        /// The model.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes read from the store differ from the hash recorded at publish time: the model was
    /// republished while it was fetched (try again) or its objects were changed by hand.
    #[error("model {model} file {file} does not match its recorded hash: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        /// The model.
        model: String,
        /// The file name in the model folder.
        file: String,
        /// The sha256 (hex) in `files.json`.
        expected: String,
        /// The sha256 (hex) of the bytes read.
        actual: String,
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

/// What one fetch did with the model files (`manifest.json`, always read, is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Files downloaded from the store.
    pub files_downloaded: usize,
    /// Files already on this host, not downloaded.
    pub files_reused: usize,
    /// Bytes of the downloaded files.
    pub bytes_downloaded: u64,
}

/// The sha256 and size of one file, as `files.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileDigest {
    sha256: String,
    size: u64,
}

impl FileDigest {
    /// The digest of `bytes`.
    fn of(bytes: &[u8]) -> Self {
        FileDigest { sha256: hex(&sha256(bytes)), size: bytes.len() as u64 }
    }
}

/// The content of `files.json`: file name to digest, every file of the folder included.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FileList {
    files: BTreeMap<String, FileDigest>,
}

/// Every file a model folder needs, manifest last.
pub fn model_files(manifest: &ModelManifest) -> Vec<String> {
    let mut files = vec![manifest.file.clone()];
    if let Some(EmbeddingSpec::Model { file, .. }) = manifest.output.as_ref().map(|o| &o.embedding) {
        files.push(file.clone());
    }
    if let Some(generator) = &manifest.generator {
        files.extend(generator.files());
    }
    files.extend(manifest.trainable_file.clone());
    files.extend(manifest.source.as_ref().and_then(|s| s.licence_file.clone()));
    if let Some(set) = &manifest.training_set {
        files.extend([set.index.clone(), set.samples.clone()]);
    }
    files.push("manifest.json".to_string());
    // A file named twice (a trainable module that is also the inference file) is one file.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    files
}

/// Maps an I/O error at `path` to [`RegistryError::Io`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_path_buf(), source }
}

/// `model_files`, refusing an embedding file name that would leave the model folder or
/// shadow `manifest.json` or `files.json` (the manifest checks only its own `file`).
fn checked_files(model: &str, manifest: &ModelManifest) -> Result<Vec<String>, RegistryError> {
    let files = model_files(manifest);
    let (_, model_only) = files.split_last().expect("model_files ends with the manifest");
    let plain = |f: &str| !(f.is_empty() || f == "." || f == ".." || f.contains(['/', '\\']));
    match model_only.iter().find(|f| !plain(f) || *f == "manifest.json" || *f == FILE_LIST) {
        Some(bad) => {
            let reason = format!("{bad:?} must be a plain file name other than manifest.json and {FILE_LIST}");
            let source = ManifestError::Invalid { field: "output.embedding.file", reason };
            Err(RegistryError::BadManifest { model: model.to_string(), source })
        }
        None => Ok(files),
    }
}

/// Runs CPU- or disk-heavy work (hashing, writing model files) off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Uploads the model folder `dir` (rewriting the same keys if it is already there): the model
/// files, then `files.json` with their hashes, then `manifest.json`.
pub async fn publish<S: ObjectStore>(store: &S, dir: &Path) -> Result<ModelManifest, RegistryError> {
    publish_in(store, &Scope::Shared, dir).await
}

/// [`publish`] into `scope`.
pub async fn publish_in<S: ObjectStore>(store: &S, scope: &Scope, dir: &Path) -> Result<ModelManifest, RegistryError> {
    let manifest_path = dir.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest = ModelManifest::from_json(&manifest_bytes)
        .map_err(|source| RegistryError::BadManifest { model: dir.display().to_string(), source })?;
    let prefix = scope.prefix(&manifest.model_ref());
    let mut list = FileList::default();
    let files = checked_files(&manifest.model_ref().to_string(), &manifest)?;
    for file in files.into_iter().filter(|f| f != "manifest.json") {
        let path = dir.join(&file);
        let (bytes, digest) = blocking(move || {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let digest = FileDigest::of(&bytes);
            Ok::<_, RegistryError>((bytes, digest))
        })
        .await?;
        store.put(&format!("{prefix}{file}"), bytes, content_type(&file)).await?;
        list.files.insert(file, digest);
    }
    list.files.insert("manifest.json".to_string(), FileDigest::of(&manifest_bytes));
    let list_json = serde_json::to_vec_pretty(&list).expect("a file list serialises");
    store.put(&format!("{prefix}{FILE_LIST}"), list_json, content_type(FILE_LIST)).await?;
    store.put(&format!("{prefix}manifest.json"), manifest_bytes, content_type("manifest.json")).await?;
    Ok(manifest)
}

/// The manifest of a published model, with the exact bytes stored.
async fn read_manifest<S: ObjectStore>(
    store: &S,
    scope: &Scope,
    model: &ModelRef,
) -> Result<(Vec<u8>, ModelManifest), RegistryError> {
    let key = format!("{}manifest.json", scope.prefix(model));
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
    Ok((bytes, manifest))
}

/// The manifest of a published model.
pub async fn resolve<S: ObjectStore>(store: &S, model: &ModelRef) -> Result<ModelManifest, RegistryError> {
    resolve_in(store, &Scope::Shared, model).await
}

/// The manifest of a model published in `scope`.
pub async fn resolve_in<S: ObjectStore>(
    store: &S,
    scope: &Scope,
    model: &ModelRef,
) -> Result<ModelManifest, RegistryError> {
    Ok(read_manifest(store, scope, model).await?.1)
}

/// Where `tenant` finds `model`: its own registry first, then the shared one. Another
/// tenant's models are never found.
pub async fn locate<S: ObjectStore>(
    store: &S,
    tenant: &fleet_protocol::keys::TenantId,
    model: &ModelRef,
) -> Result<(Scope, ModelManifest), RegistryError> {
    let own = Scope::Tenant(tenant.clone());
    match resolve_in(store, &own, model).await {
        Ok(manifest) => Ok((own, manifest)),
        Err(RegistryError::UnknownModel { .. }) => Ok((Scope::Shared, resolve(store, model).await?)),
        Err(e) => Err(e),
    }
}

/// Every model `tenant` can use: its own, then the shared ones, each with its manifest, in
/// name and version order within a scope. A manifest that no longer parses is skipped.
pub async fn list_models<S: ObjectStore>(
    store: &S,
    tenant: &fleet_protocol::keys::TenantId,
) -> Result<Vec<(Scope, ModelManifest)>, RegistryError> {
    let mut models = Vec::new();
    for (scope, prefix) in
        [(Scope::Tenant(tenant.clone()), format!("{tenant}/models/")), (Scope::Shared, "models/".into())]
    {
        let mut keys = crate::list_all(store, &prefix).await?;
        keys.retain(|k| k.ends_with("/manifest.json") && k[prefix.len()..].matches('/').count() == 2);
        keys.sort();
        for key in keys {
            if let Ok(manifest) = ModelManifest::from_json(&store.get(&key).await?) {
                models.push((scope.clone(), manifest));
            }
        }
    }
    Ok(models)
}

/// The recorded digests of `files`, or `None` for a model published without `files.json`.
async fn read_file_list<S: ObjectStore>(
    store: &S,
    scope: &Scope,
    model: &ModelRef,
    files: &[String],
) -> Result<Option<BTreeMap<String, FileDigest>>, RegistryError> {
    let key = format!("{}{FILE_LIST}", scope.prefix(model));
    let bytes = match store.get(&key).await {
        Err(StoreError::NotFound { .. }) => return Ok(None),
        other => other?,
    };
    let bad = |reason: String| RegistryError::BadFileList { model: model.to_string(), reason };
    let mut list: FileList = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut wanted = BTreeMap::new();
    for file in files {
        let digest = list.files.remove(file).ok_or_else(|| bad(format!("no entry for {file}")))?;
        let is_hex = digest.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if digest.sha256.len() != 64 || !is_hex {
            return Err(bad(format!("{file}: {:?} is not a lowercase hex sha256", digest.sha256)));
        }
        wanted.insert(file.clone(), digest);
    }
    Ok(Some(wanted))
}

/// The local folder of a published model under `cache_root`; see [`fetch_counted`].
pub async fn fetch<S: ObjectStore>(store: &S, model: &ModelRef, cache_root: &Path) -> Result<PathBuf, RegistryError> {
    Ok(fetch_counted(store, model, cache_root).await?.0)
}

/// The local folder of a published model under `cache_root` (`by-digest/<digest>/`, holding
/// every file of [`model_files`]), downloading only the files whose content this host lacks,
/// and what was downloaded. Reads the manifest from the store every time, so a republished
/// model is noticed.
pub async fn fetch_counted<S: ObjectStore>(
    store: &S,
    model: &ModelRef,
    cache_root: &Path,
) -> Result<(PathBuf, FetchStats), RegistryError> {
    fetch_in(store, &Scope::Shared, model, cache_root).await
}

/// [`fetch_counted`] from `scope`.
pub async fn fetch_in<S: ObjectStore>(
    store: &S,
    scope: &Scope,
    model: &ModelRef,
    cache_root: &Path,
) -> Result<(PathBuf, FetchStats), RegistryError> {
    let (manifest_bytes, manifest) = read_manifest(store, scope, model).await?;
    let files = checked_files(&model.to_string(), &manifest)?;
    let recorded = read_file_list(store, scope, model, &files).await?;
    let cache = Cache::new(cache_root);
    let mut stats = FetchStats::default();
    let mut have = BTreeMap::new();
    let manifest_digest = FileDigest::of(&manifest_bytes);
    if let Some(want) = recorded.as_ref().and_then(|r| r.get("manifest.json")) {
        check(model, "manifest.json", want, &manifest_digest)?;
    }
    let manifest_sha = manifest_digest.sha256.clone();
    have.insert("manifest.json".to_string(), manifest_digest);
    let is_known = recorded.as_ref().map(|r| cache.folder_is_complete(r)).unwrap_or(false);
    if !is_known {
        blocking({
            let cache = cache.clone();
            move || cache.put_blob(&manifest_sha, &manifest_bytes)
        })
        .await?;
    }
    let prefix = scope.prefix(model);
    for file in files.iter().filter(|f| *f != "manifest.json") {
        let want = recorded.as_ref().map(|r| r[file].clone());
        if let Some(want) = want.filter(|w| is_known || cache.has_blob(w)) {
            stats.files_reused += 1;
            have.insert(file.clone(), want);
            continue;
        }
        let bytes = store.get(&format!("{prefix}{file}")).await?;
        let (digest, bytes) = blocking(move || (FileDigest::of(&bytes), bytes)).await;
        if let Some(want) = recorded.as_ref().map(|r| &r[file]) {
            check(model, file, want, &digest)?;
        }
        stats.files_downloaded += 1;
        stats.bytes_downloaded += digest.size;
        blocking({
            let (cache, sha) = (cache.clone(), digest.sha256.clone());
            move || cache.put_blob(&sha, &bytes)
        })
        .await?;
        have.insert(file.clone(), digest);
    }
    let dir = blocking(move || cache.folder(&have)).await?;
    tracing::info!(model = %model, %scope, files_downloaded = stats.files_downloaded, files_reused = stats.files_reused,
        bytes_downloaded = stats.bytes_downloaded, hashes_recorded = recorded.is_some(), dir = %dir.display(),
        "model files ready");
    Ok((dir, stats))
}

/// `HashMismatch` unless `got` is the recorded `want`.
fn check(model: &ModelRef, file: &str, want: &FileDigest, got: &FileDigest) -> Result<(), RegistryError> {
    if want.sha256 == got.sha256 {
        return Ok(());
    }
    Err(RegistryError::HashMismatch {
        model: model.to_string(),
        file: file.to_string(),
        expected: want.sha256.clone(),
        actual: got.sha256.clone(),
    })
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
