//! A task's lease, held by a guard: while [`LeaseHold`] lives, every heartbeat renews the
//! lease; when it drops (the attempt ended, or its task panicked) the renewal stops, so a
//! task that dies inside a live worker is taken over like one whose worker died.

use fleet_protocol::heartbeat::TrainingHold;

use super::heartbeat::{HeldLease, Live};

/// The worker's hold on one task's lease (and, for a fine-tune, on its device share).
pub(super) struct LeaseHold<'a> {
    live: &'a Live,
    id: String,
}

impl<'a> LeaseHold<'a> {
    /// Lists the lease of task `id` for renewal (and a fine-tune's hold on its device) until
    /// the guard drops.
    pub(super) fn hold(live: &'a Live, id: String, lease: HeldLease, training: Option<(u32, TrainingHold)>) -> Self {
        live.leases.lock().expect("lease table").insert(id.clone(), lease);
        if let Some(training) = training {
            live.training.lock().expect("training table").insert(id.clone(), training);
        }
        LeaseHold { live, id }
    }
}

impl Drop for LeaseHold<'_> {
    fn drop(&mut self) {
        // Poisoned tables (a panic while one was locked) still give the lease up.
        let mut leases = self.live.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        leases.remove(&self.id);
        drop(leases);
        let mut training = self.live.training.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        training.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    fn lease() -> HeldLease {
        HeldLease { token: 7, lost: Arc::new(AtomicBool::new(false)), preempt: Arc::new(AtomicBool::new(false)) }
    }

    #[test]
    fn a_panicking_task_gives_its_lease_up() {
        let live = Live::default();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _hold = LeaseHold::hold(&live, "t/j/0".into(), lease(), None);
            assert!(live.leases.lock().unwrap().contains_key("t/j/0"), "held while the task runs");
            panic!("the task dies");
        }));
        assert!(outcome.is_err());
        assert!(live.leases.lock().unwrap().is_empty(), "no heartbeat renews a dead task's lease");
    }

    #[test]
    fn a_fine_tune_s_device_share_goes_with_its_lease() {
        let live = Live::default();
        let hold = TrainingHold { task: "t/j/0".into(), whole_device: true, memory_mib: 0, preemptible: true };
        let guard = LeaseHold::hold(&live, "t/j/0".into(), lease(), Some((0, hold)));
        assert_eq!(live.training_on(0).len(), 1);
        drop(guard);
        assert!(live.training_on(0).is_empty() && live.leases.lock().unwrap().is_empty());
    }
}
