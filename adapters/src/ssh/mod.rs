//! Agentless SSH probe and exec (russh): how hwledger reaches GPU hosts that run no agent.
//!
//! * [`SshTarget`] — `user@host[:port]`, parsed and validated.
//! * [`HostKeyPolicy`] — `known_hosts` file or the fingerprint pinned in the ledger (trust on first use
//!   when nothing is pinned yet). A changed key is always refused ([`SshError::HostKeyChanged`]).
//! * [`Session`] — connect + host key check + public-key authentication (ed25519/ECDSA only) under a
//!   connect timeout; [`Session::exec`] runs one command under a command timeout with capped output and
//!   tells a command that exited non-zero apart from a connection lost mid-command.
//! * [`SshPool`] — bounded, reusable sessions keyed by target; [`SshPool::probe_many`] for fleet scans.
//! * [`probe`] — `nvidia-smi` with hwledger's fixed query, falling back to `rocm-smi --json`, parsed by
//!   [`crate::gpu`] into a [`ProbeReport`].
//!
//! Adapters never write ledger state: a [`ProbeReport`] with [`HostKeyTrust::FirstUse`] is the caller's
//! cue to record the observed fingerprint as a pin event.

mod error;
mod exec;
mod hostkey;
mod pool;
mod probe;
mod session;
mod target;

pub use error::SshError;
pub use exec::{DEFAULT_MAX_OUTPUT_BYTES, ExecLimits, ExecOutput};
pub use hostkey::{
    AcceptedHostKey, HostKeyPolicy, HostKeyTrust, KnownHosts, KnownHostsEntry, KnownHostsMarker, KnownHostsVerdict,
    MAX_KNOWN_HOSTS_BYTES, SkippedLine, fingerprint_sha256, parse_pin,
};
pub use pool::{PoolLimits, PoolStats, PooledSession, SshPool};
pub use probe::{ProbeReport, ProbeTool, ROCM_COMMAND, nvidia_command, probe, probe_target};
pub use session::{ClientIdentity, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, Session, SshClientConfig};
pub use target::{DEFAULT_SSH_PORT, SshTarget, TargetParseError};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error code is pinned: clients and the dispatcher match on these strings.
    #[test]
    fn error_codes_are_stable() {
        let target = SshTarget { user: "u".into(), host: "h".into(), port: 22 };
        let partial = || Box::new(ExecOutput::default());
        let cases: Vec<(SshError, &str)> = vec![
            (SshError::KeyLoad { path: "k".into(), reason: String::new() }, "key_load_failed"),
            (SshError::KeyUnsupported { path: "k".into(), algorithm: "ssh-rsa".into() }, "key_unsupported"),
            (SshError::KnownHostsUnreadable { path: "k".into(), reason: String::new() }, "known_hosts_unreadable"),
            (SshError::InvalidPin { pin: "x".into() }, "invalid_pin"),
            (SshError::InvalidConfig { reason: String::new() }, "invalid_config"),
            (
                SshError::ConnectTimeout { target: target.clone(), timeout: std::time::Duration::ZERO },
                "connect_timeout",
            ),
            (SshError::Connect { target: target.clone(), source: std::io::Error::other("x") }, "connect_failed"),
            (SshError::Handshake { target: target.clone(), detail: String::new() }, "handshake_failed"),
            (
                SshError::HostKeyChanged { host: "h".into(), expected: String::new(), found: String::new() },
                "host_key_changed",
            ),
            (SshError::HostKeyUnknown { host: "h".into(), path: "k".into(), found: String::new() }, "host_key_unknown"),
            (SshError::HostKeyRevoked { host: "h".into(), found: String::new() }, "host_key_revoked"),
            (SshError::HostKeyUnsupported { host: "h".into(), detail: String::new() }, "host_key_unsupported"),
            (
                SshError::AuthFailed { target: target.clone(), user: "u".into(), key_fingerprint: String::new() },
                "auth_failed",
            ),
            (SshError::ChannelOpen { target: target.clone(), detail: String::new() }, "channel_open_failed"),
            (SshError::ExecRejected { target: target.clone(), command: String::new() }, "exec_rejected"),
            (
                SshError::CommandTimeout {
                    target: target.clone(),
                    command: String::new(),
                    timeout: std::time::Duration::ZERO,
                    partial: partial(),
                },
                "command_timeout",
            ),
            (
                SshError::ConnectionLost { target: target.clone(), command: String::new(), partial: partial() },
                "connection_lost",
            ),
            (SshError::PoolExhausted { target: target.clone(), waited: std::time::Duration::ZERO }, "pool_exhausted"),
            (
                SshError::NoGpuTool { target: target.clone(), nvidia_exit: Some(127), rocm_exit: Some(127) },
                "no_gpu_tool",
            ),
            (
                SshError::GpuToolFailed {
                    target: target.clone(),
                    tool: ProbeTool::NvidiaSmi,
                    exit_status: Some(1),
                    stderr: String::new(),
                },
                "gpu_tool_failed",
            ),
            (
                SshError::GpuParse {
                    target: target.clone(),
                    tool: ProbeTool::RocmSmi,
                    raw_output: String::new(),
                    source: Box::new(crate::gpu::GpuParseError::Empty),
                },
                "gpu_output_invalid",
            ),
            (SshError::GpuOutputTooLarge { target, tool: ProbeTool::NvidiaSmi, limit: 1 }, "gpu_output_too_large"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (err, code) in &cases {
            assert_eq!(err.code(), *code, "{err}");
            assert!(seen.insert(*code), "duplicate code {code}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(seen.len(), 22);
    }

    #[test]
    fn outcome_unknown_only_for_lost_and_timeout() {
        let target = SshTarget { user: "u".into(), host: "h".into(), port: 22 };
        let lost = SshError::ConnectionLost { target: target.clone(), command: "c".into(), partial: Box::default() };
        assert!(lost.outcome_unknown());
        let auth = SshError::AuthFailed { target, user: "u".into(), key_fingerprint: String::new() };
        assert!(!auth.outcome_unknown());
        assert!(!auth.is_host_key_problem());
    }
}
