//! The tenant's commands on jobs it has submitted and models it may use: `show`, `list`,
//! `failed`, `fetch`, `cancel`, `summary` and `fetch-model`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fleet_client::report::{job_contact_sheet, percentile, task_manifests};
use fleet_client::Client;
use fleet_protocol::keys::results_prefix;
use fleet_store::ObjectStore;

use crate::view::{draw, print_list_header, print_list_row, print_view, state};

/// `show`: the job's view, after following it to its end with `watch`.
pub(crate) async fn show(client: &Client, id: &str, watch: bool) -> anyhow::Result<()> {
    let view = if watch {
        let view = client.wait(id, Duration::from_secs(24 * 3600), |v| draw(v, true)).await?;
        eprintln!();
        view
    } else {
        client.job(id).await?.with_context(|| format!("no job {id}"))?
    };
    print_view(&view);
    Ok(())
}

/// `list`: the tenant's `limit` most recent jobs, one row each (jobs that cannot be read are
/// left out).
pub(crate) async fn list(client: &Client, limit: usize) -> anyhow::Result<()> {
    print_list_header();
    for id in client.list(limit).await? {
        if let Ok(Some(v)) = client.job(&id).await {
            print_list_row(&id, &v);
        }
    }
    Ok(())
}

/// `failed`: every failed item as `key<TAB>code<TAB>reason`.
pub(crate) async fn failed(client: &Client, id: &str) -> anyhow::Result<()> {
    for f in client.failures(id).await? {
        println!("{}\t{}\t{}", f.key, f.code, f.reason);
    }
    Ok(())
}

/// `fetch`: every object under the job's results prefix into `out`, keeping the key's path
/// below the prefix.
pub(crate) async fn fetch(client: &Client, id: &str, out: &Path) -> anyhow::Result<()> {
    let prefix = results_prefix(client.tenant(), id);
    let mut token = None;
    let mut count = 0;
    loop {
        let page = client.s3.list_page(&prefix, token, 1000).await?;
        for key in &page.keys {
            let path = out.join(key.strip_prefix(&prefix).unwrap_or(key));
            std::fs::create_dir_all(path.parent().expect("a file has a parent"))?;
            std::fs::write(&path, client.s3.get(key).await?)?;
            count += 1;
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    println!("fetched {count} objects into {}", out.display());
    Ok(())
}

/// `cancel`: asks the scheduler to start no further task of the job.
pub(crate) async fn cancel(client: &Client, id: &str) -> anyhow::Result<()> {
    client.cancel(id).await?;
    println!("cancellation of {id} sent");
    Ok(())
}

/// `summary`: images, failures, wall time, throughput and latency percentiles of the job,
/// and with `sheet` a contact sheet of its `rows` least certain cutouts.
pub(crate) async fn summary(client: &Client, id: &str, sheet: Option<PathBuf>, rows: usize) -> anyhow::Result<()> {
    let view = client.job(id).await?.with_context(|| format!("no job {id}"))?;
    let manifests = task_manifests(&client.s3, client.tenant(), id).await?;
    let latencies: Vec<f64> = manifests.iter().flat_map(|m| m.items.iter().map(|i| i.latency_ms)).collect();
    let p = view.progress;
    let wall_s = view.record.finished_at_ms.map(|end| end.saturating_sub(view.record.accepted_at_ms) as f64 / 1e3);
    println!("job {id}: {}", state(&view));
    println!("images       {} ({} succeeded, {} failed)", p.items_total, p.items_succeeded, p.items_failed);
    if let Some(wall) = wall_s {
        println!("wall time    {wall:.1} s from acceptance to the last result");
        println!("throughput   {:.1} images/s", p.items_succeeded as f64 / wall.max(1e-3));
    }
    if let (Some(p50), Some(p95)) = (percentile(&latencies, 50.0), percentile(&latencies, 95.0)) {
        println!("latency      p50 {p50:.0} ms, p95 {p95:.0} ms per image (download + engine + upload)");
    }
    let failures = client.failures(id).await?;
    if !failures.is_empty() {
        println!("failures:");
        for f in &failures {
            println!("  {}  {}: {}", f.key, f.code, f.reason);
        }
    }
    if let Some(path) = sheet {
        match job_contact_sheet(&client.s3, &manifests, rows, 160).await? {
            Some(image) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                image.save(&path)?;
                println!("contact sheet {} (least certain cutouts first)", path.display());
            }
            None => println!("no results for a contact sheet"),
        }
    }
    Ok(())
}

/// `fetch-model`: the model `name@version` (the tenant's own, else the shared one) with what
/// a fine-tune registers beside it, into `out/<name>/<version>/`, replaced as a whole.
pub(crate) async fn fetch_model(client: &Client, model: &str, out: &Path) -> anyhow::Result<()> {
    let model: fleet_protocol::ModelRef = model.parse()?;
    let (scope, manifest) = fleet_store::registry::locate(&client.s3, client.tenant(), &model).await?;
    let cache = tempfile_dir(out)?;
    let (dir, _) = fleet_store::registry::fetch_in(&client.s3, &scope, &model, &cache).await?;
    let dest = out.join(&model.name).join(&model.version);
    let staging = out.join(&model.name).join(format!(".{}-fetching", model.version));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for file in fleet_store::registry::model_files(&manifest) {
        std::fs::copy(dir.join(&file), staging.join(&file))?;
    }
    // What a fine-tune registers beside the model, when there.
    for extra in ["training-embeddings.jsonl", "loss-curve.png"] {
        if let Ok(bytes) = client.s3.get(&format!("{}{extra}", scope.prefix(&model))).await {
            std::fs::write(staging.join(extra), bytes)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest)?;
    let _ = std::fs::remove_dir_all(&cache);
    println!("{}", dest.display());
    Ok(())
}

/// `models`: one line per model this tenant can use, the licence where the weights name one.
pub(crate) async fn models(client: &Client) -> anyhow::Result<()> {
    let models = fleet_store::registry::list_models(&client.s3, client.tenant()).await?;
    println!(
        "{:<24} {:<8} {:<21} {:>10} {:>11} {:<9} {:<12} SOURCE",
        "MODEL", "SCOPE", "TASK", "INPUT", "PARAMETERS", "CUDA", "LICENCE"
    );
    for (scope, m) in models {
        let scope = match scope {
            fleet_store::registry::Scope::Shared => "shared".to_string(),
            fleet_store::registry::Scope::Tenant(_) => "own".to_string(),
        };
        let task = serde_json::to_value(m.task).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let cuda = serde_json::to_value(m.precision.cuda).ok().and_then(|v| v.as_str().map(str::to_string));
        let (licence, source) = match &m.source {
            Some(s) => (s.licence.clone(), format!("{}@{}", s.package, s.version)),
            None => ("-".to_string(), "trained by the fleet".to_string()),
        };
        println!(
            "{:<24} {:<8} {:<21} {:>10} {:>11} {:<9} {:<12} {source}",
            m.model_ref().to_string(),
            scope,
            task,
            format!("{}x{}", m.input.width, m.input.height),
            m.parameters,
            cuda.unwrap_or_default(),
            licence,
        );
    }
    Ok(())
}

/// `upload`: each file under `prefix` by its file name; prints how many and the bytes.
pub(crate) async fn upload(client: &Client, prefix: &str, files: &[PathBuf]) -> anyhow::Result<()> {
    fleet_protocol::keys::check_tenant_prefix(client.tenant(), prefix)?;
    let mut bytes_total = 0;
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        bytes_total += bytes.len();
        client.s3.put(&format!("{prefix}{name}"), bytes, fleet_store::content_type(name)).await?;
    }
    println!("uploaded {} files ({bytes_total} bytes) under {prefix}", files.len());
    Ok(())
}

/// A scratch folder beside `out` (same file system, so the fetched files copy locally).
fn tempfile_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let dir = out.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
