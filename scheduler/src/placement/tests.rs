use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use super::Strategy;
use super::*;

const MODELS: [&str; 3] = ["a@1", "b@1", "c@1"];

fn device(worker: &str, free_mib: u64, load: u32, warm: &[&str]) -> DeviceView {
    DeviceView {
        worker: worker.into(),
        device: 0,
        state: WorkerState::Active,
        total_mib: 80_000,
        free_mib,
        evictable_mib: 0,
        load,
        batch_load: 0,
        capacity: 16,
        batch_capacity: 12,
        warm: warm.iter().map(|m| m.to_string()).collect(),
        loading: Default::default(),
        temperature_c: Some(50),
        ecc_growing: false,
        heartbeat_age_ms: 100,
        training: Vec::new(),
    }
}

fn task(id: &str, interactive: bool, model: &str) -> TaskNeed {
    TaskNeed {
        id: id.into(),
        interactive,
        model: model.into(),
        weights_mib: 2_000,
        memory_per_image_mib: 500,
        batch: 4,
        whole_device: false,
    }
}

fn hold(task: &str, whole_device: bool, memory_mib: u64, preemptible: bool) -> TrainingHold {
    TrainingHold { task: task.into(), whole_device, memory_mib, preemptible }
}

fn fine_tune(id: &str) -> TaskNeed {
    TaskNeed { whole_device: true, model: format!("a@1 (training {id})"), ..task(id, false, "a@1") }
}

fn placed_on(decisions: &[(usize, Decision)], task: usize) -> Option<usize> {
    decisions.iter().find(|(t, _)| *t == task).and_then(|(_, d)| match d {
        Decision::Placed { index, .. } => Some(*index),
        Decision::Unplaced { .. } => None,
    })
}

#[test]
fn spread_balances_and_pack_fills_one_device_first() {
    let devices = [device("w1", 40_000, 0, &["a@1"]), device("w2", 40_000, 0, &["a@1"])];
    let tasks: Vec<TaskNeed> = (0..4).map(|i| task(&format!("t{i}"), false, "a@1")).collect();
    let spread = place(&Policy::default(), &devices, &tasks);
    let on: Vec<usize> = (0..4).map(|t| placed_on(&spread, t).unwrap()).collect();
    assert_eq!(on.iter().filter(|&&d| d == 0).count(), 2, "spread: two each, {on:?}");
    let pack = place(&Policy { strategy: Strategy::Pack, ..Default::default() }, &devices, &tasks);
    let on: Vec<usize> = (0..4).map(|t| placed_on(&pack, t).unwrap()).collect();
    assert!(on.iter().all(|&d| d == on[0]), "pack: one device while it fits, {on:?}");
}

#[test]
fn a_model_stays_where_it_is_loading_until_its_slots_are_full_then_spills_over() {
    let mut devices = [device("w1", 40_000, 0, &[]), device("w2", 40_000, 0, &[])];
    devices[0].capacity = 4;
    devices[0].batch_capacity = 3;
    let tasks: Vec<TaskNeed> = (0..5).map(|i| task(&format!("t{i}"), false, "a@1")).collect();
    let decisions = place(&Policy::default(), &devices, &tasks);
    let on: Vec<usize> = (0..5).map(|t| placed_on(&decisions, t).unwrap()).collect();
    assert_eq!(on, [0, 0, 0, 1, 1], "the first device loads the model and keeps its tasks until full");
    let reserved: Vec<u64> = decisions
        .iter()
        .map(|(_, d)| match d {
            Decision::Placed { need_mib, .. } => *need_mib,
            Decision::Unplaced { .. } => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(reserved, [4_000, 0, 0, 4_000, 0], "one load per device reserves the model's footprint");
}

#[test]
fn batch_work_leaves_slots_for_interactive_work() {
    let devices = [device("w", 80_000, 0, &[])];
    let tasks: Vec<TaskNeed> =
        (0..20).map(|i| task(&format!("b{i}"), false, "a@1")).chain([task("i", true, "a@1")]).collect();
    let decisions = place(&Policy { headroom_mib: 0, ..Default::default() }, &devices, &tasks);
    let placed = |interactive: bool| {
        decisions
            .iter()
            .filter(|(t, d)| tasks[*t].interactive == interactive && matches!(d, Decision::Placed { .. }))
            .count()
    };
    assert_eq!(placed(false), 12, "batch stops at its capacity");
    assert_eq!(placed(true), 1, "the interactive task still finds a slot");
    let Some((_, Decision::Unplaced { reasons })) = decisions.last() else { panic!("{decisions:?}") };
    assert!(reasons[0].contains("slots taken"), "{reasons:?}");
}

#[test]
fn a_cold_model_fits_where_idle_warm_models_can_be_evicted() {
    let mut full = device("full", 500, 0, &["b@1"]);
    full.evictable_mib = 5_000;
    let decisions =
        place(&Policy { headroom_mib: 0, ..Default::default() }, &[full.clone()], &[task("t", false, "a@1")]);
    assert_eq!(placed_on(&decisions, 0), Some(0), "weights 2000 + 4 x 500 fit in 500 free + 5000 evictable");
    full.evictable_mib = 1_000;
    let decisions = place(&Policy { headroom_mib: 0, ..Default::default() }, &[full], &[task("t", false, "a@1")]);
    assert_eq!(placed_on(&decisions, 0), None, "4000 needed, 1500 to be had");
}

#[test]
fn a_warm_device_wins_and_unfit_tasks_say_why_per_device() {
    let devices = [device("cold", 80_000, 0, &[]), device("warm", 10_000, 3, &["a@1"])];
    let decisions = place(&Policy::default(), &devices, &[task("t", false, "a@1")]);
    assert_eq!(placed_on(&decisions, 0), Some(1), "warm beats emptier and less loaded");
    let mut hot = device("hot", 80_000, 0, &[]);
    hot.temperature_c = Some(95);
    let mut cordoned = device("cordoned", 80_000, 0, &[]);
    cordoned.state = WorkerState::Cordoned;
    let small = device("small", 3_000, 0, &[]);
    let decisions = place(&Policy::default(), &[hot, cordoned, small], &[task("t", true, "b@1")]);
    let Decision::Unplaced { reasons } = &decisions[0].1 else { panic!("{decisions:?}") };
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("95 C") && reasons[1].contains("cordoned") && reasons[2].contains("needs"),
        "{reasons:?}"
    );
}

fn arb_device() -> impl proptest::strategy::Strategy<Value = DeviceView> {
    (
        0u32..1000,
        prop_oneof![8 => Just(WorkerState::Active), 1 => Just(WorkerState::Draining), 1 => Just(WorkerState::Cordoned)],
        0u64..80_000,
        0u32..8,
        proptest::collection::btree_set(proptest::sample::select(MODELS.to_vec()), 0..3),
        proptest::option::of(30u32..100),
        proptest::bool::weighted(0.1),
        (0u64..6_000, 1u32..10, 0u32..6),
    )
        .prop_map(
            |(n, state, free_mib, load, warm, temperature_c, ecc_growing, (heartbeat_age_ms, capacity, batch_cap))| {
                DeviceView {
                    worker: format!("w{n}"),
                    device: n % 4,
                    state,
                    total_mib: free_mib + 8_000,
                    free_mib,
                    evictable_mib: free_mib / 4,
                    load,
                    batch_load: load / 2,
                    capacity,
                    batch_capacity: batch_cap.min(capacity),
                    loading: MODELS
                        .iter()
                        .filter(|m| !warm.contains(*m))
                        .take((n % 2) as usize)
                        .map(|m| m.to_string())
                        .collect(),
                    warm: warm.into_iter().map(str::to_string).collect(),
                    temperature_c,
                    ecc_growing,
                    heartbeat_age_ms,
                    training: Vec::new(),
                }
            },
        )
}

fn arb_task() -> impl proptest::strategy::Strategy<Value = TaskNeed> {
    (any::<bool>(), proptest::sample::select(MODELS.to_vec()), 100u64..20_000, 10u64..4_000, 1u32..16).prop_map(
        |(interactive, model, weights_mib, memory_per_image_mib, batch)| TaskNeed {
            id: String::new(),
            interactive,
            model: model.to_string(),
            weights_mib,
            memory_per_image_mib,
            batch,
            whole_device: false,
        },
    )
}

proptest! {
    #[test]
    fn placements_respect_memory_health_priority_and_warmth(
        devices in proptest::collection::vec(arb_device(), 0..8),
        tasks in proptest::collection::vec(arb_task(), 0..24),
        pack in any::<bool>(),
    ) {
        let policy = Policy { strategy: if pack { Strategy::Pack } else { Strategy::Spread }, ..Default::default() };
        prop_assert!(policy.prefer_warm);
        let decisions = place(&policy, &devices, &tasks);
        // Every task is decided once, interactive ones first.
        let mut seen: Vec<usize> = decisions.iter().map(|(t, _)| *t).collect();
        seen.sort();
        prop_assert_eq!(seen, (0..tasks.len()).collect::<Vec<_>>());
        let first_batch = decisions.iter().position(|(t, _)| !tasks[*t].interactive).unwrap_or(decisions.len());
        prop_assert!(decisions[first_batch..].iter().all(|(t, _)| !tasks[*t].interactive));
        // Replay the round: memory never over-committed, no unhealthy device used, and a cold
        // device is chosen only when no eligible warm device had room.
        let mut reserved = vec![0u64; devices.len()];
        let mut loading: Vec<std::collections::BTreeSet<String>> = devices.iter().map(|d| d.loading.clone()).collect();
        let mut held: Vec<(u32, u32)> = devices.iter().map(|d| (d.load, d.batch_load)).collect();
        for (t, decision) in &decisions {
            let task = &tasks[*t];
            if let Decision::Placed { index, need_mib: placed, warm: was_warm } = decision {
                let d = &devices[*index];
                prop_assert!(unhealthy(&policy, d).is_none(), "placed on {:?}", d);
                prop_assert_eq!(*was_warm, d.warm.contains(&task.model));
                let resident = *was_warm || loading[*index].contains(&task.model);
                // A model's memory is reserved once per device: by the task that loads it.
                prop_assert_eq!(*placed, if resident { 0 } else { footprint_mib(task) });
                // Warm beats loading beats cold: a device of a lower rank is chosen only when no
                // eligible device of a higher rank had room and a slot.
                let rank = |i: usize, d: &DeviceView| {
                    if d.warm.contains(&task.model) { 2 } else { u8::from(loading[i].contains(&task.model)) }
                };
                for (i, other) in devices.iter().enumerate() {
                    let room = room(other, true, held[i].0).saturating_sub(reserved[i]);
                    let slot = held[i].0 < other.capacity && (task.interactive || held[i].1 < other.batch_capacity);
                    let fits_resident = slot && rank(i, other) > 0 && policy.headroom_mib <= room;
                    if fits_resident && unhealthy(&policy, other).is_none() {
                        prop_assert!(rank(*index, d) >= rank(i, other), "a warmer device had room: {:?}", other);
                    }
                }
                reserved[*index] += placed;
                loading[*index].insert(task.model.clone());
                prop_assert!(
                    reserved[*index] + policy.headroom_mib <= d.free_mib + d.evictable_mib,
                    "over-committed {:?}", d
                );
                held[*index].0 += 1;
                held[*index].1 += u32::from(!task.interactive);
                prop_assert!(held[*index].0 <= d.capacity.max(d.load), "over capacity {:?}", d);
                prop_assert!(task.interactive || held[*index].1 <= d.batch_capacity.max(d.batch_load), "batch over capacity {:?}", d);
            }
        }
    }
}

#[test]
fn a_whole_device_fine_tune_takes_only_an_idle_device_and_shares_it_with_nothing() {
    let devices = [device("busy", 80_000, 1, &["a@1"]), device("idle", 80_000, 0, &[])];
    let tasks = [fine_tune("ft"), task("b", false, "a@1"), task("i", true, "a@1")];
    let decisions = place(&Policy::default(), &devices, &tasks);
    assert_eq!(placed_on(&decisions, 0), Some(1), "only the idle device takes it");
    assert_eq!(placed_on(&decisions, 1), Some(0), "batch work goes to the other device");
    assert_eq!(placed_on(&decisions, 2), Some(0), "and so does interactive work");
    let mut held = device("held", 80_000, 1, &[]);
    held.training = vec![hold("t/ft/0", true, 0, true)];
    let decisions = place(&Policy::default(), &[held], &[task("i", true, "a@1")]);
    let Decision::Unplaced { reasons } = &decisions[0].1 else { panic!("{decisions:?}") };
    assert!(reasons[0].contains("held whole by fine-tune t/ft/0"), "{reasons:?}");
}

#[test]
fn interactive_work_that_fits_nowhere_preempts_preemptible_fine_tunes_only() {
    let policy = Policy::default();
    let mut whole = device("whole", 60_000, 1, &[]);
    whole.training = vec![hold("t/ft/0", true, 0, true)];
    let tasks = [task("i", true, "a@1"), task("b", false, "a@1")];
    let decisions = place(&policy, std::slice::from_ref(&whole), &tasks);
    let chosen = preemptions(&policy, std::slice::from_ref(&whole), &tasks, &decisions);
    assert_eq!(chosen, [Preemption { index: 0, victims: vec!["t/ft/0".into()], for_task: 0 }], "batch never preempts");
    whole.training[0].preemptible = false;
    let decisions = place(&policy, std::slice::from_ref(&whole), &tasks);
    assert!(preemptions(&policy, &[whole], &tasks, &decisions).is_empty(), "not preemptible");
    // A memory share is preempted only where giving its memory back makes room.
    let mut shared = device("shared", 3_000, 1, &[]);
    shared.training = vec![hold("t/ft/1", false, 3_000, true)];
    let mut short = device("short", 100, 1, &[]);
    short.training = vec![hold("t/ft/2", false, 500, true)];
    let devices = [short, shared];
    let decisions = place(&policy, &devices, &tasks[..1]);
    let chosen = preemptions(&policy, &devices, &tasks[..1], &decisions);
    assert_eq!(chosen, [Preemption { index: 1, victims: vec!["t/ft/1".into()], for_task: 0 }]);
    // An interactive task that fits somewhere preempts nothing.
    let free = device("free", 80_000, 0, &[]);
    let devices = [devices[1].clone(), free];
    let decisions = place(&policy, &devices, &tasks[..1]);
    assert!(preemptions(&policy, &devices, &tasks[..1], &decisions).is_empty());
}

proptest! {
    #[test]
    fn whole_device_fine_tunes_never_share_a_device_and_preemption_frees_one_device_per_task(
        devices in proptest::collection::vec(arb_device(), 0..6),
        holds in proptest::collection::vec((any::<bool>(), 0u64..4_000, any::<bool>()), 0..6),
        tasks in proptest::collection::vec((arb_task(), proptest::bool::weighted(0.3)), 0..12),
    ) {
        let mut devices = devices;
        for (i, (whole, mib, preemptible)) in holds.into_iter().enumerate() {
            if let Some(d) = devices.get_mut(i) {
                d.training.push(hold(&format!("t/ft/{i}"), whole, if whole { 0 } else { mib }, preemptible));
                d.load = d.load.max(1);
            }
        }
        let tasks: Vec<TaskNeed> = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (t, whole))| TaskNeed { id: format!("t{i}"), whole_device: whole && !t.interactive, ..t })
            .collect();
        let policy = Policy::default();
        let decisions = place(&policy, &devices, &tasks);
        let mut on_device: Vec<Vec<usize>> = vec![Vec::new(); devices.len()];
        for (t, d) in &decisions {
            if let Decision::Placed { index, .. } = d {
                on_device[*index].push(*t);
            }
        }
        for (i, placed) in on_device.iter().enumerate() {
            let d = &devices[i];
            prop_assert!(placed.is_empty() || d.held_whole_by().is_none(), "a device held whole got work");
            if placed.iter().any(|&t| tasks[t].whole_device) {
                prop_assert_eq!(placed.len(), 1, "a whole-device fine-tune shared its device");
                prop_assert!(d.load == 0 && d.training.is_empty(), "a whole-device fine-tune on a busy device");
            }
        }
        let chosen = preemptions(&policy, &devices, &tasks, &decisions);
        let mut freed = std::collections::BTreeSet::new();
        for p in &chosen {
            let d = &devices[p.index];
            prop_assert!(freed.insert(p.index), "one device freed twice");
            prop_assert!(tasks[p.for_task].interactive, "batch work preempted a fine-tune");
            prop_assert!(unhealthy(&policy, d).is_none());
            prop_assert!(d.training.iter().all(|h| h.preemptible));
            prop_assert_eq!(p.victims.len(), d.training.len());
            let unplaced = decisions.iter().any(|(t, dec)| *t == p.for_task && matches!(dec, Decision::Unplaced { .. }));
            prop_assert!(unplaced, "a placed task preempted");
        }
    }
}
