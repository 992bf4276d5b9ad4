//! The AMQP side of the fleet: connecting, declaring the topology that
//! `fleet_protocol::topology` names (re-exported here, so `amqp::INTAKE_QUEUE` reads as what it
//! is), publishing with confirms, and reading delivery headers.
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

pub use fleet_protocol::topology::*;

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

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        other => ExchangeKind::Custom(other.to_string()),
    }
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

/// Declares worker `id`'s own queue on `channel` (exclusive to the declaring connection).
pub async fn declare_worker_queue(channel: &Channel, id: &str) -> Result<String, AmqpError> {
    let name = worker_queue(id);
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    channel.queue_declare(&name, opts, FieldTable::default()).await?;
    Ok(name)
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

    #[test]
    fn a_returned_submission_names_the_missing_queue_and_the_fix() {
        let text = AmqpError::Unroutable { exchange: JOBS_EXCHANGE.into(), routing_key: SUBMIT_KEY.into() }.to_string();
        assert!(text.contains(INTAKE_QUEUE) && text.contains("is the scheduler running?"), "{text}");
        let other = AmqpError::Unroutable { exchange: "".into(), routing_key: "fleet.worker.w9".into() }.to_string();
        assert!(other.contains("fleet.worker.w9") && !other.contains(INTAKE_QUEUE), "{other}");
    }
}
