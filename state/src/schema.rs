//! The Redis schema, in one place: every key the fleet's state lives under.
//!
//! ```text
//! fleet:job:<tenant>:<id>        JSON JobRecord; created with SET NX (one job per tenant and id)
//! fleet:jobs:<tenant>            sorted set of job ids by acceptance time
//! fleet:tasks:<tenant>:<id>      hash task number -> JSON TaskRecord
//! fleet:progress:<tenant>:<id>   hash of counters (tasks_total, tasks_done, items_*, sharded)
//! fleet:failures:<tenant>:<id>   list of JSON ItemFailureReport
//! fleet:sharding                 hash "<tenant>/<id>" -> sharding cursor of jobs still being split
//! fleet:rejected:<tenant>:<id>   JSON Rejection, kept 7 days
//! fleet:retention                sorted set "<tenant>:<id>" -> when its keys expire (s)
//! fleet:eventseq:<tenant>:<id>   counter numbering the job's events
//! fleet:training:<tenant>:<id>   a fine-tune's latest progress (JSON)
//! fleet:lease:<tenant>/<job>/<task>  a task's lease (see crate::lease)
//! fleet:leases fleet:load fleet:requeue fleet:lease:seq   lease indexes and the token counter
//! fleet:placement:blocked        the dispatcher's last word on tasks it could not place
//! fleet:quota:items              hash tenant -> items in tasks not yet ended
//! fleet:quota:interactive:<tenant>:<minute>  interactive jobs accepted in that minute
//! fleet:worker:<id> fleet:order:<id>  heartbeats and orders (fleet_protocol::heartbeat)
//! fleet:scheduler:leader         the leading scheduler's id, with a TTL (crate::leader)
//! ```

use fleet_protocol::keys::TenantId;

/// Finished jobs by when their keys expire (seconds since the epoch), to prune the tenants'
/// job lists then.
pub const RETENTION_KEY: &str = "fleet:retention";

/// The per-job keys besides the record, all expiring with it once the job ends.
pub const JOB_KEY_KINDS: [&str; 5] = ["tasks", "progress", "failures", "eventseq", "training"];

/// The leading scheduler's id.
pub const LEADER_KEY: &str = "fleet:scheduler:leader";

/// Sorted set of held leases by expiry.
pub const LEASES_KEY: &str = "fleet:leases";

/// Leases held per worker, device and priority.
pub const LOAD_KEY: &str = "fleet:load";

/// Tasks taken from their worker, waiting to be dispatched again.
pub const REQUEUE_KEY: &str = "fleet:requeue";

/// Items in tasks not yet ended, per tenant (hash tenant -> items): kept by the task
/// scripts, read for the `max_queued_items` quota.
pub const QUEUED_ITEMS_KEY: &str = "fleet:quota:items";

/// Tasks not yet ended, per tenant and priority (hash `<tenant>|<priority>` -> tasks): kept
/// by the task scripts, exported as `fleet_backlog_tasks` and shown by `fleetctl queue`.
pub const BACKLOG_KEY: &str = "fleet:backlog";

/// Tasks ended since the store began, per priority (hash priority -> tasks): the rate the
/// backlog drains at.
pub const ENDED_KEY: &str = "fleet:backlog:ended";

/// The fencing token counter.
pub const TOKEN_SEQ_KEY: &str = "fleet:lease:seq";

/// The dispatcher's last word on tasks it could not place, and why (JSON, short TTL), for
/// `fleetctl queue`.
pub const BLOCKED_KEY: &str = "fleet:placement:blocked";

/// Where the scheduler keeps a fine-tune's latest progress for `fleetctl show`.
pub fn training_key(tenant: &str, job: &str) -> String {
    format!("fleet:training:{tenant}:{job}")
}

/// The lease hash of task `id` (`<tenant>/<job>/<task>`).
pub fn lease_key(id: &str) -> String {
    format!("fleet:lease:{id}")
}

/// The hash of jobs still being split into tasks.
pub const SHARDING_KEY: &str = "fleet:sharding";

/// The record of job `id`.
pub fn job_record_key(tenant: &TenantId, id: &str) -> String {
    format!("fleet:job:{tenant}:{id}")
}

/// A per-job key of `kind` (`tasks`, `progress`, `failures`, `rejected`, `eventseq`).
pub fn job_key(kind: &str, tenant: &TenantId, id: &str) -> String {
    format!("fleet:{kind}:{tenant}:{id}")
}

/// The Redis key of a worker's heartbeat.
pub fn heartbeat_key(worker: &str) -> String {
    format!("fleet:worker:{worker}")
}

/// The Redis key of an operator's order to a worker (`fleet:order:<id>`): `cordon` or `drain`; absent: run.
pub fn order_key(worker: &str) -> String {
    format!("fleet:order:{worker}")
}
