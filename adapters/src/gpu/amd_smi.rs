//! `amd-smi {list,static,metric} … --json`.
//!
//! amd-smi prints an array with one object per GPU (`{"gpu": 0, "power": {"socket_power": {"value":
//! 10, "unit": "W"}}, ...}`); newer releases wrap it as `{"gpu_data": [...]}` and a single-GPU query
//! may print the bare object. Readings are `{value, unit}` objects or the string `N/A`. Which sections
//! are present depends on the subcommand, so every field is optional:
//!
//! | field | where |
//! |---|---|
//! | index | `gpu` |
//! | name | `asic.market_name`, else `board.product_name` |
//! | uuid | `uuid` (`amd-smi list`) |
//! | driver | `driver.version` |
//! | VRAM total / used | `mem_usage.total_vram` / `mem_usage.used_vram`, total also `vram.size` |
//! | utilisation | `usage.gfx_activity` |
//! | temperature | `temperature.edge`, else `temperature.hotspot` |
//! | power | `power.socket_power`, else `current_socket_power`, `average_socket_power` |
//!
//! amd-smi labels memory in `MB` but counts mebibytes (the driver reports VRAM in units of 2^20
//! bytes), so `MB` is read as MiB.

use serde_json::{Map, Value};

use super::error::excerpt;
use super::json::{json_excerpt, scalar_text};
use super::values::{self, BadValue};
use super::{GpuParseError, GpuSample, Vendor, prepare_input, read_json_document};

/// Parse `amd-smi … --json` output.
pub fn parse_amd_smi(text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    let text = prepare_input(text)?;
    let document = read_json_document(text)?;
    let entries: Vec<&Value> = match &document {
        Value::Array(items) => items.iter().collect(),
        Value::Object(obj) => match obj.get("gpu_data") {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(other) => {
                return Err(GpuParseError::UnexpectedShape {
                    msg: format!("gpu_data is not an array: {}", json_excerpt(other)),
                });
            }
            None if obj.contains_key("gpu") => vec![&document],
            None => {
                return Err(GpuParseError::UnexpectedShape {
                    msg: "amd-smi --json prints an array of per-GPU objects (or {\"gpu_data\": [...]}); this object has neither".to_owned(),
                });
            }
        },
        other => {
            return Err(GpuParseError::UnexpectedShape {
                msg: format!("amd-smi --json prints an array of per-GPU objects, not {}", json_excerpt(other)),
            });
        }
    };
    entries.into_iter().enumerate().map(|(position, entry)| parse_entry(position, entry)).collect()
}

/// The value at a `/`-separated path of object keys.
fn at<'a>(entry: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('/');
    let first = entry.get(parts.next()?)?;
    parts.try_fold(first, |value, key| value.as_object()?.get(key))
}

/// One measurement (`{value, unit}`, a bare number or a string such as `N/A`) as `"value unit"`
/// text, ready for the unit-aware readers in [`values`]. `Ok(None)` when absent or unavailable.
fn measure_text(
    entry: &Map<String, Value>,
    device: &str,
    path: &str,
    memory: bool,
) -> Result<Option<String>, GpuParseError> {
    let Some(raw) = at(entry, path) else {
        return Ok(None);
    };
    let (value, unit) = match raw {
        Value::Object(obj) => {
            let value = obj.get("value").unwrap_or(&Value::Null);
            let unit = match obj.get("unit") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(unit)) => unit.trim().to_owned(),
                Some(_) => return Err(invalid(device, path, raw)),
            };
            let value = scalar_text(value).map_err(|BadValue| invalid(device, path, raw))?;
            (value, unit)
        }
        other => {
            let value = scalar_text(other).map_err(|BadValue| invalid(device, path, raw))?;
            (value, String::new())
        }
    };
    let Some(value) = value.filter(|v| !values::is_unavailable(v)) else {
        return Ok(None);
    };
    let unit = match unit.as_str() {
        // amd-smi's "MB" counts mebibytes (see the module doc).
        "MB" if memory => "MiB".to_owned(),
        "GB" if memory => "GiB".to_owned(),
        "KB" if memory => "KiB".to_owned(),
        _ => unit,
    };
    Ok(Some(format!("{} {unit}", value.trim()).trim().to_owned()))
}

/// The first of `paths` with an available reading, read with `read`.
fn first_measure<T>(
    entry: &Map<String, Value>,
    device: &str,
    paths: &[&str],
    memory: bool,
    read: impl Fn(&str) -> Result<Option<T>, BadValue>,
) -> Result<Option<T>, GpuParseError> {
    for path in paths {
        let Some(text) = measure_text(entry, device, path, memory)? else {
            continue;
        };
        let value = read(&text).map_err(|BadValue| GpuParseError::InvalidValue {
            device: device.to_owned(),
            field: (*path).to_owned(),
            value: excerpt(&text),
        })?;
        if value.is_some() {
            return Ok(value);
        }
    }
    Ok(None)
}

/// Error for an unreadable JSON value at `path`.
fn invalid(device: &str, path: &str, raw: &Value) -> GpuParseError {
    GpuParseError::InvalidValue { device: device.to_owned(), field: path.to_owned(), value: json_excerpt(raw) }
}

/// The first of `paths` holding available text.
fn first_text(entry: &Map<String, Value>, device: &str, paths: &[&str]) -> Result<Option<String>, GpuParseError> {
    for path in paths {
        let Some(raw) = at(entry, path) else { continue };
        let text = scalar_text(raw).map_err(|BadValue| GpuParseError::InvalidValue {
            device: device.to_owned(),
            field: (*path).to_owned(),
            value: json_excerpt(raw),
        })?;
        if let Some(text) = text.as_deref().and_then(values::text) {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// One per-GPU object → one sample.
fn parse_entry(position: usize, entry: &Value) -> Result<GpuSample, GpuParseError> {
    let Value::Object(entry) = entry else {
        return Err(GpuParseError::UnexpectedShape {
            msg: format!("GPU entry {position} is not an object: {}", json_excerpt(entry)),
        });
    };
    let device = format!("gpu entry {position}");
    let mut sample = GpuSample::empty(Vendor::Amd);
    if let Some(raw) = entry.get("gpu") {
        let text = scalar_text(raw).ok().flatten();
        sample.index = match text.as_deref() {
            None => return Err(invalid(&device, "gpu", raw)),
            Some(t) => values::count(t).map_err(|BadValue| invalid(&device, "gpu", raw))?,
        };
    }
    sample.name = first_text(entry, &device, &["asic/market_name", "board/product_name"])?;
    sample.uuid = first_text(entry, &device, &["uuid"])?;
    sample.driver_version = first_text(entry, &device, &["driver/version"])?;
    let mib = |v: &str| values::mebibytes(v, Some("MiB"));
    sample.vram_total_mib = first_measure(entry, &device, &["mem_usage/total_vram", "vram/size"], true, mib)?;
    sample.vram_used_mib = first_measure(entry, &device, &["mem_usage/used_vram"], true, mib)?;
    sample.utilization_pct =
        first_measure(entry, &device, &["usage/gfx_activity"], false, |v| values::non_negative(v, &["%"]))?;
    sample.temperature_c = first_measure(entry, &device, &["temperature/edge", "temperature/hotspot"], false, |v| {
        values::real(v, &["C", "°C"])
    })?;
    sample.power_w = first_measure(
        entry,
        &device,
        &["power/socket_power", "power/current_socket_power", "power/average_socket_power"],
        false,
        |v| values::non_negative(v, &["W"]),
    )?;
    Ok(sample)
}
