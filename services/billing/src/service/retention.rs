//! Retention of raw call events (docs/operations.md, "Retention"): whole calendar months older
//! than the configured age are dropped from the usage store; rollups, usage events and
//! invoices stay.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

use super::{Billing, ServiceError};

/// The first instant of the oldest month kept: the current month (UTC) and the `months`
/// before it are kept.
pub fn cutoff(now: DateTime<Utc>, months: u32) -> Option<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(now.year(), now.month(), 1)?
        .checked_sub_months(Months::new(months))?
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
}

impl Billing {
    /// Drops the raw call events of the months before [`cutoff`]; answers the months dropped
    /// (`YYYYMM`). Idempotent: a second pass, or another billing instance, finds nothing.
    pub async fn apply_retention(
        &self,
        now: DateTime<Utc>,
        months: u32,
    ) -> Result<Vec<u32>, ServiceError> {
        let Some(before) = cutoff(now, months) else {
            return Ok(Vec::new());
        };
        let dropped = self.usage.drop_raw_call_months(before).await?;
        peage_telemetry::emit!(peage_telemetry::RawMonthsDropped {
            months: &dropped,
            before: &before.to_rfc3339(),
        });
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_current_month_and_the_configured_ones_before_it_are_kept() {
        let now = Utc.with_ymd_and_hms(2026, 3, 31, 23, 59, 59).unwrap();
        assert_eq!(
            cutoff(now, 13),
            Some(Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            cutoff(now, 2),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
        );
    }
}
