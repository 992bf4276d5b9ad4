//! The fleet's durable state in Redis, in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`:
//! jobs and their tasks, progress and failures ([`jobs`], [`tasks`]), task leases with fencing
//! tokens ([`lease`]), which scheduler leads ([`leader`]), and the fleet view of workers' heartbeats ([`workers`]). Every key is
//! in [`schema`]; every multi-key change is one Lua script under `scripts/`.
//!
//! Nothing here links libtorch or speaks AMQP: the scheduler, the workers and `fleetctl` share
//! it through [`RedisJobStore`].

pub mod error;
pub mod jobs;
pub mod leader;
pub mod lease;
pub mod record;
pub mod schema;
pub mod tasks;
pub mod workers;

pub use error::JobStoreError;
pub use jobs::{RedisJobStore, DEFAULT_RETENTION};
pub use record::{Created, JobRecord, LeaseOp, TaskNote, TaskOutcome, TaskRecord, TaskUpdate};
