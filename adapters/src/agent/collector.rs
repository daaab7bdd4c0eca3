//! The agent's local collector: finds out which GPUs this machine has and what they are doing, by running
//! the vendor tools and parsing their output with the pure parsers of [`crate::gpu`].
//!
//! Detection order, re-run on every sample (so a driver installed later is picked up without a restart):
//!
//! 1. `nvidia-smi` with hwledger's fixed query ([`NVIDIA_QUERY`], `--format=csv,noheader,nounits`);
//! 2. `rocm-smi` (the product-name, use, VRAM, temperature and power report, `--json`);
//! 3. `amd-smi metric --json`, completed with names and VRAM sizes from `amd-smi static --json`;
//! 4. `system_profiler SPDisplaysDataType -json` (configured by default only on macOS);
//! 5. none of them: a CPU-only device (no GPUs).
//!
//! A tool that is not installed (its program is not found), or that says "No devices were found", passes
//! to the next one. A tool that is installed but fails (driver unreachable, NVML mismatch, garbage, a
//! timeout) is an error for this sample: the agent records nothing rather than a CPU-only heartbeat that
//! would be false. Every run has a timeout and a cap on the output it reads; the child is killed when
//! either is hit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::gpu::{
    GpuParseError, GpuSample, MAX_INPUT_BYTES, NVIDIA_QUERY, parse_amd_smi, parse_nvidia_csv, parse_rocm_smi,
    parse_system_profiler,
};

/// Default longest run of one tool. `nvidia-smi` on a busy 8-GPU box answers in well under a second, but
/// a hung driver makes it block forever; 10 s keeps a 30 s heartbeat interval intact.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest stderr excerpt kept in an error: enough for the tool's message, not a flood.
const STDERR_EXCERPT_BYTES: usize = 2048;

/// The arguments of the `rocm-smi` run (the same report the SSH probe asks for).
pub const ROCM_SMI_ARGS: &[&str] =
    &["--showproductname", "--showuse", "--showmeminfo", "vram", "--showtemp", "--showpower", "--json"];
/// The arguments of the `amd-smi` telemetry run.
pub const AMD_SMI_METRIC_ARGS: &[&str] = &["metric", "--json"];
/// The arguments of the `amd-smi` inventory run (market names, VRAM size).
pub const AMD_SMI_STATIC_ARGS: &[&str] = &["static", "--json"];
/// The arguments of the `system_profiler` run.
pub const SYSTEM_PROFILER_ARGS: &[&str] = &["SPDisplaysDataType", "-json"];

/// The `nvidia-smi` arguments: hwledger's fixed query, so the header-less output is interpretable.
pub fn nvidia_smi_args() -> Vec<String> {
    vec![format!("--query-gpu={}", NVIDIA_QUERY.join(",")), "--format=csv,noheader,nounits".to_owned()]
}

/// A GPU tool the collector can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Tool {
    /// NVIDIA's `nvidia-smi`.
    #[serde(rename = "nvidia-smi")]
    NvidiaSmi,
    /// AMD's `rocm-smi`.
    #[serde(rename = "rocm-smi")]
    RocmSmi,
    /// AMD's `amd-smi`.
    #[serde(rename = "amd-smi")]
    AmdSmi,
    /// macOS `system_profiler`.
    #[serde(rename = "system_profiler")]
    SystemProfiler,
}

impl Tool {
    /// The tool's program name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::NvidiaSmi => "nvidia-smi",
            Tool::RocmSmi => "rocm-smi",
            Tool::AmdSmi => "amd-smi",
            Tool::SystemProfiler => "system_profiler",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where each tool is; `None` disables a tool. A bare name is looked up on `PATH` when run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPaths {
    /// `nvidia-smi`.
    pub nvidia_smi: Option<PathBuf>,
    /// `rocm-smi`.
    pub rocm_smi: Option<PathBuf>,
    /// `amd-smi`.
    pub amd_smi: Option<PathBuf>,
    /// `system_profiler` (default: only on macOS, where it always exists).
    pub system_profiler: Option<PathBuf>,
}

impl Default for ToolPaths {
    fn default() -> ToolPaths {
        ToolPaths {
            nvidia_smi: Some(PathBuf::from("nvidia-smi")),
            rocm_smi: Some(PathBuf::from("rocm-smi")),
            amd_smi: Some(PathBuf::from("amd-smi")),
            system_profiler: cfg!(target_os = "macos").then(|| PathBuf::from("/usr/sbin/system_profiler")),
        }
    }
}

/// How the collector runs tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorOptions {
    /// The tools and where they are.
    pub tools: ToolPaths,
    /// Longest one tool run may take (the child is killed after it).
    pub timeout: Duration,
    /// Most stdout bytes read from one run; more is an error (the parsers refuse more anyway).
    pub max_output_bytes: usize,
}

impl Default for CollectorOptions {
    fn default() -> CollectorOptions {
        CollectorOptions {
            tools: ToolPaths::default(),
            timeout: DEFAULT_TOOL_TIMEOUT,
            max_output_bytes: MAX_INPUT_BYTES,
        }
    }
}

/// One reading of the machine's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The tool that produced `gpus`; `None` for a CPU-only device.
    pub tool: Option<Tool>,
    /// One sample per GPU, in the tool's order.
    pub gpus: Vec<GpuSample>,
}

/// Why no sample could be taken. Each variant names the tool and says what it did.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The program exists but could not be started (permissions, not executable, ...).
    #[error("cannot run {tool} ({path}): {source}")]
    Spawn {
        /// The tool.
        tool: Tool,
        /// The program path as configured.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The tool did not finish in time; it was killed.
    #[error("{tool} did not finish within {timeout:?}; killed it")]
    Timeout {
        /// The tool.
        tool: Tool,
        /// The timeout.
        timeout: Duration,
    },
    /// The tool printed more than the collector reads.
    #[error("{tool} printed more than {limit} bytes; refusing its output")]
    OutputTooLarge {
        /// The tool.
        tool: Tool,
        /// The limit.
        limit: usize,
    },
    /// Reading the tool's output or waiting for it failed.
    #[error("reading the output of {tool}: {source}")]
    Io {
        /// The tool.
        tool: Tool,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The tool's output is not a GPU listing (its own error banner, garbage, ...).
    #[error("{tool}: {source}")]
    Parse {
        /// The tool.
        tool: Tool,
        /// What the parser found.
        source: GpuParseError,
    },
    /// The tool exited with a failure status and printed nothing the parsers recognise.
    #[error("{tool} exited with {} : {stderr}", exit_code.map(|c| format!("status {c}")).unwrap_or_else(|| "a signal".into()))]
    Failed {
        /// The tool.
        tool: Tool,
        /// Its exit code, `None` when a signal ended it.
        exit_code: Option<i32>,
        /// The start of its stderr.
        stderr: String,
    },
}

impl CollectError {
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CollectError::Spawn { .. } => "tool_spawn",
            CollectError::Timeout { .. } => "tool_timeout",
            CollectError::OutputTooLarge { .. } => "tool_output_too_large",
            CollectError::Io { .. } => "tool_io",
            CollectError::Parse { .. } => "tool_parse",
            CollectError::Failed { .. } => "tool_failed",
        }
    }
}

/// What one tool run gave.
struct RunOutput {
    success: bool,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// What trying one tool came to.
enum Attempt {
    /// The tool is not installed, or it found no GPU of its vendor: try the next.
    Absent,
    /// GPUs.
    Found(Vec<GpuSample>),
}

/// Runs the GPU tools of this machine.
#[derive(Debug, Clone)]
pub struct Collector {
    options: CollectorOptions,
}

impl Collector {
    /// A collector with these options.
    pub fn new(options: CollectorOptions) -> Collector {
        Collector { options }
    }

    /// The options.
    pub fn options(&self) -> &CollectorOptions {
        &self.options
    }

    /// Takes one sample: the first tool (in detection order) that is installed and finds GPUs, else a
    /// CPU-only sample. An installed tool that fails is an error.
    pub async fn sample(&self) -> Result<Sample, CollectError> {
        let tools = &self.options.tools;
        if let Some(path) = &tools.nvidia_smi {
            let args = nvidia_smi_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Attempt::Found(gpus) =
                self.try_tool(Tool::NvidiaSmi, path, &args, |t| parse_nvidia_csv(t, Some(NVIDIA_QUERY))).await?
            {
                return Ok(Sample { tool: Some(Tool::NvidiaSmi), gpus });
            }
        }
        if let Some(path) = &tools.rocm_smi {
            if let Attempt::Found(gpus) = self.try_tool(Tool::RocmSmi, path, ROCM_SMI_ARGS, parse_rocm_smi).await? {
                return Ok(Sample { tool: Some(Tool::RocmSmi), gpus });
            }
        }
        if let Some(path) = &tools.amd_smi {
            if let Attempt::Found(mut gpus) =
                self.try_tool(Tool::AmdSmi, path, AMD_SMI_METRIC_ARGS, parse_amd_smi).await?
            {
                // Names and VRAM sizes live in `amd-smi static`; without them the telemetry still stands.
                match self.try_tool(Tool::AmdSmi, path, AMD_SMI_STATIC_ARGS, parse_amd_smi).await {
                    Ok(Attempt::Found(inventory)) => merge_amd(&mut gpus, &inventory),
                    Ok(Attempt::Absent) => {}
                    Err(e) => tracing::debug!("amd-smi static failed, GPU names unknown: {e}"),
                }
                return Ok(Sample { tool: Some(Tool::AmdSmi), gpus });
            }
        }
        if let Some(path) = &tools.system_profiler {
            if let Attempt::Found(gpus) =
                self.try_tool(Tool::SystemProfiler, path, SYSTEM_PROFILER_ARGS, parse_system_profiler).await?
            {
                return Ok(Sample { tool: Some(Tool::SystemProfiler), gpus });
            }
        }
        Ok(Sample { tool: None, gpus: Vec::new() })
    }

    async fn try_tool(
        &self,
        tool: Tool,
        path: &Path,
        args: &[&str],
        parse: impl Fn(&str) -> Result<Vec<GpuSample>, GpuParseError>,
    ) -> Result<Attempt, CollectError> {
        let Some(out) = self.run(tool, path, args).await? else {
            tracing::debug!("{tool} is not installed ({})", path.display());
            return Ok(Attempt::Absent);
        };
        if out.success {
            return match parse(&out.stdout) {
                Ok(gpus) if gpus.is_empty() => Ok(Attempt::Absent),
                Ok(gpus) => Ok(Attempt::Found(gpus)),
                Err(GpuParseError::NoDevices) => Ok(Attempt::Absent),
                Err(source) => Err(CollectError::Parse { tool, source }),
            };
        }
        // A failing tool usually says why on stdout or stderr; the parsers recognise those banners.
        let mut text = out.stdout;
        if !out.stderr.trim().is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&out.stderr);
        }
        match parse(&text) {
            Err(GpuParseError::NoDevices) => Ok(Attempt::Absent),
            Err(
                source
                @ (GpuParseError::DriverUnreachable | GpuParseError::NvmlInit { .. } | GpuParseError::NoJsonData),
            ) => Err(CollectError::Parse { tool, source }),
            // Output with a failing status is not trusted, whatever it parses to.
            _ => Err(CollectError::Failed { tool, exit_code: out.exit_code, stderr: excerpt(&out.stderr) }),
        }
    }

    /// Runs a tool with the timeout and output cap. `Ok(None)` when the program does not exist.
    async fn run(&self, tool: Tool, path: &Path, args: &[&str]) -> Result<Option<RunOutput>, CollectError> {
        let mut child = match spawn(path, args) {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CollectError::Spawn { tool, path: path.to_path_buf(), source }),
        };
        let limit = self.options.max_output_bytes;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let (out, err) = tokio::join!(read_capped(stdout, limit), read_capped(stderr, STDERR_EXCERPT_BYTES * 4));
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.options.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // kill_on_drop would do it too; killing here also reaps the child before we return.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(CollectError::Timeout { tool, timeout: self.options.timeout });
            }
        };
        let io = |source| CollectError::Io { tool, source };
        let (stdout, truncated) = out.map_err(io)?;
        if truncated {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(CollectError::OutputTooLarge { tool, limit });
        }
        let (stderr, _) = err.map_err(io)?;
        let status = status.map_err(io)?;
        Ok(Some(RunOutput {
            success: status.success(),
            exit_code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }))
    }
}

/// Starts a tool with a C locale (numbers with `.` decimals), no stdin, piped output, killed if dropped.
fn spawn(path: &Path, args: &[&str]) -> std::io::Result<tokio::process::Child> {
    /// `ETXTBSY`: the program file is open for writing by some process at this moment (a package upgrade
    /// replacing the tool, or a just-written script whose descriptor a concurrently forked process still
    /// holds). It clears within milliseconds, so a few short retries are enough.
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        let result = tokio::process::Command::new(path)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match result {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Reads at most `limit` bytes; the flag says whether there was more.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(pipe) = pipe else { return Ok((Vec::new(), false)) };
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut taken = pipe.take(cap);
    taken.read_to_end(&mut buf).await?;
    let truncated = buf.len() > limit;
    buf.truncate(limit);
    Ok((buf, truncated))
}

/// Fills what `amd-smi metric` leaves out (name, uuid, VRAM total, driver) from `amd-smi static`, matching
/// GPUs by index. Readings the metric run gave are never replaced.
fn merge_amd(gpus: &mut [GpuSample], inventory: &[GpuSample]) {
    for gpu in gpus.iter_mut() {
        let Some(found) = inventory.iter().find(|s| s.index.is_some() && s.index == gpu.index) else { continue };
        if gpu.name.is_none() {
            gpu.name.clone_from(&found.name);
        }
        if gpu.uuid.is_none() {
            gpu.uuid.clone_from(&found.uuid);
        }
        if gpu.vram_total_mib.is_none() {
            gpu.vram_total_mib = found.vram_total_mib;
        }
        if gpu.driver_version.is_none() {
            gpu.driver_version.clone_from(&found.driver_version);
        }
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.len() <= STDERR_EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = STDERR_EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

/// This machine's host name, if the system says (Linux: the kernel's, elsewhere `hostname`).
pub fn local_hostname() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_kernel.or_else(|| {
        std::process::Command::new("hostname")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    })?;
    let name = name.trim();
    (!name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_graphic())).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_arguments_are_the_fixed_query() {
        assert_eq!(
            nvidia_smi_args(),
            vec![
                "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,\
                 driver_version"
                    .to_owned(),
                "--format=csv,noheader,nounits".to_owned()
            ]
        );
    }

    #[test]
    fn amd_merge_fills_only_missing_fields() {
        let mut metric = crate::gpu::parse_amd_smi(r#"[{"gpu":0,"power":{"socket_power":{"value":10,"unit":"W"}}}]"#)
            .unwrap_or_default();
        let inventory = crate::gpu::parse_amd_smi(
            r#"[{"gpu":0,"asic":{"market_name":"MI210"},"vram":{"size":{"value":65520,"unit":"MB"}}},{"gpu":1}]"#,
        )
        .unwrap_or_default();
        merge_amd(&mut metric, &inventory);
        assert_eq!(metric.len(), 1);
        assert_eq!(metric[0].name.as_deref(), Some("MI210"));
        assert_eq!(metric[0].vram_total_mib, Some(65520));
        assert_eq!(metric[0].power_w, Some(10.0));
    }
}
