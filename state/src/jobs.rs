//! Durable job state in Redis (run with AOF, `noeviction`): the store, and job records.
//!
//! Every job and task state change goes through [`JobState::apply`] / [`TaskState::apply`]
//! and is written with a compare-and-set script, so concurrent schedulers never lose an
//! update or write an impossible transition. A task's counts are added in the same script
//! that moves it to a terminal state, so a task reported twice is counted once. The keys are
//! in [`crate::schema`].

use std::time::Duration;

use redis::aio::ConnectionManager;

use fleet_protocol::keys::TenantId;
use fleet_protocol::message::Progress;
use fleet_protocol::state::JobEvent;

use crate::error::{JobStoreError, CAS_ATTEMPTS};
use crate::record::{Created, JobRecord};
use crate::schema::{job_key, job_record_key as key, JOB_KEY_KINDS, RETENTION_KEY};

/// Writes `ARGV[2]` only if the key still holds `ARGV[1]`; with a TTL (`ARGV[3]` seconds, 0
/// for none) the record and the per-job keys `KEYS[3..]` expire, and the retention index
/// `KEYS[2]` gets member `ARGV[4]` scored by when.
const COMPARE_AND_SET: &str = include_str!("scripts/compare_and_set.lua");

/// Creates a task unless it exists; counts it into the job's totals once.
pub(crate) const CREATE_TASK: &str = include_str!("scripts/create_task.lua");

/// Moves a task from `ARGV[2]` to `ARGV[3]`; when `ARGV[4]` is 1 the task ended, and its
/// counts and failures are added in the same step. With a token (`ARGV[7]`), the update is
/// fenced: it applies only while the task's lease still carries that token. `ARGV[8]` says
/// what happens to the lease: `end` deletes it, `requeue` takes it from its worker (a new
/// token makes the old one stale) and queues the task for dispatch again after
/// `ARGV[10]` ms since the epoch. Returns `{'ok', counters...}`, `{'stale'}` when fenced out,
/// or `{}` if the task changed under us.
pub(crate) const UPDATE_TASK: &str =
    concat!(include_str!("scripts/clock.lua"), include_str!("scripts/update_task.lua"));

/// Longest a connection attempt to Redis may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a Redis call may wait for its answer (every script is short).
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a finished job's records stay in Redis unless configured otherwise; its results
/// stay in S3 regardless.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Job records in Redis.
#[derive(Clone)]
pub struct RedisJobStore {
    pub(crate) conn: ConnectionManager,
    /// How long a finished job's keys are kept.
    pub(crate) retention: Duration,
    pub(crate) update_task: redis::Script,
    pub(crate) create_task: redis::Script,
}

pub(crate) fn parse_progress(fields: &[(String, String)]) -> Progress {
    let mut p = Progress::default();
    for (name, value) in fields {
        let n: u64 = value.parse().unwrap_or(0);
        match name.as_str() {
            "tasks_total" => p.tasks_total = n,
            "tasks_done" => p.tasks_done = n,
            "items_total" => p.items_total = n,
            "items_succeeded" => p.items_succeeded = n,
            "items_failed" => p.items_failed = n,
            "sharded" => p.sharded = n == 1,
            _ => {}
        }
    }
    p
}

impl RedisJobStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`); reconnects by itself afterwards.
    pub async fn connect(url: &str) -> Result<Self, JobStoreError> {
        let client = redis::Client::open(url)?;
        // Every call answers or fails within bounds: without them a connection whose peer
        // went silent (a partition, a half-open socket) waits forever, and so does whatever
        // holds a delivery or a lease behind it.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
            .set_response_timeout(REDIS_RESPONSE_TIMEOUT)
            .set_max_delay(1_000);
        Ok(RedisJobStore {
            conn: ConnectionManager::new_with_config(client, config).await?,
            retention: DEFAULT_RETENTION,
            update_task: redis::Script::new(UPDATE_TASK),
            create_task: redis::Script::new(CREATE_TASK),
        })
    }

    /// The same store, keeping finished jobs' keys for `retention` (at least a second).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_secs(1));
        self
    }

    /// Removes finished jobs whose retention ran out from their tenants' job lists (their
    /// keys expired by themselves), at most `limit` at a time; returns how many.
    pub async fn prune_expired(&self, limit: usize) -> Result<usize, JobStoreError> {
        let mut conn = self.conn.clone();
        let (now, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(RETENTION_KEY)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        for member in &due {
            if let Some((tenant, id)) = member.split_once(':') {
                let _: i64 =
                    redis::cmd("ZREM").arg(format!("fleet:jobs:{tenant}")).arg(id).query_async(&mut conn).await?;
            }
            let _: i64 = redis::cmd("ZREM").arg(RETENTION_KEY).arg(member).query_async(&mut conn).await?;
        }
        Ok(due.len())
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
            let _: i64 = redis::cmd("ZADD")
                .arg(format!("fleet:jobs:{tenant}"))
                .arg(record.accepted_at_ms)
                .arg(&record.id)
                .query_async(&mut conn)
                .await?;
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
        self.apply_with_reason(tenant, id, event, None).await
    }

    /// As [`apply`](Self::apply), recording `reason` (job-level failures).
    pub async fn apply_with_reason(
        &self,
        tenant: &TenantId,
        id: &str,
        event: JobEvent,
        reason: Option<String>,
    ) -> Result<JobRecord, JobStoreError> {
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
            if reason.is_some() {
                record.reason = reason.clone();
            }
            if record.state.is_terminal() {
                record.finished_at_ms = Some(fleet_protocol::message::now_ms());
            }
            let new = serde_json::to_string(&record).expect("a job record serialises");
            let mut conn = self.conn.clone();
            let mut invocation = script.key(&k);
            invocation.key(RETENTION_KEY);
            let ttl = if record.state.is_terminal() { self.retention.as_secs() } else { 0 };
            if ttl > 0 {
                for kind in JOB_KEY_KINDS {
                    invocation.key(job_key(kind, tenant, id));
                }
            }
            let member = format!("{tenant}:{id}");
            let swapped: i64 = invocation.arg(&old).arg(&new).arg(ttl).arg(&member).invoke_async(&mut conn).await?;
            if swapped == 1 {
                return Ok(record);
            }
        }
        Err(JobStoreError::Contended(k))
    }
}
