//! Reading single values as GPU tools print them: the many spellings of "not available", and numbers
//! with or without their unit (`8192 MiB`, `53 %`, `123.00 W`, `45 C`, `45.0`).
//!
//! The functions here say only *whether* a value could be read; each parser wraps a failure in the
//! error that names its own context (CSV line, XML device, JSON card).

/// A value that is present but is not a number in an accepted unit. Callers add the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadValue;

/// Whether a value is one of the tools' ways of saying "this reading is unavailable".
///
/// nvidia-smi CSV brackets every such message (`[N/A]`, `[Not Supported]`, `[Unknown Error]`,
/// `[Insufficient Permissions]`, `[Requested functionality has been deprecated]`, ...), and new driver
/// releases add new ones, so any fully bracketed value counts. nvidia-smi XML and rocm-smi print the
/// same messages without brackets, and rocm-smi appends reasons (`N/A (Secondary die)`).
pub(crate) fn is_unavailable(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() || (v.starts_with('[') && v.ends_with(']')) {
        return true;
    }
    const PHRASES: [&str; 6] = [
        "n/a",
        "not supported",
        "unknown error",
        "insufficient permissions",
        "requested functionality has been deprecated",
        "unknown",
    ];
    let lower = v.to_ascii_lowercase();
    PHRASES.iter().any(|p| lower == *p) || lower.starts_with("n/a ")
}

/// A text value, trimmed, or `None` when the tool said it is unavailable.
pub(crate) fn text(value: &str) -> Option<String> {
    if is_unavailable(value) { None } else { Some(value.trim().to_owned()) }
}

/// Split `"8192 MiB"` into `("8192", "MiB")`, `"53%"` into `("53", "%")`, `"45.0"` into `("45.0", "")`.
fn split_unit(value: &str) -> (&str, &str) {
    let v = value.trim();
    if let Some((number, unit)) = v.split_once(char::is_whitespace) {
        return (number, unit.trim());
    }
    let unit_start = v
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphabetic() || *c == '%' || *c == '°')
        .last()
        .map_or(v.len(), |(i, _)| i);
    // `split_at` cannot panic: `unit_start` comes from `char_indices`, so it is a char boundary.
    v.split_at(unit_start)
}

/// Whether `unit` is one of `accepted` (ASCII case-insensitive) or absent.
fn unit_ok(unit: &str, accepted: &[&str]) -> bool {
    unit.is_empty() || accepted.iter().any(|a| a.eq_ignore_ascii_case(unit))
}

/// A plain decimal number: digits with at most one point and an optional leading sign. Rust's `f64`
/// parser also accepts `inf`, `NaN` and exponents, which no GPU tool prints; refusing them keeps
/// "NaN" strings from becoming readings.
fn decimal(number: &str) -> Result<f64, BadValue> {
    let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
    let well_formed = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    if !well_formed {
        return Err(BadValue);
    }
    let parsed: f64 = number.parse().map_err(|_| BadValue)?;
    if parsed.is_finite() { Ok(parsed) } else { Err(BadValue) }
}

/// A real-valued reading whose unit, if printed, is one of `accepted` (e.g. `["%"]`, `["W"]`,
/// `["C"]`). `Ok(None)` when unavailable.
pub(crate) fn real(value: &str, accepted: &[&str]) -> Result<Option<f64>, BadValue> {
    if is_unavailable(value) {
        return Ok(None);
    }
    let (number, unit) = split_unit(value);
    if !unit_ok(unit, accepted) {
        return Err(BadValue);
    }
    decimal(number).map(Some)
}

/// A real-valued reading that cannot be negative (utilisation, power).
pub(crate) fn non_negative(value: &str, accepted: &[&str]) -> Result<Option<f64>, BadValue> {
    match real(value, accepted)? {
        Some(v) if v < 0.0 => Err(BadValue),
        other => Ok(other),
    }
}

/// A non-negative integer (device index, instance id, count). `Ok(None)` when unavailable.
pub(crate) fn count(value: &str) -> Result<Option<u32>, BadValue> {
    if is_unavailable(value) {
        return Ok(None);
    }
    let v = value.trim();
    if !v.chars().all(|c| c.is_ascii_digit()) {
        return Err(BadValue);
    }
    v.parse::<u32>().map(Some).map_err(|_| BadValue)
}

/// Bytes in one mebibyte.
const MIB: f64 = 1024.0 * 1024.0;

/// An amount of memory in MiB. The unit comes from the value (`8192 MiB`) or, when the value is bare
/// (`--format=csv,nounits`), from `default_unit` (the CSV header's `[MiB]`), else MiB. Sizes in other
/// binary units are converted; a fractional MiB result is rounded down.
pub(crate) fn mebibytes(value: &str, default_unit: Option<&str>) -> Result<Option<u64>, BadValue> {
    if is_unavailable(value) {
        return Ok(None);
    }
    let (number, unit) = split_unit(value);
    let unit = if unit.is_empty() { default_unit.unwrap_or("MiB") } else { unit };
    let per_unit = match unit.to_ascii_lowercase().as_str() {
        "mib" => 1.0,
        "gib" => 1024.0,
        "kib" => 1.0 / 1024.0,
        "b" => 1.0 / MIB,
        _ => return Err(BadValue),
    };
    if unit.eq_ignore_ascii_case("mib") || unit.eq_ignore_ascii_case("b") {
        // Integer units: read exactly, no float rounding for large byte counts.
        if !number.chars().all(|c| c.is_ascii_digit()) || number.is_empty() {
            return Err(BadValue);
        }
        let n: u64 = number.parse().map_err(|_| BadValue)?;
        return Ok(Some(if unit.eq_ignore_ascii_case("b") { n / (1024 * 1024) } else { n }));
    }
    let amount = decimal(number)? * per_unit;
    float_to_mib(amount).map(Some)
}

/// Convert a non-negative finite amount of MiB to an integer, rounding down. `u64::MAX as f64` rounds
/// up to 2^64, so the bound is strict; inside it the `as` conversion is exact up to the truncation.
pub(crate) fn float_to_mib(amount: f64) -> Result<u64, BadValue> {
    if amount.is_finite() && amount >= 0.0 && amount < u64::MAX as f64 {
        Ok(amount.floor() as u64)
    } else {
        Err(BadValue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_spellings() {
        for v in [
            "",
            "  ",
            "[N/A]",
            "N/A",
            "n/a",
            "[Not Supported]",
            "Not Supported",
            "[Unknown Error]",
            "[Insufficient Permissions]",
            "[Requested functionality has been deprecated]",
            "N/A (Secondary die)",
            "[Some future message]",
        ] {
            assert!(is_unavailable(v), "{v:?} should be unavailable");
        }
        for v in ["0", "0 %", "Enabled", "NVIDIA L4", "[x"] {
            assert!(!is_unavailable(v), "{v:?} should be a value");
        }
    }

    #[test]
    fn numbers_with_units() {
        assert_eq!(mebibytes("8192 MiB", None), Ok(Some(8192)));
        assert_eq!(mebibytes("  8192 MiB  ", None), Ok(Some(8192)));
        assert_eq!(mebibytes("8192", Some("MiB")), Ok(Some(8192)));
        assert_eq!(mebibytes("21458059264", Some("B")), Ok(Some(20464)));
        assert_eq!(mebibytes("2 GiB", None), Ok(Some(2048)));
        assert_eq!(mebibytes("[N/A]", None), Ok(None));
        assert_eq!(mebibytes("-5 MiB", None), Err(BadValue));
        assert_eq!(mebibytes("12 W", None), Err(BadValue));
        assert_eq!(mebibytes("99999999999999999999999 MiB", None), Err(BadValue));
        assert_eq!(real("53 %", &["%"]), Ok(Some(53.0)));
        assert_eq!(real("53%", &["%"]), Ok(Some(53.0)));
        assert_eq!(real("123.00 W", &["W"]), Ok(Some(123.0)));
        assert_eq!(real("45 C", &["C"]), Ok(Some(45.0)));
        assert_eq!(real("-3", &["C"]), Ok(Some(-3.0)));
        assert_eq!(real("NaN", &["W"]), Err(BadValue));
        assert_eq!(real("inf", &["W"]), Err(BadValue));
        assert_eq!(real("1.2.3", &["W"]), Err(BadValue));
        assert_eq!(real(&"9".repeat(400), &["W"]), Err(BadValue));
        assert_eq!(real("5 MHz", &["W"]), Err(BadValue));
        assert_eq!(non_negative("-1 W", &["W"]), Err(BadValue));
        assert_eq!(count("7"), Ok(Some(7)));
        assert_eq!(count("N/A"), Ok(None));
        assert_eq!(count("-1"), Err(BadValue));
        assert_eq!(count("4294967296"), Err(BadValue));
    }
}
