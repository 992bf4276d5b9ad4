//! The manifest a worker embeds in each output, and what a reader makes of one.

use std::io::Cursor;

use c2pa::{
    assertions::{c2pa_action, Action, Actions, DigitalSourceType},
    validation_status::{ValidationStatus, SIGNING_CREDENTIAL_UNTRUSTED},
    Builder, ClaimGeneratorInfo, Context, Manifest, Reader,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{CredentialsError, Signer};

/// Label of the custom assertion that carries the fleet's own fields.
pub const PROVENANCE_LABEL: &str = "org.gpu-fleet.provenance";

/// The name in `claim_generator`; the crate version follows it.
pub const CLAIM_GENERATOR: &str = "gpu-fleet";

/// The formats a worker writes.
const FORMATS: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

/// What the manifest says about one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Claim<'a> {
    /// The tenant that submitted the job.
    pub tenant: &'a str,
    /// The job id.
    pub job: &'a str,
    /// The input key this output was made from.
    pub item: &'a str,
    /// The matting model, `name@version`.
    pub model: &'a str,
    /// The generator, `name@version`, when the background was generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator: Option<&'a str>,
    /// The S3 key of the output's attribution record, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<&'a str>,
    /// The worker that made the output.
    pub worker: &'a str,
}

/// The custom assertion as read back; every field optional since any signer can write the label.
#[derive(Debug, Default, Deserialize)]
struct Provenance {
    tenant: Option<String>,
    job: Option<String>,
    item: Option<String>,
    model: Option<String>,
    generator: Option<String>,
    attribution: Option<String>,
    worker: Option<String>,
}

/// What an image's manifest says, and whether its signature checks out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credentials {
    /// The software that signed, e.g. `gpu-fleet/0.1.0`.
    pub claim_generator: String,
    /// The IPTC digital source type of the first action that has one.
    pub digital_source_type: Option<String>,
    /// The matting model, from the fleet's assertion.
    pub model: Option<String>,
    /// The background generator, from the fleet's assertion.
    pub generator: Option<String>,
    /// The job id, from the fleet's assertion.
    pub job: Option<String>,
    /// The input key, from the fleet's assertion.
    pub item: Option<String>,
    /// The tenant, from the fleet's assertion.
    pub tenant: Option<String>,
    /// The attribution record's S3 key, from the fleet's assertion.
    pub attribution: Option<String>,
    /// The worker that made the output, from the fleet's assertion.
    pub worker: Option<String>,
    /// The signature and every hash (image bytes, assertions) check out. Says nothing about
    /// whether the signer is on a trust list: see `validation_errors`.
    pub signature_valid: bool,
    /// The signing certificate's common name and issuer, as c2pa reports them.
    pub signer: Option<String>,
    /// Every failure c2pa reported, as `class: code: explanation`, where class is `trust` for a
    /// signer on no configured trust list (expected for test and private CAs) and `invalid` for
    /// anything that makes `signature_valid` false (a hash mismatch, a bad signature, ...).
    pub validation_errors: Vec<String>,
}

/// The image with a signed manifest embedded; `format` is `image/png`, `image/jpeg` or `image/webp`.
pub fn sign(image: &[u8], format: &str, claim: &Claim, signer: &Signer) -> Result<Vec<u8>, CredentialsError> {
    check_format(format)?;
    let context = Context::new().with_settings(settings()).map_err(|source| CredentialsError::Sign { source })?;
    let mut builder = Builder::from_context(context);
    builder.set_claim_generator_info(claim_generator());
    builder
        .add_assertion(Actions::LABEL_VERSIONED, &actions(claim))
        .map_err(|source| CredentialsError::Sign { source })?;
    builder.add_assertion_json(PROVENANCE_LABEL, claim).map_err(|source| CredentialsError::Sign { source })?;

    let mut source = Cursor::new(image);
    let mut signed = Cursor::new(Vec::with_capacity(image.len() + 64 * 1024));
    builder
        .sign(signer.inner.as_ref(), format, &mut source, &mut signed)
        .map_err(|source| CredentialsError::Sign { source })?;
    Ok(signed.into_inner())
}

/// What an image's manifest says, and whether its signature checks out.
pub fn read(image: &[u8], format: &str) -> Result<Credentials, CredentialsError> {
    check_format(format)?;
    let context = Context::new().with_settings(settings()).map_err(|source| CredentialsError::Read { source })?;
    let reader =
        Reader::from_context(context).with_stream(format, Cursor::new(image)).map_err(|source| match source {
            c2pa::Error::JumbfNotFound | c2pa::Error::ProvenanceMissing => CredentialsError::NoManifest,
            source => CredentialsError::Read { source },
        })?;
    let manifest = reader.active_manifest().ok_or(CredentialsError::NoManifest)?;
    let provenance: Provenance = manifest.find_assertion(PROVENANCE_LABEL).unwrap_or_default();
    let failures = failures(&reader);
    Ok(Credentials {
        claim_generator: claim_generator_of(manifest),
        digital_source_type: digital_source_type_of(manifest),
        model: provenance.model,
        generator: provenance.generator,
        job: provenance.job,
        item: provenance.item,
        tenant: provenance.tenant,
        attribution: provenance.attribution,
        worker: provenance.worker,
        signature_valid: failures.iter().all(|status| status.code() == SIGNING_CREDENTIAL_UNTRUSTED),
        signer: manifest.signature_info().and_then(|info| match (&info.common_name, &info.issuer) {
            (Some(name), Some(issuer)) => Some(format!("{name} (issued by {issuer})")),
            (name, issuer) => name.clone().or_else(|| issuer.clone()),
        }),
        validation_errors: failures.iter().map(describe).collect(),
    })
}

fn check_format(format: &str) -> Result<(), CredentialsError> {
    if FORMATS.contains(&format) {
        Ok(())
    } else {
        Err(CredentialsError::UnsupportedFormat { format: format.to_owned() })
    }
}

/// Settings for both directions, explicit so that no default reaches the network: no OCSP, no
/// remote manifests, an empty host allow-list for any HTTP resolver, and no thumbnail (the
/// `add_thumbnails` feature is off).
fn settings() -> serde_json::Value {
    json!({
        "core": { "allowed_network_hosts": [] },
        "verify": {
            "verify_after_reading": true,
            "verify_after_sign": false,
            "verify_trust": true,
            "ocsp_fetch": false,
            "remote_manifest_fetch": false,
        },
        "builder": { "thumbnail": { "enabled": false } },
    })
}

fn claim_generator() -> ClaimGeneratorInfo {
    let mut info = ClaimGeneratorInfo::new(CLAIM_GENERATOR);
    info.set_version(env!("CARGO_PKG_VERSION"));
    info
}

/// C2PA 2.x requires the first action to be `c2pa.created` (there is no parent ingredient: the
/// worker signs the finished output); the `c2pa.edited` after it says what the fleet did.
fn actions(claim: &Claim) -> Actions {
    let source_type = DigitalSourceType::CompositeWithTrainedAlgorithmicMedia;
    let edit = match claim.generator {
        Some(generator) => {
            format!("subject cut out by {} and composited on a background generated by {generator}", claim.model)
        }
        None => format!("subject cut out by {} and composited on a new background", claim.model),
    };
    Actions::new()
        .add_action(
            Action::new(c2pa_action::CREATED)
                .set_source_type(source_type.clone())
                .set_software_agent(claim_generator())
                .set_description(format!("re-rendered product photo of {}", claim.item)),
        )
        .add_action(
            Action::new(c2pa_action::EDITED)
                .set_source_type(source_type)
                .set_software_agent(claim_generator())
                .set_description(edit),
        )
}

fn claim_generator_of(manifest: &Manifest) -> String {
    let info = manifest.claim_generator_info.as_deref().and_then(|infos| infos.first());
    match (info, manifest.claim_generator()) {
        (Some(ClaimGeneratorInfo { name, version: Some(version), .. }), _) => format!("{name}/{version}"),
        (Some(info), _) => info.name.clone(),
        (None, Some(generator)) => generator.to_owned(),
        (None, None) => String::new(),
    }
}

fn digital_source_type_of(manifest: &Manifest) -> Option<String> {
    let actions: Actions = manifest.find_assertion(Actions::LABEL).ok()?;
    let source_type = actions.actions().iter().find_map(Action::source_type)?;
    Some(serde_json::to_value(source_type).ok()?.as_str()?.to_owned())
}

/// The failures c2pa logged for the active manifest.
fn failures(reader: &Reader) -> Vec<ValidationStatus> {
    match reader.validation_results().and_then(|results| results.active_manifest()) {
        Some(codes) => codes.failure().clone(),
        None => reader.validation_status().unwrap_or_default().iter().filter(|s| !s.passed()).cloned().collect(),
    }
}

fn describe(status: &ValidationStatus) -> String {
    let class = if status.code() == SIGNING_CREDENTIAL_UNTRUSTED { "trust" } else { "invalid" };
    match status.explanation() {
        Some(explanation) => format!("{class}: {}: {explanation}", status.code()),
        None => format!("{class}: {}", status.code()),
    }
}
