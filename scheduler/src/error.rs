//! Why the scheduler cannot start, why a broker session ended, or why splitting a job paused.
//! Errors from the broker, Redis and the object store carry their own context ("amqp: ...",
//! "redis: ...", "object store ..."), so they pass through as they are.

use fleet_queue::AmqpError;
use fleet_state::JobStoreError;
use fleet_store::StoreError;

/// An error of the scheduler: from [`crate::run`], a broker session or a job's splitting.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The broker failed through `fleet_queue`: connecting, declaring, publishing.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// The broker failed on a call made with lapin directly: a channel, a consumer, an ack.
    #[error(transparent)]
    Channel(#[from] lapin::Error),
    /// Redis failed, or a record in it is corrupt.
    #[error(transparent)]
    Redis(#[from] JobStoreError),
    /// The object store failed while reading a job's input.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A job's stored request, spec or split cursor does not parse.
    #[error(transparent)]
    BadRecord(#[from] serde_json::Error),
    /// The broker closed the consumer of a task queue.
    #[error("a task queue consumer closed")]
    TaskQueueClosed,
    /// A consumer of the session ended by itself.
    #[error("a consumer stopped: the connection to the broker was lost")]
    ConsumerStopped,
    /// The metrics endpoint could not bind its address or accept a connection.
    #[error(transparent)]
    Metrics(std::io::Error),
}

impl SchedulerError {
    /// Whether the same work may succeed later (in a new broker session, on the next sweep
    /// or from the saved cursor) without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            SchedulerError::Broker(_)
            | SchedulerError::Channel(_)
            | SchedulerError::TaskQueueClosed
            | SchedulerError::ConsumerStopped => true,
            SchedulerError::Redis(e) => e.is_retryable(),
            SchedulerError::Store(e) => e.is_retryable(),
            SchedulerError::BadRecord(_) | SchedulerError::Metrics(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_what_the_logs_said() {
        assert_eq!(SchedulerError::TaskQueueClosed.to_string(), "a task queue consumer closed");
        assert_eq!(
            SchedulerError::ConsumerStopped.to_string(),
            "a consumer stopped: the connection to the broker was lost"
        );
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        assert_eq!(SchedulerError::Metrics(io).to_string(), "address in use");
        let lapin = lapin::Error::InvalidChannel(3);
        assert_eq!(SchedulerError::from(lapin::Error::InvalidChannel(3)).to_string(), lapin.to_string());
        let broker = SchedulerError::from(AmqpError::Broker(lapin::Error::InvalidChannel(3)));
        assert!(broker.to_string().starts_with("amqp: "), "{broker}");
    }

    #[test]
    fn broker_trouble_is_retried_and_bad_records_are_not() {
        assert!(SchedulerError::ConsumerStopped.is_retryable());
        assert!(SchedulerError::from(lapin::Error::InvalidChannel(3)).is_retryable());
        let backend = StoreError::Backend { op: "list", key: "t/".into(), reason: "503".into(), retryable: true };
        assert!(SchedulerError::from(backend).is_retryable());
        let missing = StoreError::NotFound { key: "t/x".into() };
        assert!(!SchedulerError::from(missing).is_retryable());
        let bad = serde_json::from_str::<u32>("{").unwrap_err();
        assert!(!SchedulerError::from(bad).is_retryable());
        let corrupt = JobStoreError::Corrupt { key: "k".into(), reason: "r".into() };
        assert!(!SchedulerError::from(corrupt).is_retryable());
        assert!(SchedulerError::from(JobStoreError::Contended("j".into())).is_retryable());
    }
}
