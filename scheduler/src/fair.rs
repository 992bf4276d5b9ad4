//! Weighted fair share between tenants, on measured device time.
//!
//! Each tenant has a virtual time: the device time its tasks used, divided by its weight.
//! The dispatcher orders the tasks waiting in a priority class by it (start-time fair
//! queueing): the tenant furthest behind goes first, and each task it is given moves it on by
//! the task's expected time over its weight, corrected by the measured time when the task
//! ends. With weights 1 and 3 and both tenants waiting, the second gets three quarters of the
//! device time. A tenant that comes back after an idle spell starts level with the least
//! advanced active tenant (no credit for idle time); when only one tenant has work it gets
//! every device (idle capacity is lent).
//!
//! The splitter keeps each tenant's queue short ([`Usage::may_publish`]): a tenant's batch
//! tasks wait in its job's cursor, not in the shared queue, once it has a window's worth
//! published and not yet sent on by the dispatcher. So a tenant that floods 20,000 tasks does
//! not stand in front of one that submits later. Limits on running tasks and images per hour
//! hold a tenant's tasks back in the dispatcher.
//!
//! All of this is the scheduler's memory: after a restart every tenant starts level.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_protocol::tenancy::Policies;

/// Expected device time per item before any task of a tenant has been measured.
const FIRST_ESTIMATE_MS: f64 = 100.0;
/// Weight of the newest measurement in the per-item estimate.
const ESTIMATE_ALPHA: f64 = 0.2;
/// A tenant with nothing waiting or running for this long arrives afresh when it comes back.
const IDLE: Duration = Duration::from_secs(1);
/// The rolling window of `images_per_hour`.
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Tenant {
    virtual_ms: f64,
    /// When it last had tasks waiting in the dispatcher.
    last_waiting: Option<Instant>,
    ms_per_item: Option<f64>,
    running: u32,
    pending: u32,
    dispatched: VecDeque<(Instant, u64)>,
    dispatched_hour: u64,
    /// Estimates charged for tasks not yet ended, by task id.
    charged: HashMap<String, f64>,
}

impl Tenant {
    fn estimate(&self, items: u64) -> f64 {
        self.ms_per_item.unwrap_or(FIRST_ESTIMATE_MS) * items.max(1) as f64
    }

    fn trim_hour(&mut self, now: Instant) {
        while let Some(&(at, items)) = self.dispatched.front() {
            if now.duration_since(at) < HOUR {
                break;
            }
            self.dispatched.pop_front();
            self.dispatched_hour -= items;
        }
    }
}

/// A task as fair ordering sees it.
pub struct Candidate<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// Its items.
    pub items: u64,
}

/// Per-tenant usage, shared by the splitter, the dispatcher and the report handler.
#[derive(Default)]
pub struct Usage {
    tenants: Mutex<HashMap<String, Tenant>>,
    /// Woken whenever the dispatcher takes a batch task: a splitter waiting for its window.
    pub taken_any: tokio::sync::Notify,
}

impl Usage {
    /// Whether the splitter may publish more of `tenant`'s batch tasks: fewer than `window`
    /// are published and not yet sent on by the dispatcher.
    pub fn may_publish(&self, tenant: &str, window: u32) -> bool {
        self.tenants.lock().expect("usage").get(tenant).is_none_or(|t| t.pending < window)
    }

    /// The splitter published `tasks` of `tenant`'s batch tasks.
    pub fn published(&self, tenant: &str, tasks: u32) {
        let mut all = self.tenants.lock().expect("usage");
        all.entry(tenant.to_string()).or_default().pending += tasks;
    }

    /// Forgets what was counted as published and not yet sent on: a new broker session's
    /// dispatcher starts with an empty waiting list, and the deliveries the last one held went
    /// back to the queue uncounted. (At most one window per tenant more can then be queued.)
    pub fn reset_pending(&self) {
        for t in self.tenants.lock().expect("usage").values_mut() {
            t.pending = 0;
        }
        self.taken_any.notify_waiters();
    }

    /// `tasks` counted by [`published`](Self::published) did not go out after all.
    pub fn unpublished(&self, tenant: &str, tasks: u32) {
        if let Some(t) = self.tenants.lock().expect("usage").get_mut(tenant) {
            t.pending = t.pending.saturating_sub(tasks);
        }
        self.taken_any.notify_waiters();
    }

    /// One of `tenant`'s batch tasks left the dispatcher (sent to a worker, returned to the
    /// end of its queue or dead-lettered).
    pub fn taken(&self, tenant: &str) {
        if let Some(t) = self.tenants.lock().expect("usage").get_mut(tenant) {
            t.pending = t.pending.saturating_sub(1);
        }
        self.taken_any.notify_waiters();
    }

    /// The order to try `candidates` in (indexes), fairest first, leaving out the tasks of
    /// tenants at their running-task or hourly image limit.
    pub fn order(&self, candidates: &[Candidate<'_>], policies: &Policies, now: Instant) -> Vec<usize> {
        let mut all = self.tenants.lock().expect("usage");
        // Each tenant's tasks in arrival order.
        let mut queues: Vec<(String, VecDeque<usize>)> = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            match queues.iter_mut().find(|(t, _)| t == c.tenant) {
                Some((_, q)) => q.push_back(i),
                None => queues.push((c.tenant.to_string(), VecDeque::from([i]))),
            }
        }
        // Start level: a tenant that arrives (nothing waiting or running a moment ago) is not
        // further behind than the least advanced tenant already competing.
        let arriving = |u: Option<&Tenant>| {
            u.is_none_or(|u| u.running == 0 && u.last_waiting.is_none_or(|at| now.duration_since(at) > IDLE))
        };
        let floor = queues
            .iter()
            .filter(|(t, _)| !arriving(all.get(t)))
            .filter_map(|(t, _)| all.get(t).map(|u| u.virtual_ms))
            .fold(f64::INFINITY, f64::min);
        let mut state: Vec<(f64, f64, u32, u64)> = Vec::with_capacity(queues.len());
        for (tenant, _) in &queues {
            let limits = policies.limits(tenant);
            let arrives = arriving(all.get(tenant));
            let u = all.entry(tenant.clone()).or_default();
            u.trim_hour(now);
            if arrives && floor.is_finite() && u.virtual_ms < floor {
                u.virtual_ms = floor;
            }
            u.last_waiting = Some(now);
            let running_room = limits.max_running_tasks.map_or(u32::MAX, |m| m.saturating_sub(u.running));
            let hour_room = limits.images_per_hour.map_or(u64::MAX, |m| m.saturating_sub(u.dispatched_hour));
            state.push((u.virtual_ms, limits.weight(), running_room, hour_room));
        }
        let mut order = Vec::with_capacity(candidates.len());
        loop {
            let next = (0..queues.len())
                .filter(|&q| !queues[q].1.is_empty() && state[q].2 > 0)
                .filter(|&q| state[q].3 >= candidates[queues[q].1[0]].items.max(1))
                .min_by(|&a, &b| state[a].0.total_cmp(&state[b].0));
            let Some(q) = next else { break };
            let i = queues[q].1.pop_front().expect("non-empty");
            let items = candidates[i].items.max(1);
            let estimate = all.get(&queues[q].0).map_or(FIRST_ESTIMATE_MS * items as f64, |u| u.estimate(items));
            state[q].0 += estimate / state[q].1;
            state[q].2 -= 1;
            state[q].3 = state[q].3.saturating_sub(items);
            order.push(i);
        }
        order
    }

    /// A task of `tenant` with `items` went to a worker: it runs, and its expected device
    /// time is charged (corrected when it ends).
    pub fn sent(&self, tenant: &str, task: &str, items: u64, weight: f64, now: Instant) {
        let mut all = self.tenants.lock().expect("usage");
        let u = all.entry(tenant.to_string()).or_default();
        let estimate = u.estimate(items);
        u.virtual_ms += estimate / weight;
        u.running += 1;
        u.dispatched.push_back((now, items.max(1)));
        u.dispatched_hour += items.max(1);
        u.charged.insert(task.to_string(), estimate);
    }

    /// A task of `tenant` ended (or gave its lease back): it no longer runs; with
    /// `device_ms`, the measured time replaces the estimate and teaches the next one.
    pub fn ended(&self, tenant: &str, task: &str, items: u64, device_ms: Option<u64>, weight: f64) {
        let mut all = self.tenants.lock().expect("usage");
        let Some(u) = all.get_mut(tenant) else { return };
        let Some(estimate) = u.charged.remove(task) else { return };
        u.running = u.running.saturating_sub(1);
        if let Some(ms) = device_ms {
            u.virtual_ms += (ms as f64 - estimate) / weight;
            let per_item = ms as f64 / items.max(1) as f64;
            u.ms_per_item = Some(match u.ms_per_item {
                Some(old) => old + ESTIMATE_ALPHA * (per_item - old),
                None => per_item,
            });
        }
    }

    /// `tenant`'s tasks running now (for `fleetctl queue` and the tests).
    pub fn running(&self, tenant: &str) -> u32 {
        self.tenants.lock().expect("usage").get(tenant).map_or(0, |t| t.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(text: &str) -> Policies {
        Policies::from_toml(text).unwrap()
    }

    /// Runs `rounds` dispatches of one task each from two backlogged tenants, every task
    /// measured at 100 ms; the tasks each tenant got.
    fn share(p: &Policies, rounds: usize) -> (usize, usize) {
        let usage = Usage::default();
        let now = Instant::now();
        let (mut a, mut b) = (0, 0);
        for n in 0..rounds {
            let c = [Candidate { tenant: "tenant-a", items: 1 }, Candidate { tenant: "tenant-b", items: 1 }];
            let first = usage.order(&c, p, now)[0];
            let tenant = c[first].tenant;
            let weight = p.limits(tenant).weight();
            usage.sent(tenant, &n.to_string(), 1, weight, now);
            usage.ended(tenant, &n.to_string(), 1, Some(100), weight);
            if first == 0 {
                a += 1
            } else {
                b += 1
            }
        }
        (a, b)
    }

    #[test]
    fn backlogged_tenants_share_by_weight() {
        let (a, b) = share(&policies("[tenants.tenant-b]\nweight = 3\n"), 400);
        assert_eq!((a, b), (100, 300));
        let (a, b) = share(&Policies::default(), 400);
        assert_eq!((a, b), (200, 200));
    }

    #[test]
    fn measured_time_counts_not_task_numbers() {
        // Tenant a's tasks take 4x as long: with equal weights it gets a quarter of the tasks.
        let usage = Usage::default();
        let p = Policies::default();
        let now = Instant::now();
        let mut got = [0; 2];
        for n in 0..500 {
            let c = [Candidate { tenant: "tenant-a", items: 1 }, Candidate { tenant: "tenant-b", items: 1 }];
            let first = usage.order(&c, &p, now)[0];
            let ms = if first == 0 { 400 } else { 100 };
            usage.sent(c[first].tenant, &n.to_string(), 1, 1.0, now);
            usage.ended(c[first].tenant, &n.to_string(), 1, Some(ms), 1.0);
            got[first] += 1;
        }
        assert!((95..=105).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn a_returning_tenant_starts_level_and_an_idle_one_lends_its_share() {
        let usage = Usage::default();
        let p = Policies::default();
        let now = Instant::now();
        // a alone for 1,000 tasks: it gets them all.
        for n in 0..1000 {
            let c = [Candidate { tenant: "tenant-a", items: 1 }];
            assert_eq!(usage.order(&c, &p, now), vec![0]);
            usage.sent("tenant-a", &n.to_string(), 1, 1.0, now);
            usage.ended("tenant-a", &n.to_string(), 1, Some(100), 1.0);
        }
        // b arrives: it is not owed 1,000 tasks; they alternate.
        let c: Vec<Candidate> =
            (0..20).map(|i| Candidate { tenant: if i % 2 == 0 { "tenant-a" } else { "tenant-b" }, items: 1 }).collect();
        let order = usage.order(&c, &p, now);
        let first_ten: Vec<&str> = order[..10].iter().map(|&i| c[i].tenant).collect();
        let b_count = first_ten.iter().filter(|t| **t == "tenant-b").count();
        assert!((4..=6).contains(&b_count), "{first_ten:?}");
    }

    #[test]
    fn a_newcomer_the_splitter_counted_first_still_starts_level() {
        let usage = Usage::default();
        let p = policies("[tenants.tenant-b]\nweight = 3\n");
        let now = Instant::now();
        for n in 0..1000 {
            let c = [Candidate { tenant: "tenant-a", items: 1 }];
            usage.order(&c, &p, now);
            usage.sent("tenant-a", &n.to_string(), 1, 1.0, now);
            usage.ended("tenant-a", &n.to_string(), 1, Some(20), 1.0);
        }
        usage.published("tenant-b", 256);
        let mut got = [0; 2];
        for n in 0..400 {
            let c = [Candidate { tenant: "tenant-a", items: 1 }, Candidate { tenant: "tenant-b", items: 1 }];
            let first = usage.order(&c, &p, now)[0];
            let (tenant, weight) = if first == 0 { ("tenant-a", 1.0) } else { ("tenant-b", 3.0) };
            let id = format!("x{n}");
            usage.sent(tenant, &id, 1, weight, now);
            usage.ended(tenant, &id, 1, Some(20), weight);
            got[first] += 1;
        }
        assert!((90..=110).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn limits_hold_tasks_back() {
        let p = policies("[tenants.tenant-a]\nmax_running_tasks = 2\n[tenants.tenant-b]\nimages_per_hour = 10\n");
        let usage = Usage::default();
        let now = Instant::now();
        let c: Vec<Candidate> = (0..6).map(|_| Candidate { tenant: "tenant-a", items: 1 }).collect();
        assert_eq!(usage.order(&c, &p, now).len(), 2, "two may run");
        usage.sent("tenant-a", "t1", 1, 1.0, now);
        assert_eq!(usage.order(&c, &p, now).len(), 1);
        usage.ended("tenant-a", "t1", 1, None, 1.0);
        assert_eq!(usage.order(&c, &p, now).len(), 2);
        let c: Vec<Candidate> = (0..4).map(|_| Candidate { tenant: "tenant-b", items: 4 }).collect();
        assert_eq!(usage.order(&c, &p, now).len(), 2, "8 of 10 images this hour");
        usage.sent("tenant-b", "t2", 8, 1.0, now);
        assert!(usage.order(&c, &p, now).is_empty());
        assert_eq!(usage.order(&c, &p, now + HOUR).len(), 2, "the hour rolls on");
    }

    #[test]
    fn the_splitter_waits_for_the_dispatcher_to_take_a_window() {
        let usage = Usage::default();
        assert!(usage.may_publish("tenant-a", 4));
        usage.published("tenant-a", 4);
        assert!(!usage.may_publish("tenant-a", 4));
        assert!(usage.may_publish("tenant-b", 4), "another tenant is not held by it");
        usage.taken("tenant-a");
        assert!(usage.may_publish("tenant-a", 4));
    }
}
