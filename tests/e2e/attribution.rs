//! Attribution and provenance through the whole fleet: a generator fine-tuned on licensed
//! photos (a licence the tenant may not use refused) registers its training set; a generate
//! job's outputs are traced to its contributors, recorded in the royalty ledger once even
//! though the worker dies after the ledger write and the task is redone, and carry signed
//! content credentials; after a contributor revokes their licence, the same outputs credit
//! the others only.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_attribution::{Ledger, Period};
use fleet_client::{Client, Submitted};
use fleet_protocol::attribution::{AttributionRecord, AttributionStatus};
use fleet_protocol::keys::{attribution_key, output_keys, task_manifest_key, variant_keys, TenantId};
use fleet_protocol::state::JobState;
use fleet_store::ObjectStore;
use fleet_synth::backdrop::{render_scene, Backdrop};
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::unique;
use serde_json::json;

const TENANT: &str = "tenant-a";

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: the test command exports it"))
}

/// Seeds 24 photos by four contributors under an allowed licence and two under one the
/// tenant may not train on; the data set's key.
async fn seed_data(client: &Client, contributors: &[String]) -> String {
    let prefix = format!("{TENANT}/{}/", unique("attr-data"));
    let mut lines = String::new();
    for i in 0..26 {
        let scene = render_scene(Backdrop::ALL[i % 6], 56, 48, 900 + i as u64, 950 + i as u64);
        let key = format!("{prefix}{i:03}.png");
        client.s3.put(&key, png(&scene.image), "image/png").await.unwrap();
        let licence = if i < 24 { "CC-BY-4.0" } else { "cc-by-nc-4.0" };
        let line =
            json!({"image": key, "prompt": scene.prompt, "contributor": contributors[i % 4], "licence": licence});
        lines.push_str(&format!("{line}\n"));
    }
    let key = format!("{prefix}dataset.jsonl");
    client.s3.put(&key, lines.into_bytes(), "application/x-ndjson").await.unwrap();
    key
}

async fn generate(client: &Client, id: &str, keys: &[String], generator: &str) {
    let body = serde_json::to_vec(&json!({"id": id, "priority": "batch", "kind": "background_replace",
        "spec": {"input": {"keys": keys}, "model": "matting-ref@1.0.0", "output": {"format": "png"},
                 "background": {"mode": "generate", "model": generator, "prompt": "white marble surface",
                                "seed": 5, "results": 2, "sampling": "fast", "steps": 4}}}))
    .unwrap();
    assert_eq!(client.submit(id, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
}

/// The attribution records of a job's outputs, by output key.
async fn records(client: &Client, job: &str, keys: &[String]) -> BTreeMap<String, AttributionRecord> {
    let tenant = TenantId::new(TENANT).unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let (first, _, _) = output_keys(&tenant, job, key, "png");
        let (second, _) = variant_keys(&tenant, job, key, "png", 1);
        for (k, output) in [first, second].into_iter().enumerate() {
            let bytes = client.s3.get(&attribution_key(&tenant, job, key, k)).await.unwrap();
            let record: AttributionRecord = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(record.output, output);
            out.insert(output, record);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_outputs_are_traced_to_contributors_recorded_once_signed_and_revocations_redistribute() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, "[tenants.tenant-a]\nallowed_licences = [\"cc-by-4.0\", \"cc0-1.0\"]\n").unwrap();
    let mut fleet = Fleet::default();
    let trainer = unique("attr-train");
    fleet.scheduler_with("scheduler", &[("FLEET_TENANTS_FILE", tenants.to_str().unwrap())]).worker(&trainer, 1);
    let client = client(TENANT).await;
    let contributors: Vec<String> = (0..4).map(|i| unique(&format!("contributor{i}"))).collect();
    let data = seed_data(&client, &contributors).await;

    // A generator fine-tune: the two samples under a licence the tenant may not use are refused.
    let (ft, output) = (unique("attr-ft"), unique("attr-gen"));
    let body = serde_json::to_vec(&json!({"id": ft, "priority": "batch", "kind": "fine_tune",
        "spec": {"base_model": "bg-gen-base@1.0.0", "data": data, "target": "background_generator",
                 "generator": {"mask_model": "matting-ref@1.0.0"},
                 "output": {"name": output, "version": "1"},
                 "hyper": {"steps_phase1": 12, "steps_phase2": 4, "batch_size": 4, "lr": 0.0005, "warmup_steps": 2,
                           "pixel_budget": 1024, "checkpoint_every": 50, "seed": 3, "quality_threshold": 0.5}}}))
    .unwrap();
    assert_eq!(client.submit(&ft, &body, Duration::from_secs(60)).await.unwrap(), Submitted::Accepted);
    let view = client.wait(&ft, Duration::from_secs(600), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log(&trainer));
    let report: serde_json::Value =
        serde_json::from_slice(&client.s3.get(&format!("{TENANT}/results/{ft}/fine-tune.json")).await.unwrap())
            .unwrap();
    let refused: Vec<(u64, &str)> = report["data"]["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(refused, [(25, "licence_not_allowed"), (26, "licence_not_allowed")], "{report}");
    let set = &report["training_set"];
    let trained = set["own"].as_u64().unwrap();
    assert!(trained > 0 && trained <= 24, "{set}");
    assert_eq!(set["samples"].as_u64(), Some(trained), "bg-gen-base has no training set to inherit: {set}");
    assert_eq!(set["embedding_model"], json!("matting-ref@1.0.0"));
    assert!(fleet.terminate(&trainer, Duration::from_secs(60)));

    // A generate job on a worker that dies right after its ledger write: the task is redone.
    let prefix = format!("{TENANT}/{}/", unique("attr-in"));
    let mut keys = Vec::new();
    for (i, backdrop) in [Backdrop::Wood, Backdrop::Fabric].into_iter().enumerate() {
        let key = format!("{prefix}{i}.png");
        client.s3.put(&key, png(&render_scene(backdrop, 64, 64, 40 + i as u64, 41).image), "image/png").await.unwrap();
        keys.push(key);
    }
    let generator = format!("{output}@1");
    let (faulty, redo) = (unique("attr-faulty"), unique("attr-redo"));
    fleet.worker_with(&faulty, 1, &[], &[("FLEET_FAULT_EXIT_AFTER_LEDGER", "1")]);
    let job = unique("attr-job");
    generate(&client, &job, &keys, &generator).await;
    let ledger = Ledger::connect(&env("FLEET_API_LEDGER_URL")).await.unwrap();
    let only_job = Period { job: Some(job.clone()), ..Default::default() };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while ledger.report(&only_job).await.unwrap().outputs == 0 {
        assert!(std::time::Instant::now() < deadline, "no ledger rows:\n{}", fleet.log(&faulty));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = ledger.report(&only_job).await.unwrap();
    let outputs: Vec<String> = records(&client, &job, &keys).await.into_keys().collect();
    let mut first_shares = BTreeMap::new();
    for o in &outputs {
        first_shares.insert(o.clone(), ledger.shares_of(o).await.unwrap());
    }
    fleet.worker(&redo, 1);
    let view = client.wait(&job, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log(&redo));
    assert!(fleet.log(&faulty).contains("FLEET_FAULT_EXIT_AFTER_LEDGER"), "{}", fleet.log(&faulty));
    let tenant = TenantId::new(TENANT).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&client.s3.get(&task_manifest_key(&tenant, &job, 0)).await.unwrap()).unwrap();
    assert_eq!(manifest["worker"], json!(redo), "the task was redone by the second worker");
    assert!(manifest["attempt"].as_u64().unwrap() >= 2, "{manifest}");

    // The ledger is as the first attempt left it: four outputs, the same shares.
    let after = ledger.report(&only_job).await.unwrap();
    assert_eq!(after, before, "a redone task leaves the ledger unchanged");
    assert_eq!(after.outputs, 4, "2 inputs x 2 results, once each");
    for o in &outputs {
        assert_eq!(ledger.shares_of(o).await.unwrap(), first_shares[o], "{o}");
    }

    // Records beside the outputs agree with the ledger, and the contributor report sums them.
    let recs = records(&client, &job, &keys).await;
    let mut summed: BTreeMap<String, f64> = BTreeMap::new();
    let mut credited = 0;
    for (o, r) in &recs {
        assert!(r.revocations_checked && r.training_samples == trained, "{r:?}");
        assert!(!r.neighbours.is_empty() && r.neighbours.len() <= 8);
        assert!(r.neighbours.windows(2).all(|w| w[0].similarity >= w[1].similarity), "most similar first");
        assert!(r
            .neighbours
            .iter()
            .all(|n| contributors.contains(&n.sample.contributor) && n.sample.model == generator));
        let ledger_shares = ledger.shares_of(o).await.unwrap();
        assert_eq!(ledger_shares.len(), r.shares.len(), "{o}");
        if r.status == AttributionStatus::Attributed {
            credited += 1;
            let total: f64 = r.shares.iter().map(|s| s.share).sum();
            assert!((total - 1.0).abs() < 1e-9, "{o}: shares sum to {total}");
        }
        for s in &r.shares {
            *summed.entry(s.contributor.clone()).or_default() += s.share;
        }
    }
    assert!(credited > 0, "at least one output is attributed: {recs:?}");
    assert_eq!(after.credited_outputs, credited);
    for line in &after.contributors {
        assert!((line.share - summed[&line.contributor]).abs() < 1e-9, "{line:?} vs {summed:?}");
    }
    // The tenant reads the same report through the API; another tenant sees none of it.
    let api = fleet.api("api", &[]);
    let tenant_a = fleet_client::api::ApiTenant::new(&api, &Fleet::token(Some(TENANT), "attr")).unwrap();
    let view = tenant_a.royalties(Some(&job)).await.unwrap();
    assert_eq!((view["outputs"].as_i64(), view["credited_outputs"].as_i64()), (Some(4), Some(credited)), "{view}");
    for line in view["contributors"].as_array().unwrap() {
        let share = line["share"].as_f64().unwrap();
        assert!((share - summed[line["contributor"].as_str().unwrap()]).abs() < 1e-9, "{line}");
    }
    let tenant_b = fleet_client::api::ApiTenant::new(&api, &Fleet::token(Some("tenant-b"), "attr-b")).unwrap();
    assert_eq!(tenant_b.royalties(Some(&job)).await.unwrap()["outputs"], json!(0));

    let items = manifest["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["attribution"]["key"].is_string() && i["content_credentials"] == json!(true)));

    // Each result carries signed content credentials naming the generator, job and record.
    for (k, key) in keys.iter().enumerate() {
        let (first, _, _) = output_keys(&tenant, &job, key, "png");
        let credentials = fleet_credentials::read(&client.s3.get(&first).await.unwrap(), "image/png").unwrap();
        assert!(credentials.signature_valid, "{:?}", credentials.validation_errors);
        assert_eq!(credentials.job.as_deref(), Some(job.as_str()));
        assert_eq!(credentials.item.as_deref(), Some(key.as_str()));
        assert_eq!(credentials.generator.as_deref(), Some(generator.as_str()));
        assert_eq!(credentials.model.as_deref(), Some("matting-ref@1.0.0"));
        assert_eq!(credentials.attribution, Some(attribution_key(&tenant, &job, key, 0)), "result {k}");
        assert!(credentials.digital_source_type.unwrap().ends_with("compositeWithTrainedAlgorithmicMedia"));
    }

    // The most credited contributor revokes their licence: the same outputs again credit the
    // others only, and still sum to 1.
    let (top, _) = summed.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
    let admin = Ledger::connect(&env("FLEET_LEDGER_URL")).await.unwrap();
    admin.revoke(top, None, "the contributor withdrew their photos").await.unwrap();
    let again = unique("attr-again");
    generate(&client, &again, &keys, &generator).await;
    let view = client.wait(&again, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!(view.record.state, JobState::Succeeded, "{}", fleet.log(&redo));
    let revoked = records(&client, &again, &keys).await;
    assert!(revoked.values().any(|r| r.neighbours.iter().any(|n| n.revoked && &n.sample.contributor == top)));
    for r in revoked.values() {
        assert!(r.shares.iter().all(|s| &s.contributor != top), "{r:?}");
        assert!(r.neighbours.iter().filter(|n| n.revoked).all(|n| n.weight == 0.0));
        if r.status == AttributionStatus::Attributed {
            assert!((r.shares.iter().map(|s| s.share).sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
    let report = ledger.report(&Period { job: Some(again), ..Default::default() }).await.unwrap();
    assert!(report.contributors.iter().all(|c| &c.contributor != top), "{report:?}");
    // What was recorded before the revocation stays as it was.
    assert_eq!(ledger.report(&only_job).await.unwrap(), after);
}
