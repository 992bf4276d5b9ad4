//! Warm models: each `name@version` is fetched from the registry into the local cache once,
//! loaded on its own inference thread once, and kept for every later task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use fleet_common::registry;
use fleet_common::store::s3::S3Store;
use fleet_common::{DeviceSpec, ModelRef};
use tokio::sync::Mutex;

use crate::engine::{Engine, InferenceThread};

/// Engines by model, loaded on first use.
pub struct ModelCache {
    root: PathBuf,
    device: DeviceSpec,
    engines: Mutex<HashMap<ModelRef, Arc<Engine>>>,
    /// Names of the loaded models, readable without waiting for a load in progress.
    warm: std::sync::Mutex<Vec<String>>,
}

impl ModelCache {
    /// An empty cache over the local folder `root`.
    pub fn new(root: PathBuf, device: DeviceSpec) -> Self {
        ModelCache { root, device, engines: Mutex::new(HashMap::new()), warm: std::sync::Mutex::new(Vec::new()) }
    }

    /// The models loaded so far (`name@version`).
    pub fn warm(&self) -> Vec<String> {
        self.warm.lock().expect("warm list").clone()
    }

    /// The warm engine for `model`, loading it the first time. Loads are serialised, so
    /// two tasks arriving together for a cold model load it once.
    pub async fn get(&self, s3: &S3Store, model: &str) -> anyhow::Result<Arc<Engine>> {
        let model: ModelRef = model.parse()?;
        let mut engines = self.engines.lock().await;
        if let Some(engine) = engines.get(&model) {
            return Ok(engine.clone());
        }
        let dir = registry::fetch(s3, &model, &self.root).await?;
        let device = self.device;
        let started = std::time::Instant::now();
        let inference = tokio::task::spawn_blocking(move || InferenceThread::start(&dir, device)).await??;
        tracing::info!(model = %model, device = ?inference.device(), load_ms = started.elapsed().as_millis() as u64,
            "model loaded and kept warm");
        let engine = Arc::new(Engine::new(inference));
        self.warm.lock().expect("warm list").push(model.to_string());
        fleet_common::metrics::MODEL_LOADS.inc();
        engines.insert(model, engine.clone());
        Ok(engine)
    }
}
