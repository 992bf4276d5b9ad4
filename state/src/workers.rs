//! The fleet view: workers' heartbeats and orders, and the tenants with jobs.

use fleet_protocol::heartbeat::{Heartbeat, Order, HEARTBEAT_TTL};
use fleet_protocol::keys::TenantId;

use crate::error::{corrupt, JobStoreError};
use crate::jobs::RedisJobStore;
use crate::schema::{heartbeat_key, order_key};

impl RedisJobStore {
    /// Writes a worker's heartbeat, readable for [`HEARTBEAT_TTL`](HEARTBEAT_TTL).
    pub async fn put_heartbeat(&self, beat: &Heartbeat) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(beat).expect("a heartbeat serialises");
        let ttl_ms = HEARTBEAT_TTL.as_millis() as u64;
        let _: () = redis::cmd("SET")
            .arg(heartbeat_key(&beat.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) an operator's order to a worker.
    pub async fn set_worker_order(&self, worker: &str, order: Order) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        let key = order_key(worker);
        let _: () = match order {
            Order::Run => redis::cmd("DEL").arg(key).query_async::<i64>(&mut conn).await.map(|_| ())?,
            Order::Cordon => redis::cmd("SET").arg(key).arg("cordon").query_async(&mut conn).await?,
            Order::Drain => redis::cmd("SET").arg(key).arg("drain").query_async(&mut conn).await?,
        };
        Ok(())
    }

    /// The operator's order to a worker.
    pub async fn worker_order(&self, worker: &str) -> Result<Order, JobStoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET").arg(order_key(worker)).query_async(&mut conn).await?;
        Ok(Order::parse(raw.as_deref()))
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
        let _: i64 = redis::cmd("DEL").arg(heartbeat_key(worker)).query_async(&mut conn).await?;
        Ok(())
    }

    /// Every live worker's latest heartbeat, by id. Each beat's `at_ms` is re-expressed on
    /// the reader's clock from the time left on its key (Redis's clock counts it down from
    /// [`HEARTBEAT_TTL`] at the write), so a worker whose clock is off looks neither silent
    /// nor fresher than it is.
    pub async fn heartbeats(&self) -> Result<Vec<Heartbeat>, JobStoreError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(heartbeat_key("*"))
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
        let ttl_ms = HEARTBEAT_TTL.as_millis() as i64;
        for k in keys {
            let (raw, left_ms): (Option<String>, i64) =
                redis::pipe().cmd("GET").arg(&k).cmd("PTTL").arg(&k).query_async(&mut conn).await?;
            if let Some(json) = raw {
                let mut beat: Heartbeat = serde_json::from_str(&json).map_err(corrupt(&k))?;
                let age_ms = (ttl_ms - left_ms.max(0)).clamp(0, ttl_ms) as u64;
                beat.at_ms = fleet_protocol::message::now_ms().saturating_sub(age_ms);
                beats.push(beat);
            }
        }
        beats.sort_by(|a: &Heartbeat, b| a.id.cmp(&b.id));
        Ok(beats)
    }
}
