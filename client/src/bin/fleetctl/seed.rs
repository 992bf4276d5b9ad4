//! Seeding synthetic data into the tenant's space: `seed-catalog` (images, masks, broken
//! uploads) and `seed-backdrops` (the background generator's training set), both through
//! [`fleet_client::catalog`].

use std::path::Path;
use std::time::Instant;

use fleet_client::{catalog, Client};
use fleet_synth::CatalogSpec;

/// `seed-backdrops`: product photos on studio backdrops, with prompts, under `prefix`;
/// prints the data set's key.
pub(crate) async fn backdrops(client: &Client, prefix: &str, per_class: usize, seed: u64) -> anyhow::Result<()> {
    fleet_protocol::keys::check_tenant_prefix(client.tenant(), prefix)?;
    println!("{}", catalog::seed_backdrops(&client.s3, prefix, per_class, seed, "cc0-1.0").await?);
    Ok(())
}

/// `seed-catalog`: `count` images with long sides in `min_side..=max_side`, their masks and a
/// few broken uploads under `prefix`, generated in `work` (an earlier complete catalog is
/// reused).
pub(crate) async fn catalog(
    client: &Client,
    prefix: &str,
    count: usize,
    seed: u64,
    min_side: u32,
    max_side: u32,
    work: &Path,
) -> anyhow::Result<()> {
    fleet_protocol::keys::check_tenant_prefix(client.tenant(), prefix)?;
    let spec = CatalogSpec { seed, count, min_long_side: min_side, max_long_side: max_side, ..Default::default() };
    let started = Instant::now();
    let (seeded, fresh) = catalog::seed(&client.s3, prefix, &spec, work).await?;
    let verb = if fresh { "seeded" } else { "reusing" };
    println!(
        "{verb} {} images + {} broken uploads under {prefix}images/ ({:.1} s)",
        seeded.count,
        seeded.broken.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
