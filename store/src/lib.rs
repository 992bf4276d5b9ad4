//! The object store boundary: what the scheduler and workers need from S3 (get, put,
//! exists, paged listing, delete), as a trait with two backends, [`s3::S3Store`] (any
//! S3-compatible server: Garage in dev and CI, AWS in production) and
//! [`local::LocalStore`] (a folder, for single-host runs). One test suite runs against both
//! (`tests/services/object_store.rs`). The model registry ([`registry`]) publishes, resolves and
//! fetches models on any of them, with a content-addressed cache on disk.

pub mod local;
pub mod registry;
pub mod s3;

use std::future::Future;

/// One page of a listing, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in this page.
    pub keys: Vec<String>,
    /// Opaque token for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Why an object operation failed, and whether to try again.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object at that key.
    #[error("no object at {key}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The object is larger than the reader takes; nothing past the cap was read.
    #[error("object {key} is {size} bytes, over the {max}-byte cap")]
    TooLarge {
        /// The key asked for.
        key: String,
        /// Its size (or the bytes seen before the read stopped).
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The key breaks the layout rules.
    #[error(transparent)]
    BadKey(#[from] fleet_protocol::keys::KeyError),
    /// The backend failed.
    #[error("object store {op} {key} failed: {reason}")]
    Backend {
        /// `get`, `put`, `list`, ...
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the backend said.
        reason: String,
        /// Network trouble, throttling or a 5xx: worth retrying.
        retryable: bool,
    },
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend { retryable: true, .. })
    }
}

/// An S3-like object store. Writes replace whole objects, so rewriting a key with the same
/// bytes is idempotent.
pub trait ObjectStore: Send + Sync {
    /// The object's bytes.
    fn get(&self, key: &str) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// The object's bytes if it holds at most `max` of them, else [`StoreError::TooLarge`]
    /// having read no more than `max` (a 4 GiB input costs a header, not 4 GiB of memory).
    fn get_capped(&self, key: &str, max: u64) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Up to `len` bytes of the object from byte `start`; empty past its end. Lets a reader
    /// stream a large object (a million-key manifest) without holding it.
    fn get_range(&self, key: &str, start: u64, len: u64) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Writes (or replaces) the object.
    fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str)
        -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Whether an object exists at `key`.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Up to `limit` keys under `prefix`, after the page `token` points at.
    fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;
    /// Removes the object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Content type for an object name, from its extension.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()) {
        Some(ext) if ext == "png" => "image/png",
        Some(ext) if ext == "jpg" || ext == "jpeg" => "image/jpeg",
        Some(ext) if ext == "webp" => "image/webp",
        Some(ext) if ext == "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// Every key under `prefix`, page by page. For listings a caller needs whole (a job's task
/// manifests, a benchmark's inputs); a catalog is split page by page instead.
pub async fn list_all<S: ObjectStore>(store: &S, prefix: &str) -> Result<Vec<String>, StoreError> {
    let (mut keys, mut token) = (Vec::new(), None);
    loop {
        let page = store.list_page(prefix, token, 1000).await?;
        keys.extend(page.keys);
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(keys),
        }
    }
}
