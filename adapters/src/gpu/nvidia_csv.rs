//! `nvidia-smi --query-gpu=… --format=csv[,noheader][,nounits]`.
//!
//! With a header the columns are read from it: units may sit in the header (`memory.used [MiB]`, with
//! `nounits` values) or in the values (`1234 MiB`, `53 %`, `123.00 W`), and both spellings of a name
//! are accepted (`name` / `gpu_name`). Without a header the caller says which query produced the
//! output ([`NVIDIA_QUERY`] by default). Columns hwledger does not use are ignored; a row whose column
//! count differs from the header's (or the query's) is an error naming its line.

use csv::{ReaderBuilder, StringRecord, Trim};

use super::error::excerpt;
use super::values::{self, BadValue};
use super::{GpuParseError, GpuSample, MigInfo, Vendor, banner, prepare_input};

/// The exact query hwledger itself runs, so that its `noheader` output is interpretable:
/// `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,driver_version --format=csv,noheader,nounits`.
pub const NVIDIA_QUERY: &[&str] = &[
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
    "driver_version",
];

/// What a column holds, for the columns hwledger reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Index,
    Uuid,
    Name,
    MemoryTotal,
    MemoryUsed,
    Utilization,
    Temperature,
    /// Power draw; the number is a preference rank: `power.draw` (what nvidia-smi itself shows; the
    /// average where the driver has one) before `power.draw.average` before `power.draw.instant`.
    Power(u8),
    DriverVersion,
    MigCurrent,
    MigPending,
}

/// The field a query name (lower-case, unit removed) stands for.
fn field_for(name: &str) -> Option<Field> {
    Some(match name {
        "index" => Field::Index,
        "uuid" | "gpu_uuid" => Field::Uuid,
        "name" | "gpu_name" => Field::Name,
        "memory.total" => Field::MemoryTotal,
        "memory.used" => Field::MemoryUsed,
        "utilization.gpu" => Field::Utilization,
        "temperature.gpu" => Field::Temperature,
        "power.draw" => Field::Power(0),
        "power.draw.average" => Field::Power(1),
        "power.draw.instant" => Field::Power(2),
        "driver_version" => Field::DriverVersion,
        "mig.mode.current" => Field::MigCurrent,
        "mig.mode.pending" => Field::MigPending,
        _ => return None,
    })
}

/// One column: its name as printed, the unit its header gives, and what it holds.
#[derive(Debug, Clone)]
struct Column {
    label: String,
    unit: Option<String>,
    field: Option<Field>,
}

impl Column {
    fn new(label: &str) -> Self {
        let (name, unit) = split_header(label);
        Column { label: label.to_owned(), unit: unit.map(str::to_owned), field: field_for(&name.to_ascii_lowercase()) }
    }
}

/// `"memory.used [MiB]"` → `("memory.used", Some("MiB"))`.
fn split_header(label: &str) -> (&str, Option<&str>) {
    let label = label.trim();
    if let Some(open) = label.rfind(" [")
        && let Some(unit) = label.get(open + 2..).and_then(|u| u.strip_suffix(']'))
        && !unit.is_empty()
        && !unit.contains(['[', ']'])
    {
        return (label.get(..open).unwrap_or(label).trim_end(), Some(unit));
    }
    (label, None)
}

/// Whether `label` looks like a query field name as nvidia-smi prints it in a header.
fn is_query_name(label: &str) -> bool {
    let (name, _) = split_header(label);
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Whether the first record is a header line: every cell is a field name, and at least one is
/// unmistakably so (a known field, a dotted name or a `[unit]`), which a data row never is.
fn is_header(record: &StringRecord) -> bool {
    record.iter().all(is_query_name)
        && record.iter().any(|label| {
            let (name, unit) = split_header(label);
            unit.is_some() || name.contains('.') || field_for(&name.to_ascii_lowercase()).is_some()
        })
}

/// Parse `nvidia-smi --query-gpu` CSV. `query` names the columns of header-less output
/// (`--format=csv,noheader`); `None` means [`NVIDIA_QUERY`]. When the output has a header, the header
/// is used and `query` is ignored.
pub fn parse_nvidia_csv(text: &str, query: Option<&[&str]>) -> Result<Vec<GpuSample>, GpuParseError> {
    let text = prepare_input(text)?;
    if let Some(banner) = banner::nvidia_banner(text) {
        return Err(banner);
    }
    let mut reader =
        ReaderBuilder::new().has_headers(false).flexible(true).trim(Trim::All).from_reader(text.as_bytes());
    let mut columns: Option<Vec<Column>> = None;
    let mut samples = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| GpuParseError::Csv {
            line: e.position().map_or(0, csv::Position::line),
            msg: e.to_string(),
        })?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        let line = record.position().map_or(0, csv::Position::line);
        let columns = match &columns {
            Some(columns) => columns,
            None => {
                let header = is_header(&record);
                let cols: Vec<Column> = if header {
                    record.iter().map(Column::new).collect()
                } else {
                    query.unwrap_or(NVIDIA_QUERY).iter().map(|q| Column::new(q)).collect()
                };
                if cols.iter().all(|c| c.field.is_none()) {
                    return Err(GpuParseError::UnknownColumns { columns: cols.into_iter().map(|c| c.label).collect() });
                }
                let cols = columns.insert(cols);
                if header {
                    continue;
                }
                cols
            }
        };
        samples.push(parse_row(&record, columns, line)?);
    }
    Ok(samples)
}

/// One data row → one sample.
fn parse_row(record: &StringRecord, columns: &[Column], line: u64) -> Result<GpuSample, GpuParseError> {
    if record.len() != columns.len() {
        let names: Vec<&str> = columns.iter().map(|c| c.label.as_str()).collect();
        return Err(GpuParseError::Csv {
            line,
            msg: format!("expected {} columns ({}), found {}", columns.len(), names.join(", "), record.len()),
        });
    }
    let mut sample = GpuSample::empty(Vendor::Nvidia);
    let mut power: Option<(u8, f64)> = None;
    let mut mig_current = None;
    let mut mig_pending = None;
    for (column, value) in columns.iter().zip(record.iter()) {
        let Some(field) = column.field else { continue };
        let bad = |what: &str| GpuParseError::Csv {
            line,
            msg: format!("column {:?}: cannot read {:?} as {what}", column.label, excerpt(value)),
        };
        match field {
            Field::Index => {
                sample.index = values::count(value).map_err(|BadValue| bad("a GPU index"))?;
            }
            Field::Uuid => sample.uuid = values::text(value),
            Field::Name => sample.name = values::text(value),
            Field::DriverVersion => sample.driver_version = values::text(value),
            Field::MigCurrent => mig_current = values::text(value),
            Field::MigPending => mig_pending = values::text(value),
            Field::MemoryTotal => {
                sample.vram_total_mib = values::mebibytes(value, column.unit.as_deref())
                    .map_err(|BadValue| bad("an amount of memory in MiB"))?;
            }
            Field::MemoryUsed => {
                sample.vram_used_mib = values::mebibytes(value, column.unit.as_deref())
                    .map_err(|BadValue| bad("an amount of memory in MiB"))?;
            }
            Field::Utilization => {
                sample.utilization_pct = values::non_negative(value, &["%"]).map_err(|BadValue| bad("a percentage"))?;
            }
            Field::Temperature => {
                sample.temperature_c =
                    values::real(value, &["C"]).map_err(|BadValue| bad("a temperature in degrees C"))?;
            }
            Field::Power(rank) => {
                let watts = values::non_negative(value, &["W"]).map_err(|BadValue| bad("a power draw in W"))?;
                if let Some(watts) = watts
                    && power.is_none_or(|(best, _)| rank < best)
                {
                    power = Some((rank, watts));
                }
            }
        }
    }
    sample.power_w = power.map(|(_, watts)| watts);
    if mig_current.is_some() || mig_pending.is_some() {
        sample.mig = Some(MigInfo { mode: mig_current, pending_mode: mig_pending, devices: Vec::new() });
    }
    sample.virtualization = grid_marker(sample.name.as_deref());
    Ok(sample)
}

/// NVIDIA names the virtual GPUs of its vGPU (formerly GRID) software `GRID <board>-<profile>`
/// (`GRID P4-1Q`); a guest that sees such a device is a vGPU guest even when no mode is reported.
pub(crate) fn grid_marker(name: Option<&str>) -> Option<String> {
    name.filter(|n| n.starts_with("GRID ")).map(|_| "VGPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_detection() {
        let header = StringRecord::from(vec!["name", "memory.used [MiB]"]);
        assert!(is_header(&header));
        let data = StringRecord::from(vec!["NVIDIA L4", "12"]);
        assert!(!is_header(&data));
        let words = StringRecord::from(vec!["P0", "Enabled"]);
        assert!(!is_header(&words));
    }

    #[test]
    fn split_header_units() {
        assert_eq!(split_header("memory.used [MiB]"), ("memory.used", Some("MiB")));
        assert_eq!(split_header("temperature.gpu"), ("temperature.gpu", None));
        assert_eq!(split_header("x []"), ("x []", None));
    }
}
