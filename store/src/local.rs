//! A folder used as an object store: keys are relative paths under the root. Writes go
//! through a temporary file and a rename, so readers never see half an object.

use std::path::{Path, PathBuf};

use super::{ListPage, ObjectStore, StoreError};
use fleet_protocol::keys::check_key;

/// Objects as files under `root`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn backend(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            return StoreError::NotFound { key: key.to_string() };
        }
        StoreError::Backend { op, key: key.to_string(), reason: e.to_string(), retryable: false }
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, root, out)?;
        } else if !entry.file_name().to_string_lossy().starts_with(".partial-") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

impl ObjectStore for LocalStore {
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        std::fs::read(self.path(key)?).map_err(|e| Self::backend("get", key, e))
    }

    async fn get_capped(&self, key: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::Read;
        let path = self.path(key)?;
        let mut file = std::fs::File::open(&path).map_err(|e| Self::backend("get", key, e))?;
        let size = file.metadata().map_err(|e| Self::backend("get", key, e))?.len();
        if size > max {
            return Err(StoreError::TooLarge { key: key.to_string(), size, max });
        }
        let mut out = Vec::with_capacity(size as usize);
        // One byte past the cap tells a file that grew since its size was read.
        file.by_ref().take(max + 1).read_to_end(&mut out).map_err(|e| Self::backend("get", key, e))?;
        if out.len() as u64 > max {
            return Err(StoreError::TooLarge { key: key.to_string(), size: out.len() as u64, max });
        }
        Ok(out)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(key)?;
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(start))?;
            let mut out = Vec::new();
            file.take(len).read_to_end(&mut out)?;
            Ok(out)
        };
        read().map_err(|e| Self::backend("get", key, e))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, _content_type: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent under the root");
        std::fs::create_dir_all(dir).map_err(|e| Self::backend("put", key, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".partial-{}-{name}", std::process::id()));
        std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| Self::backend("put", key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.path(key)?.is_file())
    }

    async fn list_page(&self, prefix: &str, token: Option<String>, limit: usize) -> Result<ListPage, StoreError> {
        // Walk only the folder the prefix names, then filter: fine for one host's data.
        let dir = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut keys = Vec::new();
        walk(&dir, &self.root, &mut keys).map_err(|e| Self::backend("list", prefix, e))?;
        keys.retain(|k| k.starts_with(prefix) && token.as_deref().is_none_or(|t| k.as_str() > t));
        keys.sort();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = if more { keys.last().cloned() } else { None };
        Ok(ListPage { keys, next })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::backend("delete", key, e)),
            _ => Ok(()),
        }
    }
}
