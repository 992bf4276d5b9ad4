//! Building the worker's heartbeat ([`fleet_common::heartbeat`]): identity, NVML readings,
//! warm models, tasks in hand and state. The service writes one every period.

use std::collections::BTreeSet;
use std::sync::Mutex;

use fleet_common::heartbeat::{Heartbeat, Order};
use fleet_common::protocol::now_ms;

use crate::telemetry::Gpus;

/// The parts of a heartbeat that change while the worker runs.
#[derive(Default)]
pub struct Live {
    /// Tasks in hand.
    pub in_flight: Mutex<BTreeSet<String>>,
    /// Set once the worker has finished everything it held after a cordon or drain.
    pub drained: std::sync::atomic::AtomicBool,
}

/// Builds the current heartbeat.
pub fn beat(base: &Heartbeat, gpus: &Gpus, live: &Live, order: Order, warm_models: Vec<String>) -> Heartbeat {
    let (samples, absent) = match gpus {
        Gpus::Absent(reason) => (Vec::new(), Some(reason.clone())),
        present => match present.sample() {
            Ok(samples) => (samples, None),
            Err(e) => (Vec::new(), Some(e)),
        },
    };
    let drained = live.drained.load(std::sync::atomic::Ordering::Relaxed);
    let state = match (order, drained) {
        (Order::Run, _) => "active",
        (Order::Cordon, _) => "cordoned",
        (Order::Drain, false) => "draining",
        (Order::Drain, true) => "drained",
    };
    Heartbeat {
        state: state.to_string(),
        gpus: samples,
        telemetry_absent: absent,
        warm_models,
        in_flight: live.in_flight.lock().expect("in-flight set").iter().cloned().collect(),
        at_ms: now_ms(),
        ..base.clone()
    }
}
