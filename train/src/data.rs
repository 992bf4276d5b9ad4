//! The data order of a fine-tune: a seeded validation split, and batches that are a function
//! of the seed and the step alone, so a resumed run sees exactly the batches it would have.

use fleet_protocol::fine_tune::Hyper;

/// The seeded validation and training split of `n` samples (indices).
pub fn split(n: usize, h: &Hyper) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, h.seed);
    let n_val = ((n as f64 * h.validation_fraction).ceil() as usize).clamp(1, n - 1);
    let (val_idx, train_idx) = order.split_at(n_val);
    (val_idx.to_vec(), train_idx.to_vec())
}

/// Deterministic shuffle (Fisher-Yates with a splitmix sequence).
pub fn shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..items.len()).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether step `step` flips its batch horizontally (an augmentation that never changes
/// which pixels are the object).
pub fn flip(seed: u64, step: u32) -> bool {
    let mut state = seed ^ (u64::from(step) << 1) ^ 0x5851_f42d_4c95_7f2d;
    splitmix(&mut state) & 1 == 1
}

/// The batch of step `step`: one bucket (chosen in proportion to its samples), then
/// `size` samples of it; a function of the seed and the step alone, so a resumed run sees
/// exactly the batches the interrupted one would have.
pub fn pick_batch<T>(prepared: &[(usize, T)], set: &[usize], size: usize, seed: u64, step: u32) -> Vec<usize> {
    let mut state = seed ^ (u64::from(step).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let anchor = set[(splitmix(&mut state) % set.len() as u64) as usize];
    let bucket = prepared[anchor].0;
    let same: Vec<usize> = set.iter().copied().filter(|&k| prepared[k].0 == bucket).collect();
    (0..size).map(|_| same[(splitmix(&mut state) % same.len() as u64) as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_order_is_a_function_of_seed_and_step() {
        // Ten samples in two buckets; the batch picker sees only the bucket of each.
        let prepared: Vec<(usize, usize)> = (0..10).map(|i| (i % 2, i)).collect();
        let set: Vec<usize> = (0..10).collect();
        let a: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 7, s)).collect();
        let b: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 7, s)).collect();
        assert_eq!(a, b, "a resumed run sees the same batches");
        for batch in &a {
            let bucket = prepared[batch[0]].0;
            assert!(batch.iter().all(|&k| prepared[k].0 == bucket), "one bucket per batch: {batch:?}");
        }
        let other: Vec<Vec<usize>> = (0..20).map(|s| pick_batch(&prepared, &set, 4, 8, s)).collect();
        assert_ne!(a, other, "another seed, other batches");
        let mut order: Vec<usize> = (0..50).collect();
        shuffle(&mut order, 3);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(order, (0..50).collect::<Vec<_>>());
    }
}
