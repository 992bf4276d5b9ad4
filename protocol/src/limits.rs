//! The bounds a submission must stay within, in one place: job validation, fine-tune
//! validation and the clients all read them from here.

/// Largest job message accepted, well under the broker's frame limits: big catalogs use a
/// manifest object or a prefix, not a key list.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most input keys a message may list.
pub const MAX_LISTED_KEYS: usize = 10_000;
/// Images per task, bounds.
pub const SHARD_SIZE_RANGE: (u32, u32) = (1, 1_000);
/// Largest output side a job may ask for.
pub const MAX_OUTPUT_SIDE: u32 = 8_192;
/// Longest prompt a generate job may carry, in characters.
pub const MAX_PROMPT_CHARS: usize = 500;
/// Most results per input image a generate job may ask for.
pub const MAX_RESULTS: u32 = 8;
/// Largest fine-tune data set file (JSON lines), bytes: a worker reads no more of it.
pub const MAX_DATASET_BYTES: u64 = 16 << 20;
/// Most samples (non-blank, non-comment lines) a fine-tune data set may list: each is held
/// decoded in the worker's memory for the whole run.
pub const MAX_DATASET_SAMPLES: usize = 10_000;
