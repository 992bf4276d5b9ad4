//! Reading a job's input one page at a time: a key list by index, a prefix by S3 listing
//! pages, a manifest object by ranged reads of [`MANIFEST_CHUNK`] bytes.

use fleet_protocol::job::InputSpec;
use fleet_store::{ObjectStore, StoreError};
use serde::{Deserialize, Serialize};

/// Bytes of a manifest read per page.
pub const MANIFEST_CHUNK: u64 = 1 << 20;
/// Most keys S3 returns per listing page.
const LIST_PAGE_MAX: u32 = 1000;

/// Where splitting a job's input has got to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cursor {
    /// Index of the next key of an explicit list.
    Keys {
        /// Next index.
        next: usize,
    },
    /// Continuation of a prefix listing (`None` before the first page).
    Prefix {
        /// Opaque listing token.
        token: Option<String>,
    },
    /// Byte offset of the next unread line of a manifest.
    Manifest {
        /// Byte offset.
        offset: u64,
    },
}

impl Cursor {
    /// The start of an input.
    pub fn start(input: &InputSpec) -> Cursor {
        match input {
            InputSpec::Keys(_) => Cursor::Keys { next: 0 },
            InputSpec::Prefix(_) => Cursor::Prefix { token: None },
            InputSpec::Manifest(_) => Cursor::Manifest { offset: 0 },
        }
    }
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The job's input is unusable (missing or malformed manifest): the job fails with this.
    #[error("{0}")]
    Input(String),
    /// The store failed: try again later from the same cursor.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of input keys, and the cursor after it (`None` at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Keys, in input order.
    pub keys: Vec<String>,
    /// Where the next page starts.
    pub next: Option<Cursor>,
}

/// Reads the page of `input` at `cursor`. Manifest lines are trimmed; blank lines and lines
/// starting with `#` are skipped. Keys are not checked here: the worker checks each against
/// the tenant and fails bad ones as items, with the reason.
pub async fn read_page<S: ObjectStore>(
    s3: &S,
    input: &InputSpec,
    cursor: &Cursor,
    shard_size: u32,
) -> Result<Page, PageError> {
    match (input, cursor) {
        (InputSpec::Keys(keys), Cursor::Keys { next }) => {
            let start = (*next).min(keys.len());
            let end = (start + page_len(shard_size)).min(keys.len());
            let next = (end < keys.len()).then_some(Cursor::Keys { next: end });
            Ok(Page { keys: keys[start..end].to_vec(), next })
        }
        (InputSpec::Prefix(prefix), Cursor::Prefix { token }) => {
            let page = s3.list_page(prefix, token.clone(), page_len(shard_size)).await?;
            Ok(Page { keys: page.keys, next: page.next.map(|t| Cursor::Prefix { token: Some(t) }) })
        }
        (InputSpec::Manifest(key), Cursor::Manifest { offset }) => {
            let chunk = match s3.get_range(key, *offset, MANIFEST_CHUNK).await {
                Ok(chunk) => chunk,
                Err(StoreError::NotFound { .. }) => {
                    return Err(PageError::Input(format!("manifest {key}: no object at that key")))
                }
                Err(e) => return Err(e.into()),
            };
            let at_end = (chunk.len() as u64) < MANIFEST_CHUNK;
            let usable = if at_end {
                chunk.len()
            } else {
                match chunk.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None => {
                        return Err(PageError::Input(format!(
                            "manifest {key}: a line at byte {offset} is over {MANIFEST_CHUNK} bytes"
                        )))
                    }
                }
            };
            let text = std::str::from_utf8(&chunk[..usable]).map_err(|e| {
                PageError::Input(format!(
                    "manifest {key}: not UTF-8 near byte {}: {e}",
                    offset + e.valid_up_to() as u64
                ))
            })?;
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            let next = (!at_end).then_some(Cursor::Manifest { offset: offset + usable as u64 });
            Ok(Page { keys, next })
        }
        _ => Err(PageError::Input(format!("cursor {cursor:?} does not fit the job's input"))),
    }
}

/// Keys per page: whole shards, about a listing page's worth.
fn page_len(shard_size: u32) -> usize {
    let shard = shard_size.max(1);
    (shard * (LIST_PAGE_MAX / shard).max(1)) as usize
}
