//! The web dashboard in a real browser: Debian's headless Chromium, driven by
//! tests/e2e/dashboard/check.mjs, signs in as a tenant and as an operator against a running
//! fleet (scheduler, CPU worker, API) that has done a catalog job with a broken upload and a
//! small fine-tune, checks what each page shows, and keeps a screenshot of each page in
//! `.fleet/screenshots/` (or `FLEET_SCREENSHOTS`).

use std::process::Command;
use std::time::Duration;

use fleet_client::{Client, Submitted};
use fleet_protocol::state::JobState;
use fleet_store::ObjectStore;
use fleet_tests_e2e::fleet::{client, Fleet};
use fleet_tests_e2e::unique;
use image::{GrayImage, RgbImage};
use serde_json::json;

const TENANT: &str = "tenant-a";

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} unset: `./fleet test e2e` installs the browser and exports it"))
}

fn png<P: image::PixelWithColorType<Subpixel = u8>>(img: &image::ImageBuffer<P, Vec<u8>>) -> Vec<u8>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn submit_and_wait(client: &Client, id: &str, body: serde_json::Value) -> fleet_client::JobView {
    let body = serde_json::to_vec(&body).unwrap();
    assert_eq!(client.submit(id, &body, Duration::from_secs(30)).await.unwrap(), Submitted::Accepted);
    client.wait(id, Duration::from_secs(300), |_| {}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_tenants_and_operators_what_they_may_see_in_chromium() {
    let mut fleet = Fleet::default();
    fleet.scheduler("scheduler").worker("w1", 2);
    let base = fleet.api("api", &[]);
    let client = client(TENANT).await;

    // A catalog job: five product photos and one upload that is not an image.
    let job = unique("catalog");
    let prefix = format!("{TENANT}/{job}/in/");
    for i in 0..5u64 {
        let sample = fleet_synth::render_sample(7, i, 120, 160);
        client.s3.put(&format!("{prefix}{i}.png"), png(&sample.image), "image/png").await.unwrap();
    }
    client.s3.put(&format!("{prefix}broken.png"), b"not a png".to_vec(), "image/png").await.unwrap();
    let view = submit_and_wait(
        &client,
        &job,
        json!({
            "id": job, "priority": "batch", "kind": "background_replace",
            "spec": {"input": {"prefix": prefix}, "background": {"mode": "color", "color": "#e8eef5"},
                     "output": {"format": "png"}, "model": "matting-ref@1.0.0", "shard_size": 2}
        }),
    )
    .await;
    assert_eq!(view.record.state, JobState::SucceededWithItemErrors);
    let failure = client.failures(&job).await.unwrap().pop().expect("the broken upload failed");

    // A small fine-tune: a tenant model with lineage and curves.
    let data = format!("{TENANT}/{}/", unique("ft-data"));
    let mut lines = String::new();
    for i in 0..8u64 {
        let sample = fleet_synth::render_sample(23, i, 96, 128);
        let rgb: RgbImage = sample.image.clone();
        let mask: GrayImage = sample.alpha.clone();
        let (image_key, mask_key) = (format!("{data}images/{i}.png"), format!("{data}masks/{i}.png"));
        client.s3.put(&image_key, png(&rgb), "image/png").await.unwrap();
        client.s3.put(&mask_key, png(&mask), "image/png").await.unwrap();
        lines.push_str(&format!(
            "{}\n",
            json!({"image": image_key, "mask": mask_key, "contributor": format!("c-{i}"), "licence": "cc-by-4.0"})
        ));
    }
    client.s3.put(&format!("{data}set.jsonl"), lines.into_bytes(), "application/x-ndjson").await.unwrap();
    let tune = unique("ft");
    let model = unique("shelf");
    let view = submit_and_wait(
        &client,
        &tune,
        json!({
            "id": tune, "priority": "batch", "kind": "fine_tune",
            "spec": {"base_model": "matting-ref@1.0.0", "data": format!("{data}set.jsonl"),
                     "output": {"name": model, "version": "1"},
                     "hyper": {"steps_phase1": 8, "steps_phase2": 4, "batch_size": 4, "warmup_steps": 2,
                               "pixel_budget": 8192, "validation_fraction": 0.25}}
        }),
    )
    .await;
    assert_eq!(view.record.state, JobState::Succeeded, "{view:?}");

    // Another tenant's job, which the first tenant must not see.
    let other = fleet_tests_e2e::fleet::client("tenant-b").await;
    let other_job = unique("theirs");
    let key = format!("tenant-b/{other_job}/0.png");
    other.s3.put(&key, png(&fleet_synth::render_sample(5, 0, 96, 96).image), "image/png").await.unwrap();
    submit_and_wait(
        &other,
        &other_job,
        json!({
            "id": other_job, "priority": "batch", "kind": "background_replace",
            "spec": {"input": {"keys": [key]}, "background": {"mode": "transparent"},
                     "output": {"format": "png"}, "model": "matting-ref@1.0.0"}
        }),
    )
    .await;

    let shots = std::env::var("FLEET_SCREENSHOTS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.fleet/screenshots").to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/check.mjs");
    let reason_piece: String = failure.reason.chars().take(40).collect();
    let out = Command::new("node")
        .arg(script)
        .env("BASE", &base)
        .env("TENANT", TENANT)
        .env("TENANT_TOKEN", Fleet::token(Some(TENANT), "dashboard"))
        .env("OPERATOR_TOKEN", Fleet::token(None, "dashboard-ops"))
        .env("JOB", &job)
        .env("RESULTS", "5")
        .env("FAILED_REASON", &reason_piece)
        .env("FINE_TUNE", &tune)
        .env("MODEL", format!("{model}@1"))
        .env("OTHER_TENANT", "tenant-b")
        .env("OTHER_JOB", &other_job)
        .env("WORKER", "w1")
        .env("SHOTS", &shots)
        .env("MODULES", env("FLEET_BROWSER_MODULES"))
        .env("CHROMIUM", env("FLEET_CHROMIUM"))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "the browser checks failed:\n{report}\n{}\napi log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.log("api")
    );
    for page in ["overview-tenant", "jobs", "job", "fine-tunes", "models", "overview-operator"] {
        let shot = std::path::Path::new(&shots).join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is missing or blank ({size} bytes)", shot.display());
    }
}
