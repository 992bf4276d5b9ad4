//! The dispatcher's view of the fleet: every device of every live worker from the heartbeats
//! and the lease load, corrected for what was sent since those heartbeats (models still
//! loading, fine-tunes not listed yet) and leaving out workers whose queue refused a task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleet_protocol::heartbeat::{DeviceSample, Heartbeat, TrainingHold, WorkerDevice};
use fleet_protocol::message::{now_ms, TaskMessage};
use fleet_state::lease::Load;
use fleet_state::{JobStoreError, RedisJobStore};

use crate::placement::{DeviceView, WorkerState};

/// Heartbeats older than this are read again before a round.
const VIEW_MAX_AGE: Duration = Duration::from_millis(200);
/// Batch tasks a device may hold per lane slot: one running and the rest waiting on the
/// worker, so its slots never wait for a dispatch round trip.
const LEASES_PER_SLOT: u32 = 3;
/// How long after a grant the dispatcher vouches for a fine-tune its worker's heartbeat does
/// not list yet.
const TRAINING_GRACE_MS: u64 = 2_000;
/// How long a worker whose queue refused a task is left out.
const EXCLUDE_FOR: Duration = Duration::from_secs(2);

/// A model sent to a device where it was cold, since the device's last heartbeat: its memory
/// is not in that heartbeat yet.
struct Recent {
    worker: String,
    device: u32,
    model: String,
    need_mib: u64,
    at_ms: u64,
}

/// A fine-tune sent to a device, until the device's heartbeats report it themselves.
struct GrantedTraining {
    worker: String,
    device: u32,
    hold: TrainingHold,
    at_ms: u64,
}

/// The heartbeats last read, and what was sent or refused since.
#[derive(Default)]
pub(super) struct FleetView {
    beats: Vec<Heartbeat>,
    beats_at: Option<Instant>,
    ecc_seen: HashMap<(String, u32), u64>,
    recent: Vec<Recent>,
    training: Vec<GrantedTraining>,
    excluded: HashMap<String, Instant>,
}

impl FleetView {
    /// Every device of every live worker, with its load from the leases and the memory of
    /// the leases granted since its heartbeat set aside.
    pub(super) async fn devices(&mut self, store: &RedisJobStore) -> Result<Vec<DeviceView>, JobStoreError> {
        if self.beats_at.is_none_or(|at| at.elapsed() >= VIEW_MAX_AGE) {
            let beats = store.heartbeats().await?;
            self.refresh(beats);
        }
        let load = store.load().await?;
        let now = now_ms();
        let mut out = Vec::new();
        for beat in &self.beats {
            if self.excluded.contains_key(&beat.id) {
                continue;
            }
            let state = match beat.state.as_str() {
                "active" => WorkerState::Active,
                "cordoned" => WorkerState::Cordoned,
                _ => WorkerState::Draining,
            };
            for device in &beat.devices {
                let gpu = gpu_of(beat, device);
                let ecc = gpu.and_then(|g| g.ecc_uncorrected);
                let ecc_growing = note_ecc(&mut self.ecc_seen, (beat.id.clone(), device.index), ecc);
                let mut view = self.device_view(beat, device, state, &load);
                view.temperature_c = gpu.and_then(|g| g.temperature_c);
                view.ecc_growing = ecc_growing;
                view.heartbeat_age_ms = now.saturating_sub(beat.at_ms);
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Takes new heartbeats and forgets what they now speak for.
    fn refresh(&mut self, beats: Vec<Heartbeat>) {
        self.beats = beats;
        self.beats_at = Some(Instant::now());
        let oldest = self.beats.iter().map(|b| b.at_ms).min().unwrap_or(0);
        self.recent.retain(|r| r.at_ms >= oldest);
        // A worker lists a fine-tune from the moment it takes it: two periods after the
        // grant, its heartbeat speaks for it.
        let beats = &self.beats;
        self.training
            .retain(|t| beats.iter().find(|b| b.id == t.worker).is_some_and(|b| b.at_ms < t.at_ms + TRAINING_GRACE_MS));
        self.excluded.retain(|_, at| at.elapsed() < EXCLUDE_FOR);
    }

    /// One device as its heartbeat and the leases show it, with the models loading and the
    /// fine-tunes granted since that heartbeat (health fields left at their defaults).
    fn device_view(&self, beat: &Heartbeat, device: &WorkerDevice, state: WorkerState, load: &Load) -> DeviceView {
        let held =
            |priority: &str| load.get(&(beat.id.clone(), device.index, priority.to_string())).copied().unwrap_or(0);
        let (interactive, batch) = (held("interactive"), held("batch"));
        let loading: Vec<&Recent> = self
            .recent
            .iter()
            .filter(|r| r.worker == beat.id && r.device == device.index && r.at_ms > beat.at_ms)
            .filter(|r| !device.warm_models.contains(&r.model))
            .collect();
        let granted_since: u64 = loading.iter().map(|r| r.need_mib).sum();
        let slots = device.slots.max(1) as u32;
        let mut training = device.training.clone();
        for t in self.training.iter().filter(|t| t.worker == beat.id && t.device == device.index) {
            if !training.iter().any(|h| h.task == t.hold.task) {
                training.push(t.hold.clone());
            }
        }
        DeviceView {
            worker: beat.id.clone(),
            device: device.index,
            state,
            total_mib: device.memory_total_mib,
            free_mib: device.memory_free_mib.saturating_sub(granted_since),
            evictable_mib: device.warm_mib,
            load: interactive + batch,
            batch_load: batch,
            capacity: 2 * LEASES_PER_SLOT * slots,
            batch_capacity: LEASES_PER_SLOT * slots,
            warm: device.warm_models.iter().cloned().collect(),
            loading: loading.iter().map(|r| r.model.clone()).collect(),
            temperature_c: None,
            ecc_growing: false,
            heartbeat_age_ms: 0,
            training,
        }
    }

    /// Remembers, until `device`'s heartbeats show them, the fine-tune `message` starts there
    /// and the `need_mib` of device memory its `model` takes while it loads.
    pub(super) fn record_sent(
        &mut self,
        device: &DeviceView,
        message: &TaskMessage,
        model: &str,
        need_mib: u64,
        now: u64,
    ) {
        if let Some(ft) = &message.fine_tune {
            self.training.push(GrantedTraining {
                worker: device.worker.clone(),
                device: device.device,
                hold: TrainingHold {
                    task: message.id(),
                    whole_device: ft.resources.whole_device(),
                    memory_mib: ft.resources.memory_mib.unwrap_or(0),
                    preemptible: ft.resources.preemptible,
                },
                at_ms: now,
            });
        }
        if need_mib > 0 {
            self.recent.push(Recent {
                worker: device.worker.clone(),
                device: device.device,
                model: model.to_string(),
                need_mib,
                at_ms: now,
            });
        }
    }

    /// Leaves `worker` out of the next rounds for [`EXCLUDE_FOR`].
    pub(super) fn exclude(&mut self, worker: &str) {
        self.excluded.insert(worker.to_string(), Instant::now());
    }
}

/// The telemetry of the GPU behind `device` (`cuda:<n>`), if its heartbeat has any.
fn gpu_of<'a>(beat: &'a Heartbeat, device: &WorkerDevice) -> Option<&'a DeviceSample> {
    device
        .spec
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|n| beat.gpus.iter().find(|g| g.index == n))
}

/// Whether the uncorrected ECC count of `slot` grew past the lowest seen, which it records.
fn note_ecc(seen: &mut HashMap<(String, u32), u64>, slot: (String, u32), ecc: Option<u64>) -> bool {
    let growing = match (ecc, seen.get(&slot)) {
        (Some(now), Some(before)) => now > *before,
        _ => false,
    };
    if let Some(ecc) = ecc {
        seen.entry(slot).and_modify(|seen| *seen = (*seen).min(ecc)).or_insert(ecc);
    }
    growing
}
