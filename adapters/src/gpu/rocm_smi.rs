//! `rocm-smi … --json` across ROCm releases.
//!
//! The output is one object with a `cardN` entry per GPU (plus `system`, which holds the driver
//! version, and nothing else of interest). Every value is a string with the unit in the key
//! (`"VRAM Total Memory (B)": "21458059264"`), and key names changed between releases (`Card series` /
//! `Card Series`, power `Average Graphics Package Power (W)` / `Current Socket Graphics Package Power
//! (W)`); each reading is looked up under all its known names, first present wins. Old releases print a
//! PCI ID (`0x1002`) where the product name belongs: an ID is not a name, so it is skipped.

use serde_json::{Map, Value};

use super::json::{json_excerpt, scalar_text};
use super::values::{self, BadValue};
use super::{GpuParseError, GpuSample, Vendor, prepare_input, read_json_document};

/// Keys that may hold the product name, best first.
const NAME_KEYS: [&str; 6] =
    ["Card Series", "Card series", "Marketing Name", "Device Name", "Card Model", "Card model"];
/// Keys of the VRAM size in bytes.
const VRAM_TOTAL_KEYS: [&str; 1] = ["VRAM Total Memory (B)"];
/// Keys of the VRAM in use in bytes.
const VRAM_USED_KEYS: [&str; 1] = ["VRAM Total Used Memory (B)"];
/// Keys of the GPU utilisation in percent.
const UTILIZATION_KEYS: [&str; 2] = ["GPU use (%)", "GPU Use (%)"];
/// Temperature keys, best first: edge is the board-level reading; MI300-class parts only have junction.
const TEMPERATURE_KEYS: [&str; 2] = ["Temperature (Sensor edge) (C)", "Temperature (Sensor junction) (C)"];
/// Power keys: ROCm ≤ 6.0 reports an average, 6.1+ the current socket power.
const POWER_KEYS: [&str; 3] = [
    "Average Graphics Package Power (W)",
    "Current Socket Graphics Package Power (W)",
    "Current Graphics Package Power (W)",
];

/// Parse `rocm-smi --json` output.
pub fn parse_rocm_smi(text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    let text = prepare_input(text)?;
    let document = match read_json_document(text) {
        Ok(document) => document,
        Err(super::JsonDocError::NotJson { .. }) if text.to_ascii_lowercase().contains("no json data to report") => {
            return Err(GpuParseError::NoJsonData);
        }
        Err(e) => return Err(e.into()),
    };
    let Value::Object(top) = document else {
        return Err(GpuParseError::UnexpectedShape {
            msg: "rocm-smi --json prints an object of cardN entries; this is not an object".to_owned(),
        });
    };
    let driver_version = match top.get("system") {
        Some(Value::Object(system)) => text_of(system, "system", &["Driver version"])?,
        _ => None,
    };
    let mut cards: Vec<(u32, &str, &Value)> = Vec::new();
    for (key, value) in &top {
        let Some(number) = key.strip_prefix("card") else {
            continue;
        };
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let index = number.parse::<u32>().map_err(|_| GpuParseError::UnexpectedShape {
            msg: format!("card key {key:?} has a card number out of range"),
        })?;
        cards.push((index, key, value));
    }
    if cards.is_empty() {
        return Err(GpuParseError::UnexpectedShape {
            msg: "no cardN entries: this is not rocm-smi --json output, or it lists no GPU".to_owned(),
        });
    }
    // The object's keys sort as text (card10 before card2); order by card number.
    cards.sort_by_key(|(index, _, _)| *index);
    cards.into_iter().map(|(index, key, value)| parse_card(index, key, value, driver_version.clone())).collect()
}

/// The text of the first of `keys` present in `card`, or `None` when absent or unavailable.
fn text_of(card: &Map<String, Value>, device: &str, keys: &[&str]) -> Result<Option<String>, GpuParseError> {
    for key in keys {
        let Some(raw) = card.get(*key) else { continue };
        let text = scalar_text(raw).map_err(|BadValue| GpuParseError::InvalidValue {
            device: device.to_owned(),
            field: (*key).to_owned(),
            value: json_excerpt(raw),
        })?;
        if let Some(text) = text.as_deref().and_then(values::text) {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// The first of `keys` that holds an available value, read with `read`.
fn reading<T>(
    card: &Map<String, Value>,
    device: &str,
    keys: &[&str],
    read: impl Fn(&str) -> Result<Option<T>, BadValue>,
) -> Result<Option<T>, GpuParseError> {
    for key in keys {
        let Some(text) = text_of(card, device, &[key])? else {
            continue;
        };
        let value = read(&text).map_err(|BadValue| GpuParseError::InvalidValue {
            device: device.to_owned(),
            field: (*key).to_owned(),
            value: super::error::excerpt(&text),
        })?;
        if value.is_some() {
            return Ok(value);
        }
    }
    Ok(None)
}

/// A PCI vendor/device ID such as `0x1002`, which old ROCm releases print instead of a name.
fn is_pci_id(text: &str) -> bool {
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// One `cardN` entry → one sample.
fn parse_card(
    index: u32,
    key: &str,
    value: &Value,
    driver_version: Option<String>,
) -> Result<GpuSample, GpuParseError> {
    let Value::Object(card) = value else {
        return Err(GpuParseError::UnexpectedShape { msg: format!("{key} is not an object: {}", json_excerpt(value)) });
    };
    let mut sample = GpuSample::empty(Vendor::Amd);
    sample.index = Some(index);
    sample.driver_version = driver_version;
    for name_key in NAME_KEYS {
        if let Some(name) = text_of(card, key, &[name_key])?
            && !is_pci_id(&name)
        {
            sample.name = Some(name);
            break;
        }
    }
    sample.uuid = text_of(card, key, &["Unique ID"])?;
    sample.vram_total_mib = reading(card, key, &VRAM_TOTAL_KEYS, |v| values::mebibytes(v, Some("B")))?;
    sample.vram_used_mib = reading(card, key, &VRAM_USED_KEYS, |v| values::mebibytes(v, Some("B")))?;
    sample.utilization_pct = reading(card, key, &UTILIZATION_KEYS, |v| values::non_negative(v, &["%"]))?;
    sample.temperature_c = reading(card, key, &TEMPERATURE_KEYS, |v| values::real(v, &["C"]))?;
    sample.power_w = reading(card, key, &POWER_KEYS, |v| values::non_negative(v, &["W"]))?;
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ids_are_not_names() {
        assert!(is_pci_id("0x1002"));
        assert!(is_pci_id("0x744c"));
        assert!(!is_pci_id("Radeon RX 7900 XT"));
        assert!(!is_pci_id("0x"));
    }

    #[test]
    fn cards_sort_numerically_and_system_is_ignored() {
        let text =
            r#"{"card10": {"GPU use (%)": "5"}, "card2": {"GPU use (%)": "7"}, "system": {"Driver version": "6.2.4"}}"#;
        let samples = parse_rocm_smi(text).unwrap();
        let order: Vec<_> = samples.iter().map(|s| (s.index, s.utilization_pct)).collect();
        assert_eq!(order, vec![(Some(2), Some(7.0)), (Some(10), Some(5.0))]);
        assert_eq!(samples[0].driver_version.as_deref(), Some("6.2.4"));
    }

    #[test]
    fn garbage_values_are_errors_not_readings() {
        let err = parse_rocm_smi(r#"{"card0": {"GPU use (%)": "NaN"}}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        let err = parse_rocm_smi(r#"{"card0": {"VRAM Total Memory (B)": "-1"}}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        let err = parse_rocm_smi(r#"{"card0": {"GPU use (%)": {"x": 1}}}"#).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
    }
}
