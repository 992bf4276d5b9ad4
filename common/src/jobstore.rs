//! Durable job state in Redis (run with AOF, `noeviction`). One key per job,
//! `fleet:job:<tenant>:<id>`, holding the JSON [`JobRecord`]. Creation is `SET NX`, so the
//! same client id submitted twice by one tenant makes one job. Every state change goes
//! through [`JobState::apply`] and is written with a compare-and-set script, so concurrent
//! schedulers never lose an update or write an impossible transition.

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::job::Priority;
use crate::keys::TenantId;
use crate::state::{InvalidTransition, JobEvent, JobState};

/// Attempts at a compare-and-set before giving up on a hot key.
const CAS_ATTEMPTS: usize = 32;

/// Writes `ARGV[2]` only if the key still holds `ARGV[1]`.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// What the store keeps per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Submitting tenant.
    pub tenant: String,
    /// Client idempotency key.
    pub id: String,
    /// Interactive or batch.
    pub priority: Priority,
    /// Where the job is.
    pub state: JobState,
    /// `name@version` of the model.
    pub model: String,
    /// The request as published (JSON).
    pub request: serde_json::Value,
    /// Milliseconds since the epoch when it was accepted.
    pub accepted_at_ms: u64,
    /// Items that produced outputs.
    pub succeeded_items: u64,
    /// Items that failed.
    pub failed_items: u64,
}

/// Whether a create made a new job.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The job is new.
    New(JobRecord),
    /// A job with that tenant and id already exists; it is returned unchanged.
    Existing(JobRecord),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record does not parse.
    #[error("job record {key} is corrupt: {reason}")]
    Corrupt {
        /// Redis key.
        key: String,
        /// Parse error.
        reason: String,
    },
    /// No such job.
    #[error("no job {id} for tenant {tenant}")]
    NotFound {
        /// Tenant.
        tenant: String,
        /// Job id.
        id: String,
    },
    /// The state machine refused the event.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// Other writers kept changing the record.
    #[error("job {0} changed under every one of {CAS_ATTEMPTS} update attempts")]
    Contended(String),
}

impl JobStoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobStoreError::Redis(e) => e.is_io_error() || e.is_timeout() || e.is_connection_dropped(),
            JobStoreError::Contended(_) => true,
            _ => false,
        }
    }
}

/// Job records in Redis.
#[derive(Clone)]
pub struct RedisJobStore {
    conn: ConnectionManager,
}

fn key(tenant: &TenantId, id: &str) -> String {
    format!("fleet:job:{tenant}:{id}")
}

impl RedisJobStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`); reconnects by itself afterwards.
    pub async fn connect(url: &str) -> Result<Self, JobStoreError> {
        let client = redis::Client::open(url)?;
        Ok(RedisJobStore { conn: ConnectionManager::new(client).await? })
    }

    /// Records a new job unless the tenant already has one with that id.
    pub async fn create(&self, record: JobRecord) -> Result<Created, JobStoreError> {
        let tenant = TenantId::new(&record.tenant)
            .map_err(|e| JobStoreError::Corrupt { key: record.id.clone(), reason: e.to_string() })?;
        let k = key(&tenant, &record.id);
        let json = serde_json::to_string(&record).expect("a job record serialises");
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET").arg(&k).arg(&json).arg("NX").query_async(&mut conn).await?;
        if set.is_some() {
            return Ok(Created::New(record));
        }
        let existing = self
            .get(&tenant, &record.id)
            .await?
            .ok_or_else(|| JobStoreError::NotFound { tenant: tenant.to_string(), id: record.id.clone() })?;
        Ok(Created::Existing(existing))
    }

    /// The job, if it exists.
    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self.get_raw(&key(tenant, id)).await?.map(|(record, _)| record))
    }

    async fn get_raw(&self, k: &str) -> Result<Option<(JobRecord, String)>, JobStoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET").arg(k).query_async(&mut conn).await?;
        raw.map(|json| {
            serde_json::from_str(&json)
                .map(|r| (r, json))
                .map_err(|e| JobStoreError::Corrupt { key: k.to_string(), reason: e.to_string() })
        })
        .transpose()
    }

    /// Applies `event` through the state machine and stores the result atomically; returns
    /// the updated record.
    pub async fn apply(&self, tenant: &TenantId, id: &str, event: JobEvent) -> Result<JobRecord, JobStoreError> {
        let k = key(tenant, id);
        let script = redis::Script::new(COMPARE_AND_SET);
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, old) = self
                .get_raw(&k)
                .await?
                .ok_or_else(|| JobStoreError::NotFound { tenant: tenant.to_string(), id: id.to_string() })?;
            record.state = record.state.apply(event)?;
            if let JobEvent::TasksEnded { succeeded, failed } = event {
                record.succeeded_items = succeeded;
                record.failed_items = failed;
            }
            let new = serde_json::to_string(&record).expect("a job record serialises");
            let mut conn = self.conn.clone();
            let swapped: i64 = script.key(&k).arg(&old).arg(&new).invoke_async(&mut conn).await?;
            if swapped == 1 {
                return Ok(record);
            }
        }
        Err(JobStoreError::Contended(k))
    }
}
