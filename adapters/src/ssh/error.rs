//! `SshError`: every way connecting, authenticating, running a command or probing a host over SSH can
//! fail. Each variant carries the context an operator needs and a stable [`SshError::code`] that clients
//! and the dispatcher match on. Two distinctions matter most to callers:
//!
//! * a command that ran and exited non-zero is **not** an error — it is an [`ExecOutput`] with its exit
//!   status; [`SshError::ConnectionLost`] and [`SshError::CommandTimeout`] mean the outcome is unknown,
//!   so a job must never be marked completed on them;
//! * host key problems ([`SshError::HostKeyChanged`], [`SshError::HostKeyUnknown`], ...) are refusals
//!   that the operator must resolve; they are never retried automatically.

use std::path::PathBuf;
use std::time::Duration;

use crate::gpu::GpuParseError;

use super::exec::ExecOutput;
use super::probe::ProbeTool;
use super::target::SshTarget;

/// Failure of an SSH operation.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The client private key file could not be read or decoded.
    #[error("cannot load SSH private key {path}: {reason}")]
    KeyLoad {
        /// Key file path.
        path: PathBuf,
        /// What went wrong (I/O, format, passphrase-protected...).
        reason: String,
    },
    /// The client key is of a type hwledger does not use (only ed25519 and ECDSA are supported).
    #[error("SSH private key {path} is {algorithm}; only ed25519 and ECDSA keys are supported")]
    KeyUnsupported {
        /// Key file path.
        path: PathBuf,
        /// The key's algorithm name.
        algorithm: String,
    },
    /// The `known_hosts` file could not be read (missing, unreadable, too large).
    #[error("cannot read known_hosts file {path}: {reason}")]
    KnownHostsUnreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A pinned fingerprint from the ledger is not in the `SHA256:<base64>` form.
    #[error("pinned host key fingerprint {pin:?} is not of the form SHA256:<base64>")]
    InvalidPin {
        /// The refused pin.
        pin: String,
    },
    /// A configuration value is out of range (e.g. a pool size of zero).
    #[error("invalid SSH configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// TCP connect + key exchange + authentication did not finish in time.
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The target.
        target: SshTarget,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The TCP connection could not be established.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target.
        target: SshTarget,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The SSH protocol handshake failed (version exchange, key exchange, algorithm negotiation).
    #[error("SSH handshake with {target} failed: {detail}")]
    Handshake {
        /// The target.
        target: SshTarget,
        /// The protocol error.
        detail: String,
    },
    /// The host presented a key that differs from the pinned or recorded one. Possible
    /// man-in-the-middle, or a reinstalled host: an operator must re-pin deliberately.
    #[error("HOST KEY CHANGED for {host}: expected {expected}, server presented {found}; refusing to connect")]
    HostKeyChanged {
        /// Host as looked up (`host` or `[host]:port`).
        host: String,
        /// The expected fingerprint (`SHA256:...`), or the recorded key types if only other types are known.
        expected: String,
        /// The fingerprint the server presented.
        found: String,
    },
    /// `known_hosts` has no entry for this host.
    #[error("host {host} is not in {path}; server presented {found}")]
    HostKeyUnknown {
        /// Host as looked up.
        host: String,
        /// The `known_hosts` file consulted.
        path: PathBuf,
        /// The fingerprint the server presented.
        found: String,
    },
    /// The presented key is marked `@revoked` in `known_hosts`.
    #[error("host key {found} of {host} is marked @revoked; refusing to connect")]
    HostKeyRevoked {
        /// Host as looked up.
        host: String,
        /// The revoked fingerprint.
        found: String,
    },
    /// The server authenticated itself with something hwledger cannot check (e.g. a host certificate).
    #[error("host {host} presented an unverifiable host key: {detail}")]
    HostKeyUnsupported {
        /// Host as looked up.
        host: String,
        /// What was presented.
        detail: String,
    },
    /// The server rejected the public key.
    #[error("authentication as {user} on {target} with key {key_fingerprint} was rejected")]
    AuthFailed {
        /// The target.
        target: SshTarget,
        /// The user name tried.
        user: String,
        /// Fingerprint of the client key offered.
        key_fingerprint: String,
    },
    /// The server refused to open a session channel.
    #[error("cannot open a session channel on {target}: {detail}")]
    ChannelOpen {
        /// The target.
        target: SshTarget,
        /// The server's or library's reason.
        detail: String,
    },
    /// The server refused to run the command (exec request answered with failure).
    #[error("{target} refused to execute {command:?}")]
    ExecRejected {
        /// The target.
        target: SshTarget,
        /// The command.
        command: String,
    },
    /// The command did not finish within its timeout; the channel was closed (and a kill signal
    /// requested, which OpenSSH honours only for non-root logins). The command may still be running
    /// on the host; whether it had an effect is unknown.
    #[error("command {command:?} on {target} timed out after {timeout:?}; channel closed")]
    CommandTimeout {
        /// The target.
        target: SshTarget,
        /// The command.
        command: String,
        /// The configured command timeout.
        timeout: Duration,
        /// Whatever output arrived before the deadline.
        partial: Box<ExecOutput>,
    },
    /// The connection dropped before the command's completion was confirmed by the server. Its
    /// outcome is unknown; never treat this as success or as a plain failure.
    #[error(
        "connection to {target} lost while running {command:?}; outcome unknown ({} bytes of stdout received)",
        partial.stdout.len()
    )]
    ConnectionLost {
        /// The target.
        target: SshTarget,
        /// The command.
        command: String,
        /// Whatever output (and possibly exit status) arrived before the connection dropped.
        partial: Box<ExecOutput>,
    },
    /// No session could be obtained from the pool in time because its limits are reached.
    #[error("no SSH session for {target} available within {waited:?} (pool limits reached)")]
    PoolExhausted {
        /// The target.
        target: SshTarget,
        /// How long the caller waited.
        waited: Duration,
    },
    /// Neither `nvidia-smi` nor `rocm-smi` exists on the host.
    #[error("no GPU tool on {target}: nvidia-smi exit {nvidia_exit:?}, rocm-smi exit {rocm_exit:?}")]
    NoGpuTool {
        /// The target.
        target: SshTarget,
        /// Exit status of the `nvidia-smi` attempt (127 = not found).
        nvidia_exit: Option<u32>,
        /// Exit status of the `rocm-smi` attempt (127 = not found).
        rocm_exit: Option<u32>,
    },
    /// A GPU tool ran but failed, and its output gave no recognisable diagnosis.
    #[error("{tool} on {target} failed with exit status {exit_status:?}: {stderr}")]
    GpuToolFailed {
        /// The target.
        target: SshTarget,
        /// The tool.
        tool: ProbeTool,
        /// Its exit status (`None` if killed by a signal).
        exit_status: Option<u32>,
        /// Its standard error, lossily decoded and truncated.
        stderr: String,
    },
    /// A GPU tool's output could not be parsed; the raw output is kept for diagnosis.
    #[error("cannot parse {tool} output from {target}: {source}")]
    GpuParse {
        /// The target.
        target: SshTarget,
        /// The tool.
        tool: ProbeTool,
        /// The tool's stdout (followed by stderr if stdout was empty), lossily decoded.
        raw_output: String,
        /// The parser's diagnosis.
        #[source]
        source: Box<GpuParseError>,
    },
    /// A GPU tool's output exceeded the output cap, so it was not parsed.
    #[error("{tool} output on {target} exceeded {limit} bytes")]
    GpuOutputTooLarge {
        /// The target.
        target: SshTarget,
        /// The tool.
        tool: ProbeTool,
        /// The cap in bytes.
        limit: usize,
    },
}

impl SshError {
    /// Stable machine-readable code of this error (pinned by tests; clients depend on it).
    pub fn code(&self) -> &'static str {
        match self {
            SshError::KeyLoad { .. } => "key_load_failed",
            SshError::KeyUnsupported { .. } => "key_unsupported",
            SshError::KnownHostsUnreadable { .. } => "known_hosts_unreadable",
            SshError::InvalidPin { .. } => "invalid_pin",
            SshError::InvalidConfig { .. } => "invalid_config",
            SshError::ConnectTimeout { .. } => "connect_timeout",
            SshError::Connect { .. } => "connect_failed",
            SshError::Handshake { .. } => "handshake_failed",
            SshError::HostKeyChanged { .. } => "host_key_changed",
            SshError::HostKeyUnknown { .. } => "host_key_unknown",
            SshError::HostKeyRevoked { .. } => "host_key_revoked",
            SshError::HostKeyUnsupported { .. } => "host_key_unsupported",
            SshError::AuthFailed { .. } => "auth_failed",
            SshError::ChannelOpen { .. } => "channel_open_failed",
            SshError::ExecRejected { .. } => "exec_rejected",
            SshError::CommandTimeout { .. } => "command_timeout",
            SshError::ConnectionLost { .. } => "connection_lost",
            SshError::PoolExhausted { .. } => "pool_exhausted",
            SshError::NoGpuTool { .. } => "no_gpu_tool",
            SshError::GpuToolFailed { .. } => "gpu_tool_failed",
            SshError::GpuParse { .. } => "gpu_output_invalid",
            SshError::GpuOutputTooLarge { .. } => "gpu_output_too_large",
        }
    }

    /// True for refusals caused by the host's identity; they must reach an operator and never be
    /// retried automatically.
    pub fn is_host_key_problem(&self) -> bool {
        matches!(
            self,
            SshError::HostKeyChanged { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::HostKeyRevoked { .. }
                | SshError::HostKeyUnsupported { .. }
        )
    }

    /// True when a command may or may not have run to completion: the caller must not record it as
    /// completed or as failed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, SshError::ConnectionLost { .. } | SshError::CommandTimeout { .. })
    }
}
