//! The AMQP topology, in one place: every exchange, queue, binding and queue argument, and
//! the routing of tasks and reports by priority. Only names and rules: `fleet-queue` declares
//! them on a broker and publishes with confirms.
//!
//! ```text
//! client (broker user = tenant) --publish, user_id=tenant, mandatory, confirmed-->
//!   fleet.jobs (direct) --"submit" | "cancel"--> fleet.jobs.intake (quorum)   scheduler consumes
//! scheduler --> fleet.tasks (direct) --"interactive"--> fleet.tasks.interactive (quorum)
//!                                    --"batch"--------> fleet.tasks.batch (quorum)
//!                                    scheduler's dispatcher consumes both, places each task, grants a lease
//! dispatcher --> default exchange --"fleet.worker.<id>"--> the worker's exclusive queue
//! worker --> default exchange --"fleet.reports.{interactive,batch}"--> same-named queues  scheduler consumes
//! scheduler --> fleet.events (topic) --"job.<tenant>.<job>.<event>"--> clients bind their own queues
//! task queues: delivery limit exceeded --> fleet.tasks.dlx --> fleet.tasks.dead   scheduler consumes,
//!              reports the items failed, then parks the message in fleet.dead
//! other queues: delivery limit exceeded --> fleet.dlx (fanout) --> fleet.dead (quorum)
//!                                                            \--> fleet.jobs.dead   scheduler consumes:
//!              a submission that reached it is rejected with the reason, so its tenant hears
//! ```
//!
//! Limits (policies, so they can change on a running broker): the intake queue holds at most
//! [`INTAKE_MAX_LENGTH`] submissions and refuses more (the publisher's confirm is a nack, so
//! the submitter hears at once), the task queues [`TASKS_MAX_LENGTH`], and `fleet.dead` keeps
//! the latest [`DEAD_MAX_LENGTH`] dead letters. The broker refuses any message over
//! `max_message_size` (4 MiB, in `rabbitmq.conf`) before it is queued.
//!
//! Every queue is a durable quorum queue with a `delivery-limit`, so a poison message stops
//! being redelivered and lands in `fleet.dead` instead of looping. The tenant of a job is the
//! `user_id` property, which RabbitMQ checks against the connection's user: a tenant cannot
//! publish as another.

use crate::job::Priority;

/// Where clients publish jobs.
pub const JOBS_EXCHANGE: &str = "fleet.jobs";

/// Routing key of job submissions.
pub const SUBMIT_KEY: &str = "submit";

/// The scheduler's intake queue.
pub const INTAKE_QUEUE: &str = "fleet.jobs.intake";

/// Where the scheduler sends tasks.
pub const TASKS_EXCHANGE: &str = "fleet.tasks";

/// Task queue for interactive work, consumed first.
pub const INTERACTIVE_QUEUE: &str = "fleet.tasks.interactive";

/// Task queue for batch work.
pub const BATCH_QUEUE: &str = "fleet.tasks.batch";

/// Job events, routed `job.<tenant>.<job>.<event>`.
pub const EVENTS_EXCHANGE: &str = "fleet.events";

/// Dead-letter exchange of every queue.
pub const DEAD_LETTER_EXCHANGE: &str = "fleet.dlx";

/// Where dead letters wait for an operator.
pub const DEAD_QUEUE: &str = "fleet.dead";

/// Copies of every dead letter, for the scheduler to tell a submitter whose job was
/// dead-lettered before it was recorded.
pub const INTAKE_DEAD_QUEUE: &str = "fleet.jobs.dead";

/// Most submissions waiting in intake; past it the broker refuses publishes.
pub const INTAKE_MAX_LENGTH: u64 = 100_000;

/// Most tasks waiting in each task queue; past it the broker refuses publishes (the splitter
/// tries again later).
pub const TASKS_MAX_LENGTH: u64 = 1_000_000;

/// Dead letters kept for an operator; past it the oldest go.
pub const DEAD_MAX_LENGTH: u64 = 100_000;

/// Routing key of cancellations.
pub const CANCEL_KEY: &str = "cancel";

/// Worker reports on interactive tasks (published through the default exchange); a queue of
/// their own, so they never wait behind a batch backlog's reports.
pub const INTERACTIVE_REPORTS_QUEUE: &str = "fleet.reports.interactive";

/// Worker reports on batch tasks.
pub const BATCH_REPORTS_QUEUE: &str = "fleet.reports.batch";

/// Dead-letter exchange of the task queues.
pub const TASKS_DEAD_LETTER_EXCHANGE: &str = "fleet.tasks.dlx";

/// Task messages past their delivery limit, for the scheduler to report.
pub const TASKS_DEAD_QUEUE: &str = "fleet.tasks.dead";

/// Returns of one message (nack or a dead consumer) before it is dead-lettered: a task gets
/// `DELIVERY_LIMIT + 1` attempts.
pub const DELIVERY_LIMIT: i64 = 5;

/// Attempts a task gets before the broker dead-letters it.
pub const MAX_ATTEMPTS: u32 = DELIVERY_LIMIT as u32 + 1;

/// One durable exchange of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Exchange name.
    pub name: &'static str,
    /// `direct`, `topic` or `fanout`.
    pub kind: &'static str,
}

/// One durable quorum queue of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: &'static str,
    /// Where its messages go past the delivery limit; `None` for the last stop, `fleet.dead`.
    pub dead_letter_exchange: Option<&'static str>,
}

/// One binding of the topology: queue, exchange, routing key.
pub type BindingSpec = (&'static str, &'static str, &'static str);

/// Every exchange the fleet uses.
pub const EXCHANGES: [ExchangeSpec; 5] = [
    ExchangeSpec { name: JOBS_EXCHANGE, kind: "direct" },
    ExchangeSpec { name: TASKS_EXCHANGE, kind: "direct" },
    ExchangeSpec { name: EVENTS_EXCHANGE, kind: "topic" },
    ExchangeSpec { name: DEAD_LETTER_EXCHANGE, kind: "fanout" },
    ExchangeSpec { name: TASKS_DEAD_LETTER_EXCHANGE, kind: "fanout" },
];

/// Every shared queue (workers' own queues are declared by each worker).
pub const QUEUES: [QueueSpec; 8] = [
    QueueSpec { name: DEAD_QUEUE, dead_letter_exchange: None },
    QueueSpec { name: INTAKE_DEAD_QUEUE, dead_letter_exchange: None },
    QueueSpec { name: INTAKE_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: INTERACTIVE_REPORTS_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: BATCH_REPORTS_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: TASKS_DEAD_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: INTERACTIVE_QUEUE, dead_letter_exchange: Some(TASKS_DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: BATCH_QUEUE, dead_letter_exchange: Some(TASKS_DEAD_LETTER_EXCHANGE) },
];

/// Every binding between them.
pub const BINDINGS: [BindingSpec; 7] = [
    (DEAD_QUEUE, DEAD_LETTER_EXCHANGE, ""),
    (INTAKE_DEAD_QUEUE, DEAD_LETTER_EXCHANGE, ""),
    (INTAKE_QUEUE, JOBS_EXCHANGE, SUBMIT_KEY),
    (INTAKE_QUEUE, JOBS_EXCHANGE, CANCEL_KEY),
    (INTERACTIVE_QUEUE, TASKS_EXCHANGE, "interactive"),
    (BATCH_QUEUE, TASKS_EXCHANGE, "batch"),
    (TASKS_DEAD_QUEUE, TASKS_DEAD_LETTER_EXCHANGE, ""),
];

/// A policy: name, the queues it applies to (a regular expression), its definition.
pub type PolicySpec = (&'static str, &'static str, &'static [(&'static str, PolicyValue)]);

/// A value in a policy's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyValue {
    /// A number.
    Int(u64),
    /// A word.
    Text(&'static str),
}

/// The limits on the shared queues, as policies.
pub const POLICIES: [PolicySpec; 3] = [
    (
        "fleet-intake-limit",
        r"^fleet\.jobs\.intake$",
        &[("max-length", PolicyValue::Int(INTAKE_MAX_LENGTH)), ("overflow", PolicyValue::Text("reject-publish"))],
    ),
    (
        "fleet-tasks-limit",
        r"^fleet\.tasks\.(interactive|batch)$",
        &[("max-length", PolicyValue::Int(TASKS_MAX_LENGTH)), ("overflow", PolicyValue::Text("reject-publish"))],
    ),
    (
        "fleet-dead-limit",
        r"^fleet\.(dead|jobs\.dead)$",
        &[("max-length", PolicyValue::Int(DEAD_MAX_LENGTH)), ("overflow", PolicyValue::Text("drop-head"))],
    ),
];

/// The vhost the topology lives in, as `deploy/templates/definitions.json` names it.
pub const VHOST: &str = "fleet";

/// A queue's arguments, the one place they are written: a quorum queue, and but for the last
/// stop a delivery limit and a dead-letter exchange.
pub fn queue_arguments(queue: &QueueSpec) -> serde_json::Map<String, serde_json::Value> {
    let mut args = serde_json::Map::new();
    args.insert("x-queue-type".into(), "quorum".into());
    if let Some(dlx) = queue.dead_letter_exchange {
        args.insert("x-delivery-limit".into(), DELIVERY_LIMIT.into());
        args.insert("x-dead-letter-exchange".into(), dlx.into());
    }
    args
}

/// The topology in RabbitMQ's definitions format (`exchanges`, `queues`, `bindings`), as the
/// broker loads it at boot from `deploy/templates/definitions.json`; a test holds that file
/// to this.
pub fn definitions() -> serde_json::Value {
    use serde_json::json;
    let exchanges: Vec<_> = EXCHANGES
        .iter()
        .map(|e| {
            json!({"name": e.name, "vhost": VHOST, "type": e.kind, "durable": true, "auto_delete": false,
                   "internal": false, "arguments": {}})
        })
        .collect();
    let queues: Vec<_> = QUEUES
        .iter()
        .map(|q| {
            json!({"name": q.name, "vhost": VHOST, "durable": true, "auto_delete": false,
                   "arguments": queue_arguments(q)})
        })
        .collect();
    let bindings: Vec<_> = BINDINGS
        .iter()
        .map(|(queue, exchange, key)| {
            json!({"source": exchange, "vhost": VHOST, "destination": queue, "destination_type": "queue",
                   "routing_key": key, "arguments": {}})
        })
        .collect();
    let policies: Vec<_> = POLICIES
        .iter()
        .map(|(name, pattern, definition)| {
            let definition: serde_json::Map<String, serde_json::Value> = definition
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        PolicyValue::Int(n) => json!(n),
                        PolicyValue::Text(t) => json!(t),
                    };
                    (key.to_string(), value)
                })
                .collect();
            json!({"vhost": VHOST, "name": name, "pattern": pattern, "apply-to": "queues",
                   "definition": definition, "priority": 0})
        })
        .collect();
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings, "policies": policies})
}

/// The task queue of a priority.
pub fn task_queue(priority: Priority) -> (&'static str, &'static str) {
    match priority {
        Priority::Interactive => (INTERACTIVE_QUEUE, "interactive"),
        Priority::Batch => (BATCH_QUEUE, "batch"),
    }
}

/// Prefix of a worker's own queue, `fleet.worker.<id>`: the dispatcher sends a task there
/// with its lease. The worker declares it exclusive and auto-deleted, so it vanishes with the
/// worker; what it held is re-dispatched when its leases expire.
pub const WORKER_QUEUE_PREFIX: &str = "fleet.worker.";

/// The queue of worker `id`.
pub fn worker_queue(id: &str) -> String {
    format!("{WORKER_QUEUE_PREFIX}{id}")
}

/// The report queue of a priority.
pub fn reports_queue(priority: Priority) -> &'static str {
    match priority {
        Priority::Interactive => INTERACTIVE_REPORTS_QUEUE,
        Priority::Batch => BATCH_REPORTS_QUEUE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(value: &serde_json::Value) -> Vec<String> {
        let mut items: Vec<String> = value.as_array().expect("a list").iter().map(|item| item.to_string()).collect();
        items.sort();
        items
    }

    /// The broker boots with the topology from the definitions file, so nothing that
    /// publishes has to wait for a scheduler to declare it: the file must hold exactly the
    /// topology the code declares.
    #[test]
    fn the_definitions_file_holds_the_declared_topology() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/templates/definitions.json");
        let text = std::fs::read_to_string(path).expect("definitions template is readable");
        let file: serde_json::Value = serde_json::from_str(&text).expect("definitions template is JSON");
        let code = definitions();
        for part in ["exchanges", "queues", "bindings", "policies"] {
            assert_eq!(sorted(&file[part]), sorted(&code[part]), "{part} in {path} differ from topology.rs");
        }
        assert!(file["vhosts"].as_array().unwrap().iter().any(|v| v["name"] == VHOST));
    }

    #[test]
    fn every_binding_joins_a_declared_queue_and_exchange() {
        for (queue, exchange, _) in BINDINGS {
            assert!(QUEUES.iter().any(|q| q.name == queue), "{queue}");
            assert!(EXCHANGES.iter().any(|e| e.name == exchange), "{exchange}");
        }
        for queue in &QUEUES {
            if let Some(dlx) = queue.dead_letter_exchange {
                assert!(EXCHANGES.iter().any(|e| e.name == dlx), "{} dead-letters to {dlx}", queue.name);
            }
        }
    }
}
