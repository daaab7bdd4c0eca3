//! A job dispatched over SSH exec, as ledger commands: `dispatch_job` (with the price it was quoted),
//! `start_job` just before the command is sent, then exactly one of `complete_job` / `fail_job`.
//!
//! [`classify`] decides the end from what the SSH layer reports, and is deliberately pessimistic:
//! only a command whose channel the server closed after reporting exit status 0 is *completed*. A
//! non-zero status or a signal is a confirmed failure. A connection lost mid-command, a command
//! timeout, or a close without any exit status is **outcome unknown** — recorded as `fail_job` with no
//! exit status and a reason starting with [`OUTCOME_UNKNOWN`], because the job cannot be confirmed
//! (the command may even still be running: OpenSSH does not kill a non-pty command when its channel
//! closes, and refuses the kill signal for root logins). A command that never ran (no connection, the
//! server refused the channel or the exec) is a failure whose reason starts with [`NOT_STARTED`].

use std::time::Duration;

use hwledger_engine::event::PriceQuote;
use hwledger_engine::{Command, Submission};

use super::{clip_text, submission};
use crate::ssh::{ExecOutput, SshError};

/// Reason prefix of a job whose end could not be confirmed.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";
/// Reason prefix of a job whose command never ran.
pub const NOT_STARTED: &str = "not_started";

/// The deterministic command id of one step of a job (`dispatch`, `start`, `end`): a retried CLI call
/// with the same `--job` id resubmits the same ids and gets the original receipts.
pub fn command_id(job_id: &str, step: &str) -> String {
    format!("job/{job_id}/{step}")
}

/// `dispatch_job`.
pub fn dispatch(job_id: &str, device_id: &str, model: &str, vram_mib: u64, price: Option<PriceQuote>) -> Submission {
    submission(
        command_id(job_id, "dispatch"),
        Command::DispatchJob {
            job_id: job_id.to_owned(),
            device_id: device_id.to_owned(),
            model: model.to_owned(),
            vram_mib,
            price,
        },
    )
}

/// `start_job`.
pub fn start(job_id: &str) -> Submission {
    submission(command_id(job_id, "start"), Command::StartJob { job_id: job_id.to_owned() })
}

/// How a job ended, as far as can be known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// The server reported exit status 0 and closed the channel.
    Completed {
        /// Always 0.
        exit_status: i32,
    },
    /// The command ran and failed: a non-zero exit status or a signal.
    Failed {
        /// The exit status, if the command exited (not when killed by a signal).
        exit_status: Option<i32>,
        /// What happened.
        reason: String,
    },
    /// The command never ran.
    NotStarted {
        /// Why.
        reason: String,
    },
    /// The command was sent, but its end was not confirmed.
    #[serde(rename = "outcome_unknown")]
    Unknown {
        /// What is known.
        reason: String,
    },
}

impl JobOutcome {
    /// Stable name of the outcome (`completed`, `failed`, `not_started`, `outcome_unknown`).
    pub fn code(&self) -> &'static str {
        match self {
            JobOutcome::Completed { .. } => "completed",
            JobOutcome::Failed { .. } => "failed",
            JobOutcome::NotStarted { .. } => NOT_STARTED,
            JobOutcome::Unknown { .. } => OUTCOME_UNKNOWN,
        }
    }

    /// The command recording this end of `job_id` (`complete_job` only for [`JobOutcome::Completed`]).
    pub fn submission(&self, job_id: &str) -> Submission {
        let job_id = job_id.to_owned();
        let command = match self {
            JobOutcome::Completed { exit_status } => {
                Command::CompleteJob { job_id: job_id.clone(), exit_status: *exit_status }
            }
            JobOutcome::Failed { exit_status, reason } => {
                Command::FailJob { job_id: job_id.clone(), exit_status: *exit_status, reason: clip_text(reason) }
            }
            JobOutcome::NotStarted { reason } | JobOutcome::Unknown { reason } => {
                Command::FailJob { job_id: job_id.clone(), exit_status: None, reason: clip_text(reason) }
            }
        };
        submission(command_id(&job_id, "end"), command)
    }
}

/// A job that could not even be started because connecting to its host failed.
pub fn not_started(error: &SshError) -> JobOutcome {
    JobOutcome::NotStarted { reason: format!("{NOT_STARTED}: {}: {error}", error.code()) }
}

/// What the remote command's result means for the job; `elapsed` is how long it ran (for messages).
pub fn classify(result: &Result<ExecOutput, SshError>, elapsed: Duration) -> JobOutcome {
    let secs = elapsed.as_secs_f64();
    match result {
        Ok(out) => match (out.exit_status, &out.exit_signal) {
            (Some(0), _) => JobOutcome::Completed { exit_status: 0 },
            (Some(status), _) => match i32::try_from(status) {
                Ok(code) => JobOutcome::Failed {
                    exit_status: Some(code),
                    reason: format!("exited with status {code} after {secs:.1} s"),
                },
                Err(_) => JobOutcome::Failed {
                    exit_status: None,
                    reason: format!("exited with status {status} (out of range) after {secs:.1} s"),
                },
            },
            (None, Some(signal)) => {
                JobOutcome::Failed { exit_status: None, reason: format!("killed by signal {signal} after {secs:.1} s") }
            }
            (None, None) => JobOutcome::Unknown {
                reason: format!(
                    "{OUTCOME_UNKNOWN}: the server closed the channel after {secs:.1} s without an exit status"
                ),
            },
        },
        Err(e) if e.outcome_unknown() => {
            let received = match e {
                SshError::ConnectionLost { partial, .. } | SshError::CommandTimeout { partial, .. } => {
                    let mut known =
                        format!("; {} bytes of output received", partial.stdout.len() + partial.stderr.len());
                    // Reported but not confirmed by the channel's close: worth knowing, not a completion.
                    if let Some(status) = partial.exit_status {
                        known.push_str(&format!("; exit status {status} was reported before the channel closed"));
                    }
                    known
                }
                _ => String::new(),
            };
            JobOutcome::Unknown { reason: format!("{OUTCOME_UNKNOWN}: {}: {e} after {secs:.1} s{received}", e.code()) }
        }
        Err(e @ (SshError::ChannelOpen { .. } | SshError::ExecRejected { .. })) => {
            JobOutcome::NotStarted { reason: format!("{NOT_STARTED}: {}: {e}", e.code()) }
        }
        // Anything else after the command was sent: its fate is not known.
        Err(e) => JobOutcome::Unknown { reason: format!("{OUTCOME_UNKNOWN}: {}: {e} after {secs:.1} s", e.code()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::SshTarget;

    fn out(status: Option<u32>, signal: Option<&str>) -> Result<ExecOutput, SshError> {
        Ok(ExecOutput { exit_status: status, exit_signal: signal.map(str::to_owned), ..ExecOutput::default() })
    }

    fn target() -> SshTarget {
        SshTarget { user: "u".into(), host: "h".into(), port: 22 }
    }

    #[test]
    fn only_a_confirmed_zero_exit_is_completed() {
        let s = Duration::from_secs(2);
        assert_eq!(classify(&out(Some(0), None), s), JobOutcome::Completed { exit_status: 0 });
        assert!(matches!(classify(&out(Some(3), None), s), JobOutcome::Failed { exit_status: Some(3), .. }));
        assert!(matches!(
            classify(&out(None, Some("TERM")), s),
            JobOutcome::Failed { exit_status: None, reason } if reason.contains("TERM")
        ));
        assert_eq!(classify(&out(None, None), s).code(), OUTCOME_UNKNOWN);
        let lost = SshError::ConnectionLost {
            target: target(),
            command: "c".into(),
            partial: Box::new(ExecOutput { stdout: b"begun\n".to_vec(), ..ExecOutput::default() }),
        };
        let outcome = classify(&Err(lost), s);
        assert_eq!(outcome.code(), OUTCOME_UNKNOWN);
        let sub = outcome.submission("j1");
        assert_eq!(sub.command_id, "job/j1/end");
        match sub.command {
            Command::FailJob { exit_status: None, reason, .. } => {
                assert!(reason.starts_with("outcome_unknown: connection_lost"), "{reason}");
                assert!(reason.contains("6 bytes of output"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let refused = SshError::ExecRejected { target: target(), command: "c".into() };
        assert_eq!(classify(&Err(refused), s).code(), NOT_STARTED);
    }

    #[test]
    fn completion_is_the_only_complete_job() {
        let sub = JobOutcome::Completed { exit_status: 0 }.submission("j2");
        assert!(matches!(sub.command, Command::CompleteJob { exit_status: 0, .. }));
        let sub = JobOutcome::Failed { exit_status: Some(1), reason: "x".into() }.submission("j2");
        assert!(matches!(sub.command, Command::FailJob { exit_status: Some(1), .. }));
    }
}
