//! Recognising the error banners `nvidia-smi` prints instead of data ("NVIDIA-SMI has failed because it
//! couldn't communicate with the NVIDIA driver", "No devices were found", "Failed to initialize NVML:
//! ..."), including copies that were re-wrapped over several lines or passed through a word processor
//! that turned the apostrophes into typographic quotes.

use super::GpuParseError;

/// Lower-case `text`, map typographic quotes to ASCII ones and collapse every run of whitespace
/// (including line breaks) to one space, so phrases match however the banner was wrapped.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        let c = match c {
            '\u{2018}' | '\u{2019}' | '\u{201b}' | '\u{2032}' | '`' => '\'',
            '\u{201c}' | '\u{201d}' | '\u{201f}' => '"',
            other => other,
        };
        out.extend(c.to_lowercase());
    }
    out
}

/// How much of the start of a capture is searched for a banner. nvidia-smi prints a banner *instead
/// of* data, so it is at the very start and a few hundred bytes long; not scanning a large capture
/// to its end keeps parsing of real data cheap.
const BANNER_WINDOW: usize = 4096;

/// The error `nvidia-smi` printed instead of data, if `text` is such a banner.
pub(crate) fn nvidia_banner(text: &str) -> Option<GpuParseError> {
    let mut end = text.len().min(BANNER_WINDOW);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or("");
    // Cheap pre-filter (std's optimised search): every banner names one of these.
    let lower = text.to_ascii_lowercase();
    if !["nvidia-smi", "devices", "nvml"].iter().any(|needle| lower.contains(needle)) {
        return None;
    }
    let normalised = normalise(text);
    if normalised.contains("nvidia-smi has failed because it couldn't communicate with the nvidia driver") {
        return Some(GpuParseError::DriverUnreachable);
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if lines.iter().any(|l| normalise(l).trim_end_matches('.') == "no devices were found") {
        return Some(GpuParseError::NoDevices);
    }
    const NVML_INIT: &str = "failed to initialize nvml:";
    for (i, line) in lines.iter().enumerate() {
        let Some(start) = line.get(..NVML_INIT.len()) else {
            continue;
        };
        if !start.eq_ignore_ascii_case(NVML_INIT) {
            continue;
        }
        let detail = line.get(NVML_INIT.len()..).unwrap_or("").trim().to_owned();
        let library_version = lines.iter().skip(i + 1).find_map(|l| {
            const VERSION: &str = "nvml library version:";
            let head = l.get(..VERSION.len())?;
            head.eq_ignore_ascii_case(VERSION)
                .then(|| l.get(VERSION.len()..).unwrap_or("").trim().to_owned())
                .filter(|v| !v.is_empty())
        });
        return Some(GpuParseError::NvmlInit { detail, library_version });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_collapses_and_maps_quotes() {
        assert_eq!(normalise("  Couldn\u{2019}t\n\n  Talk\t"), "couldn't talk".to_owned());
    }

    #[test]
    fn data_is_not_a_banner() {
        assert_eq!(nvidia_banner("0, GPU-1, NVIDIA L4, 1, 2, 3, 4"), None);
        assert_eq!(nvidia_banner("<nvidia_smi_log></nvidia_smi_log>"), None);
        // A multi-byte first character must not trip the prefix check.
        assert_eq!(nvidia_banner("ééééééééééééééééééééééééééééé"), None);
    }
}
