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
//! reconnects; `intake` whether the worker takes tasks (operator's order, shutdown); `route` a
//! delivery to its task; `lanes` the devices and their slots; `attempt` one attempt at a task; `attribute` the attribution of a task's outputs and `lineage` a
//! model's training set;
//! `reports` the reports to the scheduler; `beat` the heartbeat loop and lease renewal, with
//! [`heartbeat`] building each beat; `error` the service's errors.
//!
//! Shutdown is one cancellation tree: [`run`] owns the root token, cancelled when its
//! `shutdown` future resolves, and gives a child to the broker session loop (whose tasks watch
//! it too) and one to the heartbeat loop. The tasks run on a [`TaskTracker`], and `run` drains
//! in order: no new tasks, tasks not started given back, tasks in hand finished (fine-tunes
//! checkpoint and yield), the broker session closed; then the heartbeat, which kept renewing
//! the leases of the tasks until the last ended, removes itself; then `run` returns.

mod attempt;
mod attribute;
mod beat;
mod config;
mod error;
mod failure;
pub mod fine_tune;
pub mod heartbeat;
mod hold;
mod intake;
mod lanes;
pub mod lineage;
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
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use self::config::{host_name, DeviceConfig, Executor, WorkerConfig};
pub use self::error::ServiceError;
use self::intake::Intake;
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
    /// The royalty ledger, when configured (connected on first use).
    ledger: Option<fleet_attribution::Ledger>,
}

/// Runs the worker until `shutdown` resolves, then drains: takes nothing new, gives back the
/// tasks not started, lets those in hand finish, stops the heartbeat last and returns.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    if config.devices.is_empty() {
        return Err(ServiceError::NoDevice);
    }
    let slots = config.slots.max(1);
    let devices = config.devices.iter().map(|d| Device::new(d, config.model_cache.clone(), slots)).collect();
    let worker = Arc::new(Worker {
        s3: S3Store::new(&config.s3),
        jobs: RedisJobStore::connect(&config.redis_url).await?,
        devices,
        live: heartbeat::Live::default(),
        reports: tokio::sync::RwLock::new(None),
        ledger: config.ledger_url.as_deref().map(fleet_attribution::Ledger::new),
        config,
    });
    if worker.config.signer.is_none() {
        tracing::warn!("no signing key (--signing-chain, --signing-key): results carry no content credentials");
    }
    if worker.ledger.is_none() {
        tracing::warn!(
            "no royalty ledger (--ledger-url): attributions are written unchecked for revocations and not recorded"
        );
    }
    // The metrics endpoint serves for as long as `run` runs, drain included, so probes of
    // `/livez` keep passing while tasks finish.
    let _metrics = worker.config.metrics_addr.map(|addr| {
        AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr).await.map_err(ServiceError::Metrics) {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        }))
    });
    let root = CancellationToken::new();
    // However `run` ends, the tree ends cancelled.
    let _cancel_all = root.clone().drop_guard();
    let _signal = AbortOnDropHandle::new(tokio::spawn({
        let root = root.clone();
        async move {
            shutdown.await;
            root.cancel();
        }
    }));
    let tasks = TaskTracker::new();
    // Were `run` dropped midway, the heartbeat would still end once the last task has.
    let _close = CloseOnDrop(tasks.clone());
    let (order_tx, order_rx) = watch::channel(Order::Run);
    let beats = tokio::spawn(beat::beat_until(worker.clone(), root.child_token(), order_tx, tasks.clone()));
    session::serve_sessions(&worker, Intake::new(order_rx, root.child_token()), &tasks).await;
    // The sessions have ended and start no more tasks: once the last task in hand has ended,
    // the heartbeat (which renews their leases until then) removes itself and ends.
    tasks.close();
    tasks.wait().await;
    let _ = beats.await;
    Ok(())
}

/// Closes a task tracker when dropped.
struct CloseOnDrop(TaskTracker);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
