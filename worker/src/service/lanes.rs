//! Devices in use: each with its warm models and two lanes of slots, interactive and batch, so
//! an interactive task never queues behind a batch backlog; and a task's place in the
//! heartbeat's in-flight list while it runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use fleet_protocol::job::Priority;
use tokio::sync::Semaphore;

use super::config::DeviceConfig;
use super::heartbeat;
use super::models::ModelCache;

/// A device in use: its warm models, its lanes and what runs on it.
pub(super) struct Device {
    /// The device's settings.
    pub(super) config: DeviceConfig,
    /// Its warm models.
    pub(super) models: ModelCache,
    /// Slots for interactive tasks.
    interactive: Arc<Semaphore>,
    /// Slots for batch tasks.
    batch: Arc<Semaphore>,
    /// Tasks running on it now.
    pub(super) running: AtomicU32,
}

impl Device {
    /// A device with `slots` slots on each lane and models cached under `model_cache`.
    pub(super) fn new(config: &DeviceConfig, model_cache: PathBuf, slots: usize) -> Self {
        Device {
            models: ModelCache::new(model_cache, config.spec, Some(config.memory_mib)),
            config: config.clone(),
            interactive: Arc::new(Semaphore::new(slots)),
            batch: Arc::new(Semaphore::new(slots)),
            running: AtomicU32::new(0),
        }
    }

    /// The lane a task of `priority` waits on for a slot.
    pub(super) fn lane(&self, priority: Priority) -> &Arc<Semaphore> {
        match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }
}

/// A task's place in the heartbeat's in-flight list, for as long as the worker holds it.
pub(super) struct InFlight<'a> {
    live: &'a heartbeat::Live,
    id: String,
}

impl<'a> InFlight<'a> {
    /// Lists task `id` as in flight until the guard drops.
    pub(super) fn hold(live: &'a heartbeat::Live, id: String) -> Self {
        live.in_flight.lock().expect("in-flight set").insert(id.clone());
        InFlight { live, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.live.in_flight.lock().expect("in-flight set").remove(&self.id);
    }
}

/// Counts a task as running on its device until the guard drops, however the task ends.
pub(super) struct Running<'a>(&'a AtomicU32);

impl<'a> Running<'a> {
    /// One more task running on `device`.
    pub(super) fn on(device: &'a Device) -> Self {
        device.running.fetch_add(1, Ordering::Relaxed);
        Running(&device.running)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
