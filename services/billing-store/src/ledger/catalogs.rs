//! The catalog of record in distributed mode: the catalogs billing accepted, the one in force,
//! and the version each role instance says it runs. Written once for both databases over the
//! ledger's row glue.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::db::{args, LedgerDb};
use super::ts;
use crate::BillingStoreError;

/// A catalog as billing accepted it: its text is what every role parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCatalog {
    /// A hash of the text (`Catalog::version`).
    pub version: String,
    pub text: String,
    pub accepted_at: DateTime<Utc>,
    /// Who or what put it there (`billing:<instance>: file changed`).
    pub accepted_by: String,
    /// Since when it is in force.
    pub since: DateTime<Utc>,
}

/// A catalog billing once accepted, without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AcceptedCatalog {
    pub version: String,
    pub accepted_at: DateTime<Utc>,
    pub accepted_by: String,
}

/// What one role instance last said it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RoleCatalog {
    /// `billing`, `gateway`.
    pub role: String,
    pub instance: String,
    pub version: String,
    pub seen_at: DateTime<Utc>,
}

#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Records the catalog (once per version) and puts it in force, in one transaction;
    /// `false` when it was in force already.
    async fn put_catalog_in_force(
        &self,
        version: &str,
        text: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, BillingStoreError>;
    /// The catalog in force, if billing ever put one there.
    async fn catalog_in_force(&self) -> Result<Option<StoredCatalog>, BillingStoreError>;
    /// Records that `instance` of `role` runs `version` (its last word replaces the one before).
    async fn report_catalog(
        &self,
        role: &str,
        instance: &str,
        version: &str,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError>;
    /// Every role instance's last report, by role and instance.
    async fn catalog_roles(&self) -> Result<Vec<RoleCatalog>, BillingStoreError>;
    /// Every catalog ever accepted, the latest first.
    async fn accepted_catalogs(&self) -> Result<Vec<AcceptedCatalog>, BillingStoreError>;
    /// The text of an accepted catalog.
    async fn accepted_catalog_text(
        &self,
        version: &str,
    ) -> Result<Option<String>, BillingStoreError>;
}

#[async_trait]
impl<D: LedgerDb> CatalogStore for D {
    async fn put_catalog_in_force(
        &self,
        version: &str,
        text: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, BillingStoreError> {
        let mut tx = self.begin().await?;
        tx.execute(
            "INSERT INTO catalog_versions (version, text, accepted_at, accepted_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
            args![version, text, ts(at), by],
        )
        .await?;
        let current = tx
            .fetch_optional("SELECT version FROM catalog_in_force WHERE id = 1", args![])
            .await?
            .map(|r| r.text("version"))
            .transpose()?;
        if current.as_deref() == Some(version) {
            tx.commit().await?;
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO catalog_in_force (id, version, since) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, since = excluded.since",
            args![version, ts(at)],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn catalog_in_force(&self) -> Result<Option<StoredCatalog>, BillingStoreError> {
        let row = self
            .sql()
            .fetch_optional(
                "SELECT v.version, v.text, v.accepted_at, v.accepted_by, f.since \
                 FROM catalog_in_force f JOIN catalog_versions v ON v.version = f.version \
                 WHERE f.id = 1",
                args![],
            )
            .await?;
        row.map(|r| {
            Ok(StoredCatalog {
                version: r.text("version")?,
                text: r.text("text")?,
                accepted_at: r.time("catalog", "accepted_at")?,
                accepted_by: r.text("accepted_by")?,
                since: r.time("catalog", "since")?,
            })
        })
        .transpose()
    }

    async fn report_catalog(
        &self,
        role: &str,
        instance: &str,
        version: &str,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError> {
        self.sql()
            .execute(
                "INSERT INTO catalog_roles (role, instance, version, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (role, instance) DO UPDATE SET version = excluded.version, \
                 seen_at = excluded.seen_at",
                args![role, instance, version, ts(at)],
            )
            .await?;
        Ok(())
    }

    async fn catalog_roles(&self) -> Result<Vec<RoleCatalog>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                "SELECT role, instance, version, seen_at FROM catalog_roles ORDER BY role, instance",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RoleCatalog {
                    role: r.text("role")?,
                    instance: r.text("instance")?,
                    version: r.text("version")?,
                    seen_at: r.time("catalog role", "seen_at")?,
                })
            })
            .collect()
    }

    async fn accepted_catalogs(&self) -> Result<Vec<AcceptedCatalog>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                "SELECT version, accepted_at, accepted_by FROM catalog_versions \
                 ORDER BY accepted_at DESC, version",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AcceptedCatalog {
                    version: r.text("version")?,
                    accepted_at: r.time("catalog", "accepted_at")?,
                    accepted_by: r.text("accepted_by")?,
                })
            })
            .collect()
    }

    async fn accepted_catalog_text(
        &self,
        version: &str,
    ) -> Result<Option<String>, BillingStoreError> {
        self.sql()
            .fetch_optional(
                "SELECT text FROM catalog_versions WHERE version = $1",
                args![version],
            )
            .await?
            .map(|r| r.text("text"))
            .transpose()
    }
}
