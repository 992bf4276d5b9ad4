//! Durable job state in Redis (run with AOF, `noeviction`).
//!
//! ```text
//! fleet:job:<tenant>:<id>        JSON JobRecord; created with SET NX (one job per tenant and id)
//! fleet:jobs:<tenant>            sorted set of job ids by acceptance time
//! fleet:tasks:<tenant>:<id>      hash task number -> JSON TaskRecord
//! fleet:progress:<tenant>:<id>   hash of counters (tasks_total, tasks_done, items_*, sharded)
//! fleet:failures:<tenant>:<id>   list of JSON ItemFailureReport
//! fleet:sharding                 hash "<tenant>/<id>" -> sharding cursor of jobs still being split
//! fleet:rejected:<tenant>:<id>   JSON Rejection, kept 7 days
//! fleet:eventseq:<tenant>:<id>   counter numbering the job's events
//! fleet:lease:* fleet:leases fleet:load fleet:requeue   task leases (see crate::lease)
//! ```
//!
//! Every job and task state change goes through [`JobState::apply`] / [`TaskState::apply`]
//! and is written with a compare-and-set script, so concurrent schedulers never lose an
//! update or write an impossible transition. A task's counts are added in the same script
//! that moves it to a terminal state, so a task reported twice is counted once.

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::job::{Priority, Rejection};
use crate::keys::TenantId;
use crate::protocol::{ItemFailureReport, Progress};
use crate::state::{InvalidTransition, JobEvent, JobState, TaskEvent, TaskState};

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
    /// Why it failed, for job-level failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// W3C trace context of the job, passed on to its tasks.
    #[serde(default)]
    pub traceparent: String,
    /// When it reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
}

/// What the store keeps per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where the task is.
    pub state: TaskState,
    /// Items in it.
    pub items: u32,
    /// The worker of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why the latest failed attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the worker started the latest attempt (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
}

/// A task's outcome, counted once when it reaches a terminal state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutcome {
    /// Items with outputs.
    pub succeeded: u64,
    /// Items that failed, with reasons.
    pub failures: Vec<ItemFailureReport>,
}

/// What a report adds to a task besides its event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskNote<'a> {
    /// The worker of the attempt.
    pub worker: Option<&'a str>,
    /// Why the attempt failed.
    pub error: Option<&'a str>,
    /// When the worker started the attempt (ms since the epoch).
    pub started_at_ms: Option<u64>,
}

/// Whether a task update was written.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskUpdate {
    /// Written; the job's progress after it.
    Applied {
        /// The task now.
        record: TaskRecord,
        /// Whether this update ended the task.
        ended: bool,
        /// The job's counts after it.
        progress: Progress,
    },
    /// The state machine refused it (a repeated or stale report); nothing changed.
    Refused(InvalidTransition),
    /// The report was made under a lease that has since been taken over (its token is
    /// stale); nothing changed.
    Fenced,
}

/// What a task update does to the task's lease (see [`crate::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseOp {
    /// Nothing, and no fencing.
    #[default]
    None,
    /// Apply only while the lease carries `token`; keep the lease.
    Check {
        /// The reporter's token.
        token: u64,
    },
    /// Apply only while the lease carries `token` (any lease when `None`); then delete it.
    End {
        /// The reporter's token.
        token: Option<u64>,
    },
    /// Apply only while the lease carries `token`; then take the task from its worker and
    /// queue it for dispatch again, not before `not_before_ms`.
    Requeue {
        /// The token being taken over.
        token: u64,
        /// Earliest re-dispatch (ms since the epoch).
        not_before_ms: u64,
    },
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

/// Creates a task unless it exists; counts it into the job's totals once.
const CREATE_TASK: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'tasks_total', 1)
  redis.call('HINCRBY', KEYS[2], 'items_total', ARGV[3])
  return false
end
return redis.call('HGET', KEYS[1], ARGV[1])
";

/// Moves a task from `ARGV[2]` to `ARGV[3]`; when `ARGV[4]` is 1 the task ended, and its
/// counts and failures are added in the same step. With a token (`ARGV[7]`), the update is
/// fenced: it applies only while the task's lease still carries that token. `ARGV[8]` says
/// what happens to the lease: `end` deletes it, `requeue` takes it from its worker (a new
/// token makes the old one stale) and queues the task for dispatch again after
/// `ARGV[10]` ms since the epoch. Returns `{'ok', counters...}`, `{'stale'}` when fenced out,
/// or `{}` if the task changed under us.
const UPDATE_TASK: &str = r"
if ARGV[7] ~= '' and redis.call('HGET', KEYS[4], 'token') ~= ARGV[7] then
  return {'stale'}
end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return {}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[2], 'tasks_done', 1)
  redis.call('HINCRBY', KEYS[2], 'items_succeeded', ARGV[5])
  redis.call('HINCRBY', KEYS[2], 'items_failed', ARGV[6])
  for i = 11, #ARGV do
    redis.call('RPUSH', KEYS[3], ARGV[i])
  end
end
if ARGV[8] == 'end' or ARGV[8] == 'requeue' then
  local worker = redis.call('HGET', KEYS[4], 'worker')
  if worker and worker ~= '' then
    local slot = worker .. '|' .. redis.call('HGET', KEYS[4], 'device') .. '|' .. redis.call('HGET', KEYS[4], 'priority')
    if redis.call('HINCRBY', KEYS[6], slot, -1) <= 0 then
      redis.call('HDEL', KEYS[6], slot)
    end
  end
  redis.call('ZREM', KEYS[5], ARGV[9])
  if ARGV[8] == 'end' then
    redis.call('DEL', KEYS[4])
    redis.call('SREM', KEYS[7], ARGV[9])
  elseif redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HSET', KEYS[4], 'worker', '', 'token', redis.call('INCR', KEYS[8]), 'not_before_ms', ARGV[10])
    redis.call('SADD', KEYS[7], ARGV[9])
  end
end
local out = redis.call('HGETALL', KEYS[2])
table.insert(out, 1, 'ok')
return out
";

/// How long a rejection stays readable.
const REJECTION_TTL_S: u64 = 7 * 24 * 3600;
/// The hash of jobs still being split into tasks.
const SHARDING_KEY: &str = "fleet:sharding";

/// Job records in Redis.
#[derive(Clone)]
pub struct RedisJobStore {
    pub(crate) conn: ConnectionManager,
    update_task: redis::Script,
    create_task: redis::Script,
}

fn key(tenant: &TenantId, id: &str) -> String {
    format!("fleet:job:{tenant}:{id}")
}

fn job_key(kind: &str, tenant: &TenantId, id: &str) -> String {
    format!("fleet:{kind}:{tenant}:{id}")
}

fn parse_progress(fields: &[(String, String)]) -> Progress {
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

fn corrupt(key: &str) -> impl FnOnce(serde_json::Error) -> JobStoreError + '_ {
    move |e| JobStoreError::Corrupt { key: key.to_string(), reason: e.to_string() }
}

impl RedisJobStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`); reconnects by itself afterwards.
    pub async fn connect(url: &str) -> Result<Self, JobStoreError> {
        let client = redis::Client::open(url)?;
        Ok(RedisJobStore {
            conn: ConnectionManager::new(client).await?,
            update_task: redis::Script::new(UPDATE_TASK),
            create_task: redis::Script::new(CREATE_TASK),
        })
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
                record.finished_at_ms = Some(crate::protocol::now_ms());
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

impl RedisJobStore {
    /// The tenant's job ids, newest first.
    pub async fn list(&self, tenant: &TenantId, limit: usize) -> Result<Vec<String>, JobStoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(format!("fleet:jobs:{tenant}"))
            .arg(0)
            .arg(limit.max(1) as i64 - 1)
            .query_async(&mut conn)
            .await?;
        Ok(ids)
    }

    /// Creates task `task` in state `Dispatched { attempt: 1 }` unless it exists; returns
    /// the existing record when it does.
    pub async fn create_task(
        &self,
        tenant: &TenantId,
        job: &str,
        task: u32,
        items: u32,
    ) -> Result<Option<TaskRecord>, JobStoreError> {
        let record = TaskRecord {
            state: TaskState::Dispatched { attempt: 1 },
            items,
            worker: None,
            last_error: None,
            started_at_ms: None,
        };
        let json = serde_json::to_string(&record).expect("a task record serialises");
        let tasks = job_key("tasks", tenant, job);
        let mut conn = self.conn.clone();
        let existing: Option<String> = self
            .create_task
            .key(&tasks)
            .key(job_key("progress", tenant, job))
            .arg(task)
            .arg(json)
            .arg(items)
            .invoke_async(&mut conn)
            .await?;
        existing.map(|json| serde_json::from_str(&json).map_err(corrupt(&tasks))).transpose()
    }

    /// The task, if it exists.
    pub async fn task(&self, tenant: &TenantId, job: &str, task: u32) -> Result<Option<TaskRecord>, JobStoreError> {
        let tasks = job_key("tasks", tenant, job);
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET").arg(&tasks).arg(task).query_async(&mut conn).await?;
        raw.map(|json| serde_json::from_str(&json).map_err(corrupt(&tasks))).transpose()
    }

    /// Every task of a job, by number.
    pub async fn tasks(&self, tenant: &TenantId, job: &str) -> Result<Vec<(u32, TaskRecord)>, JobStoreError> {
        let tasks = job_key("tasks", tenant, job);
        let mut conn = self.conn.clone();
        let raw: Vec<(u32, String)> = redis::cmd("HGETALL").arg(&tasks).query_async(&mut conn).await?;
        let mut out = raw
            .into_iter()
            .map(|(n, json)| serde_json::from_str(&json).map(|r| (n, r)).map_err(corrupt(&tasks)))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    /// Applies `event` to a task through the state machine. When the event ends the task,
    /// `outcome` is added to the job's counts in the same atomic step (a task ends once, so
    /// it is counted once). What `note` carries is recorded on the task. `lease` fences the
    /// update by the reporter's token and ends or requeues the lease in the same step.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_task(
        &self,
        tenant: &TenantId,
        job: &str,
        task: u32,
        event: TaskEvent,
        outcome: &TaskOutcome,
        note: TaskNote<'_>,
        lease: LeaseOp,
    ) -> Result<TaskUpdate, JobStoreError> {
        let tasks = job_key("tasks", tenant, job);
        let id = crate::protocol::task_id(tenant.as_str(), job, task);
        for _ in 0..CAS_ATTEMPTS {
            let mut conn = self.conn.clone();
            let old: Option<String> = redis::cmd("HGET").arg(&tasks).arg(task).query_async(&mut conn).await?;
            let old = old.ok_or_else(|| JobStoreError::NotFound {
                tenant: tenant.to_string(),
                id: format!("{job} task {task}"),
            })?;
            let mut record: TaskRecord = serde_json::from_str(&old).map_err(corrupt(&tasks))?;
            record.state = match record.state.apply(event) {
                Ok(state) => state,
                Err(refused) => return Ok(TaskUpdate::Refused(refused)),
            };
            if let Some(worker) = note.worker {
                record.worker = Some(worker.to_string());
            }
            if let Some(error) = note.error {
                record.last_error = Some(error.to_string());
            }
            if let Some(at) = note.started_at_ms {
                record.started_at_ms = Some(at);
            }
            let ended = record.state.is_terminal();
            let (token, op, not_before) = match lease {
                LeaseOp::None => (None, "", 0),
                LeaseOp::Check { token } => (Some(token), "", 0),
                LeaseOp::End { token } => (token, "end", 0),
                // A task that ended has nothing to dispatch again.
                LeaseOp::Requeue { token, .. } if ended => (Some(token), "end", 0),
                LeaseOp::Requeue { token, not_before_ms } => (Some(token), "requeue", not_before_ms),
            };
            let new = serde_json::to_string(&record).expect("a task record serialises");
            let mut invocation = self.update_task.key(&tasks);
            invocation
                .key(job_key("progress", tenant, job))
                .key(job_key("failures", tenant, job))
                .key(crate::lease::lease_key(&id))
                .key(crate::lease::LEASES_KEY)
                .key(crate::lease::LOAD_KEY)
                .key(crate::lease::REQUEUE_KEY)
                .key(crate::lease::TOKEN_SEQ_KEY)
                .arg(task)
                .arg(&old)
                .arg(&new)
                .arg(if ended { 1 } else { 0 })
                .arg(outcome.succeeded)
                .arg(outcome.failures.len())
                .arg(token.map(|t| t.to_string()).unwrap_or_default())
                .arg(op)
                .arg(&id)
                .arg(not_before);
            if ended {
                for failure in &outcome.failures {
                    invocation.arg(serde_json::to_string(failure).expect("a failure serialises"));
                }
            }
            let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
            match reply.first().map(String::as_str) {
                Some("stale") => return Ok(TaskUpdate::Fenced),
                Some("ok") => {
                    let counters: Vec<(String, String)> = reply[1..]
                        .chunks(2)
                        .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
                        .collect();
                    return Ok(TaskUpdate::Applied { record, ended, progress: parse_progress(&counters) });
                }
                _ => continue,
            }
        }
        Err(JobStoreError::Contended(format!("{tasks} {task}")))
    }

    /// Writes a short-lived operator note (`key` = `value`, gone after `ttl_s` seconds).
    pub async fn put_note(&self, key: &str, value: &str, ttl_s: u64) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_s).query_async(&mut conn).await?;
        Ok(())
    }

    /// Reads an operator note.
    pub async fn note(&self, key: &str) -> Result<Option<String>, JobStoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET").arg(key).query_async(&mut conn).await?)
    }

    /// The job's counts.
    pub async fn progress(&self, tenant: &TenantId, job: &str) -> Result<Progress, JobStoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> =
            redis::cmd("HGETALL").arg(job_key("progress", tenant, job)).query_async(&mut conn).await?;
        Ok(parse_progress(&fields))
    }

    /// Marks every task of the job created (its totals are final) and forgets its cursor.
    pub async fn finish_sharding(&self, tenant: &TenantId, job: &str) -> Result<Progress, JobStoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(job_key("progress", tenant, job))
            .arg("sharded")
            .arg(1)
            .ignore()
            .cmd("HDEL")
            .arg(SHARDING_KEY)
            .arg(format!("{tenant}/{job}"))
            .ignore()
            .query_async(&mut conn)
            .await?;
        self.progress(tenant, job).await
    }

    /// Records where splitting the job into tasks has got to.
    pub async fn save_cursor(&self, tenant: &TenantId, job: &str, cursor: &str) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(SHARDING_KEY)
            .arg(format!("{tenant}/{job}"))
            .arg(cursor)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Jobs still being split, with their cursors: `(tenant, job, cursor)`.
    pub async fn cursors(&self) -> Result<Vec<(String, String, String)>, JobStoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<(String, String)> = redis::cmd("HGETALL").arg(SHARDING_KEY).query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, cursor)| k.split_once('/').map(|(t, j)| (t.to_string(), j.to_string(), cursor)))
            .collect())
    }

    /// Up to `count` failed items of the job from `start`, in the order they were reported.
    pub async fn failures(
        &self,
        tenant: &TenantId,
        job: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<ItemFailureReport>, JobStoreError> {
        let failures = job_key("failures", tenant, job);
        let mut conn = self.conn.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&failures)
            .arg(start as i64)
            .arg((start + count.max(1)) as i64 - 1)
            .query_async(&mut conn)
            .await?;
        raw.iter().map(|json| serde_json::from_str(json).map_err(corrupt(&failures))).collect()
    }

    /// Records why a submission was refused, readable for a week.
    pub async fn reject(&self, tenant: &TenantId, id: &str, rejection: &Rejection) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(rejection).expect("a rejection serialises");
        let _: () = redis::cmd("SET")
            .arg(job_key("rejected", tenant, id))
            .arg(json)
            .arg("EX")
            .arg(REJECTION_TTL_S)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Why a submission with that id was refused, if it was.
    pub async fn rejection(&self, tenant: &TenantId, id: &str) -> Result<Option<Rejection>, JobStoreError> {
        let k = job_key("rejected", tenant, id);
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
        raw.map(|json| serde_json::from_str(&json).map_err(corrupt(&k))).transpose()
    }

    /// The next number of the job's events.
    pub async fn next_event_seq(&self, tenant: &TenantId, job: &str) -> Result<u64, JobStoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("INCR").arg(job_key("eventseq", tenant, job)).query_async(&mut conn).await?)
    }
}

impl RedisJobStore {
    /// Writes a worker's heartbeat, readable for [`HEARTBEAT_TTL`](crate::heartbeat::HEARTBEAT_TTL).
    pub async fn put_heartbeat(&self, beat: &crate::heartbeat::Heartbeat) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(beat).expect("a heartbeat serialises");
        let ttl_ms = crate::heartbeat::HEARTBEAT_TTL.as_millis() as u64;
        let _: () = redis::cmd("SET")
            .arg(crate::heartbeat::key(&beat.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) an operator's order to a worker.
    pub async fn set_worker_order(&self, worker: &str, order: crate::heartbeat::Order) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let key = crate::heartbeat::order_key(worker);
        let _: () = match order {
            crate::heartbeat::Order::Run => {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut conn).await.map(|_| ())?
            }
            crate::heartbeat::Order::Cordon => redis::cmd("SET").arg(key).arg("cordon").query_async(&mut conn).await?,
            crate::heartbeat::Order::Drain => redis::cmd("SET").arg(key).arg("drain").query_async(&mut conn).await?,
        };
        Ok(())
    }

    /// The operator's order to a worker.
    pub async fn worker_order(&self, worker: &str) -> Result<crate::heartbeat::Order, JobStoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> =
            redis::cmd("GET").arg(crate::heartbeat::order_key(worker)).query_async(&mut conn).await?;
        Ok(crate::heartbeat::Order::parse(raw.as_deref()))
    }

    /// Every tenant that has submitted a job.
    pub async fn tenants(&self) -> Result<Vec<TenantId>, JobStoreError> {
        let mut conn = self.conn.clone();
        let (mut out, mut cursor) = (Vec::new(), 0u64);
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("fleet:jobs:*")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            out.extend(page.iter().filter_map(|k| k.strip_prefix("fleet:jobs:")).filter_map(|t| TenantId::new(t).ok()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        Ok(out)
    }

    /// Removes a worker's heartbeat (it stopped cleanly).
    pub async fn remove_heartbeat(&self, worker: &str) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL").arg(crate::heartbeat::key(worker)).query_async(&mut conn).await?;
        Ok(())
    }

    /// Every live worker's latest heartbeat, by id.
    pub async fn heartbeats(&self) -> Result<Vec<crate::heartbeat::Heartbeat>, JobStoreError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(crate::heartbeat::key("*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut beats = Vec::with_capacity(keys.len());
        for k in keys {
            let raw: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
            if let Some(json) = raw {
                beats.push(serde_json::from_str(&json).map_err(corrupt(&k))?);
            }
        }
        beats.sort_by(|a: &crate::heartbeat::Heartbeat, b| a.id.cmp(&b.id));
        Ok(beats)
    }
}
