//! Types every part of the fleet shares, in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`.
//!
//! Nothing here links libtorch: the scheduler and the CLI read model manifests and device
//! settings without it.

pub mod amqp;
pub mod device;
pub mod finetune;
pub mod heartbeat;
pub mod job;
pub mod jobstore;
pub mod keys;
pub mod lease;
pub mod manifest;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod state;
pub mod store;

pub use device::{DeviceSpec, DeviceSpecError};
pub use manifest::{AlphaKind, ManifestError, ModelManifest, ModelRef, Task};
