use fleet_common::DeviceSpec;
use fleet_worker::engine::{preprocess::normalize_into, InferenceThread};
use std::collections::BTreeMap;
fn main() {
    let dir = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gpu-fleet/models/matting-ref/1.0.0");
    let inf = InferenceThread::start(&dir, DeviceSpec::Cpu).unwrap();
    let spec = inf.manifest().input.clone();
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut all = vec![];
    for i in 0..200u64 {
        let s = fleet_synth::render_sample(0xE7A1, i, 320, 1600);
        let mut buf = vec![0f32; 3 * 128 * 128];
        normalize_into(&s.image, &spec, &mut buf);
        let out = inf.infer(buf, 1).unwrap().output;
        let small = image::GrayImage::from_raw(128, 128, out.alphas[0].clone()).unwrap();
        let pred = fleet_imaging::resize::resize_gray(&small, s.alpha.width(), s.alpha.height());
        let (iou, _) = fleet_worker::reference::score(&pred, &s.alpha);
        let d = fleet_synth::Scene::generate(0xE7A1, i).describe();
        by.entry(s.object.clone()).or_default().push(iou);
        if d.contains("glass") { by.entry("glass".into()).or_default().push(iou); }
        if d.contains("low contrast") { by.entry("lowc".into()).or_default().push(iou); }
        if d.contains("white") { by.entry("white".into()).or_default().push(iou); }
        all.push((iou, d));
    }
    for (k, v) in &by { println!("{k}: n={} mean={:.3} min={:.3}", v.len(), v.iter().sum::<f64>() / v.len() as f64, v.iter().cloned().fold(1.0, f64::min)); }
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    for a in &all[..10] { println!("{:.3} {}", a.0, a.1); }
}
