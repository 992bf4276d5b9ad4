//! Tasks, progress counters, sharding cursors, item failures and rejections of a job.

use std::collections::BTreeMap;

use fleet_protocol::job::{Priority, Rejection};
use fleet_protocol::keys::TenantId;
use fleet_protocol::message::{ItemFailureReport, Progress};
use fleet_protocol::state::{TaskEvent, TaskState};

use crate::error::{corrupt, JobStoreError, CAS_ATTEMPTS};
use crate::jobs::{parse_progress, RedisJobStore};
use crate::record::{LeaseOp, TaskNote, TaskOutcome, TaskRecord, TaskUpdate};
use crate::schema::{
    job_key, lease_key, BACKLOG_KEY, ENDED_KEY, LEASES_KEY, LOAD_KEY, QUEUED_ITEMS_KEY, REQUEUE_KEY, SHARDING_KEY,
    TOKEN_SEQ_KEY,
};

/// How long a rejection stays readable.
const REJECTION_TTL_S: u64 = 7 * 24 * 3600;

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
        priority: Priority,
    ) -> Result<Option<TaskRecord>, JobStoreError> {
        let record = TaskRecord {
            state: TaskState::Dispatched { attempt: 1 },
            items,
            worker: None,
            last_error: None,
            started_at_ms: None,
            priority: Some(priority),
        };
        let json = serde_json::to_string(&record).expect("a task record serialises");
        let tasks = job_key("tasks", tenant, job);
        let mut conn = self.conn.clone();
        let existing: Option<String> = self
            .create_task
            .key(&tasks)
            .key(job_key("progress", tenant, job))
            .key(QUEUED_ITEMS_KEY)
            .key(BACKLOG_KEY)
            .arg(task)
            .arg(json)
            .arg(items)
            .arg(tenant.as_str())
            .arg(priority.as_str())
            .invoke_async(&mut conn)
            .await?;
        existing.map(|json| serde_json::from_str(&json).map_err(corrupt(&tasks))).transpose()
    }

    /// Tasks not yet ended, per tenant and priority, and tasks ended so far per priority (the
    /// backlog and its drain: `fleet_backlog_tasks`, `fleetctl queue`).
    pub async fn backlog(&self) -> Result<Backlog, JobStoreError> {
        let mut conn = self.conn.clone();
        let (waiting, ended): (BTreeMap<String, i64>, BTreeMap<String, i64>) =
            redis::pipe().hgetall(BACKLOG_KEY).hgetall(ENDED_KEY).query_async(&mut conn).await?;
        let mut backlog = Backlog::default();
        for (field, n) in waiting {
            let Some((tenant, priority)) = field.rsplit_once('|') else { continue };
            let Some(priority) = Priority::ALL.into_iter().find(|p| p.as_str() == priority) else { continue };
            backlog.waiting.insert((tenant.to_string(), priority), n.max(0) as u64);
        }
        for priority in Priority::ALL {
            backlog.ended.insert(priority, ended.get(priority.as_str()).copied().unwrap_or(0).max(0) as u64);
        }
        Ok(backlog)
    }

    /// Items in `tenant`'s tasks not yet ended (the `max_queued_items` quota's count).
    pub async fn queued_items(&self, tenant: &TenantId) -> Result<u64, JobStoreError> {
        let mut conn = self.conn.clone();
        let n: Option<i64> =
            redis::cmd("HGET").arg(QUEUED_ITEMS_KEY).arg(tenant.as_str()).query_async(&mut conn).await?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Adds one to the counter `key`, which lives `window_s` seconds from its first count;
    /// the count so far (a fixed-window rate limit).
    pub async fn count_in_window(&self, key: &str, window_s: u64) -> Result<u64, JobStoreError> {
        let mut conn = self.conn.clone();
        let (n,): (u64,) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(key)
            .cmd("EXPIRE")
            .arg(key)
            .arg(window_s)
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(n)
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
        let id = fleet_protocol::message::task_id(tenant.as_str(), job, task);
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
                .key(lease_key(&id))
                .key(LEASES_KEY)
                .key(LOAD_KEY)
                .key(REQUEUE_KEY)
                .key(TOKEN_SEQ_KEY)
                .key(QUEUED_ITEMS_KEY)
                .key(BACKLOG_KEY)
                .key(ENDED_KEY)
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

/// The fleet's backlog: tasks not yet ended per (tenant, priority), and tasks ended so far
/// per priority (a counter; its rate is the drain rate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Tasks waiting or running, per tenant and priority.
    pub waiting: BTreeMap<(String, Priority), u64>,
    /// Tasks ended since the store began, per priority.
    pub ended: BTreeMap<Priority, u64>,
}

impl Backlog {
    /// Tasks not yet ended at `priority`, all tenants.
    pub fn waiting_at(&self, priority: Priority) -> u64 {
        self.waiting.iter().filter(|((_, p), _)| *p == priority).map(|(_, n)| n).sum()
    }
}
