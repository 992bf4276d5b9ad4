//! Why the worker service cannot run, or why a broker session ended. Errors from Redis and
//! the broker carry their own context ("redis: ...", "amqp: ..."), so they pass through as
//! they are.

use fleet_queue::AmqpError;
use fleet_state::JobStoreError;

/// An error of the worker service: from [`super::run`], or the end of a broker session.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration names no device to drive.
    #[error("a worker needs at least one device")]
    NoDevice,
    /// Redis failed (connecting, at start).
    #[error(transparent)]
    Redis(#[from] JobStoreError),
    /// The broker failed: connecting, checking the topology, opening a channel or a consumer.
    #[error(transparent)]
    Broker(#[from] AmqpError),
    /// The consumer of the worker's queue failed mid-session.
    #[error("lost the broker: {0}")]
    ConsumerFailed(#[source] lapin::Error),
    /// The broker closed the consumer of the worker's queue.
    #[error("lost the broker: consumer closed")]
    ConsumerClosed,
    /// The metrics endpoint could not bind its address or accept a connection.
    #[error(transparent)]
    Metrics(std::io::Error),
}

impl From<lapin::Error> for ServiceError {
    /// A broker call made with lapin directly, outside `fleet_queue`'s helpers.
    fn from(e: lapin::Error) -> Self {
        ServiceError::Broker(AmqpError::Broker(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_what_the_logs_said() {
        assert_eq!(ServiceError::NoDevice.to_string(), "a worker needs at least one device");
        assert_eq!(ServiceError::ConsumerClosed.to_string(), "lost the broker: consumer closed");
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        assert_eq!(ServiceError::Metrics(io).to_string(), "address in use");
        let broker = ServiceError::from(lapin::Error::InvalidChannel(3));
        assert!(matches!(broker, ServiceError::Broker(AmqpError::Broker(_))), "{broker:?}");
        assert!(broker.to_string().starts_with("amqp: "), "{broker}");
    }
}
