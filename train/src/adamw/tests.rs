use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::*;

const WD: f64 = 0.1;

/// A least-squares problem with fixed data, no RNG: other tests share libtorch's generator.
fn problem() -> (Tensor, Tensor) {
    let x = Tensor::arange(64 * 4, (Kind::Float, Device::Cpu)).view([64, 4]).sin();
    let w_true = Tensor::from_slice(&[1.5f32, -2.0, 0.5, 3.0]).view([4, 1]);
    let y = x.matmul(&w_true) + 0.7 + (Tensor::arange(64, (Kind::Float, Device::Cpu)) * 0.37).cos().view([64, 1]) * 0.1;
    (x, y)
}

/// A fresh store with `w` and `b` at fixed starting values.
fn store() -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let _ = root.var_copy("w", &Tensor::from_slice(&[0.1f32, 0.2, -0.3, 0.05]).view([4, 1]));
    let _ = root.var_copy("b", &Tensor::from_slice(&[-0.2f32]));
    vs
}

fn loss(vs: &nn::VarStore, x: &Tensor, y: &Tensor) -> Tensor {
    let vars = vs.variables();
    (x.matmul(&vars["w"]) + &vars["b"] - y).square().mean(Kind::Float)
}

fn lr_at(step: usize) -> f64 {
    0.02 + 0.002 * step as f64
}

fn run_ours(vs: &nn::VarStore, opt: &mut AdamW, steps: std::ops::Range<usize>, wd: f64) {
    let (x, y) = problem();
    for i in steps {
        opt.zero_grad();
        loss(vs, &x, &y).backward();
        opt.step(lr_at(i), wd);
    }
}

fn max_diff(a: &nn::VarStore, b: &nn::VarStore) -> f64 {
    let (a, b) = (a.variables(), b.variables());
    ["w", "b"].iter().map(|k| (&a[*k] - &b[*k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

#[test]
fn follows_the_trajectory_of_libtorch_adamw() {
    let (x, y) = problem();
    let theirs = store();
    let config = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: WD, eps: 1e-8, amsgrad: false };
    let mut reference = config.build(&theirs, lr_at(0)).unwrap();
    let ours = store();
    let mut opt = AdamW::new(ours.trainable_variables());
    let start = loss(&ours, &x, &y).double_value(&[]);
    for i in 0..20 {
        reference.set_lr(lr_at(i));
        reference.zero_grad();
        loss(&theirs, &x, &y).backward();
        reference.step();
        run_ours(&ours, &mut opt, i..i + 1, WD);
        let diff = max_diff(&theirs, &ours);
        assert!(diff < 1e-5, "step {i}: parameters differ by {diff}");
    }
    assert_eq!(opt.steps(), 20);
    let end = loss(&ours, &x, &y).double_value(&[]);
    assert!(end < 0.7 * start, "the problem is being solved: {start} -> {end}");
    // The comparison is sharp enough to see the weight decay: without it the paths part.
    let undecayed = store();
    let mut opt = AdamW::new(undecayed.trainable_variables());
    run_ours(&undecayed, &mut opt, 0..20, 0.0);
    assert!(max_diff(&theirs, &undecayed) > 1e-4);
}

#[test]
fn a_resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let straight = store();
    let mut opt = AdamW::new(straight.trainable_variables());
    run_ours(&straight, &mut opt, 0..20, WD);

    let dir = tempfile::tempdir().unwrap();
    let (params, state) = (dir.path().join("params.safetensors"), dir.path().join("adamw.pt"));
    {
        let first = store();
        let mut opt = AdamW::new(first.trainable_variables());
        run_ours(&first, &mut opt, 0..10, WD);
        first.save(&params).unwrap();
        opt.save(&state).unwrap();
    }
    let mut resumed = store();
    resumed.load(&params).unwrap();
    let mut opt = AdamW::new(resumed.trainable_variables());
    opt.load(&state).unwrap();
    assert_eq!(opt.steps(), 10);
    run_ours(&resumed, &mut opt, 10..20, WD);
    assert_eq!(opt.steps(), 20);
    for name in ["w", "b"] {
        let (a, b) = (&straight.variables()[name], &resumed.variables()[name]);
        assert!(a.equal(b), "{name}: {a} vs {b}");
    }

    // Without the optimiser state (moments from zero, bias correction from step 1) the
    // parameters alone do not reproduce the run.
    let mut cold = store();
    cold.load(&params).unwrap();
    let mut opt = AdamW::new(cold.trainable_variables());
    run_ours(&cold, &mut opt, 10..20, WD);
    assert!(max_diff(&straight, &cold) > 1e-6);
}

#[test]
fn a_checkpoint_of_other_parameters_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("adamw.pt");
    let vs = store();
    let mut opt = AdamW::new(vs.trainable_variables());
    run_ours(&vs, &mut opt, 0..3, WD);
    opt.save(&state).unwrap();

    let other = nn::VarStore::new(Device::Cpu);
    let _ = other.root().zeros("w", &[5, 1]);
    let _ = other.root().zeros("b", &[1]);
    let mut wrong_shape = AdamW::new(other.trainable_variables());
    let e = wrong_shape.load(&state).unwrap_err();
    assert!(matches!(e, CheckpointError::Mismatch { .. }) && !e.is_retryable(), "{e}");
    assert_eq!(wrong_shape.steps(), 0);

    let fewer = nn::VarStore::new(Device::Cpu);
    let _ = fewer.root().zeros("w", &[4, 1]);
    let e = AdamW::new(fewer.trainable_variables()).load(&state).unwrap_err();
    assert!(matches!(e, CheckpointError::Mismatch { .. }), "{e}");

    let e = opt.load(dir.path().join("missing.pt")).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(opt.steps(), 3);
}

#[test]
fn zero_grad_clears_the_gradients() {
    let (x, y) = problem();
    let vs = store();
    let mut opt = AdamW::new(vs.trainable_variables());
    loss(&vs, &x, &y).backward();
    let grad_norm = |vs: &nn::VarStore| vs.variables()["w"].grad().abs().sum(Kind::Float).double_value(&[]);
    assert!(grad_norm(&vs) > 0.0);
    opt.zero_grad();
    assert_eq!(grad_norm(&vs), 0.0);
}
