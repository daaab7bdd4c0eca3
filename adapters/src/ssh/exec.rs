//! Running one command on an established session and collecting what it did: stdout, stderr (both
//! capped), and the exit status. The one rule that matters: a command's completion is confirmed only
//! when the server closes the channel; if the connection drops before that, the result is
//! [`SshError::ConnectionLost`] with whatever arrived — never an `ExecOutput` that looks finished.

use std::time::Duration;

use russh::{ChannelMsg, Sig};
use tokio::time::Instant;

use super::error::SshError;
use super::target::SshTarget;

/// Per-stream output cap used when none is configured: GPU tools print kilobytes; anything near this
/// is a runaway command, and holding more would let one host exhaust the collector's memory.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// How long to wait for the server to acknowledge our channel close after a timeout, so a stuck
/// server cannot stretch the command timeout indefinitely.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// What a command did on the remote host.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecOutput {
    /// Exit status reported by the server; `None` if the command was killed by a signal (see
    /// `exit_signal`) or the server reported none.
    pub exit_status: Option<u32>,
    /// Signal name (`KILL`, `TERM`, ...) if the command was killed by one.
    pub exit_signal: Option<String>,
    /// Standard output, at most the configured cap.
    pub stdout: Vec<u8>,
    /// Standard error, at most the configured cap.
    pub stderr: Vec<u8>,
    /// True if stdout exceeded the cap and was cut.
    pub stdout_truncated: bool,
    /// True if stderr exceeded the cap and was cut.
    pub stderr_truncated: bool,
}

impl ExecOutput {
    /// True if the command ran and exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// Stdout decoded lossily (invalid UTF-8 replaced), for messages and parsers of text tools.
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr decoded lossily.
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Limits for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// Wall-clock limit from opening the channel to the server's close.
    pub timeout: Duration,
    /// Cap per stream (stdout, stderr) in bytes.
    pub max_output_bytes: usize,
}

fn append_capped(buf: &mut Vec<u8>, truncated: &mut bool, data: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
}

/// Runs `command` on `handle`. See the module docs for the completion rule.
pub(crate) async fn run<H: russh::client::Handler>(
    handle: &russh::client::Handle<H>,
    target: &SshTarget,
    command: &str,
    limits: ExecLimits,
) -> Result<ExecOutput, SshError> {
    let deadline = Instant::now() + limits.timeout;
    let mut out = ExecOutput::default();
    let lost = |out: ExecOutput| SshError::ConnectionLost {
        target: target.clone(),
        command: command.to_owned(),
        partial: Box::new(out),
    };
    let timed_out = |out: ExecOutput| SshError::CommandTimeout {
        target: target.clone(),
        command: command.to_owned(),
        timeout: limits.timeout,
        partial: Box::new(out),
    };

    let mut channel = match tokio::time::timeout_at(deadline, handle.channel_open_session()).await {
        Err(_) => return Err(timed_out(out)),
        Ok(Ok(channel)) => channel,
        // The server answered with a refusal: the connection itself is fine.
        Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
            return Err(SshError::ChannelOpen { target: target.clone(), detail: format!("{reason:?}") });
        }
        // Anything else means the session task is gone (disconnect, send failure).
        Ok(Err(_)) => return Err(lost(out)),
    };
    match tokio::time::timeout_at(deadline, channel.exec(true, command)).await {
        Err(_) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, channel.close()).await;
            return Err(timed_out(out));
        }
        // The request could not even be sent: the session is gone.
        Ok(Err(_)) => return Err(lost(out)),
        Ok(Ok(())) => {}
    }

    loop {
        let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
            Ok(msg) => msg,
            Err(_) => {
                // Best effort: ask sshd to kill the command, then close the channel. OpenSSH
                // refuses signal requests for root logins (no privilege separation after auth)
                // and does not kill a non-pty command when its channel closes, so the command
                // may keep running remotely: the caller gets CommandTimeout = outcome unknown.
                // The grace bound keeps a wedged server from stretching the timeout.
                let _ = tokio::time::timeout(CLOSE_GRACE, channel.signal(Sig::KILL)).await;
                let _ = tokio::time::timeout(CLOSE_GRACE, channel.close()).await;
                return Err(timed_out(out));
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                append_capped(&mut out.stdout, &mut out.stdout_truncated, &data, limits.max_output_bytes)
            }
            // Extended data type 1 is stderr (RFC 4254 §5.2); no other type is defined.
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                append_capped(&mut out.stderr, &mut out.stderr_truncated, &data, limits.max_output_bytes)
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => out.exit_status = Some(exit_status),
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                out.exit_signal = Some(signal_label(&signal_name));
            }
            Some(ChannelMsg::Failure) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, channel.close()).await;
                return Err(SshError::ExecRejected { target: target.clone(), command: command.to_owned() });
            }
            // The server closed the channel: the command's outcome is final.
            Some(ChannelMsg::Close) => return Ok(out),
            Some(_) => {}
            // Channel gone without a close: the connection dropped.
            None => return Err(lost(out)),
        }
    }
}

fn signal_label(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_capped_cuts_and_flags() {
        let (mut buf, mut cut) = (Vec::new(), false);
        append_capped(&mut buf, &mut cut, b"hello", 8);
        assert_eq!((buf.as_slice(), cut), (&b"hello"[..], false));
        append_capped(&mut buf, &mut cut, b"world", 8);
        assert_eq!((buf.as_slice(), cut), (&b"hellowor"[..], true));
        append_capped(&mut buf, &mut cut, b"more", 8);
        assert_eq!(buf.len(), 8);
    }

    #[test]
    fn signal_labels() {
        assert_eq!(signal_label(&Sig::KILL), "KILL");
        assert_eq!(signal_label(&Sig::Custom("XCPU".into())), "XCPU");
    }
}
