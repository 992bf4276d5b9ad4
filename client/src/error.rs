//! The errors of this crate: [`ClientError`] for talking to the fleet (broker, Redis, object
//! store) and reading back what it wrote, [`JobBodyError`] for building a job body from the
//! short forms people type or from a file.
//!
//! Variants that wrap another crate's error without adding anything show it as it is (its
//! message and its causes); the others say what was being done and include the cause in their
//! message.

use std::io;
use std::num::{ParseFloatError, ParseIntError};
use std::path::PathBuf;
use std::time::Duration;

use fleet_protocol::job::Rejection;
use fleet_protocol::keys::KeyError;
use fleet_queue::AmqpError;
use fleet_state::JobStoreError;
use fleet_store::StoreError;
use fleet_synth::SynthError;
use lapin::protocol::{AMQPErrorKind, AMQPHardError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured tenant name cannot be a tenant.
    #[error(transparent)]
    Tenant(#[from] KeyError),
    /// The broker or the connection to it failed, or it refused a message.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// Redis (job state) failed, or a record there is unusable.
    #[error(transparent)]
    State(#[from] JobStoreError),
    /// The object store failed, or has no object at a key asked for.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job was refused at submission; the rejection is what the scheduler stored.
    #[error(transparent)]
    Rejected(Rejection),
    /// The scheduler did not answer a submission in time.
    #[error("no answer from the scheduler within {timeout:?} (is it running?)")]
    NoAnswer {
        /// How long the client waited.
        timeout: Duration,
    },
    /// A job did not reach a terminal state in time.
    #[error("job {id} did not end within {timeout:?}")]
    NotEnded {
        /// Job id.
        id: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The broker closed the event subscription.
    #[error("event subscription closed")]
    SubscriptionClosed,
    /// A message or object could not be encoded as, or decoded from, JSON.
    #[error("{what}: {cause}")]
    Json {
        /// What was being encoded or decoded, e.g. `decoding task manifest <key>`.
        what: String,
        /// The parser's or serialiser's error.
        cause: serde_json::Error,
    },
    /// A local file could not be read.
    #[error("reading {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// An image could not be encoded or decoded.
    #[error("{what}: {cause}")]
    Image {
        /// What was being done, e.g. `decoding matte <key>`.
        what: String,
        /// The image crate's error.
        cause: image::ImageError,
    },
    /// An input photo could not be decoded.
    #[error("decoding {key}: {cause}")]
    Decode {
        /// The object key of the photo.
        key: String,
        /// Why it was refused.
        cause: fleet_imaging::ImageError,
    },
    /// Writing a synthetic catalog failed.
    #[error(transparent)]
    Synth(#[from] SynthError),
    /// A blocking task (rendering synthetic data) panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The HTTP API could not be reached, or its answer broke off.
    #[error(transparent)]
    Http(#[from] fleet_api::client::CallError),
    /// The HTTP API answered with a problem.
    #[error("{status} {code}: {detail}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The problem's code.
        code: String,
        /// The problem's detail.
        detail: String,
    },
}

impl ClientError {
    /// Whether the same call may succeed later: the broker, Redis or the object store was
    /// unreachable, dropped the connection or was briefly unable to take the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Broker(AmqpError::Broker(e)) => lapin_is_retryable(e),
            ClientError::Broker(AmqpError::Nacked { .. }) => true,
            ClientError::State(e) => e.is_retryable(),
            ClientError::Store(e) => e.is_retryable(),
            ClientError::Http(_) => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> ClientError {
        move |cause| ClientError::Json { what: what.into(), cause }
    }
}

impl From<lapin::Error> for ClientError {
    fn from(e: lapin::Error) -> Self {
        ClientError::Broker(AmqpError::Broker(e))
    }
}

/// Network trouble, a lost connection or the broker closing it (e.g. while restarting); not a
/// refusal such as access refused or a missing queue.
fn lapin_is_retryable(e: &lapin::Error) -> bool {
    match e {
        lapin::Error::IOError(_)
        | lapin::Error::MissingHeartbeatError
        | lapin::Error::InvalidConnectionState(_)
        | lapin::Error::InvalidChannelState(_) => true,
        lapin::Error::ProtocolError(e) => matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)),
        _ => false,
    }
}

/// Why a job body could not be built from flags or read from a file.
#[derive(Debug, thiserror::Error)]
pub enum JobBodyError {
    /// Not exactly one input source was given.
    #[error("give exactly one of --prefix, --manifest, --keys (or --file)")]
    InputSources,
    /// The background spec names no known mode.
    #[error("unknown background {0:?}")]
    UnknownBackground(String),
    /// `blur:PCT` with a `PCT` that is not a number.
    #[error("invalid blur strength {value:?}: {cause}")]
    BlurStrength {
        /// The text after `blur:`.
        value: String,
        /// Why it does not parse.
        cause: ParseFloatError,
    },
    /// `FORMAT:QUALITY` with a `QUALITY` that is not a number from 0 to 255.
    #[error("invalid output quality {value:?}: {cause}")]
    Quality {
        /// The text after `FORMAT:`.
        value: String,
        /// Why it does not parse.
        cause: ParseIntError,
    },
    /// The job file could not be read.
    #[error("reading {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The job file ends in `.yaml` or `.yml` but is not YAML.
    #[error("{} is not valid YAML: {cause}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        cause: serde_yaml::Error,
    },
    /// The job file is not JSON.
    #[error("{} is not valid JSON: {cause}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        cause: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_are_retryable() {
        let io = || lapin::Error::IOError(std::sync::Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert!(ClientError::from(io()).is_retryable());
        assert!(ClientError::from(lapin::Error::MissingHeartbeatError).is_retryable());
        assert!(ClientError::Broker(AmqpError::Nacked { exchange: "e".into(), routing_key: "k".into() }).is_retryable());
        assert!(!ClientError::Broker(AmqpError::Unroutable { exchange: "e".into(), routing_key: "k".into() })
            .is_retryable());
        let outage = StoreError::Backend { op: "get", key: "k".into(), reason: "503".into(), retryable: true };
        assert!(ClientError::from(outage).is_retryable());
        assert!(!ClientError::from(StoreError::NotFound { key: "k".into() }).is_retryable());
        assert!(!ClientError::from(KeyError::BadTenant("A".into())).is_retryable());
        assert!(!ClientError::SubscriptionClosed.is_retryable());
        assert!(!ClientError::NoAnswer { timeout: Duration::from_secs(1) }.is_retryable());
    }

    #[test]
    fn messages_say_what_the_old_ones_said() {
        let rejected = ClientError::Rejected(Rejection { code: "invalid".into(), reason: "no input".into() });
        assert_eq!(rejected.to_string(), "job rejected (invalid): no input");
        assert_eq!(
            ClientError::NoAnswer { timeout: Duration::from_secs(60) }.to_string(),
            "no answer from the scheduler within 60s (is it running?)"
        );
        assert_eq!(
            ClientError::NotEnded { id: "j1".into(), timeout: Duration::from_secs(2) }.to_string(),
            "job j1 did not end within 2s"
        );
        assert_eq!(ClientError::SubscriptionClosed.to_string(), "event subscription closed");
        assert_eq!(
            ClientError::from(KeyError::BadTenant("A".into())).to_string(),
            "tenant name \"A\" must be 1 to 63 lowercase letters, digits or '-'"
        );
    }
}
