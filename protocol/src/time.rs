//! UTC instants as TUF writes them (`2030-01-01T00:00:00Z`).
//!
//! This crate never reads a clock: callers pass `now` in. The type only parses and
//! formats the one timestamp form TUF metadata uses, with whole seconds.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(pub i64);

/// A string that is not `YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {0:?}: expected YYYY-MM-DDTHH:MM:SSZ")]
pub struct TimeParseError(pub String);

impl UtcTime {
    /// The instant `secs` seconds after this one.
    pub fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs))
    }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ`; fractional seconds are accepted and dropped.
    pub fn parse(s: &str) -> Result<Self, TimeParseError> {
        let err = || TimeParseError(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() < 20 || !s.is_ascii() || !s.ends_with('Z') {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, TimeParseError> {
            let part = &s[r];
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().map_err(|_| err())
            } else {
                Err(err())
            }
        };
        if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let frac = &s[19..s.len() - 1];
        if !(frac.is_empty()
            || (frac.len() > 1
                && frac.starts_with('.')
                && frac[1..].bytes().all(|c| c.is_ascii_digit())))
        {
            return Err(err());
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 60
        {
            return Err(err());
        }
        Ok(Self(
            days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec,
        ))
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let rem = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl Serialize for UtcTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days, proleptic Gregorian.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants_parse_and_format() {
        let t = UtcTime::parse("2030-01-01T00:00:00Z").unwrap();
        assert_eq!(t.0, 1_893_456_000);
        assert_eq!(t.to_string(), "2030-01-01T00:00:00Z");
        assert_eq!(UtcTime::parse("1970-01-01T00:00:00.250Z").unwrap().0, 0);
        assert_eq!(
            UtcTime::parse("2024-02-29T23:59:59Z").unwrap().to_string(),
            "2024-02-29T23:59:59Z"
        );
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "",
            "2030-01-01",
            "2030-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2030-01-01T00:00:00+01:00",
            "2030-01-01T00:00:00.Z",
            "203a-01-01T00:00:00Z",
            "2030-01-01T00:00:00ZZ",
            "é030-01-01T00:00:00Z",
        ] {
            assert!(UtcTime::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 0i64..253_402_300_800i64) {
            let t = UtcTime(secs);
            prop_assert_eq!(UtcTime::parse(&t.to_string()).unwrap(), t);
        }
    }
}
