//! Test certificates made in-process (no `openssl` CLI): a CA and a leaf it signed, shaped the way
//! C2PA wants a signing certificate. For tests and the dev stack only: the CA is on no trust list,
//! so readers report the signer as untrusted.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};

use crate::CredentialsError;

/// id-kp-documentSigning (RFC 9336), one of the EKUs C2PA accepts for claim signing.
const DOCUMENT_SIGNING: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 36];

/// Writes a test CA and a leaf it signed (ES256, leaf first) into `dir` as `chain.pem`, with the
/// leaf's PKCS#8 key as `key.pem`; returns their paths.
pub fn make_test_signer(dir: &Path) -> Result<(PathBuf, PathBuf), CredentialsError> {
    write_test_chain(dir, &PKCS_ECDSA_P256_SHA256)
}

/// [`make_test_signer`] for any key algorithm rcgen can generate (the tests use Ed25519 too).
pub(crate) fn write_test_chain(
    dir: &Path,
    algorithm: &'static SignatureAlgorithm,
) -> Result<(PathBuf, PathBuf), CredentialsError> {
    let fail = |reason: String| CredentialsError::TestCertificates { dir: dir.to_owned(), reason };
    let (chain, key) = test_chain(algorithm).map_err(|e| fail(e.to_string()))?;
    let (chain_path, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain_path, chain).map_err(|e| fail(format!("cannot write chain.pem: {e}")))?;
    std::fs::write(&key_path, key).map_err(|e| fail(format!("cannot write key.pem: {e}")))?;
    Ok((chain_path, key_path))
}

/// The PEM chain (leaf, then CA) and the leaf's PEM key.
fn test_chain(algorithm: &'static SignatureAlgorithm) -> Result<(String, String), rcgen::Error> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("gpu-fleet test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate_for(algorithm)?)?;

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name("gpu-fleet test signer");
    // C2PA refuses a CA as signer: say CA:FALSE explicitly rather than leave the extension out.
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::EmailProtection, ExtendedKeyUsagePurpose::Other(DOCUMENT_SIGNING.to_vec())];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate_for(algorithm)?;
    let leaf = leaf.signed_by(&leaf_key, &ca)?;

    Ok((format!("{}{}", leaf.pem(), ca.as_ref().pem()), leaf_key.serialize_pem()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "gpu-fleet");
    name.push(DnType::CommonName, common_name);
    name
}
