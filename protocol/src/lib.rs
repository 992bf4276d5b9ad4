//! What crosses the wire between the parts of the fleet, and the rules on it, in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`.
//!
//! | concern | module |
//! | --- | --- |
//! | the job a client submits, and its validation | [`job`], bounds in [`limits`], refusals in [`rejection`] |
//! | the fine-tune job and its data set | [`fine_tune`] |
//! | messages between scheduler, workers and clients | [`message`] |
//! | job and task state machines | [`state`] |
//! | the S3 key layout and tenant prefixes | [`keys`] |
//! | the AMQP topology: exchanges, queues, bindings | [`topology`] |
//! | the model contract (manifest) | [`manifest`] |
//! | devices as configured, heartbeats and orders | [`device`], [`heartbeat`] |
//!
//! No I/O and no heavy dependencies: the scheduler, the CLI and tests read all of it without
//! Redis, RabbitMQ, S3 or libtorch.

pub mod attribution;
pub mod device;
pub mod fine_tune;
pub mod heartbeat;
pub mod job;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod message;
pub mod rejection;
pub mod state;
pub mod tenancy;
pub mod topology;

pub use device::{DeviceSpec, DeviceSpecError};
pub use manifest::{AlphaKind, ManifestError, ModelManifest, ModelRef, Task};
