//! Billing state on SQLite (WAL, `synchronous = FULL`).

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::{KeyId, PartnerId};
use peage_core::Env;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use peage_core::pricing::Quota;
use peage_core::quota::{Grant, QuotaLedger};
use rust_decimal::Decimal;

use crate::{
    decide_grant, ledger_of, ApiKey, BillingStore, BillingStoreError, NewKey, Partner, PlanChange,
    QuotaKey, SigningKey, Subscription, TrustedIssuer,
};

#[derive(Clone)]
pub struct SqliteBillingStore {
    pool: SqlitePool,
    /// Serialises quota grants: one process owns an embedded store, and a grant is a read
    /// followed by a write that must not interleave with another.
    grants: std::sync::Arc<tokio::sync::Mutex<()>>,
}

// The ledger's text-time helpers: one encoding of times for every SQLite table.
use crate::ledger::{parse_opt_time as opt_ts, parse_time as parse_ts, ts};

const PARTNER_SELECT: &str =
    "SELECT p.id, p.name, p.external_id, p.created_at, s.plan_id, s.plan_version, s.started_at, s.ended_at \
     FROM partners p JOIN subscriptions s ON s.partner_id = p.id \
     AND NOT EXISTS (SELECT 1 FROM subscriptions n WHERE n.partner_id = s.partner_id AND n.started_at > s.started_at)";

fn subscription_from(row: &SqliteRow) -> Result<Subscription, BillingStoreError> {
    Ok(Subscription {
        plan_id: row.try_get("plan_id")?,
        plan_version: row.try_get("plan_version")?,
        started_at: parse_ts("subscription", &row.try_get::<String, _>("started_at")?)?,
        ended_at: opt_ts("subscription", row.try_get("ended_at")?)?,
    })
}

fn partner_from(row: &SqliteRow) -> Result<Partner, BillingStoreError> {
    Ok(Partner {
        id: crate::parse_id("partner", row.try_get("id")?)?,
        name: row.try_get("name")?,
        external_id: row.try_get("external_id")?,
        created_at: parse_ts("partner", &row.try_get::<String, _>("created_at")?)?,
        subscription: subscription_from(row)?,
    })
}

fn key_from(row: &SqliteRow) -> Result<ApiKey, BillingStoreError> {
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
        created_at: parse_ts("api key", &row.try_get::<String, _>("created_at")?)?,
        revoked_at: opt_ts("api key", row.try_get("revoked_at")?)?,
    })
}

const KEY_COLUMNS: &str = "key_id, partner_id, env, prefix, name, created_at, revoked_at";

fn issuer_from(row: &SqliteRow) -> Result<TrustedIssuer, BillingStoreError> {
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
        created_at: parse_ts("issuer", &row.try_get::<String, _>("created_at")?)?,
    })
}

const ISSUER_COLUMNS: &str =
    "id, partner_id, issuer, jwks_url, algorithm, audience, env, created_at";

impl SqliteBillingStore {
    pub async fn open(path: &Path) -> Result<SqliteBillingStore, BillingStoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../schemas/sql/sqlite/billing")
            .run(&pool)
            .await?;
        Ok(SqliteBillingStore {
            pool,
            grants: Default::default(),
        })
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
impl BillingStore for SqliteBillingStore {
    async fn create_partner(
        &self,
        id: &PartnerId,
        name: &str,
        plan: &Subscription,
    ) -> Result<Partner, BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO partners (id, name, created_at) VALUES (?, ?, ?)")
            .bind(id.as_str())
            .bind(name)
            .bind(ts(plan.started_at))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES (?, ?, ?, ?)")
            .bind(id.as_str())
            .bind(&plan.plan_id)
            .bind(&plan.plan_version)
            .bind(ts(plan.started_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.required_partner(id).await
    }

    async fn partner_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<Partner>, BillingStoreError> {
        let row = sqlx::query(&format!("{PARTNER_SELECT} WHERE p.external_id = ?"))
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
        let updated = sqlx::query("UPDATE partners SET external_id = ? WHERE id = ?")
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
        let row = sqlx::query(&format!("{PARTNER_SELECT} WHERE p.id = ?"))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ended = sqlx::query(
            "UPDATE subscriptions SET ended_at = ? WHERE plan_id = ? AND plan_version <> ? \
             AND ended_at IS NULL RETURNING partner_id",
        )
        .bind(ts(at))
        .bind(plan_id)
        .bind(version)
        .fetch_all(&mut *tx)
        .await?;
        let mut moved = Vec::with_capacity(ended.len());
        for row in &ended {
            let id: PartnerId = crate::parse_id("subscription", row.try_get("partner_id")?)?;
            sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES (?, ?, ?, ?)")
                .bind(id.as_str())
                .bind(plan_id)
                .bind(version)
                .bind(ts(at))
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
        let rows = sqlx::query("SELECT plan_id, plan_version, started_at, ended_at FROM subscriptions WHERE partner_id = ? ORDER BY started_at")
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
        sqlx::query("INSERT INTO api_keys (key_id, partner_id, env, secret_hash, prefix, name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(key.key_id.as_str())
            .bind(key.partner_id.as_str())
            .bind(key.env.as_str())
            .bind(&key.secret_hash)
            .bind(&key.prefix)
            .bind(key.name.as_deref())
            .bind(ts(key.created_at))
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
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn keys(&self, partner_id: &PartnerId) -> Result<Vec<ApiKey>, BillingStoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE partner_id = ? ORDER BY created_at, key_id"
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
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? \
             AND (revoked_at IS NULL OR revoked_at > ?)",
        )
        .bind(ts(at))
        .bind(key_id.as_str())
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?"
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
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?"
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
                    created_at: parse_ts("signing key", &row.try_get::<String, _>("created_at")?)?,
                    retired_at: opt_ts("signing key", row.try_get("retired_at")?)?,
                })
            })
            .collect()
    }

    async fn rotate_signing_key(&self, next: &SigningKey) -> Result<(), BillingStoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
            .bind(ts(next.created_at))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO signing_keys (kid, seed, created_at) VALUES (?, ?, ?)")
            .bind(&next.kid)
            .bind(&next.seed)
            .bind(ts(next.created_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_issuer(&self, issuer: &TrustedIssuer) -> Result<TrustedIssuer, BillingStoreError> {
        sqlx::query(
            "INSERT INTO partner_issuers (id, partner_id, issuer, jwks_url, algorithm, audience, env, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
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
        .bind(ts(issuer.created_at))
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
            "SELECT {ISSUER_COLUMNS} FROM partner_issuers WHERE issuer = ?"
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
        let _one_at_a_time = self.grants.lock().await;
        let mut tx = self.pool.begin().await?;
        let rows = grant_rows(&mut tx, key).await?;
        let (grant, total) = decide_grant(&rows, gateway_id, quota, used, want)?;
        if let Some(total) = total {
            sqlx::query(
                "INSERT INTO quota_grants (partner_id, env, meter, period_start, gateway_id, granted, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (partner_id, env, meter, period_start, gateway_id) \
                 DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at",
            )
            .bind(key.partner_id.as_str())
            .bind(key.env.as_str())
            .bind(&key.meter)
            .bind(ts(key.period_start))
            .bind(gateway_id)
            .bind(total.to_string())
            .bind(ts(Utc::now()))
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
    conn: &mut sqlx::SqliteConnection,
    key: &QuotaKey,
) -> Result<Vec<(String, String)>, BillingStoreError> {
    Ok(sqlx::query_as(
        "SELECT gateway_id, granted FROM quota_grants \
         WHERE partner_id = ? AND env = ? AND meter = ? AND period_start = ?",
    )
    .bind(key.partner_id.as_str())
    .bind(key.env.as_str())
    .bind(&key.meter)
    .bind(ts(key.period_start))
    .fetch_all(conn)
    .await?)
}

/// Ends the partner's current subscription at `next.started_at` and starts `next`.
async fn switch_subscription(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    partner_id: &PartnerId,
    next: &Subscription,
) -> Result<(), BillingStoreError> {
    let ended = sqlx::query(
        "UPDATE subscriptions SET ended_at = ? WHERE partner_id = ? AND ended_at IS NULL",
    )
    .bind(ts(next.started_at))
    .bind(partner_id.as_str())
    .execute(&mut **tx)
    .await?;
    if ended.rows_affected() == 0 {
        return Err(BillingStoreError::NotFound {
            what: "partner",
            id: partner_id.to_string(),
        });
    }
    sqlx::query("INSERT INTO subscriptions (partner_id, plan_id, plan_version, started_at) VALUES (?, ?, ?, ?)")
        .bind(partner_id.as_str())
        .bind(&next.plan_id)
        .bind(&next.plan_version)
        .bind(ts(next.started_at))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SqliteBillingStore {
        SqliteBillingStore::open(&dir.path().join("billing.db"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn finalized_invoices_resist_raw_sql() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        crate::conformance::finalized_for_raw_sql(&s).await;
        use crate::LedgerStore;
        let before = s
            .invoice(&crate::conformance::typed("inv_72617700000000000000"))
            .await
            .unwrap();
        for sql in crate::conformance::RAW_TAMPERING {
            let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
            assert!(
                err.to_string().contains("finalized invoice"),
                "{sql}: {err}"
            );
        }
        assert_eq!(
            s.invoice(&crate::conformance::typed("inv_72617700000000000000"))
                .await
                .unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn the_audit_log_resists_raw_sql() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        crate::conformance::audit_records_are_appended_and_read_in_order(&s).await;
        for sql in crate::conformance::RAW_AUDIT_TAMPERING {
            let err = sqlx::query(sql).execute(&s.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        }
    }

    /// An empty store in a directory of its own, removed with it.
    struct Fixture {
        store: SqliteBillingStore,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Fixture {
        type Target = SqliteBillingStore;
        fn deref(&self) -> &SqliteBillingStore {
            &self.store
        }
    }

    impl Fixture {
        async fn done(self) {}
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            store: store(&dir).await,
            _dir: dir,
        }
    }

    /// The conformance suite, one test per behaviour.
    mod conformance {
        use super::fixture;
        crate::conformance_tests!(fixture);
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(&dir).await;
            s.create_partner(
                &crate::conformance::typed("prt_61000000000000000000"),
                "Acme",
                &crate::conformance::sub("starter", Utc::now()),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            store(&dir)
                .await
                .partner(&crate::conformance::typed("prt_61000000000000000000"))
                .await
                .unwrap()
                .unwrap()
                .name,
            "Acme"
        );
    }
}

crate::ledger::db::ledger_glue!(SqliteBillingStore, sqlx::Sqlite, "BEGIN IMMEDIATE");
crate::staff::staff_store!(SqliteBillingStore, sqlx::Sqlite, "BEGIN IMMEDIATE");
crate::idempotency::idempotency_store!(SqliteBillingStore);
crate::audit::audit_store!(SqliteBillingStore);
crate::erasure::erasure_store!(SqliteBillingStore, |at: DateTime<Utc>| ts(at));
crate::service_tokens::service_token_store!(SqliteBillingStore, sqlx::Sqlite);
crate::revocations::revocation_feed!(
    SqliteBillingStore,
    ts,
    |r: &sqlx::sqlite::SqliteRow| -> Result<DateTime<Utc>, BillingStoreError> {
        parse_ts("api key", &r.try_get::<String, _>("revoked_at")?)
    }
);
