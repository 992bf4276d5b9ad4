//! Unit tests that need the crate's internals: other key algorithms and refused leaf certificates.

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ED25519};

use crate::{read, sign, test_signer::write_test_chain, Claim, CredentialsError, Signer};

fn tiny_png() -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(4, 4).write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

fn claim() -> Claim<'static> {
    Claim { tenant: "t", job: "j", item: "i.png", model: "birefnet@1", generator: None, attribution: None, worker: "w" }
}

#[test]
fn ed25519_signs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = write_test_chain(dir.path(), &PKCS_ED25519).unwrap();
    let signer = Signer::from_pem_files(&chain, &key).unwrap();
    assert_eq!(signer.algorithm(), "ed25519");
    let credentials = read(&sign(&tiny_png(), "image/png", &claim(), &signer).unwrap(), "image/png").unwrap();
    assert!(credentials.signature_valid, "{:?}", credentials.validation_errors);
    assert_eq!(credentials.job.as_deref(), Some("j"));
}

#[test]
fn es256_is_the_test_signer_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = crate::make_test_signer(dir.path()).unwrap();
    let signer = Signer::from_pem_files(&chain, &key).unwrap();
    assert_eq!(signer.algorithm(), "es256");
    assert!(signer.subject().contains("gpu-fleet test signer"), "{}", signer.subject());
}

#[test]
fn sec1_key_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = crate::make_test_signer(dir.path()).unwrap();
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    let error = Signer::from_pem(&std::fs::read(chain).unwrap(), sec1.as_bytes()).unwrap_err();
    assert!(matches!(error, CredentialsError::UnsupportedKey { .. }), "{error}");
    assert!(error.to_string().contains("PKCS#8"), "{error}");
}

/// A self-signed certificate, as a CA or as a leaf with fine signing extensions: C2PA refuses both.
#[test]
fn self_signed_certificates_are_refused() {
    for is_ca in [IsCa::Ca(rcgen::BasicConstraints::Unconstrained), IsCa::ExplicitNoCa] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = is_ca;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        let certificate = params.self_signed(&key).unwrap();
        let error = Signer::from_pem(certificate.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap_err();
        assert!(matches!(error, CredentialsError::InvalidCredentials { .. }), "{error}");
        assert!(error.to_string().contains("not usable for c2pa"), "{error}");
    }
}

/// A leaf without a signing EKU (here serverAuth only) is refused before any output is signed.
#[test]
fn leaf_without_signing_eku_is_refused() {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "leaf");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca).unwrap();
    let chain = format!("{}{}", leaf.pem(), ca.as_ref().pem());
    let error = Signer::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap_err();
    assert!(error.to_string().contains("EKU"), "{error}");
}

/// A worker shares one signer between its device threads.
#[test]
fn signer_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Signer>();
}
