//! GPU tool output parsers: pure functions from the text that `nvidia-smi`, `rocm-smi`, `amd-smi` and
//! `system_profiler` print to typed [`GpuSample`]s.
//!
//! Nothing here runs a process, reads a file or looks at the clock: the agent (or the SSH probe) captures
//! the text, and these functions only interpret it. Every parser is total: malformed, truncated, hostile
//! or oversized input gives a [`GpuParseError`] with a stable [`code`](GpuParseError::code), never a
//! panic and never an invented value. A field the tool could not report (`[N/A]`, `[Not Supported]`,
//! `[Insufficient Permissions]`, an empty CSV cell, ...) becomes `None`, never zero.
//!
//! MIG: a MIG-enabled GPU is reported as **one** sample for the physical GPU, with its MIG instances
//! listed in [`GpuSample::mig`] (each with its own memory). Instances are not extra samples, so the
//! sample count is always the number of physical (or virtual, for vGPU guests) GPUs the tool lists.

mod amd_smi;
mod banner;
mod error;
mod json;
mod nvidia_csv;
mod nvidia_xml;
mod rocm_smi;
mod system_profiler;
mod values;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use amd_smi::parse_amd_smi;
pub use error::{GpuParseError, UnknownGpuFormat};
pub use nvidia_csv::{NVIDIA_QUERY, parse_nvidia_csv};
pub use nvidia_xml::parse_nvidia_xml;
pub use rocm_smi::parse_rocm_smi;
pub use system_profiler::parse_system_profiler;

pub(crate) use json::{JsonDocError, read_json_document};

/// The largest input any parser accepts. Real outputs are far smaller (a full `nvidia-smi -q -x` of an
/// 8-GPU box with processes is well under 1 MiB); the cap keeps a hostile or runaway capture from
/// costing unbounded memory.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// One GPU as a tool reported it: a physical GPU, or the virtual GPU a vGPU guest sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// The tool's own device index (`nvidia-smi` index, `rocm-smi` card number, position in the
    /// `nvidia-smi -q -x` / `system_profiler` listing); `None` when the capture does not say.
    pub index: Option<u32>,
    /// Marketing name as reported (`NVIDIA GeForce RTX 3080`, `Radeon RX 7900 XT`, `Apple M1 (7-core GPU)`).
    pub name: Option<String>,
    /// Stable device identifier: NVIDIA `GPU-…` UUID, AMD unique ID.
    pub uuid: Option<String>,
    /// Dedicated memory in MiB. `None` on unified-memory devices unless the tool states a size.
    pub vram_total_mib: Option<u64>,
    /// Memory in use in MiB.
    pub vram_used_mib: Option<u64>,
    /// GPU (compute/graphics engine) utilisation in percent.
    pub utilization_pct: Option<f64>,
    /// Core (edge) temperature in degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Board / socket power draw in watts.
    pub power_w: Option<f64>,
    /// Who made the GPU.
    pub vendor: Vendor,
    /// MIG mode and instances, when the tool reports a MIG mode other than "not applicable".
    pub mig: Option<MigInfo>,
    /// Virtualisation marker: the tool's virtualisation mode (`VGPU`, `Pass-Through`, ...) when it is not
    /// "None"; `VGPU` for a `GRID …` product seen without a mode.
    pub virtualization: Option<String>,
    /// Driver version as reported (`555.42.06`, `6.3.6`).
    pub driver_version: Option<String>,
}

impl GpuSample {
    /// A sample with only the vendor known; parsers fill in what the tool reported.
    pub(crate) fn empty(vendor: Vendor) -> Self {
        Self {
            index: None,
            name: None,
            uuid: None,
            vram_total_mib: None,
            vram_used_mib: None,
            utilization_pct: None,
            temperature_c: None,
            power_w: None,
            vendor,
            mig: None,
            virtualization: None,
            driver_version: None,
        }
    }
}

/// GPU maker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vendor {
    /// NVIDIA (nvidia-smi).
    Nvidia,
    /// AMD (rocm-smi, amd-smi, or a Radeon in a Mac).
    Amd,
    /// Apple Silicon integrated GPU.
    Apple,
    /// Intel graphics, as listed by `system_profiler` on Intel Macs.
    Intel,
    /// A vendor `system_profiler` names that none of the above matches.
    Other,
}

/// MIG (Multi-Instance GPU) state of one physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigInfo {
    /// Current MIG mode as reported (`Enabled` / `Disabled`).
    pub mode: Option<String>,
    /// Mode that takes effect after the next GPU reset, when reported.
    pub pending_mode: Option<String>,
    /// The MIG instances, each with its own memory; empty when MIG is disabled or the tool (CSV) does
    /// not list instances.
    pub devices: Vec<MigDevice>,
}

/// One MIG instance (a GPU instance + compute instance pair) of a MIG-enabled GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigDevice {
    /// MIG device index within its parent GPU.
    pub index: Option<u32>,
    /// GPU instance id.
    pub gpu_instance_id: Option<u32>,
    /// Compute instance id within the GPU instance.
    pub compute_instance_id: Option<u32>,
    /// Streaming multiprocessors assigned to this instance.
    pub multiprocessor_count: Option<u32>,
    /// Memory of this instance in MiB.
    pub vram_total_mib: Option<u64>,
    /// Memory in use in this instance in MiB.
    pub vram_used_mib: Option<u64>,
}

/// Which tool (and output format) a capture came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GpuFormat {
    /// `nvidia-smi --query-gpu=… --format=csv[,noheader][,nounits]`.
    NvidiaSmiCsv,
    /// `nvidia-smi -q -x`.
    NvidiaSmiXml,
    /// `rocm-smi … --json`.
    RocmSmi,
    /// `amd-smi … --json`.
    AmdSmi,
    /// `system_profiler SPDisplaysDataType -json`.
    SystemProfiler,
}

impl GpuFormat {
    /// Every format, in CLI order.
    pub const ALL: [GpuFormat; 5] = [
        GpuFormat::NvidiaSmiCsv,
        GpuFormat::NvidiaSmiXml,
        GpuFormat::RocmSmi,
        GpuFormat::AmdSmi,
        GpuFormat::SystemProfiler,
    ];

    /// The name used on the command line (`nvidia-smi-csv`, ...).
    pub fn cli_name(self) -> &'static str {
        match self {
            GpuFormat::NvidiaSmiCsv => "nvidia-smi-csv",
            GpuFormat::NvidiaSmiXml => "nvidia-smi-xml",
            GpuFormat::RocmSmi => "rocm-smi",
            GpuFormat::AmdSmi => "amd-smi",
            GpuFormat::SystemProfiler => "system-profiler",
        }
    }
}

impl fmt::Display for GpuFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for GpuFormat {
    type Err = UnknownGpuFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GpuFormat::ALL
            .into_iter()
            .find(|format| format.cli_name() == s)
            .ok_or_else(|| UnknownGpuFormat { name: s.to_owned() })
    }
}

/// Parse a capture of the given format. For `nvidia-smi` CSV without a header the columns are taken to
/// be [`NVIDIA_QUERY`]; call [`parse_nvidia_csv`] directly to pass another query.
pub fn parse(format: GpuFormat, text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    match format {
        GpuFormat::NvidiaSmiCsv => parse_nvidia_csv(text, None),
        GpuFormat::NvidiaSmiXml => parse_nvidia_xml(text),
        GpuFormat::RocmSmi => parse_rocm_smi(text),
        GpuFormat::AmdSmi => parse_amd_smi(text),
        GpuFormat::SystemProfiler => parse_system_profiler(text),
    }
}

/// Checks shared by every parser: refuse oversized input, strip a UTF-8 byte-order mark (Windows tools
/// write one), refuse input that is only whitespace.
pub(crate) fn prepare_input(text: &str) -> Result<&str, GpuParseError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(GpuParseError::TooLarge { len: text.len(), limit: MAX_INPUT_BYTES });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(GpuParseError::Empty);
    }
    Ok(text)
}
