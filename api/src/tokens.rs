//! API tokens, stored hashed in Redis.
//!
//! A token reads `fleet_<id>_<secret>`: `id` (16 hex digits) names the record, `secret` is 32
//! random bytes (base64url). Only the secret's SHA-256 is stored, so a copy of Redis opens
//! nothing. A plain hash is enough here (no salt, no slow hash): the secret is 256 random bits,
//! not a password a person chose, so there is no dictionary to try. Revoking keeps the record
//! (who, when) and refuses the token from the next request on.
//!
//! ```text
//! fleet:api:token:<id>   hash: role, tenant, name, sha256, created_ms, revoked_ms
//! fleet:api:tokens       sorted set of ids by creation time
//! ```

use base64::Engine;
use fleet_protocol::keys::TenantId;
use rand::RngCore;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acts for one tenant: its jobs, its uploads, its models, its webhook.
    Tenant,
    /// Runs the fleet: tokens and workers; acts on no tenant's jobs.
    Operator,
}

/// A token's record, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TokenInfo {
    /// The token's id (the part of the token after `fleet_`).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// The tenant it acts for (tenant tokens only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A name for people ("ci", "catalog-sync").
    pub name: String,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// When it was revoked, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// The token store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record is unreadable.
    #[error("token record {id} is corrupt: {reason}")]
    Corrupt {
        /// The token id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Tokens in Redis.
#[derive(Clone)]
pub struct TokenStore {
    conn: ConnectionManager,
}

const INDEX_KEY: &str = "fleet:api:tokens";

fn record_key(id: &str) -> String {
    format!("fleet:api:token:{id}")
}

fn digest(secret: &str) -> String {
    let hash = Sha256::digest(secret.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `fleet_<id>_<secret>`; `None` when it is not of that form.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("fleet_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((id, secret))
}

/// Compares in time that does not depend on where the inputs first differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenStore {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<TokenStore, TokenError> {
        let client = redis::Client::open(url)?;
        Ok(TokenStore { conn: ConnectionManager::new(client).await? })
    }

    /// Makes a token; returns it (shown once: only its hash is kept) with its record.
    pub async fn create(
        &self,
        role: Role,
        tenant: Option<&TenantId>,
        name: &str,
    ) -> Result<(String, TokenInfo), TokenError> {
        // The generator is not Send: it is dropped before the first await.
        let (id, secret_bytes) = {
            let mut rng = rand::thread_rng();
            let id: String = (0..8).map(|_| format!("{:02x}", rng.next_u32() as u8)).collect();
            let mut secret_bytes = [0u8; 32];
            rng.fill_bytes(&mut secret_bytes);
            (id, secret_bytes)
        };
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
        let info = TokenInfo {
            id: id.clone(),
            role,
            tenant: tenant.map(|t| t.as_str().to_string()),
            name: name.to_string(),
            created_ms: fleet_protocol::message::now_ms(),
            revoked_ms: None,
        };
        let role_name = match role {
            Role::Tenant => "tenant",
            Role::Operator => "operator",
        };
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(record_key(&id))
            .arg("role")
            .arg(role_name)
            .arg("tenant")
            .arg(info.tenant.as_deref().unwrap_or(""))
            .arg("name")
            .arg(name)
            .arg("sha256")
            .arg(digest(&secret))
            .arg("created_ms")
            .arg(info.created_ms)
            .ignore()
            .cmd("ZADD")
            .arg(INDEX_KEY)
            .arg(info.created_ms)
            .arg(&id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok((format!("fleet_{id}_{secret}"), info))
    }

    /// The record of `id` with its stored hash; `None` when there is none.
    async fn record(&self, id: &str) -> Result<Option<(TokenInfo, String)>, TokenError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(record_key(id)).query_async(&mut conn).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let corrupt = |reason: &str| TokenError::Corrupt { id: id.to_string(), reason: reason.to_string() };
        let role = match get("role") {
            Some("tenant") => Role::Tenant,
            Some("operator") => Role::Operator,
            _ => return Err(corrupt("no role")),
        };
        let tenant = get("tenant").filter(|t| !t.is_empty()).map(str::to_string);
        if role == Role::Tenant && tenant.is_none() {
            return Err(corrupt("a tenant token without a tenant"));
        }
        let info = TokenInfo {
            id: id.to_string(),
            role,
            tenant,
            name: get("name").unwrap_or_default().to_string(),
            created_ms: get("created_ms").and_then(|v| v.parse().ok()).unwrap_or(0),
            revoked_ms: get("revoked_ms").and_then(|v| v.parse().ok()),
        };
        Ok(Some((info, get("sha256").ok_or_else(|| corrupt("no hash"))?.to_string())))
    }

    /// The record of a presented token: `None` when it is malformed, unknown, wrong or revoked.
    pub async fn verify(&self, token: &str) -> Result<Option<TokenInfo>, TokenError> {
        let Some((id, secret)) = parse(token) else { return Ok(None) };
        match self.record(id).await? {
            Some((info, hash)) if same(&hash, &digest(secret)) && info.revoked_ms.is_none() => Ok(Some(info)),
            _ => Ok(None),
        }
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE").arg(INDEX_KEY).arg(0).arg(-1).query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((info, _)) = self.record(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Revokes `id` (from the next request on); `None` when there is no such token, else its
    /// record as revoked (revoking twice keeps the first time).
    pub async fn revoke(&self, id: &str) -> Result<Option<TokenInfo>, TokenError> {
        if self.record(id).await?.is_none() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let now = fleet_protocol::message::now_ms();
        let _: bool =
            redis::cmd("HSETNX").arg(record_key(id)).arg("revoked_ms").arg(now).query_async(&mut conn).await?;
        Ok(self.record(id).await?.map(|(info, _)| info))
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_form_parses() {
        assert_eq!(parse("fleet_0123456789abcdef_c2VjcmV0"), Some(("0123456789abcdef", "c2VjcmV0")));
        for bad in [
            "",
            "fleet_",
            "fleet_0123_abc",
            "fleet_0123456789abcdeg_x",
            "flt_0123456789abcdef_x",
            "fleet_0123456789abcdef_",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = digest("one secret");
        assert!(same(&a, &digest("one secret")));
        assert!(!same(&a, &digest("another secret")));
        assert!(!same(&a, &a[..63]));
        assert_eq!(a.len(), 64);
    }
}
