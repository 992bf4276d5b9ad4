//! The fleet's telemetry: Prometheus metrics of the scheduler and workers, and the HTTP
//! endpoint that serves them with liveness and readiness ([`metrics`]).

pub mod metrics;
