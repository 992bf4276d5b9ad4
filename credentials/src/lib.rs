//! Content credentials (C2PA manifests) on the fleet's output images.
//!
//! Sits at the end of a worker's pass in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`:
//! after the output is encoded and before it goes to S3, [`sign`] embeds a manifest that says
//! the image is a composite made with a trained algorithm (`compositeWithTrainedAlgorithmicMedia`),
//! which matting model and which background generator made it, and for which tenant, job and
//! input. [`read`] gives that back with the verdict on signature and hashes.
//!
//! Everything is local: signing and verifying use c2pa's pure-Rust crypto (no system OpenSSL),
//! with no time-stamp authority, no OCSP and no remote manifests; c2pa is built without an HTTP
//! client. [`make_test_signer`] makes a throwaway CA and leaf for tests and the dev stack.

mod error;
mod manifest;
mod signer;
mod test_signer;

pub use error::CredentialsError;
pub use manifest::{read, sign, Claim, Credentials, CLAIM_GENERATOR, PROVENANCE_LABEL};
pub use signer::Signer;
pub use test_signer::make_test_signer;

#[cfg(test)]
mod tests;
