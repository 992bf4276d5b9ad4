//! An operator's signing key and certificate chain, checked once when loaded so that a worker
//! with unusable credentials fails at start-up rather than on its first output.

use std::{fmt, path::Path};

use c2pa::{
    create_signer,
    crypto::{
        cose::{check_end_entity_certificate_profile, CertificateTrustPolicy},
        raw_signature::validator_for_signing_alg,
    },
    status_tracker::StatusTracker,
    BoxedSigner, SigningAlg,
};
use pkcs8::{der::Decode, ObjectIdentifier, PrivateKeyInfo};
use x509_parser::{certificate::X509Certificate, pem::Pem, prelude::FromDer};

use crate::CredentialsError;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Signed once at load time to prove that the key belongs to the leaf certificate.
const PROBE: &[u8] = b"gpu-fleet signing key probe";

/// An operator's signing key and certificate chain (leaf first); shared by all of a worker's
/// threads.
pub struct Signer {
    pub(crate) inner: BoxedSigner,
    algorithm: SigningAlg,
    subject: String,
}

impl Signer {
    /// Loads a PEM certificate chain (leaf first) and its PKCS#8 PEM private key from files.
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Signer, CredentialsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CredentialsError::ReadFile { path: path.to_owned(), source })
        };
        Self::from_pem(&read(chain)?, &read(key)?)
    }

    /// Builds a signer from a PEM certificate chain (leaf first) and its PKCS#8 PEM private key;
    /// the algorithm follows from the key: ES256/384/512, Ed25519, or PS256 for RSA.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Signer, CredentialsError> {
        let algorithm = key_algorithm(key)?;
        let leaf = leaf_certificate(chain)?;
        let (_, certificate) = X509Certificate::from_der(&leaf)
            .map_err(|e| CredentialsError::invalid(format!("leaf certificate does not parse: {e}")))?;
        check_leaf_profile(&leaf)?;
        // No time-stamp authority: signing must not reach the network.
        let inner = create_signer::from_keys(chain, key, algorithm, None)
            .map_err(|e| CredentialsError::invalid(format!("c2pa refused the key or chain: {e}")))?;
        check_key_matches_leaf(&inner, algorithm, certificate.public_key().raw)?;
        Ok(Signer { inner, algorithm, subject: certificate.subject().to_string() })
    }

    /// The signature algorithm, as C2PA names it (`es256`, `ed25519`, `ps256`, ...).
    pub fn algorithm(&self) -> String {
        self.algorithm.to_string()
    }

    /// The leaf certificate's subject, for start-up logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("algorithm", &self.algorithm).field("subject", &self.subject).finish()
    }
}

/// The C2PA algorithm for a PKCS#8 PEM private key (C2PA forbids RSA PKCS#1 v1.5, hence PS256).
fn key_algorithm(key: &[u8]) -> Result<SigningAlg, CredentialsError> {
    let pem = Pem::iter_from_buffer(key)
        .next()
        .ok_or_else(|| CredentialsError::invalid("private key file holds no PEM block"))?
        .map_err(|e| CredentialsError::invalid(format!("private key is not PEM: {e}")))?;
    if pem.label != "PRIVATE KEY" {
        // SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY"): `openssl pkcs8 -topk8 -nocrypt` converts them.
        return Err(CredentialsError::UnsupportedKey { key: format!("PEM label {:?} (not PKCS#8)", pem.label) });
    }
    let info = PrivateKeyInfo::from_der(&pem.contents)
        .map_err(|e| CredentialsError::invalid(format!("private key is not PKCS#8: {e}")))?;
    let oid = info.algorithm.oid;
    let algorithm = match oid {
        EC_PUBLIC_KEY => match info.algorithm.parameters_oid().ok() {
            Some(SECP256R1) => SigningAlg::Es256,
            Some(SECP384R1) => SigningAlg::Es384,
            Some(SECP521R1) => SigningAlg::Es512,
            curve => {
                let curve = curve.map_or_else(|| "none".to_owned(), |c| c.to_string());
                return Err(CredentialsError::UnsupportedKey { key: format!("EC curve {curve}") });
            }
        },
        ED25519 => SigningAlg::Ed25519,
        RSA_ENCRYPTION | RSASSA_PSS => SigningAlg::Ps256,
        other => return Err(CredentialsError::UnsupportedKey { key: format!("algorithm {other}") }),
    };
    Ok(algorithm)
}

/// The DER of the chain's first certificate, after checking every block is a certificate.
fn leaf_certificate(chain: &[u8]) -> Result<Vec<u8>, CredentialsError> {
    let mut certificates = Vec::new();
    for pem in Pem::iter_from_buffer(chain) {
        let pem = pem.map_err(|e| CredentialsError::invalid(format!("certificate chain is not PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(CredentialsError::invalid(format!("certificate chain holds a {:?} block", pem.label)));
        }
        certificates.push(pem.contents);
    }
    certificates.into_iter().next().ok_or_else(|| CredentialsError::invalid("certificate chain holds no certificate"))
}

/// The checks a validator applies to the signing certificate (C2PA 2.x section 14.5): v3, not a
/// CA, an authority key identifier, digitalSignature key usage, an accepted EKU, in its validity
/// period.
fn check_leaf_profile(leaf: &[u8]) -> Result<(), CredentialsError> {
    let mut log = StatusTracker::default();
    check_end_entity_certificate_profile(leaf, &CertificateTrustPolicy::default(), &mut log, None).map_err(|e| {
        let details: Vec<_> = log.logged_items().iter().map(|item| item.description.to_string()).collect();
        CredentialsError::invalid(format!("leaf certificate is not usable for c2pa: {e} ({})", details.join("; ")))
    })
}

/// Signs a probe and verifies it with the leaf's public key, so a key from another pair is caught
/// here and not by every reader of every output.
fn check_key_matches_leaf(
    signer: &BoxedSigner,
    algorithm: SigningAlg,
    leaf_public_key: &[u8],
) -> Result<(), CredentialsError> {
    let signature =
        signer.sign(PROBE).map_err(|e| CredentialsError::invalid(format!("the private key cannot sign: {e}")))?;
    let validator = validator_for_signing_alg(algorithm)
        .ok_or_else(|| CredentialsError::UnsupportedKey { key: format!("algorithm {algorithm}") })?;
    validator
        .validate(&signature, PROBE, leaf_public_key)
        .map_err(|_| CredentialsError::invalid("the private key does not belong to the leaf certificate"))
}
