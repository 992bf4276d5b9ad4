//! Where a task runs: the placement policy, in one place, as a pure function of what the
//! workers last reported. The scheduler feeds it the devices from the workers' heartbeats
//! and the tasks waiting, and gets back a device for each task or the reasons none fits.
//!
//! Memory is counted per model, not per task: a worker runs each model's forward passes on
//! one inference thread, so a warm model holds its weights and one batch of activations
//! however many of its tasks the device runs. A task whose model is warm on a device needs no
//! more memory there; a task whose model is cold needs the model's footprint
//! (`weights + memory per image x batch`), reserved once per device and round however many
//! tasks of that model follow it there.
//!
//! Rules, in order:
//! 1. interactive tasks are placed before batch ones (each group in its given order);
//! 2. a device is eligible only if its worker is active (not draining or cordoned), its
//!    heartbeat is fresh, it is under the temperature limit and its uncorrected ECC count is
//!    not growing;
//! 3. a task fits where its need plus the device's headroom is at most the device's free
//!    memory (plus, for a cold model on an idle device, what its warm models hold: the worker
//!    evicts them to make room) minus what this round already reserved there (memory is never
//!    over-committed), and where the device has a free task slot: at most `capacity` tasks in
//!    all, of which at most `batch_capacity` batch ones, so interactive work always finds room
//!    that batch work cannot take;
//! 4. among fitting devices, one where the model is already warm (as its worker reported)
//!    wins, then one where it is loading (sent there this round or since the last heartbeat:
//!    no second reservation), then a cold one; so a model's tasks stay on the devices that
//!    have it until their slots are full, and only then spill over and load it elsewhere;
//! 5. then `Spread` takes the least loaded device (most free memory on ties), `Pack` the most
//!    loaded one that still fits (least free memory on ties).
//!
//! A fine-tune that asks for a whole device goes only to an idle device (no task, no other
//! fine-tune), and its device takes nothing else while it holds it. One that declares a
//! memory share is placed like any task needing that much memory. An interactive task that
//! fits nowhere may preempt fine-tunes ([`preemptions`]): on a healthy device whose
//! preemptible fine-tunes, once gone, leave room for it, they are asked to checkpoint and give
//! the device back; the task is placed on a later round, once the device is free.

use std::collections::BTreeSet;

use fleet_protocol::heartbeat::TrainingHold;

/// What a worker says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Takes work.
    Active,
    /// Finishing what it holds; takes nothing new.
    Draining,
    /// Set aside by an operator; takes nothing new.
    Cordoned,
}

/// One device as the scheduler last heard of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// Worker id.
    pub worker: String,
    /// Device index on that worker.
    pub device: u32,
    /// The worker's state.
    pub state: WorkerState,
    /// Device memory the worker may use, MiB.
    pub total_mib: u64,
    /// Free device memory at the last heartbeat, MiB.
    pub free_mib: u64,
    /// Memory held by warm models that the worker evicts (least recently used first) to load
    /// a model that is not warm there, MiB.
    pub evictable_mib: u64,
    /// Tasks it holds (leases), all priorities.
    pub load: u32,
    /// Batch tasks it holds.
    pub batch_load: u32,
    /// Most tasks it may hold.
    pub capacity: u32,
    /// Most batch tasks it may hold.
    pub batch_capacity: u32,
    /// Models loaded on it (`name@version`).
    pub warm: BTreeSet<String>,
    /// Models sent to it since its last heartbeat and not yet reported warm: their memory is
    /// already subtracted from `free_mib`.
    pub loading: BTreeSet<String>,
    /// Core temperature, Celsius, where known.
    pub temperature_c: Option<u32>,
    /// Whether its uncorrected ECC error count grew since the previous heartbeat.
    pub ecc_growing: bool,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Fine-tunes it holds.
    pub training: Vec<TrainingHold>,
}

impl DeviceView {
    /// The fine-tune holding the whole device, if one does.
    pub fn held_whole_by(&self) -> Option<&TrainingHold> {
        self.training.iter().find(|t| t.whole_device)
    }
}

/// What a task needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskNeed {
    /// Task id.
    pub id: String,
    /// Interactive tasks go first.
    pub interactive: bool,
    /// `name@version`.
    pub model: String,
    /// Model weights on the device, MiB (from its manifest).
    pub weights_mib: u64,
    /// Activation memory per image, MiB (from its manifest).
    pub memory_per_image_mib: u64,
    /// Images per forward pass.
    pub batch: u32,
    /// A fine-tune that takes a whole device.
    pub whole_device: bool,
}

/// Spread load across devices, or pack it onto as few as possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Least loaded device first: lowest latency.
    Spread,
    /// Most loaded device that fits: leaves whole devices free for big jobs.
    Pack,
}

/// The policy's knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Memory kept free on every device, MiB.
    pub headroom_mib: u64,
    /// Devices at or over this temperature get nothing.
    pub max_temperature_c: u32,
    /// Devices whose worker has not been heard of for this long get nothing.
    pub heartbeat_timeout_ms: u64,
    /// Spread or pack.
    pub strategy: Strategy,
    /// Place by where models are (rule 4, and a busy device never evicts for a cold model).
    /// Off only to measure what that saves: placement then ignores warm models and lets any
    /// device load any model that fits its memory, as a fleet where the first free worker
    /// takes the task would.
    pub prefer_warm: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            headroom_mib: 1024,
            max_temperature_c: 87,
            heartbeat_timeout_ms: 2_000,
            strategy: Strategy::Spread,
            prefer_warm: true,
        }
    }
}

/// Where one task goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// On `devices[index]`, reserving `need_mib` (0 when its model is warm or already loading
    /// there).
    Placed {
        /// Index into the devices given.
        index: usize,
        /// Memory reserved for it: the model's footprint when this task loads it.
        need_mib: u64,
        /// Whether its model was already warm there.
        warm: bool,
    },
    /// Nowhere; one reason per device, so an operator can see why.
    Unplaced {
        /// `worker/device: reason`.
        reasons: Vec<String>,
    },
}

/// Why a device cannot take any task now, if it cannot.
pub fn unhealthy(policy: &Policy, d: &DeviceView) -> Option<String> {
    match d.state {
        WorkerState::Draining => return Some("worker draining".into()),
        WorkerState::Cordoned => return Some("worker cordoned".into()),
        WorkerState::Active => {}
    }
    if d.heartbeat_age_ms > policy.heartbeat_timeout_ms {
        return Some(format!("no heartbeat for {} ms", d.heartbeat_age_ms));
    }
    if let Some(t) = d.temperature_c.filter(|t| *t >= policy.max_temperature_c) {
        return Some(format!("at {t} C, limit {} C", policy.max_temperature_c));
    }
    if d.ecc_growing {
        return Some("uncorrected ECC errors growing".into());
    }
    None
}

/// Memory a task's model takes on a device: weights and one batch of activations.
pub fn footprint_mib(task: &TaskNeed) -> u64 {
    task.weights_mib + task.memory_per_image_mib * task.batch.max(1) as u64
}

/// Memory a task may use on `d` holding `load` tasks: its free memory, plus its warm models'
/// when the task's model is not among them and the device is idle (loading evicts them; a
/// busy device never evicts a model its queued tasks still need, which would make it switch
/// models back and forth).
pub fn room(d: &DeviceView, resident: bool, load: u32) -> u64 {
    if resident || load > 0 {
        d.free_mib
    } else {
        d.free_mib + d.evictable_mib
    }
}

/// Places `tasks` on `devices`; returns `(task index, decision)` in the order they were
/// decided (interactive first). `devices` is not changed: this round's reservations are kept
/// on the side.
pub fn place(policy: &Policy, devices: &[DeviceView], tasks: &[TaskNeed]) -> Vec<(usize, Decision)> {
    let mut reserved = vec![0u64; devices.len()];
    let mut loading: Vec<BTreeSet<&str>> =
        devices.iter().map(|d| d.loading.iter().map(String::as_str).collect()).collect();
    let mut load: Vec<u32> = devices.iter().map(|d| d.load).collect();
    let mut batch_load: Vec<u32> = devices.iter().map(|d| d.batch_load).collect();
    let blocked: Vec<Option<String>> = devices.iter().map(|d| unhealthy(policy, d)).collect();
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| !tasks[i].interactive);
    order
        .into_iter()
        .map(|t| {
            let task = &tasks[t];
            let mut reasons = Vec::new();
            // (device, need, warmth rank: 2 warm, 1 loading, 0 cold, room left after it)
            let mut best: Option<(usize, u64, u8, u64)> = None;
            for (i, d) in devices.iter().enumerate() {
                if let Some(reason) = &blocked[i] {
                    reasons.push(format!("{}/{}: {reason}", d.worker, d.device));
                    continue;
                }
                if let Some(holder) = d.held_whole_by() {
                    reasons.push(format!("{}/{}: held whole by fine-tune {}", d.worker, d.device, holder.task));
                    continue;
                }
                if task.whole_device && (load[i] > 0 || !d.training.is_empty()) {
                    reasons.push(format!(
                        "{}/{}: a whole-device fine-tune needs an idle device ({} tasks held)",
                        d.worker, d.device, load[i]
                    ));
                    continue;
                }
                if load[i] >= d.capacity || (!task.interactive && batch_load[i] >= d.batch_capacity) {
                    let (held, cap) =
                        if task.interactive { (load[i], d.capacity) } else { (batch_load[i], d.batch_capacity) };
                    reasons.push(format!("{}/{}: all {cap} slots taken ({held} held)", d.worker, d.device));
                    continue;
                }
                let is_warm = d.warm.contains(&task.model);
                let resident = is_warm || loading[i].contains(task.model.as_str());
                let need = if resident { 0 } else { footprint_mib(task) };
                let busy = if policy.prefer_warm { load[i] } else { 0 };
                let free = room(d, resident, busy).saturating_sub(reserved[i]);
                if need + policy.headroom_mib > free {
                    reasons.push(format!(
                        "{}/{}: needs {need} MiB + {} MiB headroom, {free} MiB free",
                        d.worker, d.device, policy.headroom_mib
                    ));
                    continue;
                }
                let left = free - need;
                let rank = if is_warm { 2 } else { u8::from(resident) };
                let better = match best {
                    None => true,
                    Some((_, _, b_rank, _)) if policy.prefer_warm && rank != b_rank => rank > b_rank,
                    Some((b, _, _, b_left)) => match policy.strategy {
                        Strategy::Spread => (load[i], std::cmp::Reverse(left)) < (load[b], std::cmp::Reverse(b_left)),
                        Strategy::Pack => (std::cmp::Reverse(load[i]), left) < (std::cmp::Reverse(load[b]), b_left),
                    },
                };
                if better {
                    best = Some((i, need, rank, left));
                }
            }
            match best {
                Some((index, need, rank, _)) => {
                    let was_warm = rank == 2;
                    reserved[index] += need;
                    loading[index].insert(task.model.as_str());
                    load[index] += 1;
                    if !task.interactive {
                        batch_load[index] += 1;
                    }
                    if task.whole_device {
                        // Nothing else goes there this round.
                        load[index] = load[index].max(devices[index].capacity);
                        batch_load[index] = batch_load[index].max(devices[index].batch_capacity);
                    }
                    (t, Decision::Placed { index, need_mib: need, warm: was_warm })
                }
                None => (t, Decision::Unplaced { reasons }),
            }
        })
        .collect()
}

/// Fine-tunes to preempt on one device so that an interactive task can run there.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    /// Index into the devices given.
    pub index: usize,
    /// Task ids of the fine-tunes asked to give the device back.
    pub victims: Vec<String>,
    /// The interactive task (index into the tasks given) it makes room for.
    pub for_task: usize,
}

/// For each interactive task `place` left unplaced, a device to free for it by preempting
/// fine-tunes: healthy, holding only preemptible fine-tunes where any blocks it (a whole-device
/// one, or memory shares without which it fits), one device per task. Batch tasks never
/// preempt.
pub fn preemptions(
    policy: &Policy,
    devices: &[DeviceView],
    tasks: &[TaskNeed],
    decisions: &[(usize, Decision)],
) -> Vec<Preemption> {
    let mut taken = vec![false; devices.len()];
    let mut out = Vec::new();
    for (t, decision) in decisions {
        let task = &tasks[*t];
        if !task.interactive || !matches!(decision, Decision::Unplaced { .. }) {
            continue;
        }
        let freed_room = |d: &DeviceView| -> Option<(u64, Vec<String>)> {
            if d.training.is_empty() || d.training.iter().any(|h| !h.preemptible) || unhealthy(policy, d).is_some() {
                return None;
            }
            let room = if d.held_whole_by().is_some() {
                d.total_mib
            } else {
                d.free_mib + d.training.iter().map(|h| h.memory_mib).sum::<u64>()
            };
            (footprint_mib(task) + policy.headroom_mib <= room)
                .then(|| (room, d.training.iter().map(|h| h.task.clone()).collect()))
        };
        let best = devices
            .iter()
            .enumerate()
            .filter(|(i, _)| !taken[*i])
            .filter_map(|(i, d)| freed_room(d).map(|(room, victims)| (i, room, victims)))
            // Fewest fine-tunes interrupted, then the most room.
            .min_by_key(|(_, room, victims)| (victims.len(), std::cmp::Reverse(*room)));
        if let Some((index, _, victims)) = best {
            taken[index] = true;
            out.push(Preemption { index, victims, for_task: *t });
        }
    }
    out
}

#[cfg(test)]
mod tests;
