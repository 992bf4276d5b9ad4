//! The client side of the fleet: submit and cancel jobs as a tenant (the broker checks who
//! publishes), follow their events, read their state, failures and results. The `fleetctl`
//! command and the integration tests both use it.
//!
//! Submitting goes through RabbitMQ as the tenant's own broker user; reading state goes to
//! Redis and S3 directly, which is what an operator's or a trusted front end's view needs.

pub mod api;
pub mod catalog;
mod error;
pub mod job_body;
pub mod report;

pub use error::{ClientError, JobBodyError};

use std::time::{Duration, Instant};

use fleet_protocol::job::Rejection;
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{
    new_traceparent, CancelRequest, ItemFailureReport, JobEventMessage, Progress, CANCEL_TYPE, TRACEPARENT_HEADER,
};
use fleet_queue::{self as amqp, confirmed_channel, job_properties, publish_confirmed, string_headers};
use fleet_state::{JobRecord, RedisJobStore};
use fleet_store::s3::{S3Config, S3Store};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// Where the client connects and as whom.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// RabbitMQ URL with the tenant's own credentials.
    pub amqp_url: String,
    /// The tenant (the broker user of `amqp_url`).
    pub tenant: String,
    /// Redis URL (job state).
    pub redis_url: String,
    /// Object store (results).
    pub s3: S3Config,
}

/// `amqp://user:pass@host/vhost` with the user and password replaced.
pub fn amqp_url_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Recorded as a new job.
    Accepted,
    /// The id was taken: the existing job stands.
    Duplicate,
    /// Refused, with the reason.
    Rejected(Rejection),
}

/// A job as a person sees it.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The record.
    pub record: JobRecord,
    /// Its counts.
    pub progress: Progress,
    /// A fine-tune's latest figures (step, phase, loss, learning rate, steps/s, ETA).
    pub training: Option<fleet_protocol::message::TrainingProgress>,
}

/// A connected client.
pub struct Client {
    tenant: TenantId,
    connection: Connection,
    channel: Channel,
    /// Job state.
    pub jobs: RedisJobStore,
    /// Inputs and results.
    pub s3: S3Store,
}

impl Client {
    /// Connects to the broker as the tenant, and to Redis and S3.
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let tenant = TenantId::new(&config.tenant)?;
        let connection = amqp::connect(&config.amqp_url).await?;
        let channel = confirmed_channel(&connection).await?;
        Ok(Client {
            tenant,
            connection,
            channel,
            jobs: RedisJobStore::connect(&config.redis_url).await?,
            s3: S3Store::new(&config.s3),
        })
    }

    /// The tenant this client acts for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Publishes a job body (JSON) under message id `id`, without waiting for the scheduler.
    pub async fn publish(&self, id: &str, body: &[u8]) -> Result<(), ClientError> {
        let traceparent = new_traceparent();
        let props = job_properties(self.tenant.as_str(), id)
            .with_headers(string_headers(&[(TRACEPARENT_HEADER, &traceparent)]));
        publish_confirmed(&self.channel, amqp::JOBS_EXCHANGE, amqp::SUBMIT_KEY, body, props).await?;
        Ok(())
    }

    /// Publishes a job and waits for the scheduler's answer (accepted, duplicate or
    /// rejected), listening on the job's events; [`ClientError::NoAnswer`] when none comes
    /// within `timeout`.
    pub async fn submit(&self, id: &str, body: &[u8], timeout: Duration) -> Result<Submitted, ClientError> {
        let mut events = self.subscribe(id).await?;
        self.publish(id, body).await?;
        let deadline = Instant::now() + timeout;
        while let Some(event) = events.next_before(deadline).await? {
            match event.kind.as_str() {
                "accepted" if event.duplicate => return Ok(Submitted::Duplicate),
                "accepted" => return Ok(Submitted::Accepted),
                "rejected" => {
                    return Ok(Submitted::Rejected(Rejection {
                        code: event.code.unwrap_or_default(),
                        reason: event.reason.unwrap_or_default(),
                    }))
                }
                _ => {}
            }
        }
        Err(ClientError::NoAnswer { timeout })
    }

    /// Asks the scheduler to cancel a job.
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&CancelRequest { cancel: id.to_string() })
            .map_err(ClientError::json("encoding the cancel request"))?;
        let props = job_properties(self.tenant.as_str(), id).with_type(CANCEL_TYPE.into());
        publish_confirmed(&self.channel, amqp::JOBS_EXCHANGE, amqp::CANCEL_KEY, &body, props).await?;
        Ok(())
    }

    /// Subscribes to the events of one job (`None` = every job of the tenant) on a private
    /// queue that goes away with the connection.
    pub async fn subscribe(&self, id: impl Into<Option<&str>>) -> Result<Events, ClientError> {
        let channel = self.connection.create_channel().await?;
        let name = format!("{}.watch.{}", self.tenant, new_traceparent().get(3..19).unwrap_or("0"));
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        channel.queue_declare(&name, opts, FieldTable::default()).await?;
        let key = match id.into() {
            Some(id) => format!("job.{}.{}.*", self.tenant, fleet_protocol::message::event_job_word(id)),
            None => format!("job.{}.#", self.tenant),
        };
        channel
            .queue_bind(&name, amqp::EVENTS_EXCHANGE, &key, QueueBindOptions::default(), FieldTable::default())
            .await?;
        let consumer = channel
            .basic_consume(
                &name,
                &name,
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok(Events { _channel: channel, consumer })
    }

    /// The job and its counts; [`ClientError::Rejected`] when it was refused at submission.
    pub async fn job(&self, id: &str) -> Result<Option<JobView>, ClientError> {
        match self.jobs.get(&self.tenant, id).await? {
            Some(record) => {
                let progress = self.jobs.progress(&self.tenant, id).await?;
                let training =
                    match self.jobs.note(&fleet_state::schema::training_key(self.tenant.as_str(), id)).await? {
                        Some(json) => serde_json::from_str(&json).ok(),
                        None => None,
                    };
                Ok(Some(JobView { record, progress, training }))
            }
            None => match self.jobs.rejection(&self.tenant, id).await? {
                Some(rejection) => Err(ClientError::Rejected(rejection)),
                None => Ok(None),
            },
        }
    }

    /// Polls the job until it ends, calling `on_progress` on every poll;
    /// [`ClientError::NotEnded`] when `timeout` passes first.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&JobView),
    ) -> Result<JobView, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(view) = self.job(id).await? {
                on_progress(&view);
                if view.record.state.is_terminal() {
                    return Ok(view);
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::NotEnded { id: id.to_string(), timeout });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every failed item of the job, with reasons.
    pub async fn failures(&self, id: &str) -> Result<Vec<ItemFailureReport>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.jobs.failures(&self.tenant, id, all.len(), 1000).await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// The tenant's most recent job ids.
    pub async fn list(&self, limit: usize) -> Result<Vec<String>, ClientError> {
        Ok(self.jobs.list(&self.tenant, limit).await?)
    }
}

/// A job's (or a tenant's) events, in publish order.
pub struct Events {
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl Events {
    /// The next event, or `None` once `deadline` passes; [`ClientError::SubscriptionClosed`]
    /// when the broker ends the subscription.
    pub async fn next_before(&mut self, deadline: Instant) -> Result<Option<JobEventMessage>, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(ClientError::SubscriptionClosed),
            Ok(Some(delivery)) => {
                Ok(Some(serde_json::from_slice(&delivery?.data).map_err(ClientError::json("decoding a job event"))?))
            }
        }
    }
}
