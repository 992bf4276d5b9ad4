//! Which scheduler leads: one key, `fleet:scheduler:leader`, holding the leader's id with a
//! TTL. A scheduler takes it only when nobody holds it (`SET NX PX`), renews it only while it
//! still holds it, and gives it up only if it is still its own, so two schedulers never both
//! believe they lead for longer than the leader needs to notice it failed to renew.

use std::time::Duration;

use crate::error::JobStoreError;
use crate::jobs::RedisJobStore;
use crate::schema::LEADER_KEY;

/// Renews the leader key's TTL if `ARGV[1]` still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the leader key if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisJobStore {
    /// Takes the lead as `holder` for `ttl` unless another holds it: `None` when `holder`
    /// leads now, else the holder's id.
    pub async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<String>, JobStoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(LEADER_KEY)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let current: Option<String> = redis::cmd("GET").arg(LEADER_KEY).query_async(&mut conn).await?;
        Ok(match current {
            Some(current) if current == holder => None,
            Some(current) => Some(current),
            // Expired between the two calls: the next try takes it.
            None => Some(String::new()),
        })
    }

    /// Extends `holder`'s lead by `ttl`; false when it no longer leads.
    pub async fn renew_leadership(&self, holder: &str, ttl: Duration) -> Result<bool, JobStoreError> {
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(RENEW));
        let renewed: i64 =
            SCRIPT.key(LEADER_KEY).arg(holder).arg(ttl.as_millis() as u64).invoke_async(&mut conn).await?;
        Ok(renewed == 1)
    }

    /// Gives up `holder`'s lead, if it still has it, so a standby takes over at once.
    pub async fn release_leadership(&self, holder: &str) -> Result<(), JobStoreError> {
        let mut conn = self.conn.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(RELEASE));
        let _: i64 = SCRIPT.key(LEADER_KEY).arg(holder).invoke_async(&mut conn).await?;
        Ok(())
    }
}
