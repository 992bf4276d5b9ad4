//! The API's link to RabbitMQ: it publishes tenants' jobs and cancels as its own broker user,
//! which carries the `impersonator` tag so the message's `user_id` can name the tenant the
//! token belongs to (the scheduler reads the tenant from that validated property, as on the
//! AMQP path), and follows jobs' events on private queues.

use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::message::{new_traceparent, CancelRequest, JobEventMessage, CANCEL_TYPE, TRACEPARENT_HEADER};
use fleet_queue::{self as amqp, confirmed_channel, job_properties, publish_confirmed, string_headers, AmqpError};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use tracing::Instrument;

/// Prefix of every queue the API declares (its broker user may configure only these).
pub const QUEUE_PREFIX: &str = "fleet-api.";

/// A connection that is made again when it has dropped.
pub struct Broker {
    url: String,
    link: Mutex<Option<(Arc<Connection>, Channel)>>,
}

impl Broker {
    /// A broker link to `url` (the API's own user); connects on first use.
    pub fn new(url: &str) -> Broker {
        Broker { url: url.to_string(), link: Mutex::new(None) }
    }

    /// The connection and its confirm-mode publishing channel, connecting when needed.
    async fn link(&self) -> Result<(Arc<Connection>, Channel), AmqpError> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = link.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok((connection.clone(), channel.clone()));
            }
        }
        let connection = Arc::new(amqp::connect(&self.url).await?);
        let channel = confirmed_channel(&connection).await?;
        *link = Some((connection.clone(), channel.clone()));
        Ok((connection, channel))
    }

    /// A fresh channel on the connection (for consumers).
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        let (connection, _) = self.link().await?;
        Ok(connection.create_channel().await?)
    }

    /// Whether the broker is connected (connecting if it is not).
    pub async fn ready(&self) -> bool {
        self.link().await.is_ok()
    }

    /// Publishes job `body` for `tenant` under message id `id`; returns once the broker holds it.
    pub async fn publish_job(&self, tenant: &str, id: &str, body: &[u8]) -> Result<(), AmqpError> {
        let (_, channel) = self.link().await?;
        // The trace of the job starts here: the submit span is its root where spans are
        // exported.
        let span = tracing::info_span!(
            "submit",
            tenant,
            job = id,
            "messaging.system" = "rabbitmq",
            "messaging.destination.name" = amqp::JOBS_EXCHANGE
        );
        let traceparent = fleet_telemetry::traces::traceparent_of(&span).unwrap_or_else(new_traceparent);
        let props = job_properties(tenant, id).with_headers(string_headers(&[(TRACEPARENT_HEADER, &traceparent)]));
        publish_confirmed(&channel, amqp::JOBS_EXCHANGE, amqp::SUBMIT_KEY, body, props).instrument(span).await
    }

    /// Asks the scheduler to cancel `tenant`'s job `id`.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<(), AmqpError> {
        let (_, channel) = self.link().await?;
        let body = serde_json::to_vec(&CancelRequest { cancel: id.to_string() }).expect("a cancel request serialises");
        let props = job_properties(tenant, id).with_type(CANCEL_TYPE.into());
        publish_confirmed(&channel, amqp::JOBS_EXCHANGE, amqp::CANCEL_KEY, &body, props).await
    }

    /// Follows the events of `tenant`'s job `id` on a private queue that goes away with the
    /// subscription.
    pub async fn subscribe(&self, tenant: &str, id: &str) -> Result<Subscription, AmqpError> {
        let channel = self.channel().await?;
        let name = format!("{QUEUE_PREFIX}watch.{}", &new_traceparent()[3..19]);
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        channel.queue_declare(&name, opts, FieldTable::default()).await?;
        let key = format!("job.{tenant}.{}.*", fleet_protocol::message::event_job_word(id));
        channel
            .queue_bind(&name, amqp::EVENTS_EXCHANGE, &key, QueueBindOptions::default(), FieldTable::default())
            .await?;
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let consumer = channel.basic_consume(&name, &name, options, FieldTable::default()).await?;
        Ok(Subscription { _channel: channel, consumer, job: id.to_string() })
    }
}

/// A job's events in publish order; the private queue goes when this is dropped.
pub struct Subscription {
    _channel: Channel,
    consumer: lapin::Consumer,
    job: String,
}

impl Subscription {
    /// The next event of the job, `None` once `deadline` passes or the subscription ends.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<JobEventMessage> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(left, self.consumer.next()).await.ok()??.ok()?;
            match serde_json::from_slice::<JobEventMessage>(&delivery.data) {
                // Job ids `a.b` and `a_b` share a routing key: keep only this job's events.
                Ok(event) if event.job == self.job => return Some(event),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable job event");
                    continue;
                }
            }
        }
    }

    /// The next event, waiting as long as it takes; `None` when the subscription ends.
    pub async fn next(&mut self) -> Option<JobEventMessage> {
        loop {
            let delivery = self.consumer.next().await?.ok()?;
            if let Ok(event) = serde_json::from_slice::<JobEventMessage>(&delivery.data) {
                if event.job == self.job {
                    return Some(event);
                }
            }
        }
    }
}
