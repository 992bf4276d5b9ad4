//! The operator's commands on the royalty ledger: `royalties` (what each contributor is owed
//! over a period) and `licence revoke` (a contributor withdraws a licence; attributions made
//! afterwards never credit it).

use anyhow::Context;
use fleet_attribution::{Ledger, Period};

/// What `royalties` reports on.
#[derive(Debug, clap::Args)]
pub(crate) struct RoyaltiesArgs {
    /// The royalty ledger (PostgreSQL; `deploy/stack.sh env` prints the operator's URL).
    #[arg(long, env = "FLEET_LEDGER_URL", hide_env_values = true)]
    ledger_url: Option<String>,
    /// Start of the period: `YYYY-MM-DD` (UTC midnight) or Unix seconds; default: the beginning.
    #[arg(long)]
    from: Option<String>,
    /// End of the period, exclusive, in the same forms; default: now.
    #[arg(long)]
    to: Option<String>,
    /// Only outputs of this tenant's jobs.
    #[arg(long)]
    of_tenant: Option<String>,
    /// Only outputs of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only this contributor's line.
    #[arg(long)]
    contributor: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `royalties`: one line per contributor (outputs crediting them, their summed share) and
/// the period's totals; the shares' total equals the outputs credited, each output's shares
/// summing to 1.
pub(crate) async fn royalties(args: RoyaltiesArgs) -> anyhow::Result<()> {
    let ledger = connect(args.ledger_url.as_deref()).await?;
    let period = Period {
        from: args.from.as_deref().map(parse_time).transpose()?,
        to: args.to.as_deref().map(parse_time).transpose()?,
        tenant: args.of_tenant,
        job: args.job,
        contributor: args.contributor,
    };
    let report = ledger.report(&period).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{:<32} {:>10} {:>14}", "CONTRIBUTOR", "OUTPUTS", "SHARE");
    for c in &report.contributors {
        println!("{:<32} {:>10} {:>14.6}", c.contributor, c.outputs, c.share);
    }
    let total: f64 = report.contributors.iter().map(|c| c.share).sum();
    println!("{:<32} {:>10} {:>14.6}", "total", report.credited_outputs, total);
    println!(
        "{} outputs attributed in the period, {} credit a contributor, {} credit nobody (no training sample similar enough)",
        report.outputs,
        report.credited_outputs,
        report.outputs - report.credited_outputs
    );
    Ok(())
}

/// `licence revoke`: records the withdrawal; prints its id.
pub(crate) async fn revoke(
    ledger_url: Option<&str>,
    contributor: &str,
    image: Option<&str>,
    reason: &str,
) -> anyhow::Result<()> {
    let ledger = connect(ledger_url).await?;
    let id = ledger.revoke(contributor, image, reason).await?;
    match image {
        Some(image) => println!("revocation {id}: {contributor}'s licence on {image} is withdrawn"),
        None => println!("revocation {id}: every licence {contributor} granted is withdrawn"),
    }
    println!("attributions made from now on do not credit it; what was recorded before stays in the ledger");
    Ok(())
}

async fn connect(url: Option<&str>) -> anyhow::Result<Ledger> {
    let url = url.context("set FLEET_LEDGER_URL to the royalty ledger (deploy/stack.sh env prints it)")?;
    Ok(Ledger::connect(url).await?)
}

/// `YYYY-MM-DD` (UTC midnight) or Unix seconds, as Unix seconds.
fn parse_time(text: &str) -> anyhow::Result<f64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    let bad = || anyhow::anyhow!("{text:?} is neither YYYY-MM-DD nor Unix seconds");
    let mut parts = text.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (y, m, d): (i64, i64, i64) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(((era * 146_097 + doe - 719_468) * 86_400) as f64)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn dates_are_utc_midnights_and_numbers_are_seconds() {
        assert_eq!(parse_time("1970-01-01").unwrap(), 0.0);
        assert_eq!(parse_time("2026-12-07").unwrap(), 1_796_601_600.0);
        assert_eq!(parse_time("2000-03-01").unwrap(), 951_868_800.0);
        assert_eq!(parse_time("12.5").unwrap(), 12.5);
        assert!(parse_time("2026-13-01").is_err() && parse_time("yesterday").is_err());
    }
}
