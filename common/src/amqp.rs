//! The AMQP topology, in one place: exchanges, queues and their arguments, and publishing
//! with confirms.
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
//! ```
//!
//! Every queue is a durable quorum queue with a `delivery-limit`, so a poison message stops
//! being redelivered and lands in `fleet.dead` instead of looping. The tenant of a job is the
//! `user_id` property, which RabbitMQ checks against the connection's user: a tenant cannot
//! publish as another.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

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

/// Why talking to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// A queue of the fleet's topology is not on the broker.
    #[error(
        "broker topology missing: queue {queue} does not exist ({cause}); start the broker with the fleet's \
         definitions (deploy/stack.sh up, or the compose file) or run the scheduler once"
    )]
    TopologyMissing {
        /// The first queue found missing.
        queue: String,
        /// What the broker answered.
        cause: lapin::Error,
    },
    /// The broker or the connection failed.
    #[error("amqp: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (negative confirm).
    #[error("broker refused the message published to {exchange}/{routing_key}")]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// No queue is bound for the routing key: the message would have been lost.
    #[error("{}", unroutable_message(exchange, routing_key))]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
}

fn unroutable_message(exchange: &str, routing_key: &str) -> String {
    let queue = BINDINGS.iter().find(|(_, e, k)| *e == exchange && *k == routing_key).map(|(q, _, _)| *q);
    match queue {
        Some(queue) => format!(
            "no queue is bound to {exchange}/{routing_key}, so the message was returned: {queue} is missing. \
             no scheduler has declared {queue}: is the scheduler running? (The broker also loads it from \
             deploy/templates/definitions.json at boot: is the stack up, `deploy/stack.sh up`?)"
        ),
        None => format!("no queue is bound to {exchange}/{routing_key}; the message was returned"),
    }
}

/// Connects to `url` (e.g. `amqp://fleet:...@127.0.0.1:5672/fleet`).
pub async fn connect(url: &str) -> Result<Connection, AmqpError> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

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
pub const QUEUES: [QueueSpec; 7] = [
    QueueSpec { name: DEAD_QUEUE, dead_letter_exchange: None },
    QueueSpec { name: INTAKE_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: INTERACTIVE_REPORTS_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: BATCH_REPORTS_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: TASKS_DEAD_QUEUE, dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: INTERACTIVE_QUEUE, dead_letter_exchange: Some(TASKS_DEAD_LETTER_EXCHANGE) },
    QueueSpec { name: BATCH_QUEUE, dead_letter_exchange: Some(TASKS_DEAD_LETTER_EXCHANGE) },
];

/// Every binding between them.
pub const BINDINGS: [BindingSpec; 6] = [
    (DEAD_QUEUE, DEAD_LETTER_EXCHANGE, ""),
    (INTAKE_QUEUE, JOBS_EXCHANGE, SUBMIT_KEY),
    (INTAKE_QUEUE, JOBS_EXCHANGE, CANCEL_KEY),
    (INTERACTIVE_QUEUE, TASKS_EXCHANGE, "interactive"),
    (BATCH_QUEUE, TASKS_EXCHANGE, "batch"),
    (TASKS_DEAD_QUEUE, TASKS_DEAD_LETTER_EXCHANGE, ""),
];

/// The vhost the topology lives in, as `deploy/templates/definitions.json` names it.
pub const VHOST: &str = "fleet";

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// A queue's arguments, the one place they are written: a quorum queue, and but for the last
/// stop a delivery limit and a dead-letter exchange.
fn queue_arguments(queue: &QueueSpec) -> serde_json::Map<String, serde_json::Value> {
    let mut args = serde_json::Map::new();
    args.insert("x-queue-type".into(), "quorum".into());
    if let Some(dlx) = queue.dead_letter_exchange {
        args.insert("x-delivery-limit".into(), DELIVERY_LIMIT.into());
        args.insert("x-dead-letter-exchange".into(), dlx.into());
    }
    args
}

/// [`queue_arguments`] as AMQP field values: strings as long strings, numbers as 64-bit.
fn queue_args(queue: &QueueSpec) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in queue_arguments(queue) {
        let value = match value {
            serde_json::Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("queue arguments are integers")),
            other => AMQPValue::LongString(other.as_str().expect("queue arguments are strings or integers").into()),
        };
        table.insert(ShortString::from(name), value);
    }
    table
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
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
}

/// Declares every exchange, queue and binding (idempotent). The broker already holds them
/// from its definitions file when it boots; the scheduler runs this at the start of each
/// session, which also checks that their arguments match (a mismatch is a channel error).
pub async fn declare_topology(channel: &Channel) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for exchange in &EXCHANGES {
        channel.exchange_declare(exchange.name, exchange_kind(exchange.kind), durable, FieldTable::default()).await?;
    }
    let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
    for queue in &QUEUES {
        channel.queue_declare(queue.name, queue_opts, queue_args(queue)).await?;
    }
    for (queue, exchange, key) in BINDINGS {
        channel.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()).await?;
    }
    Ok(())
}

/// Checks, without creating anything, that every shared queue of the topology exists: what
/// a worker runs before it serves. A missing queue means the broker was not started with
/// the fleet's definitions.
pub async fn verify_topology(connection: &Connection) -> Result<(), AmqpError> {
    for queue in &QUEUES {
        // A failed passive declare closes its channel: one channel per check.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        if let Err(e) = channel.queue_declare(queue.name, passive, FieldTable::default()).await {
            return Err(AmqpError::TopologyMissing { queue: queue.name.to_string(), cause: e });
        }
        let _ = channel.close(200, "topology checked").await;
    }
    Ok(())
}

/// A channel in confirm mode, for publishers that must know the broker took the message.
pub async fn confirmed_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Publishes persistently with `mandatory` on a confirm-mode channel and waits for the
/// broker's confirm: returns only once the message is safely queued somewhere.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), AmqpError> {
    let confirm = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions { mandatory: true, ..Default::default() },
            payload,
            properties.with_delivery_mode(2),
        )
        .await?
        .await?;
    let fail = |unroutable: bool| {
        let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
        if unroutable {
            AmqpError::Unroutable { exchange, routing_key }
        } else {
            AmqpError::Nacked { exchange, routing_key }
        }
    };
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(fail(true)),
        Confirmation::Nack(_) => Err(fail(false)),
        Confirmation::NotRequested => Ok(()),
    }
}

/// One message of a [`publish_all`] batch: routing key, body, properties.
pub type Outgoing = (String, Vec<u8>, BasicProperties);

/// Publishes a batch persistently with `mandatory` and waits for every confirm; the sends
/// are pipelined, so a batch costs about one round trip instead of one per message.
pub async fn publish_all(channel: &Channel, exchange: &str, messages: Vec<Outgoing>) -> Result<(), AmqpError> {
    publish_each(channel, exchange, messages).await.into_iter().collect()
}

/// Like [`publish_all`], but every message gets its own outcome, so one unroutable message
/// (a worker's queue that is gone) does not hide that the others were taken.
pub async fn publish_each(channel: &Channel, exchange: &str, messages: Vec<Outgoing>) -> Vec<Result<(), AmqpError>> {
    let mut pending = Vec::with_capacity(messages.len());
    for (routing_key, payload, properties) in messages {
        let sent = channel
            .basic_publish(
                exchange,
                &routing_key,
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &payload,
                properties.with_delivery_mode(2),
            )
            .await;
        pending.push((routing_key, sent));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (routing_key, sent) in pending {
        let exchange = exchange.to_string();
        out.push(match sent {
            Err(e) => Err(AmqpError::Broker(e)),
            Ok(confirm) => match confirm.await {
                Err(e) => Err(AmqpError::Broker(e)),
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err(AmqpError::Unroutable { exchange, routing_key }),
                Ok(Confirmation::Nack(_)) => Err(AmqpError::Nacked { exchange, routing_key }),
            },
        });
    }
    out
}

/// Properties of a job message published by `tenant` (RabbitMQ rejects a `user_id` that is
/// not the connection's user).
pub fn job_properties(tenant: &str, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_user_id(tenant.into())
        .with_message_id(message_id.into())
}

/// The task queue of a priority.
pub fn task_queue(priority: crate::job::Priority) -> (&'static str, &'static str) {
    match priority {
        crate::job::Priority::Interactive => (INTERACTIVE_QUEUE, "interactive"),
        crate::job::Priority::Batch => (BATCH_QUEUE, "batch"),
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

/// Declares worker `id`'s own queue on `channel` (exclusive to the declaring connection).
pub async fn declare_worker_queue(channel: &Channel, id: &str) -> Result<String, AmqpError> {
    let name = worker_queue(id);
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    channel.queue_declare(&name, opts, FieldTable::default()).await?;
    Ok(name)
}

/// The report queue of a priority.
pub fn reports_queue(priority: crate::job::Priority) -> &'static str {
    match priority {
        crate::job::Priority::Interactive => INTERACTIVE_REPORTS_QUEUE,
        crate::job::Priority::Batch => BATCH_REPORTS_QUEUE,
    }
}

/// Attempt number of a delivery: the quorum queue's `x-delivery-count` plus one.
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    let count = header(properties, "x-delivery-count").and_then(|v| match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(*n as i64),
        AMQPValue::ShortInt(n) => Some(*n as i64),
        AMQPValue::LongUInt(n) => Some(*n as i64),
        _ => None,
    });
    count.map_or(1, |n| n.max(0) as u32 + 1)
}

/// A string header of a delivery.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match header(properties, name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// Headers with one string entry.
pub fn string_headers(entries: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(ShortString::from(name.to_string()), AMQPValue::LongString((*value).into()));
    }
    table
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
        for part in ["exchanges", "queues", "bindings"] {
            assert_eq!(sorted(&file[part]), sorted(&code[part]), "{part} in {path} differ from amqp.rs");
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

    #[test]
    fn a_returned_submission_names_the_missing_queue_and_the_fix() {
        let text = AmqpError::Unroutable { exchange: JOBS_EXCHANGE.into(), routing_key: SUBMIT_KEY.into() }.to_string();
        assert!(text.contains(INTAKE_QUEUE) && text.contains("is the scheduler running?"), "{text}");
        let other = AmqpError::Unroutable { exchange: "".into(), routing_key: "fleet.worker.w9".into() }.to_string();
        assert!(other.contains("fleet.worker.w9") && !other.contains(INTAKE_QUEUE), "{other}");
    }
}
