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
    #[error("no queue is bound to {exchange}/{routing_key}; the message was returned")]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
}

/// Connects to `url` (e.g. `amqp://fleet:...@127.0.0.1:5672/fleet`).
pub async fn connect(url: &str) -> Result<Connection, AmqpError> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

fn quorum_args(dead_letter_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString(dead_letter_exchange.into()));
    args
}

/// Declares every exchange, queue and binding (idempotent; the scheduler runs it at start).
pub async fn declare_topology(channel: &Channel) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let exchanges = [
        (JOBS_EXCHANGE, ExchangeKind::Direct),
        (TASKS_EXCHANGE, ExchangeKind::Direct),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
        (TASKS_DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
    ];
    for (name, kind) in exchanges {
        channel.exchange_declare(name, kind, durable, FieldTable::default()).await?;
    }
    let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut dead_args = FieldTable::default();
    dead_args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    channel.queue_declare(DEAD_QUEUE, queue_opts, dead_args).await?;
    channel
        .queue_bind(DEAD_QUEUE, DEAD_LETTER_EXCHANGE, "", QueueBindOptions::default(), FieldTable::default())
        .await?;
    let queues = [
        (INTAKE_QUEUE, DEAD_LETTER_EXCHANGE),
        (INTERACTIVE_REPORTS_QUEUE, DEAD_LETTER_EXCHANGE),
        (BATCH_REPORTS_QUEUE, DEAD_LETTER_EXCHANGE),
        (TASKS_DEAD_QUEUE, DEAD_LETTER_EXCHANGE),
        (INTERACTIVE_QUEUE, TASKS_DEAD_LETTER_EXCHANGE),
        (BATCH_QUEUE, TASKS_DEAD_LETTER_EXCHANGE),
    ];
    for (queue, dlx) in queues {
        channel.queue_declare(queue, queue_opts, quorum_args(dlx)).await?;
    }
    let bindings = [
        (INTAKE_QUEUE, JOBS_EXCHANGE, SUBMIT_KEY),
        (INTAKE_QUEUE, JOBS_EXCHANGE, CANCEL_KEY),
        (INTERACTIVE_QUEUE, TASKS_EXCHANGE, "interactive"),
        (BATCH_QUEUE, TASKS_EXCHANGE, "batch"),
        (TASKS_DEAD_QUEUE, TASKS_DEAD_LETTER_EXCHANGE, ""),
    ];
    for (queue, exchange, key) in bindings {
        channel.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()).await?;
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
