//! Background generators: the reference generator on its own (prompt conditioning judged by
//! the backdrop classifier, seeds), a latent generator through its VAE (a customer-style
//! export from Python), a generate job through the fleet (the product's pixels kept bit for
//! bit, several results with their embeddings) and a generator fine-tune that survives
//! kill -9. The reference generator is built by `./fleet test` before the tests run.

use std::time::{Duration, Instant};

use fleet_client::Submitted;
use fleet_dev::generate::classifier::BackdropClassifier;
use fleet_dev::generate::evaluate::matte;
use fleet_dev::reference::generator as refgen;
use fleet_engine::diffusion::SamplerKind;
use fleet_engine::generate::{GenerateOptions, Generator};
use fleet_engine::model::LoadedModel;
use fleet_protocol::keys::{output_keys, task_manifest_key, variant_keys, TenantId};
use fleet_protocol::state::JobState;
use fleet_store::ObjectStore;
use fleet_synth::backdrop::{prompt, render_scene, Backdrop};
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::{models_root, python, reference_dir, unique};
use image::RgbImage;
use serde_json::json;
use tch::Device;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TENANT: &str = "tenant-a";

fn reference_generator() -> Generator {
    let dir = refgen::dir_of(&models_root(), refgen::NAME);
    assert!(dir.join("manifest.json").exists(), "no reference generator at {}: run `./fleet model`", dir.display());
    Generator::load(&dir, Device::Cpu).expect("the reference generator loads")
}

fn options(prompt: &str, seed: u64, results: u32) -> GenerateOptions {
    GenerateOptions {
        prompt: Some(prompt.into()),
        negative_prompt: None,
        reference: None,
        seed,
        steps: 20,
        guidance: 5.0,
        results,
        sampler: SamplerKind::Euler,
        dilate_pct: 2.0,
    }
}

#[test]
fn the_reference_generator_draws_the_backdrop_its_prompt_asks_for() {
    let generator = reference_generator();
    let matting = LoadedModel::load(&reference_dir(), Device::Cpu).unwrap();
    let classifier = BackdropClassifier::standard();
    let (mut right, mut total) = (0, 0);
    let mut confusion = vec![vec![0usize; 6]; 6];
    for (k, asked) in Backdrop::ALL.iter().enumerate() {
        for i in 0..12u64 {
            // A photo on another backdrop: the generator must replace it, not copy it.
            let own = Backdrop::ALL[(k + 1 + i as usize % 5) % 6];
            let scene = render_scene(own, 56, 56, 70_000 + i * 31 + k as u64, 80_000 + i);
            let alpha = matte(&matting, &scene.image).unwrap();
            let out = generator.backgrounds(&scene.image, &alpha, &options(&prompt(*asked, i), i, 1)).unwrap();
            let seen = classifier.classify(&out)[0];
            confusion[k][seen.index()] += 1;
            right += usize::from(seen == *asked);
            total += 1;
        }
    }
    let accuracy = right as f64 / total as f64;
    eprintln!("backdrop asked for recognised in {accuracy:.2} of results; confusion (asked x seen): {confusion:?}");
    // Chance is 1 in 6 (8 of 48); 16 of 48 is three standard deviations above it.
    assert!(
        accuracy >= 1.0 / 3.0,
        "prompts told apart in {accuracy:.2} of results; confusion (asked x seen): {confusion:?}"
    );
}

#[test]
fn a_seed_fixes_each_result_and_results_differ_from_each_other() {
    let generator = reference_generator();
    let scene = render_scene(Backdrop::Wood, 64, 48, 5, 5);
    let matting = LoadedModel::load(&reference_dir(), Device::Cpu).unwrap();
    let alpha = matte(&matting, &scene.image).unwrap();
    let opts = options("marble", 40, 3);
    let a = generator.backgrounds(&scene.image, &alpha, &opts).unwrap();
    let b = generator.backgrounds(&scene.image, &alpha, &opts).unwrap();
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|img| img.dimensions() == (64, 48)), "backgrounds at the photo's size");
    assert_eq!(a, b, "the same seed gives the same results");
    assert_ne!(a[0], a[1], "each result has its own seed");
    // Result k is the result of seed + k, whatever else shares its batch (up to the last
    // bit of float arithmetic, which batch size may change).
    let alone = generator.backgrounds(&scene.image, &alpha, &GenerateOptions { seed: 41, results: 1, ..opts }).unwrap();
    let max_diff = a[1].as_raw().iter().zip(alone[0].as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(max_diff <= 3, "result 1 of seed 40 is seed 41's result: max difference {max_diff}");
}

/// A latent generator as a customer would export one: a VAE (here an exact 2x pixel
/// unshuffle), a small denoiser over its latents, the reference generator's prompt encoder
/// and tokenizer.
const LATENT_EXPORT: &str = r#"
import sys, shutil, torch, torch.nn as nn, torch.nn.functional as F
out, ref = sys.argv[1], sys.argv[2]
class Enc(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2)
class Dec(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 2)
class Den(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(12 + 12 + 1, 16, 3, padding=1)
        self.cond = nn.Linear(32, 16)
        self.out = nn.Conv2d(16, 12, 3, padding=1)
    def forward(self, x, t, masked, mask, cond):
        h = torch.relu(self.inp(torch.cat([x, masked, mask], 1)) + self.cond(cond)[:, :, None, None])
        return self.out(h)
torch.manual_seed(0)
for name, m in [("vae_encoder.pt", Enc()), ("vae_decoder.pt", Dec()), ("denoiser.pt", Den())]:
    torch.jit.script(m).save(f"{out}/{name}")
for f in ["text_encoder.pt", "tokenizer.json"]:
    shutil.copy(f"{ref}/{f}", f"{out}/{f}")
"#;

#[test]
fn a_latent_generator_samples_through_its_vae_at_the_photo_s_size() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("export.py");
    std::fs::write(&script, LATENT_EXPORT).unwrap();
    let reference = refgen::dir_of(&models_root(), refgen::NAME);
    let status = std::process::Command::new(python()).arg(&script).arg(dir.path()).arg(&reference).status().unwrap();
    assert!(status.success());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("manifest.json")).unwrap()).unwrap();
    manifest["name"] = json!("latent-test");
    manifest["generator"]["space"] = json!({"kind": "latent", "encoder": "vae_encoder.pt", "decoder": "vae_decoder.pt", "channels": 12, "downsample": 2});
    manifest["generator"]["clip_sample"] = serde_json::Value::Null;
    manifest["generator"]["pixel_budget"] = json!(4096);
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let generator = Generator::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(generator.channels(), 12);
    let (w, h) = generator.sample_size(120, 90);
    assert!(w % 8 == 0 && h % 8 == 0, "sides are multiples of the denoiser's 4 times the VAE's 2: {w}x{h}");
    let scene = render_scene(Backdrop::Shelf, 120, 90, 3, 3);
    let out = generator.backgrounds(&scene.image, &scene.alpha, &options("shelf", 9, 2)).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|img| img.dimensions() == (120, 90)));
    assert_ne!(out[0], out[1]);
    // The manifest must name its VAE: without it the same files are refused.
    manifest["generator"]["space"] = json!({"kind": "latent", "encoder": "missing.pt", "decoder": "vae_decoder.pt", "channels": 12, "downsample": 2});
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = Generator::load(dir.path(), Device::Cpu).err().expect("a missing VAE file is refused");
    assert!(err.to_string().contains("missing.pt"), "{err}");
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generate_job_keeps_every_product_pixel_and_writes_each_result_with_its_embedding() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let client = client(TENANT).await;
    let prefix = format!("{TENANT}/{}/", unique("gen-in"));
    let mut keys = Vec::new();
    let mut inputs = Vec::new();
    for (i, (w, h)) in [(160u32, 120u32), (96, 144)].into_iter().enumerate() {
        let scene = render_scene(Backdrop::ALL[i], w, h, 600 + i as u64, 700 + i as u64);
        let key = format!("{prefix}{i}.png");
        client.s3.put(&key, png(&scene.image), "image/png").await.unwrap();
        keys.push(key);
        inputs.push(scene.image);
    }
    let id = unique("gen-job");
    let shadow = json!({"kind": "contact", "opacity": 0.6});
    let body = serde_json::to_vec(&json!({"id": id, "priority": "interactive", "kind": "background_replace",
        "spec": {"input": {"keys": keys}, "model": "matting-ref@1.0.0", "output": {"format": "png"}, "shadow": shadow,
                 "background": {"mode": "generate", "model": "bg-gen-ref@1.0.0", "prompt": "white marble surface",
                                "negative_prompt": "wood", "seed": 7, "results": 2, "sampling": "fast"}}}))
    .unwrap();
    assert_eq!(client.submit(&id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&id, Duration::from_secs(180), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log("w1"));
    let tenant = TenantId::new(TENANT).unwrap();
    for (key, input) in keys.iter().zip(&inputs) {
        let (first, matte_key, embedding_key) = output_keys(&tenant, &id, key, "png");
        let (second, second_embedding) = variant_keys(&tenant, &id, key, "png", 1);
        let get = |k: String| {
            let s3 = &client.s3;
            async move { s3.get(&k).await.unwrap_or_else(|e| panic!("{k}: {e}")) }
        };
        let matte = image::load_from_memory(&get(matte_key).await).unwrap().to_luma8();
        let results = [get(first).await, get(second).await].map(|b| image::load_from_memory(&b).unwrap().to_rgb8());
        for out in &results {
            assert_eq!(out.dimensions(), input.dimensions(), "results have the input's size");
            let product = matte.pixels().filter(|a| a.0[0] >= 240).count();
            assert!(product > 200, "the matte finds the product ({product} pixels)");
            for ((a, x), y) in matte.pixels().zip(input.pixels()).zip(out.pixels()) {
                if a.0[0] >= 240 {
                    assert_eq!(x, y, "a product pixel changed");
                }
            }
        }
        assert_ne!(results[0], results[1], "two seeds, two backgrounds");
        for k in [embedding_key, second_embedding] {
            let npy = get(k.clone()).await;
            assert!(npy.starts_with(b"\x93NUMPY") && npy.len() > 128, "{k} is an embedding");
        }
    }
    let task: serde_json::Value =
        serde_json::from_slice(&client.s3.get(&task_manifest_key(&tenant, &id, 0)).await.unwrap()).unwrap();
    let item = &task["items"][0];
    assert_eq!(item["generated"]["seeds"], json!([7, 8]), "{item}");
    assert_eq!(item["generated"]["sampler"], json!("ddim"));
    assert_eq!(item["variants"][0]["seed"], json!(8));
    assert!(item["timings_ms"]["generate_ms"].as_f64().unwrap() > 0.0);

    // A generator named where a matting model belongs, and the reverse, are refused up front.
    let wrong = unique("gen-wrong");
    let body = serde_json::to_vec(&json!({"id": wrong, "priority": "interactive", "kind": "background_replace",
        "spec": {"input": {"keys": [keys[0]]}, "model": "matting-ref@1.0.0", "output": {"format": "png"},
                 "background": {"mode": "generate", "model": "matting-ref@1.0.0", "prompt": "wood"}}}))
    .unwrap();
    match client.submit(&wrong, &body, Duration::from_secs(60)).await.unwrap() {
        Submitted::Rejected(r) => assert!(r.reason.contains("not a background generator"), "{r:?}"),
        other => panic!("{other:?}"),
    }
}

/// Seeds `count` product photos on synthetic backdrops with prompts; the data set's key.
async fn seed_generator_data(client: &fleet_client::Client, count: usize) -> String {
    let prefix = format!("{TENANT}/{}/", unique("gen-data"));
    let mut lines = String::new();
    for i in 0..count {
        let kind = Backdrop::ALL[i % 6];
        let scene = render_scene(kind, 56, 48, 300 + i as u64, 400 + i as u64);
        let key = format!("{prefix}{i:03}.png");
        client.s3.put(&key, png(&scene.image), "image/png").await.unwrap();
        let line = json!({"image": key, "prompt": scene.prompt, "contributor": format!("c-{}", i % 4), "licence": "cc-by-4.0"});
        lines.push_str(&format!("{line}\n"));
    }
    let key = format!("{prefix}dataset.jsonl");
    client.s3.put(&key, lines.into_bytes(), "application/x-ndjson").await.unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_generator_fine_tune_resumes_from_its_checkpoint_and_its_model_generates() {
    let _turn = SERIAL.lock().await;
    let mut fleet = Fleet::default();
    let (w1, w2) = (unique("gft-a"), unique("gft-b"));
    fleet.scheduler("scheduler").worker(&w1, 1);
    let client = client(TENANT).await;
    let data = seed_generator_data(&client, 24).await;
    let id = unique("gen-ft");
    let output = unique("my-backdrops");
    let total = 60;
    let body = serde_json::to_vec(&json!({"id": id, "priority": "batch", "kind": "fine_tune",
        "spec": {"base_model": "bg-gen-ref@1.0.0", "data": data, "target": "background_generator",
                 "generator": {"mask_model": "matting-ref@1.0.0"},
                 "output": {"name": output, "version": "1"},
                 "hyper": {"steps_phase1": 40, "steps_phase2": 20, "batch_size": 4, "lr": 0.0005, "warmup_steps": 5,
                           "pixel_budget": 1024, "checkpoint_every": 10, "seed": 3, "quality_threshold": 0.5}}}))
    .unwrap();
    let mut events = client.subscribe(id.as_str()).await.unwrap();
    assert_eq!(client.submit(&id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    // Kill the worker once a checkpoint exists and training went past it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut all = Vec::new();
    loop {
        let e = events.next_before(deadline).await.unwrap().expect("progress before the deadline");
        let step = e.training.as_ref().map(|t| t.step).unwrap_or(0);
        all.push(e);
        if step >= 13 {
            break;
        }
    }
    fleet.kill9(&w1);
    fleet.worker(&w2, 1);
    let deadline = Instant::now() + Duration::from_secs(900);
    while let Ok(Some(e)) = events.next_before(deadline).await {
        let done = matches!(e.kind.as_str(), "succeeded" | "succeeded_with_item_errors" | "failed" | "cancelled");
        all.push(e);
        if done {
            break;
        }
    }
    let view = client.job(&id).await.unwrap().unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log(&w2));
    let resumed: Vec<u32> = all.iter().filter_map(|e| e.training.as_ref()?.resumed_from).collect();
    assert!(
        !resumed.is_empty() && resumed[0] >= 10 && resumed[0].is_multiple_of(10),
        "resumed from a checkpoint: {resumed:?}"
    );
    let mut steps = std::collections::BTreeSet::new();
    for e in &all {
        steps.extend(e.training.iter().flat_map(|t| t.steps.iter().map(|s| s.step)));
    }
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), (0..total).collect::<Vec<_>>(), "every step once, no more");
    assert!(fleet.log(&w2).contains("resuming the generator fine-tune"), "{}", fleet.log(&w2));
    let report: serde_json::Value =
        serde_json::from_slice(&client.s3.get(&format!("{TENANT}/results/{id}/fine-tune.json")).await.unwrap())
            .unwrap();
    assert_eq!(report["steps"], json!(total));
    assert_eq!(report["target"], json!("background_generator"));
    assert!(report["phases"][1]["validation"]["background_mse"].as_f64().is_some(), "{report}");
    let embeddings = client.s3.get(&format!("{TENANT}/models/{output}/1/training-embeddings.jsonl")).await.unwrap();
    let first: serde_json::Value = serde_json::from_slice(embeddings.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(first["prompt"].is_string() && first["contributor"].is_string() && first["embedding"].is_array());
    // The new generator's training set is bg-gen-ref's (inherited: both embed with matting-ref)
    // plus its own samples.
    let set = &report["training_set"];
    let inherited = set["inherited"]["samples"].as_u64().unwrap_or(0);
    assert!(inherited > 0, "{set}");
    assert_eq!(set["samples"].as_u64(), Some(inherited + set["own"].as_u64().unwrap()), "{set}");
    assert_eq!(set["lineage"], json!(["bg-gen-ref@1.0.0", format!("{output}@1")]), "{set}");

    // The tenant's new generator serves a generate job.
    let use_id = unique("gen-use");
    let key = format!("{TENANT}/{}/photo.png", unique("gen-use-in"));
    client.s3.put(&key, png(&render_scene(Backdrop::Concrete, 64, 64, 1, 1).image), "image/png").await.unwrap();
    let body = serde_json::to_vec(&json!({"id": use_id, "priority": "interactive", "kind": "background_replace",
        "spec": {"input": {"keys": [key]}, "model": "matting-ref@1.0.0", "output": {"format": "jpeg"},
                 "background": {"mode": "generate", "model": format!("{output}@1"), "prompt": "fabric", "steps": 4}}}))
    .unwrap();
    assert_eq!(client.submit(&use_id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&use_id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log(&w2));
}
