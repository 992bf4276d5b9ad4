//! The tenant's commands through the HTTP API, when `fleetctl` has a token (`FLEET_API_URL`,
//! `FLEET_API_TOKEN`): the same output as the direct path, with no broker, Redis or
//! object-store credentials on the tenant's side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fleet_client::api::ApiTenant;

use crate::view::{draw, print_list_header, print_list_row, print_view};

/// `show`.
pub(crate) async fn show(api: &ApiTenant, id: &str, watch: bool) -> anyhow::Result<()> {
    let view = if watch {
        let view = api.wait(id, Duration::from_secs(24 * 3600), |v| draw(v, true)).await?;
        eprintln!();
        view
    } else {
        api.job(id).await?.with_context(|| format!("no job {id}"))?
    };
    print_view(&view);
    Ok(())
}

/// `list`.
pub(crate) async fn list(api: &ApiTenant, limit: usize) -> anyhow::Result<()> {
    print_list_header();
    for view in api.list(limit).await? {
        print_list_row(&view.record.id, &view);
    }
    Ok(())
}

/// `failed`.
pub(crate) async fn failed(api: &ApiTenant, id: &str) -> anyhow::Result<()> {
    for f in api.failures(id).await? {
        println!("{}\t{}\t{}", f.key, f.code, f.reason);
    }
    Ok(())
}

/// `cancel`.
pub(crate) async fn cancel(api: &ApiTenant, id: &str) -> anyhow::Result<()> {
    api.cancel(id).await?;
    println!("cancellation of {id} sent");
    Ok(())
}

/// `fetch`: every result through its presigned URL into `out`.
pub(crate) async fn fetch(api: &ApiTenant, id: &str, out: &Path) -> anyhow::Result<()> {
    let results = api.results(id).await?;
    for r in &results {
        let path = out.join(&r.name);
        std::fs::create_dir_all(path.parent().expect("a file has a parent"))?;
        std::fs::write(&path, api.download(&r.url).await?)?;
    }
    println!("fetched {} objects into {}", results.len(), out.display());
    Ok(())
}

/// `upload`: each file under `prefix` by its file name, through presigned PUT URLs.
pub(crate) async fn upload(api: &ApiTenant, prefix: &str, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut named = Vec::with_capacity(files.len());
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", path.display()))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        named.push((name.to_string(), bytes));
    }
    let bytes_total: usize = named.iter().map(|(_, b)| b.len()).sum();
    api.upload(prefix, &named).await?;
    println!("uploaded {} files ({bytes_total} bytes) under {prefix}", files.len());
    Ok(())
}

/// `models`.
pub(crate) async fn models(api: &ApiTenant) -> anyhow::Result<()> {
    println!(
        "{:<24} {:<8} {:<21} {:>10} {:>11} {:<12} SOURCE",
        "MODEL", "SCOPE", "TASK", "INPUT", "PARAMETERS", "LICENCE"
    );
    for m in api.models().await? {
        let text = |k: &str| m[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<24} {:<8} {:<21} {:>10} {:>11} {:<12} {}",
            text("model"),
            text("scope"),
            text("task"),
            text("input"),
            m["parameters"].as_u64().unwrap_or(0),
            text("licence"),
            m["source"].as_str().unwrap_or("trained by the fleet")
        );
    }
    Ok(())
}
