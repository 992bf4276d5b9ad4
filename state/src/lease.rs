//! Task leases with fencing tokens, in Redis.
//!
//! The scheduler's dispatcher grants a lease when it places a task on a worker's device; the
//! worker renews its leases on every heartbeat; a lease not renewed for
//! [`LEASE_TTL`] (three heartbeat periods) has expired, and the scheduler takes the task over
//! and dispatches it again. Every grant and every takeover draws a new token from one
//! counter, and every report a worker makes carries the token it was given: a report whose
//! token is no longer the lease's (the task was taken over while the worker was silent) is
//! ignored, so a late worker never writes a count twice.
//!
//! ```text
//! fleet:lease:<tenant>/<job>/<task>  hash: token, worker, device, priority, expires_ms,
//!                                    grants, not_before_ms, body (the TaskMessage JSON),
//!                                    preempt (set: the holder is asked to give the task back)
//! fleet:leases                       sorted set task id -> expires_ms (held leases only)
//! fleet:load                         hash "<worker>|<device>|<priority>" -> leases held
//! fleet:requeue                      set of task ids taken from their worker, to dispatch again
//! fleet:lease:seq                    the token counter
//! ```
//!
//! A worker acknowledges a task's AMQP delivery as soon as it holds the lease: a task that
//! runs for hours holds a lease, never an unacknowledged delivery, so RabbitMQ's consumer
//! timeout does not apply to it.

use std::collections::HashMap;
use std::time::Duration;

use fleet_protocol::heartbeat::HEARTBEAT_PERIOD;
use fleet_protocol::keys::TenantId;

use crate::error::JobStoreError;
use crate::jobs::RedisJobStore;
use crate::schema::{lease_key, LEASES_KEY, LOAD_KEY, REQUEUE_KEY, TOKEN_SEQ_KEY};

/// A lease not renewed for this long has expired: three heartbeat periods.
pub const LEASE_TTL: Duration = Duration::from_secs(3 * HEARTBEAT_PERIOD.as_secs());

/// Grants after which a task whose workers keep dying is failed instead of dispatched again.
pub const MAX_GRANTS: u32 = 2 * fleet_protocol::topology::MAX_ATTEMPTS;

/// Grants a lease unless the task ended or another live worker holds it.
const GRANT: &str = concat!(include_str!("scripts/clock.lua"), include_str!("scripts/grant.lua"));

/// Renews the leases a worker holds; returns the ids of those it no longer holds and of
/// those it is asked to give back.
const RENEW: &str = concat!(include_str!("scripts/clock.lua"), include_str!("scripts/renew.lua"));

/// Asks the holder of a lease to give its task back (a preemption), if a worker holds it.
const PREEMPT: &str = include_str!("scripts/preempt.lua");

/// Takes back one grant of a task its worker gave back (drained or preempted).
const FORGIVE: &str = include_str!("scripts/forgive.lua");

/// What a renewal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Tasks whose lease the worker no longer holds: it must abandon them.
    pub lost: Vec<String>,
    /// Tasks it still holds but is asked to give back (preempted): it checkpoints them and
    /// reports them released.
    pub preempt: Vec<String>,
}

/// Gives back a lease while it still carries token `ARGV[1]`: its worker loses it (a new
/// token), and with `ARGV[3]` = 1 the lease is deleted outright.
const ABANDON: &str = concat!(include_str!("scripts/clock.lua"), include_str!("scripts/abandon.lua"));

/// What a grant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The lease is the worker's.
    Granted {
        /// Its fencing token.
        token: u64,
        /// Grants of this task so far, this one included: the attempt number.
        grants: u32,
    },
    /// The task already ended: nothing to do (a duplicate copy).
    Ended,
    /// A live worker holds it (a duplicate copy).
    Held,
    /// No such task.
    Gone,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Task id.
    pub id: String,
    /// Current token.
    pub token: u64,
    /// Holder (empty when taken back).
    pub worker: String,
    /// Device index on the holder.
    pub device: u32,
    /// When it expires unless renewed (ms since the epoch).
    pub expires_ms: u64,
    /// Grants so far.
    pub grants: u32,
    /// Earliest re-dispatch (ms since the epoch).
    pub not_before_ms: u64,
    /// The task message.
    pub body: String,
}

/// Leases held per worker, device and priority.
pub type Load = HashMap<(String, u32, String), u32>;

impl RedisJobStore {
    /// Grants task `id` (task number `task` of `tenant`'s `job`) to `worker`'s device
    /// `device`, storing `body` so the task can be dispatched again if the worker dies.
    #[allow(clippy::too_many_arguments)]
    pub async fn grant_lease(
        &self,
        tenant: &TenantId,
        job: &str,
        task: u32,
        worker: &str,
        device: u32,
        priority: &str,
        body: &[u8],
    ) -> Result<Grant, JobStoreError> {
        let id = fleet_protocol::message::task_id(tenant.as_str(), job, task);
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(GRANT));
        let reply: Vec<String> = SCRIPT
            .key(lease_key(&id))
            .key(LEASES_KEY)
            .key(LOAD_KEY)
            .key(REQUEUE_KEY)
            .key(TOKEN_SEQ_KEY)
            .key(format!("fleet:tasks:{tenant}:{job}"))
            .arg(&id)
            .arg(task)
            .arg(worker)
            .arg(device)
            .arg(priority)
            .arg(LEASE_TTL.as_millis() as u64)
            .arg(body)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("granted") => Grant::Granted {
                token: reply.get(1).and_then(|t| t.parse().ok()).unwrap_or(0),
                grants: reply.get(2).and_then(|g| g.parse().ok()).unwrap_or(1),
            },
            Some("ended") => Grant::Ended,
            Some("held") => Grant::Held,
            _ => Grant::Gone,
        })
    }

    /// Gives back a lease whose task could not be sent to the worker (the task's queue
    /// delivery still holds it).
    pub async fn abandon_lease(&self, id: &str, token: u64) -> Result<bool, JobStoreError> {
        self.drop_lease(id, token, false).await
    }

    /// Deletes the lease of a task that ended, if it still carries `token`.
    pub async fn end_lease(&self, id: &str, token: u64) -> Result<bool, JobStoreError> {
        self.drop_lease(id, token, true).await
    }

    async fn drop_lease(&self, id: &str, token: u64, delete: bool) -> Result<bool, JobStoreError> {
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(ABANDON));
        let done: i64 = SCRIPT
            .key(lease_key(id))
            .key(LEASES_KEY)
            .key(LOAD_KEY)
            .key(TOKEN_SEQ_KEY)
            .key(REQUEUE_KEY)
            .arg(token)
            .arg(id)
            .arg(if delete { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(done == 1)
    }

    /// Takes back the last grant of task `id`, which its worker gave back rather than lost:
    /// the grant count (the attempt number, and the limit on workers dying with the task)
    /// counts losses and failures, not preemptions and drains.
    pub async fn forgive_grant(&self, id: &str) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(FORGIVE));
        let _: i64 = SCRIPT.key(lease_key(id)).invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Asks the worker holding task `id` to give it back; false if no worker holds it.
    pub async fn request_preemption(&self, id: &str) -> Result<bool, JobStoreError> {
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(PREEMPT));
        let done: i64 = SCRIPT.key(lease_key(id)).invoke_async(&mut conn).await?;
        Ok(done == 1)
    }

    /// Renews `worker`'s leases `(task id, token)`; says which it no longer holds and which
    /// it is asked to give back.
    pub async fn renew_leases(&self, worker: &str, held: &[(String, u64)]) -> Result<Renewal, JobStoreError> {
        if held.is_empty() {
            return Ok(Renewal::default());
        }
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(RENEW));
        let mut invocation = SCRIPT.key(LEASES_KEY);
        invocation.arg(worker).arg(LEASE_TTL.as_millis() as u64);
        for (id, token) in held {
            invocation.arg(id).arg(token);
        }
        let (lost, preempt): (Vec<String>, Vec<String>) = invocation.invoke_async(&mut conn).await?;
        Ok(Renewal { lost, preempt })
    }

    /// The current token of task `id`'s lease, if it has one.
    pub async fn lease_token(&self, id: &str) -> Result<Option<u64>, JobStoreError> {
        let mut conn = self.conn.clone();
        let token: Option<u64> = redis::cmd("HGET").arg(lease_key(id)).arg("token").query_async(&mut conn).await?;
        Ok(token)
    }

    /// The lease of task `id`.
    pub async fn lease(&self, id: &str) -> Result<Option<LeaseRecord>, JobStoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(lease_key(id)).query_async(&mut conn).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Some(LeaseRecord {
            id: id.to_string(),
            token: num("token"),
            worker: fields.get("worker").cloned().unwrap_or_default(),
            device: num("device") as u32,
            expires_ms: num("expires_ms"),
            grants: num("grants") as u32,
            not_before_ms: num("not_before_ms"),
            body: fields.get("body").cloned().unwrap_or_default(),
        }))
    }

    /// Redis's clock, ms since the epoch: the one clock lease times are kept on.
    pub async fn server_now_ms(&self) -> Result<u64, JobStoreError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// How long Redis has been up.
    pub async fn server_uptime(&self) -> Result<Duration, JobStoreError> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let secs = info
            .lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX);
        Ok(Duration::from_secs(secs))
    }

    /// Held leases that expired by Redis's clock (at most `limit`). None while Redis has been
    /// up for less than a lease's life: after a restart, a lease whose time ran out while
    /// Redis was down was not forsaken by its worker, which renews it as soon as it can.
    pub async fn expired_leases(&self, limit: usize) -> Result<Vec<LeaseRecord>, JobStoreError> {
        if self.server_uptime().await? < LEASE_TTL {
            return Ok(Vec::new());
        }
        let now_ms = self.server_now_ms().await?;
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(LEASES_KEY)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.lease(&id).await? {
                Some(lease) => out.push(lease),
                None => {
                    let _: () = redis::cmd("ZREM").arg(LEASES_KEY).arg(&id).query_async(&mut conn).await?;
                }
            }
        }
        Ok(out)
    }

    /// Tasks taken back from their worker whose re-dispatch is due at `now_ms`.
    pub async fn requeue_due(&self, now_ms: u64) -> Result<Vec<LeaseRecord>, JobStoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS").arg(REQUEUE_KEY).query_async(&mut conn).await?;
        let mut out = Vec::new();
        for id in ids {
            match self.lease(&id).await? {
                Some(lease) if lease.worker.is_empty() && lease.not_before_ms <= now_ms => out.push(lease),
                Some(lease) if lease.worker.is_empty() => {}
                _ => self.requeued(&id).await?,
            }
        }
        Ok(out)
    }

    /// Marks task `id` as sent back to its task queue.
    pub async fn requeued(&self, id: &str) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SREM").arg(REQUEUE_KEY).arg(id).query_async(&mut conn).await?;
        Ok(())
    }

    /// Leases held per worker, device and priority.
    pub async fn load(&self) -> Result<Load, JobStoreError> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, i64> = redis::cmd("HGETALL").arg(LOAD_KEY).query_async(&mut conn).await?;
        let mut out = Load::new();
        for (slot, n) in raw {
            let mut parts = slot.rsplitn(3, '|');
            let (Some(priority), Some(device), Some(worker)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if let (Ok(device), true) = (device.parse(), n > 0) {
                out.insert((worker.to_string(), device, priority.to_string()), n as u32);
            }
        }
        Ok(out)
    }
}
