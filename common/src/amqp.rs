//! The AMQP topology, in one place: exchanges, queues and their arguments, and publishing
//! with confirms.
//!
//! ```text
//! client (broker user = tenant) --publish, user_id=tenant, mandatory, confirmed-->
//!   fleet.jobs (direct) --"submit"--> fleet.jobs.intake (quorum)        scheduler consumes
//! scheduler --> fleet.tasks (direct) --"interactive"--> fleet.tasks.interactive (quorum)
//!                                    --"batch"--------> fleet.tasks.batch (quorum)   workers consume
//! scheduler --> fleet.events (topic) --"job.<tenant>.<job>.<event>"--> clients bind their own queues
//! any queue: delivery-limit exceeded or rejected --> fleet.dlx (fanout) --> fleet.dead (quorum)
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
/// Deliveries of one message before it is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 5;

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

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
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
    let bindings = [
        (INTAKE_QUEUE, JOBS_EXCHANGE, SUBMIT_KEY),
        (INTERACTIVE_QUEUE, TASKS_EXCHANGE, "interactive"),
        (BATCH_QUEUE, TASKS_EXCHANGE, "batch"),
    ];
    for (queue, exchange, key) in bindings {
        channel.queue_declare(queue, queue_opts, quorum_args()).await?;
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

/// Properties of a job message published by `tenant` (RabbitMQ rejects a `user_id` that is
/// not the connection's user).
pub fn job_properties(tenant: &str, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_user_id(tenant.into())
        .with_message_id(message_id.into())
}
