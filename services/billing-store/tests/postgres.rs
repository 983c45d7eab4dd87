//! The PostgreSQL billing store against a real server (`deploy/dev/services.sh start`), through
//! the same conformance suite as the SQLite store, one test per behaviour, each in a schema of
//! its own. These tests run only with `--features real-servers` (as `deploy/dev/test-all.sh`
//! runs them); without it they are listed as ignored, and with it an unreachable server fails
//! them.

use peage_billing_store::{conformance, PostgresBillingStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

fn url() -> String {
    std::env::var("PEAGE_TEST_POSTGRES_URL")
        .unwrap_or("postgres://peage:peage@127.0.0.1:5432/peage".into())
}

/// An empty store in a schema of its own, so tests never see each other's rows.
struct Fixture {
    store: PostgresBillingStore,
    schema: String,
}

impl std::ops::Deref for Fixture {
    type Target = PostgresBillingStore;
    fn deref(&self) -> &PostgresBillingStore {
        &self.store
    }
}

impl Fixture {
    fn options(&self) -> PgConnectOptions {
        let options: PgConnectOptions = url().parse().unwrap();
        options.options([("search_path", self.schema.as_str())])
    }

    /// Drops the schema (a failed test leaves it, to be looked at).
    async fn done(self) {
        let mut admin = PgConnection::connect(&url()).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

async fn fixture() -> Fixture {
    let url = url();
    let mut admin = PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {url}: {e} (deploy/dev/services.sh start)")
    });
    let schema = format!("test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let options: PgConnectOptions = url.parse().unwrap();
    let store =
        PostgresBillingStore::connect_with(options.options([("search_path", schema.as_str())]))
            .await
            .unwrap();
    Fixture { store, schema }
}

mod conformance_suite {
    use super::fixture;
    peage_billing_store::conformance_tests!(
        #[cfg_attr(
            not(feature = "real-servers"),
            ignore = "needs PostgreSQL: cargo test --features real-servers (deploy/dev/services.sh start)"
        )]
        fixture
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs PostgreSQL: cargo test --features real-servers (deploy/dev/services.sh start)"
)]
async fn finalized_invoices_resist_raw_sql() {
    let f = fixture().await;
    // The trigger, not only the code.
    conformance::finalized_for_raw_sql(&*f).await;
    let mut raw = PgConnection::connect_with(&f.options()).await.unwrap();
    for sql in conformance::RAW_TAMPERING {
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(
            err.to_string().contains("finalized invoice"),
            "{sql}: {err}"
        );
    }
    f.done().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs PostgreSQL: cargo test --features real-servers (deploy/dev/services.sh start)"
)]
async fn the_audit_log_resists_raw_sql() {
    let f = fixture().await;
    conformance::audit_records_are_appended_and_read_in_order(&*f).await;
    let mut raw = PgConnection::connect_with(&f.options()).await.unwrap();
    for sql in conformance::RAW_AUDIT_TAMPERING {
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    f.done().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs PostgreSQL: cargo test --features real-servers (deploy/dev/services.sh start)"
)]
async fn migrations_are_idempotent() {
    let f = fixture().await;
    conformance::partners_keep_their_plan_history(&*f).await;
    PostgresBillingStore::connect_with(f.options())
        .await
        .unwrap();
    f.done().await;
}

/// A CI run without the switch would list the tests above as ignored and pass: it fails instead.
#[cfg(not(feature = "real-servers"))]
#[test]
fn ci_runs_the_real_server_tests() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: run with --features real-servers, so that PostgreSQL is tested"
    );
}
