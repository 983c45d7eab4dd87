//! Billing state on PostgreSQL (distributed mode): the same behaviour as the SQLite store,
//! checked by the shared conformance suite. Times are `timestamptz` (microseconds).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::{KeyId, PartnerId};
use peage_core::Env;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use peage_core::pricing::Quota;
use peage_core::quota::{Grant, QuotaLedger};
use rust_decimal::Decimal;

use crate::ledger::ts;
use crate::{
    decide_grant, ledger_of, ApiKey, BillingStore, BillingStoreError, NewKey, Partner, PlanChange,
    QuotaKey, SigningKey, Subscription, TrustedIssuer,
};

#[derive(Clone)]
pub struct PostgresBillingStore {
    pool: PgPool,
}

const PARTNER_SELECT: &str =
    "SELECT p.id, p.name, p.external_id, p.created_at, s.plan_id, s.plan_version, s.started_at, s.ended_at \
     FROM partners p JOIN subscriptions s ON s.partner_id = p.id \
     AND NOT EXISTS (SELECT 1 FROM subscriptions n WHERE n.partner_id = s.partner_id AND n.started_at > s.started_at)";

fn subscription_from(row: &PgRow) -> Result<Subscription, BillingStoreError> {
    Ok(Subscription {
        plan_id: row.try_get("plan_id")?,
        plan_version: row.try_get("plan_version")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

fn partner_from(row: &PgRow) -> Result<Partner, BillingStoreError> {
    Ok(Partner {
        id: crate::parse_id("partner", row.try_get("id")?)?,
        name: row.try_get("name")?,
        external_id: row.try_get("external_id")?,
        created_at: row.try_get("created_at")?,
        subscription: subscription_from(row)?,
    })
}

fn key_from(row: &PgRow) -> Result<ApiKey, BillingStoreError> {
    let env: String = row.try_get("env")?;
    Ok(ApiKey {
        key_id: crate::parse_id("api key", row.try_get("key_id")?)?,
        partner_id: crate::parse_id("api key", row.try_get("partner_id")?)?,
        env: Env::parse(&env).ok_or(BillingStoreError::Corrupt {
            what: "api key",
            reason: format!("env {env:?}"),
        })?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const KEY_COLUMNS: &str = "key_id, partner_id, env, prefix, name, created_at, revoked_at";

fn issuer_from(row: &PgRow) -> Result<TrustedIssuer, BillingStoreError> {
    let env: String = row.try_get("env")?;
    Ok(TrustedIssuer {
        id: crate::parse_id("issuer", row.try_get("id")?)?,
        partner_id: crate::parse_id("issuer", row.try_get("partner_id")?)?,
        issuer: row.try_get("issuer")?,
        jwks_url: row.try_get("jwks_url")?,
        algorithm: row.try_get("algorithm")?,
        audience: row.try_get("audience")?,
        env: Env::parse(&env).ok_or(BillingStoreError::Corrupt {
            what: "issuer",
            reason: format!("env {env:?}"),
        })?,
        created_at: row.try_get("created_at")?,
    })
}

const ISSUER_COLUMNS: &str =
    "id, partner_id, issuer, jwks_url, algorithm, audience, env, created_at";

/// How long a query waits for a connection (a new one included) before the store answers
/// that the database is unavailable.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

impl PostgresBillingStore {
    /// Connects (`postgres://user:password@host:port/db`) and applies the migrations under
    /// `schemas/sql/postgres/billing`.
    pub async fn connect(url: &str) -> Result<PostgresBillingStore, BillingStoreError> {
        let options: PgConnectOptions = url.parse()?;
        Self::connect_with(options).await
    }

    pub async fn connect_with(
        options: PgConnectOptions,
    ) -> Result<PostgresBillingStore, BillingStoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // An outage is answered within a second (503, Retry-After) rather than after a
            // caller's own timeout; the pool reconnects by itself when the server is back.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../schemas/sql/postgres/billing")
            .run(&pool)
            .await?;
        Ok(PostgresBillingStore { pool })
    }

    async fn required_partner(&self, id: &PartnerId) -> Result<Partner, BillingStoreError> {
        self.partner(id)
            .await?
            .ok_or_else(|| BillingStoreError::NotFound {
                what: "partner",
                id: id.to_string(),
            })
    }
}

#[async_trait]
impl BillingStore for PostgresBillingStore {
    async fn create_partner(
        &self,
        id: &PartnerId,
        name: &str,
        plan: &Subscription,
    ) -> Result<Partner, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO partners (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id.as_str())
            .bind(name)
            .bind(plan.started_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES ($1, $2, $3, $4)")
            .bind(id.as_str())
            .bind(&plan.plan_id)
            .bind(&plan.plan_version)
            .bind(plan.started_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.required_partner(id).await
    }

    async fn partner_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<Partner>, BillingStoreError> {
        let row = sqlx::query(&format!("{PARTNER_SELECT} WHERE p.external_id = $1"))
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(partner_from).transpose()
    }

    async fn set_external_id(
        &self,
        partner_id: &PartnerId,
        external_id: Option<&str>,
    ) -> Result<Partner, BillingStoreError> {
        let updated = sqlx::query("UPDATE partners SET external_id = $1 WHERE id = $2")
            .bind(external_id)
            .bind(partner_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BillingStoreError::Conflict(format!(
                        "external_id {:?} belongs to another partner",
                        external_id.unwrap_or_default()
                    ))
                }
                _ => BillingStoreError::Db(e),
            })?;
        if updated.rows_affected() == 0 {
            return Err(BillingStoreError::NotFound {
                what: "partner",
                id: partner_id.to_string(),
            });
        }
        self.required_partner(partner_id).await
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, BillingStoreError> {
        let row = sqlx::query(&format!("{PARTNER_SELECT} WHERE p.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(partner_from).transpose()
    }

    async fn partners(&self) -> Result<Vec<Partner>, BillingStoreError> {
        let rows = sqlx::query(&format!("{PARTNER_SELECT} ORDER BY p.created_at, p.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(partner_from).collect()
    }

    async fn change_subscription(
        &self,
        partner_id: &PartnerId,
        next: &Subscription,
    ) -> Result<Partner, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        switch_subscription(&mut tx, partner_id, next).await?;
        tx.commit().await?;
        self.required_partner(partner_id).await
    }

    async fn apply_plan_change(
        &self,
        change: &PlanChange,
        next: &Subscription,
        at: DateTime<Utc>,
    ) -> Result<Option<Partner>, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(crate::ledger::plan_changes::CLAIM_APPLIED)
            .bind(ts(at))
            .bind(change.id.as_str())
            .execute(&mut *tx)
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        switch_subscription(&mut tx, &change.partner_id, next).await?;
        tx.commit().await?;
        self.required_partner(&change.partner_id).await.map(Some)
    }

    async fn follow_plan_version(
        &self,
        plan_id: &str,
        version: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<PartnerId>, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        // RETURNING gives the rows this transaction ended: a concurrent one waits on their
        // locks and then finds them ended, so each partner moves once.
        let ended = sqlx::query(
            "UPDATE subscriptions SET ended_at = $1 WHERE plan_id = $2 AND plan_version <> $3 \
             AND ended_at IS NULL RETURNING partner_id",
        )
        .bind(at)
        .bind(plan_id)
        .bind(version)
        .fetch_all(&mut *tx)
        .await?;
        let mut moved = Vec::with_capacity(ended.len());
        for row in &ended {
            let id: PartnerId = crate::parse_id("subscription", row.try_get("partner_id")?)?;
            sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES ($1, $2, $3, $4)")
                .bind(id.as_str())
                .bind(plan_id)
                .bind(version)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            moved.push(id);
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn subscriptions(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<Subscription>, BillingStoreError> {
        let rows = sqlx::query("SELECT plan_id, plan_version, started_at, ended_at FROM subscriptions WHERE partner_id = $1 ORDER BY started_at")
            .bind(partner_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(subscription_from).collect()
    }

    async fn all_subscriptions(
        &self,
    ) -> Result<std::collections::HashMap<PartnerId, Vec<Subscription>>, BillingStoreError> {
        let rows = sqlx::query("SELECT partner_id, plan_id, plan_version, started_at, ended_at FROM subscriptions ORDER BY partner_id, started_at")
            .fetch_all(&self.pool)
            .await?;
        let mut out: std::collections::HashMap<PartnerId, Vec<Subscription>> = Default::default();
        for r in &rows {
            out.entry(crate::parse_id("subscription", r.try_get("partner_id")?)?)
                .or_default()
                .push(subscription_from(r)?);
        }
        Ok(out)
    }

    async fn create_key(&self, key: &NewKey) -> Result<ApiKey, BillingStoreError> {
        self.required_partner(&key.partner_id).await?;
        sqlx::query("INSERT INTO api_keys (key_id, partner_id, env, secret_hash, prefix, name, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(key.key_id.as_str())
            .bind(key.partner_id.as_str())
            .bind(key.env.as_str())
            .bind(&key.secret_hash)
            .bind(&key.prefix)
            .bind(key.name.as_deref())
            .bind(key.created_at)
            .execute(&self.pool)
            .await?;
        Ok(ApiKey {
            key_id: key.key_id.clone(),
            partner_id: key.partner_id.clone(),
            env: key.env,
            prefix: key.prefix.clone(),
            name: key.name.clone(),
            created_at: key.created_at,
            revoked_at: None,
        })
    }

    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, BillingStoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn keys(&self, partner_id: &PartnerId) -> Result<Vec<ApiKey>, BillingStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE partner_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(partner_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from).collect()
    }

    async fn revoke_key(
        &self,
        key_id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<ApiKey, BillingStoreError> {
        // The earlier of the two: revoking a key in its overlap window ends the window now.
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 \
             AND (revoked_at IS NULL OR revoked_at > $1)",
        )
        .bind(at)
        .bind(key_id.as_str())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(key_from)
            .transpose()?
            .ok_or_else(|| BillingStoreError::NotFound {
                what: "api key",
                id: key_id.to_string(),
            })
    }

    async fn key(&self, key_id: &KeyId) -> Result<Option<ApiKey>, BillingStoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKey>, BillingStoreError> {
        let rows = sqlx::query(
            "SELECT kid, seed, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SigningKey {
                    kid: row.try_get("kid")?,
                    seed: row.try_get("seed")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            })
            .collect()
    }

    async fn rotate_signing_key(&self, next: &SigningKey) -> Result<(), BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(next.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO signing_keys (kid, seed, created_at) VALUES ($1, $2, $3)")
            .bind(&next.kid)
            .bind(&next.seed)
            .bind(next.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_issuer(&self, issuer: &TrustedIssuer) -> Result<TrustedIssuer, BillingStoreError> {
        sqlx::query(
            "INSERT INTO partner_issuers (id, partner_id, issuer, jwks_url, algorithm, audience, env, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (issuer) DO UPDATE SET jwks_url = excluded.jwks_url, algorithm = excluded.algorithm, \
             audience = excluded.audience, env = excluded.env \
             WHERE partner_issuers.partner_id = excluded.partner_id",
        )
        .bind(issuer.id.as_str())
        .bind(issuer.partner_id.as_str())
        .bind(&issuer.issuer)
        .bind(&issuer.jwks_url)
        .bind(&issuer.algorithm)
        .bind(&issuer.audience)
        .bind(issuer.env.as_str())
        .bind(issuer.created_at)
        .execute(&self.pool)
        .await?;
        match self.issuer(&issuer.issuer).await? {
            Some(stored) if stored.partner_id == issuer.partner_id => Ok(stored),
            _ => Err(BillingStoreError::Conflict(format!(
                "issuer {:?} belongs to another partner",
                issuer.issuer
            ))),
        }
    }

    async fn issuer(&self, issuer: &str) -> Result<Option<TrustedIssuer>, BillingStoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ISSUER_COLUMNS} FROM partner_issuers WHERE issuer = $1"
        ))
        .bind(issuer)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(issuer_from).transpose()
    }

    async fn grant_quota(
        &self,
        key: &QuotaKey,
        gateway_id: &str,
        quota: &Quota,
        used: Decimal,
        want: Decimal,
    ) -> Result<Grant, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        // One quota, one lock, held until commit: rows that do not exist yet cannot be locked
        // with FOR UPDATE, so the lock is on the quota's name.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key.lock_name())
            .execute(&mut *tx)
            .await?;
        let rows = grant_rows(&mut tx, key).await?;
        let (grant, total) = decide_grant(&rows, gateway_id, quota, used, want)?;
        if let Some(total) = total {
            sqlx::query(
                "INSERT INTO quota_grants (partner_id, env, meter, period_start, gateway_id, granted, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (partner_id, env, meter, period_start, gateway_id) \
                 DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at",
            )
            .bind(key.partner_id.as_str())
            .bind(key.env.as_str())
            .bind(&key.meter)
            .bind(key.period_start)
            .bind(gateway_id)
            .bind(total.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(grant)
    }

    async fn quota_ledger(&self, key: &QuotaKey) -> Result<QuotaLedger, BillingStoreError> {
        let mut conn = self.pool.acquire().await?;
        ledger_of(&grant_rows(&mut conn, key).await?, None)
    }
}

async fn grant_rows(
    conn: &mut sqlx::PgConnection,
    key: &QuotaKey,
) -> Result<Vec<(String, String)>, BillingStoreError> {
    Ok(sqlx::query_as(
        "SELECT gateway_id, granted FROM quota_grants \
         WHERE partner_id = $1 AND env = $2 AND meter = $3 AND period_start = $4",
    )
    .bind(key.partner_id.as_str())
    .bind(key.env.as_str())
    .bind(&key.meter)
    .bind(key.period_start)
    .fetch_all(conn)
    .await?)
}

crate::ledger::db::ledger_glue!(PostgresBillingStore, sqlx::Postgres, "BEGIN");
crate::staff::staff_store!(PostgresBillingStore, sqlx::Postgres, "BEGIN");
crate::idempotency::idempotency_store!(PostgresBillingStore);
crate::audit::audit_store!(PostgresBillingStore);
crate::erasure::erasure_store!(PostgresBillingStore, |at: DateTime<Utc>| at);
crate::service_tokens::service_token_store!(PostgresBillingStore, sqlx::Postgres);
crate::revocations::revocation_feed!(
    PostgresBillingStore,
    |t: DateTime<Utc>| t,
    |r: &sqlx::postgres::PgRow| -> Result<DateTime<Utc>, BillingStoreError> {
        Ok(r.try_get("revoked_at")?)
    }
);

/// Ends the partner's current subscription at `next.started_at` and starts `next`.
async fn switch_subscription(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    partner_id: &PartnerId,
    next: &Subscription,
) -> Result<(), BillingStoreError> {
    let ended = sqlx::query(
        "UPDATE subscriptions SET ended_at = $1 WHERE partner_id = $2 AND ended_at IS NULL",
    )
    .bind(next.started_at)
    .bind(partner_id.as_str())
    .execute(&mut **tx)
    .await?;
    if ended.rows_affected() == 0 {
        return Err(BillingStoreError::NotFound {
            what: "partner",
            id: partner_id.to_string(),
        });
    }
    sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES ($1, $2, $3, $4)")
        .bind(partner_id.as_str())
        .bind(&next.plan_id)
        .bind(&next.plan_version)
        .bind(next.started_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
