//! The fleet's telemetry: Prometheus metrics of the scheduler and workers, and the HTTP
//! endpoint that serves them with liveness and readiness ([`metrics`]); logs and OTLP traces
//! carried across messages by their W3C trace context ([`traces`]).

pub mod metrics;
pub mod traces;
