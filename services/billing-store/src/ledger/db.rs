//! The row glue a backend gives the ledger: statements with text and integer parameters, rows of
//! text and integer columns, and write transactions. Everything else of the ledger is written
//! once, over these traits ([`super::store`]); [`ledger_glue!`] implements them for an sqlx pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{parse_decimal, parse_time};
use crate::BillingStoreError;

/// A value bound to a statement or read from a row: the ledger keeps text (times and decimals
/// included, as fixed-width text) and integers only. A NULL keeps its type, which PostgreSQL
/// needs to bind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(Some(s.to_string()))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(Some(s))
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(Some(s.clone()))
    }
}

impl From<Option<String>> for Value {
    fn from(s: Option<String>) -> Value {
        Value::Text(s)
    }
}

impl From<Option<&str>> for Value {
    fn from(s: Option<&str>) -> Value {
        Value::Text(s.map(str::to_string))
    }
}

/// Ids are bound as their text.
macro_rules! id_values {
    ($($id:ty),*) => {$(
        impl From<&$id> for Value {
            fn from(id: &$id) -> Value {
                Value::Text(Some(id.as_str().to_string()))
            }
        }
    )*};
}
id_values!(
    peage_core::ids::PartnerId,
    peage_core::ids::InvoiceId,
    peage_core::ids::WebhookEndpointId,
    peage_core::ids::WebhookMessageId
);

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(Some(i))
    }
}

impl From<Option<i64>> for Value {
    fn from(i: Option<i64>) -> Value {
        Value::Int(i)
    }
}

/// `[a, b, …]` as statement parameters.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::ledger::db::Value::from($v)),*]
    };
}
pub(crate) use args;

/// One row, its columns by name.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    fn get(&self, column: &str) -> Result<&Value, BillingStoreError> {
        self.0
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, v)| v)
            .ok_or_else(|| BillingStoreError::Corrupt {
                what: "ledger row",
                reason: format!("no column {column}"),
            })
    }

    fn corrupt(column: &str, v: &Value) -> BillingStoreError {
        BillingStoreError::Corrupt {
            what: "ledger row",
            reason: format!("column {column} holds {v:?}"),
        }
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, BillingStoreError> {
        match self.get(column)? {
            Value::Text(t) => Ok(t.clone()),
            Value::Int(None) => Ok(None),
            v => Err(Self::corrupt(column, v)),
        }
    }

    pub fn text(&self, column: &str) -> Result<String, BillingStoreError> {
        self.opt_text(column)?
            .ok_or_else(|| Self::corrupt(column, &Value::Text(None)))
    }

    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, BillingStoreError> {
        match self.get(column)? {
            Value::Int(i) => Ok(*i),
            Value::Text(None) => Ok(None),
            v => Err(Self::corrupt(column, v)),
        }
    }

    pub fn int(&self, column: &str) -> Result<i64, BillingStoreError> {
        self.opt_int(column)?
            .ok_or_else(|| Self::corrupt(column, &Value::Int(None)))
    }

    /// A time column (RFC 3339 text) of a `what`.
    pub fn time(
        &self,
        what: &'static str,
        column: &str,
    ) -> Result<DateTime<Utc>, BillingStoreError> {
        parse_time(what, &self.text(column)?)
    }

    pub fn opt_time(
        &self,
        what: &'static str,
        column: &str,
    ) -> Result<Option<DateTime<Utc>>, BillingStoreError> {
        self.opt_text(column)?
            .map(|t| parse_time(what, &t))
            .transpose()
    }

    /// An id column of a `what`.
    pub fn id<T: std::str::FromStr<Err = peage_core::ids::IdError>>(
        &self,
        what: &'static str,
        column: &str,
    ) -> Result<T, BillingStoreError> {
        crate::parse_id(what, self.text(column)?)
    }

    /// A decimal column (exact text) of a `what`.
    pub fn decimal(&self, what: &'static str, column: &str) -> Result<Decimal, BillingStoreError> {
        parse_decimal(what, &self.text(column)?)
    }
}

/// Runs statements: a pool (each statement on its own) or a transaction.
#[async_trait]
pub trait Sql: Send {
    /// Runs a statement; the rows it changed.
    async fn execute(&mut self, sql: &str, args: Vec<Value>) -> Result<u64, BillingStoreError>;
    /// Every row a statement answers.
    async fn fetch(&mut self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>, BillingStoreError>;

    /// The first row a statement answers, if any.
    async fn fetch_optional(
        &mut self,
        sql: &str,
        args: Vec<Value>,
    ) -> Result<Option<Row>, BillingStoreError> {
        Ok(self.fetch(sql, args).await?.into_iter().next())
    }
}

/// A write transaction: rolled back when dropped without [`Tx::commit`].
#[async_trait]
pub trait Tx: Sql {
    async fn commit(self: Box<Self>) -> Result<(), BillingStoreError>;
}

/// What a backend provides for the ledger (see [`ledger_glue!`]).
#[async_trait]
pub trait LedgerDb: Send + Sync + 'static {
    /// Statements outside a transaction.
    fn sql(&self) -> Box<dyn Sql + '_>;
    /// A write transaction.
    async fn begin(&self) -> Result<Box<dyn Tx>, BillingStoreError>;
}

/// Implements [`LedgerDb`] for a store with a `pool` field of an sqlx pool type: binding
/// [`Value`]s and reading columns as text or integers is all that differs between backends.
/// `$begin` starts a write transaction: SQLite needs `BEGIN IMMEDIATE`, or a transaction that
/// reads before it writes fails with "database is locked" when another connection writes
/// meanwhile.
macro_rules! ledger_glue {
    ($store:ty, $db:ty, $begin:literal) => {
        const _: () = {
            use $crate::ledger::db::{LedgerDb, Row, Sql, Tx, Value};
            use $crate::BillingStoreError;

            fn bind<'q>(
                sql: &'q str,
                args: Vec<Value>,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                let mut q = sqlx::query(sql);
                for a in args {
                    q = match a {
                        Value::Text(t) => q.bind(t),
                        Value::Int(i) => q.bind(i),
                    };
                }
                q
            }

            /// Each column as text, or else as an integer; neither is an error.
            fn row(r: &<$db as sqlx::Database>::Row) -> Result<Row, BillingStoreError> {
                use sqlx::{Column as _, Row as _};
                let mut columns = Vec::with_capacity(r.columns().len());
                for c in r.columns() {
                    let i = c.ordinal();
                    let v = match r.try_get::<Option<String>, _>(i) {
                        Ok(t) => Value::Text(t),
                        Err(_) => Value::Int(r.try_get::<Option<i64>, _>(i)?),
                    };
                    columns.push((c.name().to_string(), v));
                }
                Ok(Row(columns))
            }

            struct Pool<'a>(&'a sqlx::Pool<$db>);

            #[async_trait::async_trait]
            impl Sql for Pool<'_> {
                async fn execute(
                    &mut self,
                    sql: &str,
                    args: Vec<Value>,
                ) -> Result<u64, BillingStoreError> {
                    Ok(bind(sql, args).execute(self.0).await?.rows_affected())
                }
                async fn fetch(
                    &mut self,
                    sql: &str,
                    args: Vec<Value>,
                ) -> Result<Vec<Row>, BillingStoreError> {
                    bind(sql, args)
                        .fetch_all(self.0)
                        .await?
                        .iter()
                        .map(row)
                        .collect()
                }
            }

            struct Transaction(sqlx::Transaction<'static, $db>);

            #[async_trait::async_trait]
            impl Sql for Transaction {
                async fn execute(
                    &mut self,
                    sql: &str,
                    args: Vec<Value>,
                ) -> Result<u64, BillingStoreError> {
                    Ok(bind(sql, args).execute(&mut *self.0).await?.rows_affected())
                }
                async fn fetch(
                    &mut self,
                    sql: &str,
                    args: Vec<Value>,
                ) -> Result<Vec<Row>, BillingStoreError> {
                    bind(sql, args)
                        .fetch_all(&mut *self.0)
                        .await?
                        .iter()
                        .map(row)
                        .collect()
                }
            }

            #[async_trait::async_trait]
            impl Tx for Transaction {
                async fn commit(self: Box<Self>) -> Result<(), BillingStoreError> {
                    Ok(self.0.commit().await?)
                }
            }

            #[async_trait::async_trait]
            impl LedgerDb for $store {
                fn sql(&self) -> Box<dyn Sql + '_> {
                    Box::new(Pool(&self.pool))
                }
                async fn begin(&self) -> Result<Box<dyn Tx>, BillingStoreError> {
                    Ok(Box::new(Transaction(self.pool.begin_with($begin).await?)))
                }
            }
        };
    };
}
pub(crate) use ledger_glue;
