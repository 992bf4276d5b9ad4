//! The fleet worker, in the flow
//! `client -> RabbitMQ -> scheduler -> worker (S3 in, libtorch, S3 out) -> events -> client`:
//! it takes the tasks the scheduler's dispatcher sends to its own queue, holds their leases,
//! runs them with `fleet_engine` (background replacement, generation) or `fleet_train`
//! (fine-tunes) on the devices it drives, writes results to S3 and reports back.
//!
//! [`service`] is the running worker; [`nvml`] reads the GPUs. The binary's command line is
//! in `src/bin/fleet-worker/`.

pub mod nvml;
pub mod service;
