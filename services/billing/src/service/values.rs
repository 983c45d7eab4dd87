//! Values callers name by text, read the same way everywhere: an environment, a period.

use peage_core::period::PeriodLabel;
use peage_core::Env;

use super::error::ServiceError;

/// `live` (the default when absent) or `sandbox` (`test` accepted, as keys name it).
pub fn env(raw: Option<&str>) -> Result<Env, ServiceError> {
    match raw {
        None | Some("live") => Ok(Env::Live),
        Some("sandbox") | Some("test") => Ok(Env::Sandbox),
        Some(other) => Err(ServiceError::Invalid(format!(
            "env must be live or sandbox, not {other:?}"
        ))),
    }
}

/// A key's environment: `live`, or `test` (`sandbox` accepted).
pub fn key_env(raw: &str) -> Result<Env, ServiceError> {
    match raw {
        "live" => Ok(Env::Live),
        "test" | "sandbox" => Ok(Env::Sandbox),
        other => Err(ServiceError::Invalid(format!(
            "env must be \"live\" or \"test\", not {other:?}"
        ))),
    }
}

/// A billing period's label, `YYYY-MM`.
pub fn period(raw: &str) -> Result<PeriodLabel, ServiceError> {
    raw.parse()
        .map_err(|e: peage_core::period::BadPeriodLabel| ServiceError::Invalid(e.to_string()))
}
