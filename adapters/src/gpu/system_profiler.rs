//! `system_profiler SPDisplaysDataType -json` (macOS).
//!
//! `SPDisplaysDataType` is an array with one entry per GPU; the attached displays hang below each GPU
//! (`spdisplays_ndrvs`) and are ignored. On Apple Silicon `_name` is often an untranslated resource
//! key such as `kHW_AppleM1Item`, so the name comes from `sppci_model` first. The core count
//! (`sppci_cores`) tells apart SKUs of one chip (7- and 8-core M1), so it is kept in the name:
//! `Apple M1 (7-core GPU)`. Apple Silicon memory is unified: VRAM is `None` unless the entry states a
//! dedicated size (`spdisplays_vram`, on Macs with discrete GPUs). system_profiler reports no
//! utilisation, temperature, power or driver version.

use serde_json::{Map, Value};

use super::error::excerpt;
use super::json::{json_excerpt, scalar_text};
use super::values::{self, BadValue};
use super::{GpuParseError, GpuSample, Vendor, prepare_input, read_json_document};

/// Parse `system_profiler SPDisplaysDataType -json` output.
pub fn parse_system_profiler(text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    let text = prepare_input(text)?;
    let document = read_json_document(text)?;
    let Some(entries) = document.get("SPDisplaysDataType") else {
        return Err(GpuParseError::UnexpectedShape {
            msg: "no SPDisplaysDataType key: this is not `system_profiler SPDisplaysDataType -json` output".to_owned(),
        });
    };
    let Value::Array(entries) = entries else {
        return Err(GpuParseError::UnexpectedShape {
            msg: format!("SPDisplaysDataType is not an array: {}", json_excerpt(entries)),
        });
    };
    let mut samples = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(GpuParseError::UnexpectedShape {
                msg: format!("SPDisplaysDataType entry {position} is not an object: {}", json_excerpt(entry)),
            });
        };
        let device = format!("SPDisplaysDataType entry {position}");
        // Entries without a device type are GPUs on older macOS; anything else typed is not a GPU.
        match text_of(entry, &device, "sppci_device_type")? {
            Some(kind) if kind != "spdisplays_gpu" => continue,
            _ => {}
        }
        let mut sample = GpuSample::empty(vendor(text_of(entry, &device, "spdisplays_vendor")?));
        sample.index = u32::try_from(position).ok();
        let model = text_of(entry, &device, "sppci_model")?;
        let raw_name = text_of(entry, &device, "_name")?.filter(|n| !n.starts_with("kHW_"));
        let cores = match text_of(entry, &device, "sppci_cores")? {
            None => None,
            Some(c) => values::count(&c).map_err(|BadValue| invalid(&device, "sppci_cores", &c))?,
        };
        sample.name = model.or(raw_name).map(|name| match cores {
            Some(cores) => format!("{name} ({cores}-core GPU)"),
            None => name,
        });
        for key in ["spdisplays_vram", "_spdisplays_vram"] {
            if let Some(vram) = text_of(entry, &device, key)? {
                sample.vram_total_mib = vram_mib(&vram).map_err(|BadValue| invalid(&device, key, &vram))?;
                break;
            }
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// The text of `key`, `None` when absent or unavailable.
fn text_of(entry: &Map<String, Value>, device: &str, key: &str) -> Result<Option<String>, GpuParseError> {
    let Some(raw) = entry.get(key) else {
        return Ok(None);
    };
    let text = scalar_text(raw).map_err(|BadValue| GpuParseError::InvalidValue {
        device: device.to_owned(),
        field: key.to_owned(),
        value: json_excerpt(raw),
    })?;
    Ok(text.as_deref().and_then(values::text))
}

/// Error for an unreadable value of `key`.
fn invalid(device: &str, key: &str, value: &str) -> GpuParseError {
    GpuParseError::InvalidValue { device: device.to_owned(), field: key.to_owned(), value: excerpt(value) }
}

/// `"8 GB"` / `"1536 MB"` → MiB. macOS writes binary sizes with decimal unit names.
fn vram_mib(text: &str) -> Result<Option<u64>, BadValue> {
    let mut parts = text.split_whitespace();
    let (Some(number), unit, None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadValue);
    };
    let unit = match unit.map(str::to_ascii_uppercase).as_deref() {
        Some("GB") => "GiB",
        Some("MB") | None => "MiB",
        Some(_) => return Err(BadValue),
    };
    values::mebibytes(&format!("{number} {unit}"), None)
}

/// Vendor from `spdisplays_vendor` (`sppci_vendor_Apple`, `sppci_vendor_amd`, `Intel`, `NVIDIA (0x10de)`).
fn vendor(raw: Option<String>) -> Vendor {
    let Some(raw) = raw else { return Vendor::Other };
    let lower = raw.to_ascii_lowercase();
    // Compare whole words: "ati" is also inside "Corporation".
    let has = |word: &str| lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == word);
    if has("apple") {
        Vendor::Apple
    } else if has("nvidia") || has("0x10de") {
        Vendor::Nvidia
    } else if has("intel") || has("0x8086") {
        Vendor::Intel
    } else if has("amd") || has("ati") || has("0x1002") {
        Vendor::Amd
    } else {
        Vendor::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_gpu_on_an_intel_mac() {
        let text = r#"{"SPDisplaysDataType": [
            {"_name": "Intel UHD Graphics 630", "sppci_model": "Intel UHD Graphics 630",
             "spdisplays_vendor": "Intel", "sppci_device_type": "spdisplays_gpu", "spdisplays_vram_shared": "1536 MB"},
            {"_name": "AMD Radeon Pro 5500M", "sppci_model": "AMD Radeon Pro 5500M",
             "spdisplays_vendor": "sppci_vendor_amd", "spdisplays_vram": "8 GB"}
        ]}"#;
        let samples = parse_system_profiler(text).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].vendor, Vendor::Intel);
        assert_eq!(samples[0].vram_total_mib, None, "shared memory is not VRAM");
        assert_eq!(samples[1].vendor, Vendor::Amd);
        assert_eq!(samples[1].vram_total_mib, Some(8192));
        assert_eq!(samples[1].index, Some(1));
    }

    #[test]
    fn vendor_words() {
        assert_eq!(vendor(Some("NVIDIA Corporation".into())), Vendor::Nvidia);
        assert_eq!(vendor(Some("Intel Corporation".into())), Vendor::Intel);
        assert_eq!(vendor(Some("ATI Technologies".into())), Vendor::Amd);
        assert_eq!(vendor(Some("sppci_vendor_Apple".into())), Vendor::Apple);
        assert_eq!(vendor(Some("Matrox".into())), Vendor::Other);
        assert_eq!(vendor(None), Vendor::Other);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert_eq!(parse_system_profiler("{}").unwrap_err().code(), "unexpected_shape");
        assert_eq!(parse_system_profiler(r#"{"SPDisplaysDataType": 3}"#).unwrap_err().code(), "unexpected_shape");
        assert_eq!(
            parse_system_profiler(r#"{"SPDisplaysDataType": [{"spdisplays_vram": "lots"}]}"#).unwrap_err().code(),
            "invalid_value"
        );
    }
}
