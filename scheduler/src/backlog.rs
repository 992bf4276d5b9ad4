//! The backlog as the autoscaler sees it: tasks not yet ended per tenant and priority, and
//! the time to drain them at the fleet's recent rate, sampled from the store every 2 s into
//! `fleet_backlog_tasks` and `fleet_backlog_drain_seconds` by the leading scheduler only (a
//! standby exports nothing, so a sum over schedulers counts each task once).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::job::Priority;
use fleet_state::tasks::Backlog;
use fleet_telemetry::metrics::{BACKLOG_DRAIN_SECONDS, BACKLOG_TASKS};
use tokio_util::sync::CancellationToken;

use crate::context::Scheduler;

/// How often the backlog is sampled.
const EVERY: Duration = Duration::from_secs(2);
/// The span the drain rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The least history a rate is judged on.
const MIN_SPAN: Duration = Duration::from_secs(4);
/// The drain time reported while tasks wait and none ended over the window (a pool scaled to
/// zero, or stalled): a day, finite so that scalers can read it.
pub const STALLED_S: f64 = 86_400.0;

/// Ended-task counters over the last [`RATE_WINDOW`], oldest first.
#[derive(Debug, Default)]
pub struct DrainClock {
    samples: VecDeque<(Instant, BTreeMap<Priority, u64>)>,
}

impl DrainClock {
    /// Records the counters read at `at` and returns the drain time per priority: waiting
    /// tasks over the rate tasks ended at since the oldest sample in the window; 0 with
    /// nothing waiting, [`STALLED_S`] when tasks wait and none ended. `None` for a priority
    /// while the window spans less than [`MIN_SPAN`] and tasks wait.
    pub fn observe(&mut self, at: Instant, backlog: &Backlog) -> BTreeMap<Priority, Option<f64>> {
        self.samples.push_back((at, backlog.ended.clone()));
        while self.samples.front().is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW) {
            self.samples.pop_front();
        }
        let (first_at, first) = self.samples.front().expect("just pushed");
        let span = at.duration_since(*first_at);
        Priority::ALL
            .into_iter()
            .map(|priority| {
                let waiting = backlog.waiting_at(priority);
                let ended = |counts: &BTreeMap<Priority, u64>| counts.get(&priority).copied().unwrap_or(0);
                let done = ended(&backlog.ended).saturating_sub(ended(first));
                let drain = if waiting == 0 {
                    Some(0.0)
                } else if span < MIN_SPAN {
                    None
                } else if done == 0 {
                    Some(STALLED_S)
                } else {
                    Some((waiting as f64 / (done as f64 / span.as_secs_f64())).min(STALLED_S))
                };
                (priority, drain)
            })
            .collect()
    }
}

/// Samples the backlog into the gauges until `stop`, then clears them (a scheduler that no
/// longer leads must not export a stale figure beside the new leader's).
pub async fn sample(sched: Arc<Scheduler>, stop: CancellationToken) {
    let mut clock = DrainClock::default();
    // Every (tenant, priority) seen stays exported, at 0 once its tasks ended.
    let mut seen: BTreeSet<(String, Priority)> = BTreeSet::new();
    loop {
        match sched.store.backlog().await {
            Ok(backlog) => {
                seen.extend(backlog.waiting.keys().cloned());
                for key @ (tenant, priority) in &seen {
                    let n = backlog.waiting.get(key).copied().unwrap_or(0);
                    BACKLOG_TASKS.with_label_values(&[tenant, priority.as_str()]).set(n as i64);
                }
                for (priority, drain) in clock.observe(Instant::now(), &backlog) {
                    if let Some(seconds) = drain {
                        BACKLOG_DRAIN_SECONDS.with_label_values(&[priority.as_str()]).set(seconds);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "backlog not sampled"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    BACKLOG_TASKS.reset();
    BACKLOG_DRAIN_SECONDS.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(waiting: &[(&str, Priority, u64)], ended: &[(Priority, u64)]) -> Backlog {
        Backlog {
            waiting: waiting.iter().map(|(t, p, n)| ((t.to_string(), *p), *n)).collect(),
            ended: ended.iter().copied().collect(),
        }
    }

    #[test]
    fn drain_time_is_waiting_tasks_over_the_rate_they_ended_at_in_the_window() {
        use Priority::{Batch, Interactive};
        let mut clock = DrainClock::default();
        let t0 = Instant::now();
        let first = clock.observe(t0, &backlog(&[("a", Batch, 100)], &[(Batch, 0), (Interactive, 5)]));
        assert_eq!(first[&Batch], None, "no rate from one sample");
        assert_eq!(first[&Interactive], Some(0.0), "nothing waiting drains in no time");
        // 20 batch tasks ended in 10 s: 2 tasks/s; 80 + 40 waiting take 60 s.
        let later = backlog(&[("a", Batch, 80), ("b", Batch, 40)], &[(Batch, 20), (Interactive, 5)]);
        let drain = clock.observe(t0 + Duration::from_secs(10), &later);
        assert_eq!(drain[&Batch], Some(60.0));
        // Tasks wait and none ended in the window: stalled, reported finite.
        let mut idle = DrainClock::default();
        let stuck = backlog(&[("a", Interactive, 3)], &[(Interactive, 9)]);
        idle.observe(t0, &stuck);
        assert_eq!(idle.observe(t0 + Duration::from_secs(5), &stuck)[&Interactive], Some(STALLED_S));
    }

    #[test]
    fn the_rate_forgets_what_ended_before_the_window() {
        use Priority::Batch;
        let mut clock = DrainClock::default();
        let t0 = Instant::now();
        clock.observe(t0, &backlog(&[("a", Batch, 1000)], &[(Batch, 0)]));
        // A burst of 600 ended early on, then 10 in the last 50 s.
        clock.observe(t0 + Duration::from_secs(10), &backlog(&[("a", Batch, 400)], &[(Batch, 600)]));
        let now = t0 + Duration::from_secs(70);
        let drain = clock.observe(now, &backlog(&[("a", Batch, 390)], &[(Batch, 610)]));
        // The window now starts at the 10 s sample: 10 tasks over 60 s.
        assert_eq!(drain[&Batch], Some(390.0 / (10.0 / 60.0)));
    }
}
