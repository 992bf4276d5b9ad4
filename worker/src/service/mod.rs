//! The worker process: takes the tasks the scheduler's dispatcher placed on its devices from
//! its own queue, holds each under a lease it renews on every heartbeat, runs them on warm
//! engines, interactive before batch, and reports to the scheduler under the lease's token.
//!
//! ```text
//! fleet.worker.<id> --(task + lease: token, attempt, device)--> lease held, delivery acknowledged
//!    --> device d, lane interactive | batch (own slots) --> task (S3 in, engine, S3 out)
//!    --> report started / completed / attempt_failed / skipped / released --> fleet.reports.<priority>
//! heartbeat every second: telemetry, devices, warm models, tasks in hand, leases renewed
//! ```
//!
//! A delivery is acknowledged on receipt: the lease in Redis, not the delivery, keeps the
//! task alive, so a task may run for hours. A worker that dies stops renewing; the scheduler
//! takes its leases over within three heartbeat periods and dispatches the tasks elsewhere. A
//! worker that was only silent (stopped, partitioned) learns on its next renewal that it lost
//! the lease; it checks the lease before writing outputs and its late reports carry a stale
//! token, which the scheduler ignores. Tasks keep running while the broker is away; their
//! reports wait for the next session. Cordon, drain or SIGTERM: nothing new is taken, tasks
//! not started are given back at once, tasks in hand finish.
//!
//! Where each part lives: `config` the settings; `session` the broker sessions and
//! reconnects; `route` a delivery to its task; `lanes` the devices and their slots; `attempt`
//! one attempt at a task; `reports` the reports to the scheduler; `beat` the heartbeat loop
//! and lease renewal, with [`heartbeat`] building each beat.

mod attempt;
mod beat;
mod config;
mod failure;
pub mod fine_tune;
pub mod heartbeat;
mod hold;
mod lanes;
pub mod models;
mod reports;
mod route;
mod session;
pub mod task;

use std::future::Future;
use std::sync::Arc;

use fleet_protocol::heartbeat::Order;
use fleet_state::RedisJobStore;
use fleet_store::s3::S3Store;
use fleet_telemetry::metrics;
use tokio::sync::watch;

pub use self::config::{host_name, DeviceConfig, Executor, WorkerConfig};
use self::lanes::Device;
use self::reports::Reports;

/// The running worker, shared by the heartbeat loop, the broker sessions and the tasks.
struct Worker {
    config: WorkerConfig,
    s3: S3Store,
    jobs: RedisJobStore,
    devices: Vec<Device>,
    live: heartbeat::Live,
    /// The report channels of the current broker session (none between sessions).
    reports: tokio::sync::RwLock<Option<Arc<Reports>>>,
}

/// Runs the worker until `shutdown` resolves, then drains.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    anyhow::ensure!(!config.devices.is_empty(), "a worker needs at least one device");
    let slots = config.slots.max(1);
    let devices = config.devices.iter().map(|d| Device::new(d, config.model_cache.clone(), slots)).collect();
    let worker = Arc::new(Worker {
        s3: S3Store::new(&config.s3),
        jobs: RedisJobStore::connect(&config.redis_url).await?,
        devices,
        live: heartbeat::Live::default(),
        reports: tokio::sync::RwLock::new(None),
        config,
    });
    if let Some(addr) = worker.config.metrics_addr {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (order_tx, order_rx) = watch::channel(Order::Run);
    let (exited_tx, exited_rx) = watch::channel(false);
    let beats = tokio::spawn(beat::beat_until(worker.clone(), stop_rx.clone(), order_tx, exited_rx));
    let result = session::serve_sessions(&worker, stop_rx, order_rx).await;
    let _ = exited_tx.send(true);
    let _ = beats.await;
    result
}
