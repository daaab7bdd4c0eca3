//! Errors of the GPU parsers: one enum for every way a capture can fail to describe GPUs, each variant
//! with a stable code (clients and tests depend on the strings) and a message that tells an operator
//! what the tool said or what was wrong with its output.

use thiserror::Error;

/// Why a GPU tool capture could not be turned into samples.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpuParseError {
    /// The capture is empty or only whitespace: the tool printed nothing.
    #[error("the capture is empty: the GPU tool printed nothing")]
    Empty,
    /// The capture exceeds [`MAX_INPUT_BYTES`](super::MAX_INPUT_BYTES).
    #[error("the capture is {len} bytes, over the {limit}-byte limit; refusing to parse it")]
    TooLarge {
        /// Size of the capture in bytes.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// `nvidia-smi` could not talk to the kernel driver (driver not loaded, not installed, or crashed).
    #[error("nvidia-smi could not communicate with the NVIDIA driver: make sure the driver is installed and loaded")]
    DriverUnreachable,
    /// The tool found no GPU.
    #[error("the GPU tool reported that no devices were found")]
    NoDevices,
    /// NVML (the library behind nvidia-smi) failed to initialise, typically a driver/library mismatch
    /// after a driver upgrade without a reboot.
    #[error("nvidia-smi failed to initialize NVML: {detail}{}", library_version.as_ref().map(|v| format!(" (NVML library version {v})")).unwrap_or_default())]
    NvmlInit {
        /// The reason nvidia-smi gave (`Driver/library version mismatch`).
        detail: String,
        /// The `NVML library version: …` line, when present.
        library_version: Option<String>,
    },
    /// `rocm-smi --json` had nothing to report for the requested fields.
    #[error("rocm-smi printed 'No JSON data to report' instead of JSON: the requested fields are not available")]
    NoJsonData,
    /// A JSON document followed by stray text (e.g. a status line printed on the same stdout).
    #[error("text after the JSON document, at line {line}: {text:?}")]
    TrailingGarbage {
        /// 1-based line number of the stray text.
        line: usize,
        /// The stray line (cut to a readable length).
        text: String,
    },
    /// The CSV is malformed (wrong column count, unreadable value, ...).
    #[error("nvidia-smi CSV, line {line}: {msg}")]
    Csv {
        /// 1-based line number in the capture.
        line: u64,
        /// What was wrong.
        msg: String,
    },
    /// The XML is malformed or is not an `nvidia-smi -q -x` log.
    #[error("nvidia-smi XML: {msg}")]
    Xml {
        /// What was wrong.
        msg: String,
    },
    /// The text is not JSON (or not valid JSON).
    #[error("invalid JSON: {msg}")]
    Json {
        /// What was wrong.
        msg: String,
    },
    /// The JSON is valid but not shaped like this tool's output.
    #[error("unexpected JSON shape: {msg}")]
    UnexpectedShape {
        /// What was expected and not found.
        msg: String,
    },
    /// None of the CSV columns is one hwledger can use (index, uuid, name, memory, utilisation, ...).
    #[error("none of the CSV columns is one hwledger reads: {columns:?}")]
    UnknownColumns {
        /// The columns that were present.
        columns: Vec<String>,
    },
    /// A field that must be a number (with its unit) holds something else.
    #[error("{device}: field {field} has an unreadable value {value:?}")]
    InvalidValue {
        /// Which device (`gpu 0`, `card1`, `gpu 0 mig device 1`).
        device: String,
        /// Which field.
        field: String,
        /// The value as the tool printed it (cut to a readable length).
        value: String,
    },
}

impl GpuParseError {
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            GpuParseError::Empty => "empty",
            GpuParseError::TooLarge { .. } => "too_large",
            GpuParseError::DriverUnreachable => "driver_unreachable",
            GpuParseError::NoDevices => "no_devices",
            GpuParseError::NvmlInit { .. } => "nvml_init",
            GpuParseError::NoJsonData => "no_json_data",
            GpuParseError::TrailingGarbage { .. } => "trailing_garbage",
            GpuParseError::Csv { .. } => "csv",
            GpuParseError::Xml { .. } => "xml",
            GpuParseError::Json { .. } => "json",
            GpuParseError::UnexpectedShape { .. } => "unexpected_shape",
            GpuParseError::UnknownColumns { .. } => "unknown_columns",
            GpuParseError::InvalidValue { .. } => "invalid_value",
        }
    }
}

/// A format name that is none of `nvidia-smi-csv`, `nvidia-smi-xml`, `rocm-smi`, `amd-smi`, `system-profiler`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown GPU output format {name:?}; expected one of nvidia-smi-csv, nvidia-smi-xml, rocm-smi, amd-smi, system-profiler"
)]
pub struct UnknownGpuFormat {
    /// The name that was given.
    pub name: String,
}

/// Cut a quoted value to a length an operator can read in one line, on a character boundary.
pub(crate) fn excerpt(value: &str) -> String {
    /// Enough to recognise the value; a hostile 16 MiB cell must not be copied into an error.
    const MAX_CHARS: usize = 120;
    let mut out: String = value.chars().take(MAX_CHARS).collect();
    if value.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}
