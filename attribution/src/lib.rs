//! Attribution and the royalty ledger.
//!
//! ```text
//! fine-tune --training-embeddings.jsonl--> TrainingSet (parent's samples + its own) --> model folder
//! worker: output embedding --nearest--> samples --ShareRule, revocations--> AttributionRecord
//!                                                                     \--> Ledger (PostgreSQL, once per output)
//! ```
//!
//! [`index`] keeps a lineage's training set in an HNSW index (usearch: a maintained,
//! single-file index that loads from and saves to a byte buffer and takes new vectors after
//! loading, so a child's set is its parent's plus its own); [`shares`] is the rule from
//! neighbours to contributors' shares; [`ledger`] is the append-only record of every
//! output's shares.

pub mod index;
pub mod ledger;
pub mod shares;

pub use index::TrainingSet;
pub use ledger::{Entry, Ledger, Period, Report};
pub use shares::{attribute, neighbours, Revocations};

/// What can go wrong with a training set or the ledger.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The ANN index refused an operation.
    #[error("attribution index: {0}")]
    Index(String),
    /// A training set's files do not agree with each other or with the manifest.
    #[error("training set is corrupt: {0}")]
    Corrupt(String),
    /// Embeddings from two different embedders cannot be compared.
    #[error("{child} does not embed in the same space as {parent}")]
    OtherSpace {
        /// The set or embedding already there.
        parent: String,
        /// The one that does not match it.
        child: String,
    },
    /// Reading or writing a training set's files.
    #[error("training set files: {0}")]
    Io(String),
    /// The royalty ledger (PostgreSQL) failed or refused.
    #[error("royalty ledger: {0}")]
    Ledger(String),
}
