//! The learning rate of every step of a fine-tuning phase: a linear warm-up, then the
//! [`Schedule`] the job asked for. Each phase restarts the schedule, so phase 2 warms up
//! again from a small rate instead of jolting the model trained in phase 1.

use std::f64::consts::PI;

use fleet_protocol::fine_tune::{Hyper, Schedule};

/// Share of the peak rate the cosine schedule ends on, at the last step of a phase.
pub const COSINE_FLOOR: f64 = 0.05;
/// Share of the peak rate at the bottom of a cyclic schedule's triangle.
pub const CYCLIC_FLOOR: f64 = 0.1;

/// Learning rate of `step` (0-based) in a phase of `phase_steps` steps.
///
/// With `lr = h.lr`, `w = h.warmup_steps` and, after the warm-up, `s = step - w`:
///
/// - warm-up, `step < w`: `lr * (step + 1) / w`, so the last warm-up step reaches `lr`;
/// - constant ([`Schedule::Constant`]): `lr`;
/// - cosine ([`Schedule::Cosine`]): `lr * (0.05 + 0.95 * 0.5 * (1 + cos(pi * t)))` with
///   `t = s / max(1, phase_steps - 1 - w)`, clamped to `[0, 1]`: `lr` on the first step after
///   the warm-up, exactly `0.05 * lr` on the last step of the phase (and after it);
/// - cyclic ([`Schedule::Cyclic`]): with `c = max(2, h.cycle_steps)` and `p = (s mod c) / c`,
///   `lr * (0.1 + 0.9 * |1 - 2p|)`: a triangle that starts at the peak right after the
///   warm-up, falls linearly to `0.1 * lr` half a cycle later (exactly, when `c` is even),
///   climbs back and starts the next cycle at the peak again.
pub fn learning_rate(h: &Hyper, phase_steps: u32, step: u32) -> f64 {
    let lr = h.lr;
    let warmup = h.warmup_steps;
    if step < warmup {
        return lr * f64::from(step + 1) / f64::from(warmup);
    }
    let s = step - warmup;
    match h.schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => {
            // Steps after the warm-up up to the last one; at least 1 so a phase that is all
            // warm-up (or one step long) does not divide by zero.
            let span = phase_steps.saturating_sub(1).saturating_sub(warmup).max(1);
            let t = (f64::from(s) / f64::from(span)).min(1.0);
            lr * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + (PI * t).cos()))
        }
        Schedule::Cyclic => {
            let cycle = h.cycle_steps.max(2);
            let p = f64::from(s % cycle) / f64::from(cycle);
            lr * (CYCLIC_FLOOR + (1.0 - CYCLIC_FLOOR) * (1.0 - 2.0 * p).abs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper(schedule: Schedule) -> Hyper {
        Hyper { lr: 1e-3, warmup_steps: 10, schedule, cycle_steps: 20, ..Hyper::default() }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15
    }

    #[test]
    fn warm_up_climbs_linearly_to_the_peak_whatever_the_schedule() {
        for schedule in [Schedule::Constant, Schedule::Cosine, Schedule::Cyclic] {
            let h = hyper(schedule);
            assert!(close(learning_rate(&h, 100, 0), 1e-4), "{schedule:?}");
            assert!(close(learning_rate(&h, 100, 4), 5e-4), "{schedule:?}");
            assert!(close(learning_rate(&h, 100, 9), 1e-3), "{schedule:?}");
            // The first step after the warm-up is at the peak too.
            assert!(close(learning_rate(&h, 100, 10), 1e-3), "{schedule:?}");
        }
    }

    #[test]
    fn constant_stays_at_the_peak() {
        let h = hyper(Schedule::Constant);
        assert_eq!(learning_rate(&h, 100, 50), 1e-3);
        assert_eq!(learning_rate(&h, 100, 99), 1e-3);
    }

    #[test]
    fn cosine_ends_the_phase_at_five_percent_of_the_peak() {
        let h = hyper(Schedule::Cosine);
        // 100 steps, 10 of warm-up: t runs over 89 steps, from step 10 to step 99.
        assert!(close(learning_rate(&h, 100, 99), 5e-5));
        // Half-way through the decay, 0.05 + 0.95 * 0.5 = 0.525 of the peak: in a phase of
        // 91 steps the decay spans 80 steps, so step 50 is t = 0.5.
        assert!(close(learning_rate(&h, 91, 50), 0.525e-3));
        let expected = 1e-3 * (0.05 + 0.95 * 0.5 * (1.0 + (PI * 30.0 / 89.0).cos()));
        assert!(close(learning_rate(&h, 100, 40), expected));
        // Monotone decreasing after the warm-up, and never below the floor past the end.
        let rates: Vec<f64> = (10..100).map(|s| learning_rate(&h, 100, s)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]));
        assert!(close(learning_rate(&h, 100, 150), 5e-5));
    }

    #[test]
    fn cosine_with_a_phase_that_is_all_warm_up_does_not_divide_by_zero() {
        let h = Hyper { warmup_steps: 5, ..hyper(Schedule::Cosine) };
        assert!(close(learning_rate(&h, 5, 4), 1e-3));
        assert!(learning_rate(&h, 5, 5).is_finite());
        let one = Hyper { warmup_steps: 0, ..hyper(Schedule::Cosine) };
        assert!(close(learning_rate(&one, 1, 0), 1e-3));
    }

    #[test]
    fn cyclic_is_a_triangle_from_the_peak_down_to_ten_percent_and_back() {
        let h = hyper(Schedule::Cyclic);
        // Cycle of 20 steps starting at step 10 (right after the warm-up).
        assert!(close(learning_rate(&h, 200, 10), 1e-3));
        assert!(close(learning_rate(&h, 200, 15), 1e-3 * (0.1 + 0.9 * 0.5)));
        assert!(close(learning_rate(&h, 200, 20), 1e-4));
        assert!(close(learning_rate(&h, 200, 25), 1e-3 * (0.1 + 0.9 * 0.5)));
        assert!(close(learning_rate(&h, 200, 29), 1e-3 * (0.1 + 0.9 * 0.9)));
        // One full period later the rate repeats exactly.
        for s in 10..30 {
            assert_eq!(learning_rate(&h, 200, s), learning_rate(&h, 200, s + 20), "step {s}");
        }
        let all: Vec<f64> = (10..200).map(|s| learning_rate(&h, 200, s)).collect();
        assert!(all.iter().all(|&r| (1e-4 - 1e-18..=1e-3 + 1e-18).contains(&r)));
    }

    #[test]
    fn no_warm_up_starts_at_the_peak() {
        let h = Hyper { warmup_steps: 0, ..hyper(Schedule::Cosine) };
        assert!(close(learning_rate(&h, 50, 0), 1e-3));
        assert!(close(learning_rate(&h, 50, 49), 5e-5));
    }
}
