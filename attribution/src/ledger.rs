//! The royalty ledger in PostgreSQL (`deploy/templates/ledger.sql`): one `attribution` row
//! per output keyed by the output's key, and its contributors' `share` rows, written in one
//! transaction; an output already recorded is left as it is, so a redone task (or a stale
//! worker's late write) changes nothing. Rows are never updated or deleted (the schema's
//! triggers refuse it). Revocations live beside them, read before every attribution.

use std::collections::HashSet;

use fleet_protocol::attribution::Share;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::shares::Revocations;
use crate::AttributionError;

/// A connection to the ledger, re-opened when it drops.
pub struct Ledger {
    url: String,
    client: Mutex<Option<Client>>,
}

/// One output's row and shares.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The output image's key (the row's identity).
    pub output_key: String,
    /// Whose job.
    pub tenant: String,
    /// The job.
    pub job: String,
    /// The input key.
    pub item: String,
    /// The model whose training set was matched.
    pub model: String,
    /// The attribution record's key.
    pub record_key: String,
    /// Contributors' shares (empty when nobody is credited).
    pub shares: Vec<Share>,
}

/// One contributor's line of a report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContributorTotal {
    /// The contributor.
    pub contributor: String,
    /// Outputs that credit them.
    pub outputs: i64,
    /// Their shares summed: what they are owed, in outputs.
    pub share: f64,
}

/// A period's royalties.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Outputs recorded in the period.
    pub outputs: i64,
    /// Of them, outputs that credit someone (each sums to 1, so this is the shares' total).
    pub credited_outputs: i64,
    /// Per contributor, largest first.
    pub contributors: Vec<ContributorTotal>,
}

/// Which rows a report covers: recorded in `[from, to)` (Unix seconds), optionally one
/// tenant's, one contributor's or one job's.
#[derive(Debug, Clone, Default)]
pub struct Period {
    /// Start, Unix seconds (0 when absent).
    pub from: Option<f64>,
    /// End, Unix seconds, exclusive (no end when absent).
    pub to: Option<f64>,
    /// Only this tenant's outputs.
    pub tenant: Option<String>,
    /// Only this job's outputs.
    pub job: Option<String>,
    /// Only this contributor's line.
    pub contributor: Option<String>,
}

fn db(what: &str) -> impl FnOnce(tokio_postgres::Error) -> AttributionError + '_ {
    move |e| {
        AttributionError::Ledger(format!(
            "{what}: {}",
            e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
        ))
    }
}

impl Ledger {
    /// A ledger at `url` (`postgres://user:password@host:port/db`); connects on first use.
    pub fn new(url: &str) -> Self {
        Ledger { url: url.to_string(), client: Mutex::new(None) }
    }

    /// A ledger at `url`, connected now (fails if it cannot be reached).
    pub async fn connect(url: &str) -> Result<Self, AttributionError> {
        let ledger = Ledger::new(url);
        drop(ledger.client().await?);
        Ok(ledger)
    }

    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, AttributionError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) =
                tokio_postgres::connect(&self.url, NoTls).await.map_err(db("connecting to the ledger"))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "royalty ledger connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    /// Records `entries` in one transaction; an output already in the ledger is kept as it
    /// was. Returns how many outputs were new.
    pub async fn record(&self, entries: &[Entry]) -> Result<usize, AttributionError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        let tx = client.transaction().await.map_err(db("starting a transaction"))?;
        let insert = tx
            .prepare(
                "INSERT INTO attribution (output_key, tenant, job, item, model, record_key) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (output_key) DO NOTHING RETURNING output_key",
            )
            .await
            .map_err(db("preparing"))?;
        let share = tx
            .prepare("INSERT INTO share (output_key, contributor, share) VALUES ($1, $2, $3)")
            .await
            .map_err(db("preparing"))?;
        let mut new = 0;
        for e in entries {
            let inserted = tx
                .query_opt(&insert, &[&e.output_key, &e.tenant, &e.job, &e.item, &e.model, &e.record_key])
                .await
                .map_err(db("recording an attribution"))?;
            if inserted.is_none() {
                continue;
            }
            new += 1;
            for s in &e.shares {
                tx.execute(&share, &[&e.output_key, &s.contributor, &s.share])
                    .await
                    .map_err(db("recording a share"))?;
            }
        }
        tx.commit().await.map_err(db("committing"))?;
        Ok(new)
    }

    /// The revocations that touch any of `contributors`.
    pub async fn revocations(&self, contributors: &[String]) -> Result<Revocations, AttributionError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let rows = client
            .query("SELECT contributor, image FROM revocation WHERE contributor = ANY($1)", &[&contributors])
            .await
            .map_err(db("reading revocations"))?;
        let mut revoked = Revocations::default();
        for row in rows {
            let contributor: String = row.get(0);
            match row.get::<_, Option<String>>(1) {
                Some(image) => revoked.images.insert((contributor, image)),
                None => revoked.contributors.insert(contributor),
            };
        }
        Ok(revoked)
    }

    /// Records that `contributor` withdrew the licence of `image` (or of everything they
    /// contributed); returns the revocation's id.
    pub async fn revoke(&self, contributor: &str, image: Option<&str>, reason: &str) -> Result<i64, AttributionError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let row = client
            .query_one(
                "INSERT INTO revocation (contributor, image, reason) VALUES ($1, $2, $3) RETURNING id",
                &[&contributor, &image, &reason],
            )
            .await
            .map_err(db("recording a revocation"))?;
        Ok(row.get(0))
    }

    /// The shares recorded for one output (empty when it is not in the ledger).
    pub async fn shares_of(&self, output_key: &str) -> Result<Vec<Share>, AttributionError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let rows = client
            .query(
                "SELECT contributor, share FROM share WHERE output_key = $1 ORDER BY share DESC, contributor",
                &[&output_key],
            )
            .await
            .map_err(db("reading shares"))?;
        Ok(rows.iter().map(|r| Share { contributor: r.get(0), share: r.get(1) }).collect())
    }

    /// Which of `output_keys` are in the ledger.
    pub async fn recorded(&self, output_keys: &[String]) -> Result<HashSet<String>, AttributionError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let rows = client
            .query("SELECT output_key FROM attribution WHERE output_key = ANY($1)", &[&output_keys])
            .await
            .map_err(db("reading attributions"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Royalties per contributor over `period`.
    pub async fn report(&self, period: &Period) -> Result<Report, AttributionError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected above");
        let from = period.from.unwrap_or(0.0);
        let to = period.to.unwrap_or(f64::INFINITY);
        let filter = "a.recorded_at >= to_timestamp($1::float8) AND a.recorded_at < to_timestamp($2::float8)
                      AND ($3::text IS NULL OR a.tenant = $3) AND ($4::text IS NULL OR a.job = $4)";
        let counts = client
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM share s WHERE s.output_key = a.output_key))
                     FROM attribution a WHERE {filter}"
                ),
                &[&from, &to, &period.tenant, &period.job],
            )
            .await
            .map_err(db("counting outputs"))?;
        let rows = client
            .query(
                &format!(
                    "SELECT s.contributor, count(*), sum(s.share) FROM share s JOIN attribution a USING (output_key)
                     WHERE {filter} AND ($5::text IS NULL OR s.contributor = $5)
                     GROUP BY s.contributor ORDER BY 3 DESC, 1"
                ),
                &[&from, &to, &period.tenant, &period.job, &period.contributor],
            )
            .await
            .map_err(db("summing shares"))?;
        Ok(Report {
            outputs: counts.get(0),
            credited_outputs: counts.get(1),
            contributors: rows
                .iter()
                .map(|r| ContributorTotal { contributor: r.get(0), outputs: r.get(1), share: r.get(2) })
                .collect(),
        })
    }
}
