//! Each host's content-addressed copy of the registry: one read-only blob per distinct
//! content (`blobs/sha256/<hex>`), and model folders hard-linked from the blobs
//! (`by-digest/<digest>/<file>`), every write through a temporary name and a rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{hex, io, sha256, FileDigest, RegistryError};

/// The on-disk cache: content-addressed blobs and the model folders linked from them.
#[derive(Clone)]
pub(super) struct Cache {
    blobs: PathBuf,
    folders: PathBuf,
}

impl Cache {
    /// The cache under `root`.
    pub(super) fn new(root: &Path) -> Self {
        Cache { blobs: root.join("blobs").join("sha256"), folders: root.join("by-digest") }
    }

    /// Whether a blob with this digest is here, whole.
    pub(super) fn has_blob(&self, digest: &FileDigest) -> bool {
        std::fs::metadata(self.blobs.join(&digest.sha256)).is_ok_and(|m| m.is_file() && m.len() == digest.size)
    }

    /// Stores verified bytes under their sha256, through a temporary file and a rename.
    pub(super) fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let path = self.blobs.join(sha256);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.blobs).map_err(io(&self.blobs))?;
        let tmp = self.blobs.join(format!(".tmp-{sha256}-{}", unique_suffix()));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            // Read-only, so a write through a hard-linked model folder cannot change the blob.
            let mut permissions = file.metadata()?.permissions();
            permissions.set_readonly(true);
            file.set_permissions(permissions)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(RegistryError::Io { path, source });
        }
        Ok(())
    }

    /// Whether the folder of these files exists with every file at its size.
    pub(super) fn folder_is_complete(&self, files: &BTreeMap<String, FileDigest>) -> bool {
        let dir = self.folders.join(folder_digest(files));
        files.iter().all(|(name, d)| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == d.size))
    }

    /// The folder of these files, built from the blobs (hard links, copies where the file
    /// system has none) in a temporary folder renamed into place.
    pub(super) fn folder(&self, files: &BTreeMap<String, FileDigest>) -> Result<PathBuf, RegistryError> {
        let digest = folder_digest(files);
        let dir = self.folders.join(&digest);
        if self.folder_is_complete(files) {
            return Ok(dir);
        }
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "model folder incomplete (changed by hand?): rebuilding it");
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = self.folders.join(format!(".tmp-{digest}-{}", unique_suffix()));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for (name, d) in files {
            let (blob, path) = (self.blobs.join(&d.sha256), tmp.join(name));
            let linked = std::fs::hard_link(&blob, &path).or_else(|_| std::fs::copy(&blob, &path).map(|_| ()));
            if let Err(source) = linked {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(RegistryError::Io { path: blob, source });
            }
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another process built it first: theirs is as good as ours.
            Err(_) if self.folder_is_complete(files) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(RegistryError::Io { path: dir, source })
            }
        }
    }
}

/// The sha256 of a folder's listing in `sha256sum` form, `<hex>  <file>\n` in byte order
/// of file name: `cd <folder> && LC_ALL=C sha256sum * | sha256sum` prints it.
fn folder_digest(files: &BTreeMap<String, FileDigest>) -> String {
    let listing: String = files.iter().map(|(name, d)| format!("{}  {name}\n", d.sha256)).collect();
    hex(&sha256(listing.as_bytes()))
}

/// Distinguishes temporary names of concurrent fetches, within and across processes.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_digest_is_the_sha256sum_of_its_listing() {
        let files = BTreeMap::from([
            ("model.pt".to_string(), FileDigest::of(b"abc")),
            ("manifest.json".to_string(), FileDigest::of(b"")),
        ]);
        // `printf abc > model.pt; : > manifest.json; LC_ALL=C sha256sum * | sha256sum`
        assert_eq!(folder_digest(&files), "2efaa66ab06f37e454935c013a3e4d3773c783c637b02af2109ed75c7e73efcd");
    }
}
