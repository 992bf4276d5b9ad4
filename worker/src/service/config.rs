//! The worker's settings: its identity, the services it talks to, the devices it drives and
//! what it does with a task.

use std::path::PathBuf;
use std::time::Duration;

use fleet_protocol::DeviceSpec;
use fleet_store::s3::S3Config;

/// What a worker does with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// Run the engine: the real work.
    Engine,
    /// Report every item done without touching S3 or the model: measures the dispatch path
    /// (broker, scheduler, Redis) alone.
    Noop,
    /// Fault injection: every task panics after it reports its start, to show that a task
    /// dying inside a live worker loses its lease and is taken over.
    Panic,
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id, in reports and task manifests.
    pub id: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL (read-only use: cancellations).
    pub redis_url: String,
    /// Object store.
    pub s3: S3Config,
    /// Local cache of registry models.
    pub model_cache: PathBuf,
    /// The devices this worker drives, each with its own warm models and lanes.
    pub devices: Vec<DeviceConfig>,
    /// Tasks run at once per device and priority lane.
    pub slots: usize,
    /// Engine or no-op.
    pub executor: Executor,
    /// How long a no-op task pretends to work.
    pub noop_task_time: Duration,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The royalty ledger's URL (PostgreSQL), if there is one.
    pub ledger_url: Option<String>,
    /// Signs a C2PA manifest into every result image, if set.
    pub signer: Option<std::sync::Arc<fleet_credentials::Signer>>,
}

/// One device a worker drives.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The libtorch device.
    pub spec: DeviceSpec,
    /// Device memory the warm models may hold, MiB: the GPU's memory less a margin, or the
    /// declared capacity of a CPU device.
    pub memory_mib: f64,
}

pub use fleet_protocol::heartbeat::host_name;
