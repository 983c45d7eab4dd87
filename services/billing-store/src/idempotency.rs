//! Idempotency keys of control-API POSTs (Stripe's semantics, docs/control-api.md): who sent
//! which key with which request, and the answer it got, kept 24 hours. The SQL is written once
//! and instantiated for both stores by [`idempotency_store!`], like the ledger's.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::BillingStoreError;

/// How long an answer is replayed.
pub const KEEP: Duration = Duration::hours(24);
/// A claim older than this without an answer is from a request that died: it may be taken.
pub const ABANDONED: Duration = Duration::seconds(60);

/// A request's claim on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// Who sent it (`admin`, `finance`, `partner:<id>`): keys of different callers never meet.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the method, path, query and body.
    pub request_hash: String,
    pub at: DateTime<Utc>,
}

/// The answer kept for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key is new (or its last use expired): this request runs, then completes or releases.
    Claimed,
    /// Another request holds the key and has not answered yet.
    InFlight { request_hash: String },
    /// The key was answered: replay it if the request is the same.
    Answered {
        request_hash: String,
        answer: KeptAnswer,
    },
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `claim.key` for `claim.scope`, forgetting answers older than [`KEEP`] and claims
    /// abandoned for [`ABANDONED`] first.
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, BillingStoreError>;
    /// Keeps the answer of a claimed key.
    async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        answer: &KeptAnswer,
    ) -> Result<(), BillingStoreError>;
    /// Gives a claimed key up without an answer (the request failed on the server's side): a
    /// retry with it runs afresh.
    async fn release_idempotency_key(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<(), BillingStoreError>;
}

/// Implements [`IdempotencyStore`] for a store with a `pool` field of an sqlx pool type.
macro_rules! idempotency_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::idempotency::IdempotencyStore for $store {
            async fn claim_idempotency_key(
                &self,
                claim: &$crate::idempotency::IdempotencyClaim,
            ) -> Result<$crate::idempotency::ClaimOutcome, $crate::BillingStoreError> {
                use sqlx::Row as _;
                use $crate::idempotency::{ClaimOutcome, KeptAnswer, ABANDONED, KEEP};
                use $crate::ledger::ts;
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE created_at < $1 \
                     OR (status IS NULL AND created_at < $2)",
                )
                .bind(ts(claim.at - KEEP))
                .bind(ts(claim.at - ABANDONED))
                .execute(&self.pool)
                .await?;
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (scope, key) DO NOTHING",
                )
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.request_hash)
                .bind(ts(claim.at))
                .execute(&self.pool)
                .await?;
                if inserted.rows_affected() == 1 {
                    return Ok(ClaimOutcome::Claimed);
                }
                let row = sqlx::query(
                    "SELECT request_hash, status, content_type, body FROM idempotency_keys \
                     WHERE scope = $1 AND key = $2",
                )
                .bind(&claim.scope)
                .bind(&claim.key)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else {
                    // Expired and deleted by another claim between the two statements.
                    return Ok(ClaimOutcome::InFlight {
                        request_hash: String::new(),
                    });
                };
                let request_hash: String = row.try_get("request_hash")?;
                let status: Option<i64> = row.try_get("status")?;
                Ok(match status {
                    None => ClaimOutcome::InFlight { request_hash },
                    Some(status) => ClaimOutcome::Answered {
                        request_hash,
                        answer: KeptAnswer {
                            status: u16::try_from(status).map_err(|_| {
                                $crate::BillingStoreError::Corrupt {
                                    what: "idempotency key",
                                    reason: format!("status {status}"),
                                }
                            })?,
                            content_type: row.try_get("content_type")?,
                            body: row
                                .try_get::<Option<String>, _>("body")?
                                .unwrap_or_default(),
                        },
                    },
                })
            }

            async fn complete_idempotency_key(
                &self,
                scope: &str,
                key: &str,
                answer: &$crate::idempotency::KeptAnswer,
            ) -> Result<(), $crate::BillingStoreError> {
                sqlx::query(
                    "UPDATE idempotency_keys SET status = $1, content_type = $2, body = $3 \
                     WHERE scope = $4 AND key = $5",
                )
                .bind(i64::from(answer.status))
                .bind(&answer.content_type)
                .bind(&answer.body)
                .bind(scope)
                .bind(key)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn release_idempotency_key(
                &self,
                scope: &str,
                key: &str,
            ) -> Result<(), $crate::BillingStoreError> {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL",
                )
                .bind(scope)
                .bind(key)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use idempotency_store;
