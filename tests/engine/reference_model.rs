//! The reference matting model meets its quality target on held-out synthetic images:
//! IoU >= 0.95 (alpha > 0.5) and alpha MAE <= 0.03 over 200 images at their natural sizes.

use fleet_dev::reference::evaluate;
use fleet_dev::reference::train::{EVAL_LONG_SIDE, EVAL_SEED};
use fleet_engine::InferenceThread;
use fleet_protocol::DeviceSpec;
use fleet_tests_engine::reference_dir;

#[test]
fn reference_model_meets_the_quality_target_on_held_out_images() {
    let inference = InferenceThread::start(&reference_dir(), DeviceSpec::Cpu).unwrap();
    let report = evaluate(&inference, EVAL_SEED, 200, EVAL_LONG_SIDE).unwrap();
    eprintln!("held-out: {report:?}");
    assert_eq!(report.samples, 200);
    assert!(report.iou >= 0.95, "mean IoU {:.4} under 0.95", report.iou);
    assert!(report.mae <= 0.03, "mean alpha MAE {:.4} over 0.03", report.mae);
}

#[test]
fn manifest_declares_the_contract_and_the_measured_figures() {
    let dir = reference_dir();
    let manifest =
        fleet_protocol::ModelManifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.model_ref().to_string(), "matting-ref@1.0.0");
    let metrics = manifest.metrics.expect("the build records held-out metrics");
    assert_eq!(metrics.samples, 200);
    assert!(metrics.iou >= 0.95 && metrics.mae <= 0.03, "{metrics:?}");
    assert!(manifest.parameters > 10_000 && manifest.memory_per_image_mib > 0.0);
    assert!(manifest.training["train_seconds"].as_f64().is_some(), "training time is recorded");
}
