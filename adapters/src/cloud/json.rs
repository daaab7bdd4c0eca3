//! Small, total readers for fields of provider JSON. Providers are loose with types (vast sends
//! integral counts as floats at times, Lambda's docs show a price in cents as a string), so numbers are
//! accepted as JSON numbers or numeric strings; everything else, including null, reads as absent.

use serde_json::Value;

/// A finite number, from a JSON number or a numeric string.
pub(crate) fn f64_of(value: Option<&Value>) -> Option<f64> {
    let number = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

/// A non-negative whole number, from a JSON integer, an integral float below 2^53 (where floats are
/// still exact), or a numeric string.
pub(crate) fn u64_of(value: Option<&Value>) -> Option<u64> {
    const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            if (0.0..EXACT_FLOAT_LIMIT).contains(&f) && f.fract() == 0.0 {
                // Exact: f is integral and below 2^53.
                format!("{f:.0}").parse().ok()
            } else {
                None
            }
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// [`u64_of`] narrowed to u32.
pub(crate) fn u32_of(value: Option<&Value>) -> Option<u32> {
    u64_of(value).and_then(|n| u32::try_from(n).ok())
}

/// A non-empty string (surrounding whitespace removed).
pub(crate) fn str_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// An identifier given as a string or a whole number.
pub(crate) fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        other => str_of(Some(other)),
    }
}

/// A boolean, only if the JSON holds one.
pub(crate) fn bool_of(value: Option<&Value>) -> Option<bool> {
    value?.as_bool()
}

/// Memory stated in (GPU-marketing) GB, as MiB.
pub(crate) fn gb_to_mib(gb: u64) -> Option<u64> {
    if gb == 0 { None } else { gb.checked_mul(1024) }
}
