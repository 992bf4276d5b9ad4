//! Sign real PNG, JPEG and WebP bytes with a test chain, read them back, and break them.

use std::{io::Cursor, path::Path, time::Instant};

use fleet_credentials::{make_test_signer, read, sign, Claim, CredentialsError, Signer};
use image::{ImageFormat, Rgb, RgbImage};

const COMPOSITE: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia";

fn claim() -> Claim<'static> {
    Claim {
        tenant: "tenant-a",
        job: "job-0042",
        item: "inputs/tenant-a/shoe-17.jpg",
        model: "birefnet@1.2.0",
        generator: Some("sdxl-inpaint@1.0"),
        attribution: Some("attribution/tenant-a/job-0042/shoe-17.json"),
        worker: "worker-3",
    }
}

fn test_signer(dir: &Path) -> Signer {
    let (chain, key) = make_test_signer(dir).expect("test certificates");
    Signer::from_pem_files(&chain, &key).expect("test signer loads")
}

/// A photo-like image: gradients plus a deterministic texture, so JPEG has real entropy data.
fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let texture = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
        Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, (texture * 8) as u8])
    })
}

fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encode");
    bytes.into_inner()
}

fn assert_round_trip(format: ImageFormat, mime: &str) {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let image = encode(&photo(256, 192), format);

    let signed = sign(&image, mime, &claim(), &signer).expect("sign");
    assert!(signed.len() > image.len(), "the manifest is embedded");
    let decoded = image::load_from_memory_with_format(&signed, format).expect("a signed image still decodes");
    assert_eq!((decoded.width(), decoded.height()), (256, 192));

    let credentials = read(&signed, mime).expect("read");
    assert!(credentials.signature_valid, "errors: {:?}", credentials.validation_errors);
    assert_eq!(credentials.claim_generator, format!("gpu-fleet/{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(credentials.digital_source_type.as_deref(), Some(COMPOSITE));
    assert_eq!(credentials.tenant.as_deref(), Some("tenant-a"));
    assert_eq!(credentials.job.as_deref(), Some("job-0042"));
    assert_eq!(credentials.item.as_deref(), Some("inputs/tenant-a/shoe-17.jpg"));
    assert_eq!(credentials.model.as_deref(), Some("birefnet@1.2.0"));
    assert_eq!(credentials.generator.as_deref(), Some("sdxl-inpaint@1.0"));
    assert_eq!(credentials.attribution.as_deref(), Some("attribution/tenant-a/job-0042/shoe-17.json"));
    assert_eq!(credentials.worker.as_deref(), Some("worker-3"));
    let signer_name = credentials.signer.expect("signer reported");
    assert!(signer_name.contains("gpu-fleet test signer"), "{signer_name}");
    // The test CA is on no trust list: reported, but not an integrity failure.
    assert!(
        credentials.validation_errors.iter().all(|e| e.starts_with("trust: ")),
        "{:?}",
        credentials.validation_errors
    );
    assert!(!credentials.validation_errors.is_empty(), "an untrusted test CA is reported");
}

#[test]
fn png_round_trips() {
    assert_round_trip(ImageFormat::Png, "image/png");
}

#[test]
fn jpeg_round_trips() {
    assert_round_trip(ImageFormat::Jpeg, "image/jpeg");
}

#[test]
fn webp_round_trips() {
    assert_round_trip(ImageFormat::WebP, "image/webp");
}

#[test]
fn replaced_background_has_no_generator() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let claim = Claim { generator: None, attribution: None, ..claim() };
    let signed = sign(&encode(&photo(64, 64), ImageFormat::Png), "image/png", &claim, &signer).unwrap();
    let credentials = read(&signed, "image/png").unwrap();
    assert!(credentials.signature_valid, "{:?}", credentials.validation_errors);
    assert_eq!(credentials.generator, None);
    assert_eq!(credentials.attribution, None);
    assert_eq!(credentials.digital_source_type.as_deref(), Some(COMPOSITE));
}

/// Byte offset of the middle of the first chunk of `kind` in a PNG.
fn png_chunk_middle(png: &[u8], kind: &[u8; 4]) -> usize {
    let mut at = 8;
    while at + 8 <= png.len() {
        let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == kind {
            return at + 8 + length / 2;
        }
        at += 12 + length;
    }
    panic!("no {} chunk", String::from_utf8_lossy(kind));
}

fn assert_invalid(image: &[u8], mime: &str) {
    match read(image, mime) {
        Ok(credentials) => {
            assert!(!credentials.signature_valid, "tampering went unnoticed");
            assert!(
                credentials.validation_errors.iter().any(|e| e.starts_with("invalid: ")),
                "{:?}",
                credentials.validation_errors
            );
        }
        Err(CredentialsError::Read { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn png_pixel_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let mut signed = sign(&encode(&photo(128, 128), ImageFormat::Png), "image/png", &claim(), &signer).unwrap();
    let at = png_chunk_middle(&signed, b"IDAT");
    signed[at] ^= 0x01;
    assert_invalid(&signed, "image/png");
}

#[test]
fn jpeg_pixel_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let mut signed = sign(&encode(&photo(128, 128), ImageFormat::Jpeg), "image/jpeg", &claim(), &signer).unwrap();
    // Inside the entropy-coded scan, just before EOI; a byte below 0xF0 stays a data byte.
    let at = (signed.len() - 64..signed.len() - 2).find(|&i| signed[i] < 0xF0 && signed[i - 1] != 0xFF).unwrap();
    signed[at] ^= 0x01;
    assert_invalid(&signed, "image/jpeg");
}

#[test]
fn edited_provenance_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let mut signed = sign(&encode(&photo(64, 64), ImageFormat::Png), "image/png", &claim(), &signer).unwrap();
    let at = signed.windows(8).position(|w| w == b"tenant-a").expect("the provenance assertion is plain JSON");
    signed[at + 7] = b'b';
    assert_invalid(&signed, "image/png");
}

#[test]
fn unsigned_image_has_no_manifest() {
    for (format, mime) in [(ImageFormat::Png, "image/png"), (ImageFormat::Jpeg, "image/jpeg")] {
        let error = read(&encode(&photo(32, 32), format), mime).unwrap_err();
        assert!(matches!(error, CredentialsError::NoManifest), "{mime}: {error}");
    }
}

#[test]
fn unsupported_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let error = sign(b"GIF89a", "image/gif", &claim(), &signer).unwrap_err();
    assert!(matches!(error, CredentialsError::UnsupportedFormat { ref format } if format == "image/gif"), "{error}");
    assert!(matches!(read(b"GIF89a", "image/gif"), Err(CredentialsError::UnsupportedFormat { .. })));
}

#[test]
fn bad_credentials_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = make_test_signer(dir.path()).unwrap();
    let (chain, key) = (std::fs::read(chain).unwrap(), std::fs::read(key).unwrap());

    let error = Signer::from_pem(&chain, b"not a key").unwrap_err();
    assert!(matches!(error, CredentialsError::InvalidCredentials { .. }), "{error}");
    assert!(error.is_config());

    let error = Signer::from_pem(b"", &key).unwrap_err();
    assert!(matches!(error, CredentialsError::InvalidCredentials { .. }), "{error}");

    // A key from another pair.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = make_test_signer(other.path()).unwrap();
    let error = Signer::from_pem(&chain, &std::fs::read(other_key).unwrap()).unwrap_err();
    assert!(error.to_string().contains("does not belong to the leaf"), "{error}");

    let error = Signer::from_pem_files(&dir.path().join("missing.pem"), &dir.path().join("key.pem")).unwrap_err();
    assert!(matches!(error, CredentialsError::ReadFile { .. }), "{error}");
}

/// Sign and read times on a ~1 MP JPEG; `cargo test --release -- --nocapture timing` for real figures.
#[test]
fn timing_on_a_megapixel_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let signer = test_signer(dir.path());
    let jpeg = encode(&photo(1024, 1024), ImageFormat::Jpeg);
    let runs = 20;

    let started = Instant::now();
    let mut signed = Vec::new();
    for _ in 0..runs {
        signed = sign(&jpeg, "image/jpeg", &claim(), &signer).unwrap();
    }
    let sign_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;

    let started = Instant::now();
    for _ in 0..runs {
        assert!(read(&signed, "image/jpeg").unwrap().signature_valid);
    }
    let read_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    println!(
        "1024x1024 JPEG ({} KiB, manifest +{} KiB): sign {sign_ms:.1} ms, read {read_ms:.1} ms (mean of {runs})",
        jpeg.len() / 1024,
        (signed.len() - jpeg.len()) / 1024
    );
}
