//! The scheduler: in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`
//! it takes jobs off the intake queue, records them in Redis before acknowledging them,
//! splits them into tasks without holding a listing, dispatches the tasks by priority,
//! counts what workers report, dead-letters what keeps failing and publishes job events.
//!
//! ```text
//! fleet.jobs.intake --> intake (validate, resolve model, record, ack) --> shard (page by page)
//!                                                                          --> fleet.tasks.*
//! fleet.tasks.*     --> dispatch (placement on heartbeating devices, lease) --> fleet.worker.<id>
//! fleet.reports.*   --> reports (fenced by lease token, counts once) --> finalize --> fleet.events
//! fleet:leases      --> recovery (expired: take over, re-dispatch; failed: retry after backoff)
//! fleet.tasks.dead  --> dead letters (items failed with the last error) --> fleet.dead
//! ```
//!
//! It holds no job state of its own: a restarted scheduler resumes splitting from the
//! cursors in Redis, and tasks in flight keep running under their leases in Redis.

pub mod backlog;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod fair;
pub mod intake;
pub mod placement;
pub mod recovery;
pub mod reports;
pub mod service;
pub mod shard;

pub use context::{Config, Scheduler};
pub use error::SchedulerError;
pub use service::run;
