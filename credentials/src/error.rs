//! What can go wrong while signing or reading content credentials.

use std::path::PathBuf;

use thiserror::Error;

/// Errors of this crate.
#[derive(Debug, Error)]
pub enum CredentialsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate chain or the private key is unusable: unparsable, a leaf that C2PA refuses
    /// (CA, self-signed, no signing EKU), or a key that does not belong to the leaf.
    #[error("invalid signing credentials: {reason}")]
    InvalidCredentials {
        /// What is wrong, in words an operator can act on.
        reason: String,
    },
    /// The private key is of a kind C2PA (or this crate) cannot sign with.
    #[error("unsupported signing key {key}: use ECDSA P-256/P-384/P-521, Ed25519 or RSA, in PKCS#8 PEM")]
    UnsupportedKey {
        /// The key's algorithm (OID) or PEM label.
        key: String,
    },
    /// The image format is not one a worker writes.
    #[error("unsupported image format {format}: expected image/png, image/jpeg or image/webp")]
    UnsupportedFormat {
        /// The format that was asked for.
        format: String,
    },
    /// The image carries no C2PA manifest at all.
    #[error("the image has no c2pa manifest")]
    NoManifest,
    /// The c2pa library failed to sign.
    #[error("cannot sign the image")]
    Sign {
        /// The library's error.
        #[source]
        source: c2pa::Error,
    },
    /// The c2pa library failed to parse the image or its manifest store.
    #[error("cannot read the image's manifest")]
    Read {
        /// The library's error.
        #[source]
        source: c2pa::Error,
    },
    /// The test certificates could not be made or written.
    #[error("cannot make test certificates in {dir}: {reason}")]
    TestCertificates {
        /// The folder they were to go to.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

impl CredentialsError {
    /// Whether the signing set-up itself is wrong (files, key, certificate), as opposed to one
    /// image: a worker refuses to start on these and dead-letters an output on the others.
    /// Nothing here touches the network or a transient resource, so no error is worth retrying.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::ReadFile { .. }
                | Self::InvalidCredentials { .. }
                | Self::UnsupportedKey { .. }
                | Self::TestCertificates { .. }
        )
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidCredentials { reason: reason.into() }
    }
}
