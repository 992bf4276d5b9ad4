//! Warm models (matting engines and background generators): each `name@version` is fetched from the registry into the local disk cache
//! once per host, loaded on its own inference thread once, and kept for later tasks. With a
//! memory budget (the device's memory, or `--model-memory-mib`), the least recently used
//! models are evicted to make room for a new one; an evicted engine stops when the last task
//! using it finishes, so eviction never pulls a model from under a running task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use fleet_protocol::keys::TenantId;
use fleet_protocol::{DeviceSpec, ManifestError, ModelManifest, ModelRef};
use fleet_store::registry::{self, RegistryError, Scope};
use fleet_store::s3::S3Store;
use tokio::sync::Mutex;

use fleet_protocol::manifest::Task;

use fleet_engine::generate::Generator;
use fleet_engine::{Engine, EngineError, InferenceThread};

use super::failure::AttemptError;
use super::lineage::Lineage;

/// Images per forward pass the engine runs (its default batch): activation memory is
/// counted for a full batch.
const BATCH: f64 = 8.0;

/// Device memory a loaded model holds while it works, MiB.
pub fn footprint_mib(manifest: &ModelManifest) -> f64 {
    manifest.weights_mib + manifest.memory_per_image_mib * BATCH
}

/// Why a model could not be made warm.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The task names a model that is not `name@version`.
    #[error(transparent)]
    Name(#[from] ManifestError),
    /// The registry could not resolve or fetch it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Its fetched manifest is unreadable.
    #[error("model {model}: manifest unreadable: {reason}")]
    Manifest {
        /// `name@version`.
        model: String,
        /// What went wrong.
        reason: String,
    },
    /// It is not the kind of model the task needs.
    #[error("model {model} is a {found:?} model, not a {wanted:?} one")]
    WrongKind {
        /// `name@version`.
        model: String,
        /// What it is.
        found: Task,
        /// What the task needs.
        wanted: Task,
    },
    /// It needs more device memory than the worker may give its models.
    #[error("model {model} needs {mib:.0} MiB of device memory, over this worker's budget of {budget:.0} MiB")]
    OverBudget {
        /// `name@version`.
        model: String,
        /// What it needs.
        mib: f64,
        /// The worker's budget.
        budget: f64,
    },
    /// The engine could not load it.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The loading thread died.
    #[error("model loading thread: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

impl ModelError {
    /// Whether loading the same model may succeed later (an outage, a half-done download, a
    /// device that comes back), as opposed to a model that can never serve the task.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Registry(RegistryError::Store(e)) => e.is_retryable(),
            ModelError::Registry(RegistryError::Io { .. } | RegistryError::HashMismatch { .. }) => true,
            ModelError::Engine(e) => e.is_retryable(),
            ModelError::Thread(_) => true,
            _ => false,
        }
    }
}

impl From<ModelError> for AttemptError {
    fn from(e: ModelError) -> Self {
        if e.is_retryable() {
            AttemptError::retry(e.to_string())
        } else {
            AttemptError::permanent(e.to_string())
        }
    }
}

/// A warm model: a matting engine or a background generator.
#[derive(Clone)]
enum Warm {
    Matting(Arc<Engine>),
    Generator(Arc<Generator>),
}

struct Entry {
    warm: Warm,
    lineage: Lineage,
    mib: f64,
    last_used: u64,
}

#[derive(Default)]
struct Entries {
    by_model: HashMap<(Scope, ModelRef), Entry>,
    clock: u64,
}

/// Engines by model, loaded on first use, least recently used evicted past the budget.
pub struct ModelCache {
    root: PathBuf,
    device: DeviceSpec,
    budget_mib: Option<f64>,
    entries: Mutex<Entries>,
    /// Names of the loaded models, readable without waiting for a load in progress.
    warm: std::sync::Mutex<Vec<String>>,
    /// Their footprint, MiB.
    used: std::sync::Mutex<f64>,
    /// Where each tenant's models were found.
    scopes: std::sync::Mutex<HashMap<(TenantId, ModelRef), (std::time::Instant, Scope)>>,
}

/// How long a model's location (tenant or shared registry) is trusted.
const SCOPE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl ModelCache {
    /// An empty cache over the local folder `root`; `budget_mib` bounds the device memory
    /// the loaded models may hold (`None`: unbounded).
    pub fn new(root: PathBuf, device: DeviceSpec, budget_mib: Option<f64>) -> Self {
        ModelCache {
            root,
            device,
            budget_mib,
            entries: Mutex::new(Entries::default()),
            warm: std::sync::Mutex::new(Vec::new()),
            used: std::sync::Mutex::new(0.0),
            scopes: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Device memory the loaded models take, MiB (what the budget counts).
    pub fn used_mib(&self) -> f64 {
        *self.used.lock().expect("used memory")
    }

    /// The models loaded now (`name@version`), most recently used last.
    pub fn warm(&self) -> Vec<String> {
        self.warm.lock().expect("warm list").clone()
    }

    /// The warm engine for `model`, loading it the first time (and evicting the least
    /// recently used models if the budget needs the room). Loads are serialised, so two tasks
    /// arriving together for a cold model load it once.
    /// `tenant`'s own models come before shared ones of the same name and version.
    pub async fn get(
        &self,
        s3: &S3Store,
        tenant: &TenantId,
        model: &str,
    ) -> Result<(Arc<Engine>, Lineage), ModelError> {
        match self.warm_model(s3, tenant, model, Task::Matting).await? {
            (Warm::Matting(engine), lineage) => Ok((engine, lineage)),
            (Warm::Generator(_), _) => Err(ModelError::WrongKind {
                model: model.into(),
                found: Task::BackgroundGenerator,
                wanted: Task::Matting,
            }),
        }
    }

    /// The warm background generator `model`, loaded like [`get`](Self::get) loads engines,
    /// in the same memory budget.
    pub async fn generator(
        &self,
        s3: &S3Store,
        tenant: &TenantId,
        model: &str,
    ) -> Result<(Arc<Generator>, Lineage), ModelError> {
        match self.warm_model(s3, tenant, model, Task::BackgroundGenerator).await? {
            (Warm::Generator(generator), lineage) => Ok((generator, lineage)),
            (Warm::Matting(_), _) => Err(ModelError::WrongKind {
                model: model.into(),
                found: Task::Matting,
                wanted: Task::BackgroundGenerator,
            }),
        }
    }

    async fn warm_model(
        &self,
        s3: &S3Store,
        tenant: &TenantId,
        model: &str,
        task: Task,
    ) -> Result<(Warm, Lineage), ModelError> {
        let model: ModelRef = model.parse()?;
        let scope = self.scope_of(s3, tenant, &model).await?;
        let key = (scope.clone(), model.clone());
        let mut entries = self.entries.lock().await;
        entries.clock += 1;
        let now = entries.clock;
        if let Some(entry) = entries.by_model.get_mut(&key) {
            entry.last_used = now;
            let warm = (entry.warm.clone(), entry.lineage.clone());
            self.publish_warm(&entries);
            return Ok(warm);
        }
        let (dir, _) = registry::fetch_in(s3, &scope, &model, &self.root).await?;
        let manifest_path = dir.join("manifest.json");
        let unreadable = |reason: String| ModelError::Manifest { model: model.to_string(), reason };
        let bytes = std::fs::read(&manifest_path).map_err(|e| unreadable(e.to_string()))?;
        let manifest = ModelManifest::from_json(&bytes).map_err(|e| unreadable(e.to_string()))?;
        if manifest.task != task {
            return Err(ModelError::WrongKind { model: model.to_string(), found: manifest.task, wanted: task });
        }
        let mib = footprint_mib(&manifest);
        if let Some(budget) = self.budget_mib {
            if mib > budget {
                return Err(ModelError::OverBudget { model: model.to_string(), mib, budget });
            }
            self.evict_for(&mut entries, mib, budget);
        }
        let lineage = {
            let (dir, manifest) = (dir.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || super::lineage::load(&dir, &manifest))
                .await
                .map_err(|e| ModelError::Manifest { model: model.to_string(), reason: e.to_string() })?
                .map_err(|reason| ModelError::Manifest { model: model.to_string(), reason })?
        };
        let device = self.device;
        let started = std::time::Instant::now();
        let warm = match task {
            Task::Matting => {
                let inference = tokio::task::spawn_blocking(move || InferenceThread::start(&dir, device)).await??;
                Warm::Matting(Arc::new(Engine::new(inference)))
            }
            Task::BackgroundGenerator => {
                let generator = tokio::task::spawn_blocking(move || {
                    let device = fleet_engine::resolve_device(device)?;
                    Generator::load(&dir, device)
                })
                .await??;
                Warm::Generator(Arc::new(generator))
            }
        };
        tracing::info!(model = %model, task = ?task, load_ms = started.elapsed().as_millis() as u64,
            mib = mib.round(), "model loaded and kept warm");
        fleet_telemetry::metrics::MODEL_LOADS.inc();
        entries.by_model.insert(key, Entry { warm: warm.clone(), lineage: lineage.clone(), mib, last_used: now });
        self.publish_warm(&entries);
        Ok((warm, lineage))
    }

    /// Where `tenant` finds `model`, remembered for a while so a task does not cost a
    /// registry read.
    async fn scope_of(&self, s3: &S3Store, tenant: &TenantId, model: &ModelRef) -> Result<Scope, ModelError> {
        let key = (tenant.clone(), model.clone());
        if let Some((at, scope)) = self.scopes.lock().expect("scope cache").get(&key) {
            if at.elapsed() < SCOPE_TTL {
                return Ok(scope.clone());
            }
        }
        let (scope, _) = registry::locate(s3, tenant, model).await?;
        self.scopes.lock().expect("scope cache").insert(key, (std::time::Instant::now(), scope.clone()));
        Ok(scope)
    }

    /// Evicts least recently used models until `mib` more fits in `budget`.
    fn evict_for(&self, entries: &mut Entries, mib: f64, budget: f64) {
        loop {
            let used: f64 = entries.by_model.values().map(|e| e.mib).sum();
            if used + mib <= budget {
                return;
            }
            let Some(oldest) = entries.by_model.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else {
                return;
            };
            let evicted = entries.by_model.remove(&oldest).expect("the oldest entry exists");
            tracing::info!(model = %oldest.1, scope = %oldest.0, freed_mib = evicted.mib.round(), budget_mib = budget.round(),
                "model evicted (least recently used) to make room");
            fleet_telemetry::metrics::MODEL_EVICTIONS.inc();
        }
    }

    fn publish_warm(&self, entries: &Entries) {
        let mut by_use: Vec<(&ModelRef, u64)> = entries.by_model.iter().map(|((_, m), e)| (m, e.last_used)).collect();
        by_use.sort_by_key(|(_, t)| *t);
        *self.warm.lock().expect("warm list") = by_use.into_iter().map(|(m, _)| m.to_string()).collect();
        *self.used.lock().expect("used memory") = entries.by_model.values().map(|e| e.mib).sum();
    }
}
