//! The agentless GPU probe: run `nvidia-smi` with hwledger's fixed query on a host, fall back to
//! `rocm-smi --json` when nvidia-smi is missing or fails, and parse what came back with the pure parsers
//! in [`crate::gpu`]. The raw output travels with the samples (and with every parse error) so an
//! operator can always see what the host actually printed.

use std::fmt;

use crate::gpu::{GpuParseError, GpuSample, NVIDIA_QUERY, parse_nvidia_csv, parse_rocm_smi};

use super::error::SshError;
use super::exec::ExecOutput;
use super::hostkey::{HostKeyPolicy, HostKeyTrust};
use super::session::{Session, SshClientConfig};
use super::target::SshTarget;

/// Exit status a POSIX shell returns when the command is not found.
const EXIT_NOT_FOUND: u32 = 127;

/// Longest stderr excerpt kept in [`SshError::GpuToolFailed`].
const STDERR_EXCERPT_BYTES: usize = 2048;

/// The GPU tool a probe used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ProbeTool {
    /// NVIDIA's `nvidia-smi`.
    #[serde(rename = "nvidia-smi")]
    NvidiaSmi,
    /// AMD's `rocm-smi`.
    #[serde(rename = "rocm-smi")]
    RocmSmi,
}

impl ProbeTool {
    /// The tool's command name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeTool::NvidiaSmi => "nvidia-smi",
            ProbeTool::RocmSmi => "rocm-smi",
        }
    }
}

impl fmt::Display for ProbeTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exact `nvidia-smi` command the probe runs (its columns are [`NVIDIA_QUERY`]).
pub fn nvidia_command() -> String {
    format!("nvidia-smi --query-gpu={} --format=csv,noheader,nounits", NVIDIA_QUERY.join(","))
}

/// The exact `rocm-smi` fallback command.
pub const ROCM_COMMAND: &str = "rocm-smi --showproductname --showuse --showmeminfo vram --showtemp --showpower --json";

/// What a probe found on one host.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    /// The probed account.
    pub target: SshTarget,
    /// `SHA256:` fingerprint of the host key the session was established with.
    pub host_key_fingerprint: String,
    /// Why the host key was trusted; `FirstUse` means the caller must pin `host_key_fingerprint`.
    pub host_key_trust: HostKeyTrust,
    /// The tool whose output produced `samples`.
    pub tool: ProbeTool,
    /// The tool's stdout as received (lossily decoded).
    pub raw_output: String,
    /// One sample per GPU.
    pub samples: Vec<GpuSample>,
}

/// Probes the host behind an established session.
pub async fn probe(session: &Session) -> Result<ProbeReport, SshError> {
    let target = session.target();
    let nvidia = session.exec(&nvidia_command()).await?;
    if nvidia.success() {
        return report(session, ProbeTool::NvidiaSmi, &nvidia);
    }
    tracing::debug!(
        %target,
        exit = ?nvidia.exit_status,
        "nvidia-smi unavailable or failed; trying rocm-smi"
    );
    let rocm = session.exec(ROCM_COMMAND).await?;
    if rocm.success() {
        return report(session, ProbeTool::RocmSmi, &rocm);
    }
    let missing = |out: &ExecOutput| out.exit_status == Some(EXIT_NOT_FOUND);
    if !missing(&nvidia) {
        return Err(diagnose(target, ProbeTool::NvidiaSmi, &nvidia));
    }
    if !missing(&rocm) {
        return Err(diagnose(target, ProbeTool::RocmSmi, &rocm));
    }
    Err(SshError::NoGpuTool { target: target.clone(), nvidia_exit: nvidia.exit_status, rocm_exit: rocm.exit_status })
}

/// Connects to `target`, probes it, and disconnects.
pub async fn probe_target(
    target: &SshTarget,
    policy: &HostKeyPolicy,
    config: &SshClientConfig,
) -> Result<ProbeReport, SshError> {
    let session = Session::connect(target, policy, config).await?;
    let result = probe(&session).await;
    session.close().await;
    result
}

fn parse(tool: ProbeTool, text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    match tool {
        ProbeTool::NvidiaSmi => parse_nvidia_csv(text, Some(NVIDIA_QUERY)),
        ProbeTool::RocmSmi => parse_rocm_smi(text),
    }
}

fn report(session: &Session, tool: ProbeTool, out: &ExecOutput) -> Result<ProbeReport, SshError> {
    let target = session.target();
    if out.stdout_truncated {
        return Err(SshError::GpuOutputTooLarge {
            target: target.clone(),
            tool,
            limit: session.limits().max_output_bytes,
        });
    }
    let raw_output = out.stdout_lossy();
    match parse(tool, &raw_output) {
        Ok(samples) => Ok(ProbeReport {
            target: target.clone(),
            host_key_fingerprint: session.host_key_fingerprint().to_owned(),
            host_key_trust: session.host_key_trust(),
            tool,
            raw_output,
            samples,
        }),
        Err(source) => Err(SshError::GpuParse { target: target.clone(), tool, raw_output, source: Box::new(source) }),
    }
}

/// A tool that exists but failed: its output usually says why (driver unreachable, no devices, NVML
/// mismatch), and the parsers recognise those banners as typed errors.
fn diagnose(target: &SshTarget, tool: ProbeTool, out: &ExecOutput) -> SshError {
    let mut text = out.stdout_lossy();
    let stderr = out.stderr_lossy();
    if !stderr.trim().is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&stderr);
    }
    match parse(tool, &text) {
        Err(source) => SshError::GpuParse { target: target.clone(), tool, raw_output: text, source: Box::new(source) },
        // Parseable output with a failing exit status: do not trust the samples.
        Ok(_) => SshError::GpuToolFailed {
            target: target.clone(),
            tool,
            exit_status: out.exit_status,
            stderr: excerpt(&stderr),
        },
    }
}

fn excerpt(text: &str) -> String {
    if text.len() <= STDERR_EXCERPT_BYTES {
        return text.trim_end().to_owned();
    }
    let mut end = STDERR_EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_documented_ones() {
        assert_eq!(
            nvidia_command(),
            "nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,\
             temperature.gpu,power.draw,driver_version --format=csv,noheader,nounits"
        );
        assert!(ROCM_COMMAND.ends_with("--json"));
    }

    #[test]
    fn tool_names_serialize_as_commands() {
        assert_eq!(serde_json::to_string(&ProbeTool::RocmSmi).ok().as_deref(), Some("\"rocm-smi\""));
        assert_eq!(ProbeTool::NvidiaSmi.to_string(), "nvidia-smi");
    }

    #[test]
    fn excerpt_respects_char_boundaries() {
        let long = "é".repeat(STDERR_EXCERPT_BYTES);
        let cut = excerpt(&long);
        assert!(cut.len() <= STDERR_EXCERPT_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt("short\n"), "short");
    }
}
