//! Money: currencies with their minor unit, and the one rounding function of the whole product.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency Péage knows the minor unit of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    minor_units: u32,
}

/// A currency is its ISO 4217 code in JSON (`"EUR"`).
impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("An ISO 4217 currency code, such as EUR"))
            .pattern(Some("^[A-Z]{3}$"))
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

/// ISO 4217 minor units. Currencies not listed are refused rather than guessed.
const MINOR_UNITS: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

impl Currency {
    pub fn parse(code: &str) -> Option<Currency> {
        MINOR_UNITS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, minor_units)| {
                let b = c.as_bytes();
                Currency {
                    code: [b[0], b[1], b[2]],
                    minor_units: *minor_units,
                }
            })
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits after the decimal point: EUR 2, JPY 0, KWD 3.
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Rounds an amount to this currency's minor unit, half to even (banker's rounding).
    /// Invoices call this once per line and once for tax; nowhere else rounds money.
    pub fn round(&self, amount: Decimal) -> Decimal {
        let mut r =
            amount.round_dp_with_strategy(self.minor_units, RoundingStrategy::MidpointNearestEven);
        // Show every amount with exactly the currency's digits ("49.00", not "49").
        r.rescale(self.minor_units);
        r
    }
}

/// A currency code Péage does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown currency {0:?}")]
pub struct UnknownCurrency(pub String);

impl TryFrom<String> for Currency {
    type Error = UnknownCurrency;
    fn try_from(s: String) -> Result<Self, UnknownCurrency> {
        Currency::parse(&s).ok_or(UnknownCurrency(s))
    }
}

/// The largest amount of money Péage accepts as one input (a credit): 10^15 of a currency's
/// major unit. Sums of stored amounts stay far below `Decimal::MAX` (about 7.9 × 10^28) for any
/// realistic number of entries, and are added with [`checked_total`] regardless.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xA4C6_8000, 0x0003_8D7E, 0, false, 0);

/// An amount beyond what `Decimal` holds (about 7.9 × 10^28): quantity × price, or a sum, that
/// no real invoice reaches. Reported as an error, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an amount is too large to compute (beyond 7.9 × 10^28); check the usage and the prices")]
pub struct Overflow;

/// The sum of `amounts`, or `None` if it would overflow `Decimal`: sums of stored amounts never
/// panic, whatever was stored.
/// Why a decimal text has no exact value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InexactDecimal {
    #[error("{0:?} is not a decimal number")]
    NotANumber(String),
    /// More decimal places (or digits) than exact decimal arithmetic keeps: reading it would
    /// round it, and a price of 40 decimals would silently become 0.
    #[error("{0:?} has more digits than exact decimal arithmetic keeps (28 decimal places, 28 digits in all)")]
    TooPrecise(String),
}

/// The exact value of a decimal text (`12.50`, `-3`, `1e-9`), never rounded: a text whose value
/// a `Decimal` cannot hold exactly is an error.
pub fn exact_decimal(text: &str) -> Result<Decimal, InexactDecimal> {
    let t = text.trim();
    let base = t.split(['e', 'E']).next().unwrap_or_default();
    if !looks_decimal(t) {
        return Err(InexactDecimal::NotANumber(text.to_string()));
    }
    Decimal::from_str_exact(base).map_err(|_| InexactDecimal::TooPrecise(text.to_string()))?;
    if t.contains(['e', 'E']) {
        // The base is exact: only the exponent can take the value out of range now.
        Decimal::from_scientific(t).map_err(|_| InexactDecimal::TooPrecise(text.to_string()))
    } else {
        Decimal::from_str_exact(t).map_err(|_| InexactDecimal::TooPrecise(text.to_string()))
    }
}

/// `[-+]digits[.digits][(e|E)[-+]digits]`, whatever its size.
fn looks_decimal(t: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = |s: &str| s.strip_prefix(['-', '+']).unwrap_or(s).to_string();
    let (base, exp) = match t.split_once(['e', 'E']) {
        Some((b, e)) => (b, Some(e)),
        None => (t, None),
    };
    let base = unsigned(base);
    let base_ok = match base.split_once('.') {
        Some((i, f)) => digits(i) && (f.is_empty() || digits(f)),
        None => digits(&base),
    };
    base_ok && exp.is_none_or(|e| digits(&unsigned(e)))
}

pub fn checked_total(amounts: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    amounts
        .into_iter()
        .try_fold(Decimal::ZERO, |sum, a| sum.checked_add(a))
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_texts_are_exact_or_refused() {
        use std::str::FromStr;
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(exact_decimal("0.001"), Ok(d("0.001")));
        assert_eq!(exact_decimal(" 12.50 "), Ok(d("12.50")));
        assert_eq!(exact_decimal("1e-9"), Ok(d("0.000000001")));
        assert_eq!(exact_decimal("1.5E3"), Ok(d("1500")));
        // 28 decimal places are kept; 40 would round (to 0 here), so they are refused.
        assert!(exact_decimal("0.0000000000000000000000000001").is_ok());
        let forty = format!("0.{}1", "0".repeat(39));
        assert_eq!(
            Decimal::from_str(&forty).unwrap(),
            Decimal::ZERO,
            "what rounding would do"
        );
        assert_eq!(
            exact_decimal(&forty),
            Err(InexactDecimal::TooPrecise(forty.clone()))
        );
        assert!(matches!(
            exact_decimal("1e-40"),
            Err(InexactDecimal::TooPrecise(_))
        ));
        assert!(matches!(
            exact_decimal("1e40"),
            Err(InexactDecimal::TooPrecise(_))
        ));
        assert!(matches!(
            exact_decimal("123456789012345678901234567890.5"),
            Err(InexactDecimal::TooPrecise(_))
        ));
        assert!(matches!(
            exact_decimal("ten"),
            Err(InexactDecimal::NotANumber(_))
        ));
    }
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn the_largest_amount_is_ten_to_the_fifteenth_and_totals_never_overflow() {
        assert_eq!(MAX_AMOUNT, d("1000000000000000"));
        assert_eq!(
            checked_total([MAX_AMOUNT, MAX_AMOUNT]),
            Some(d("2000000000000000"))
        );
        assert_eq!(checked_total([Decimal::MAX, Decimal::ONE]), None);
        assert_eq!(checked_total([]), Some(Decimal::ZERO));
    }

    #[test]
    fn rounds_half_to_even_at_the_minor_unit() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(eur.round(d("0.125")).to_string(), "0.12");
        assert_eq!(eur.round(d("0.135")).to_string(), "0.14");
        assert_eq!(eur.round(d("49")).to_string(), "49.00");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(jpy.round(d("2.5")).to_string(), "2");
        assert_eq!(jpy.round(d("3.5")).to_string(), "4");
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(kwd.round(d("1.0005")).to_string(), "1.000");
    }

    #[test]
    fn unknown_currency_is_refused() {
        assert!(Currency::parse("EUX").is_none());
        assert!(Currency::parse("eur").is_none());
    }
}
