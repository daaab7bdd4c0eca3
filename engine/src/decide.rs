//! [`decide`]: every rule of the ledger, in one pure function.
//!
//! `decide(&State, &Command, &Context) -> Result<Vec<Event>, Rejection>` reads nothing but its arguments.
//! A rejection is an expected outcome with a stable code (pinned by a test) that clients can act on.

use crate::command::{Command, Context, validate_id};
use crate::event::{Actor, CertRole, DeviceKind, Event, GpuReading};
use crate::state::{DeviceState, DeviceStatus, JobStatus, State, StreamRef};

/// Longest free-text field (model names, reasons, hostnames) accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Most GPUs in one device or one heartbeat.
pub const MAX_GPUS: usize = 64;
/// Most labels on a device.
pub const MAX_LABELS: usize = 32;

/// Why a command was refused. Nothing is appended for a rejected command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The command names a device that was never enrolled.
    #[error("device {device_id} is not enrolled")]
    DeviceUnknown { device_id: String },
    /// The device was decommissioned; decommission is final.
    #[error("device {device_id} is decommissioned")]
    DeviceDecommissioned { device_id: String },
    /// Enrolling a device id that already exists.
    #[error("device {device_id} is already enrolled")]
    DeviceExists { device_id: String },
    /// The job id was never dispatched.
    #[error("job {job_id} is unknown")]
    JobUnknown { job_id: String },
    /// Dispatching a job id that already exists.
    #[error("job {job_id} already exists")]
    JobExists { job_id: String },
    /// A job may only move forward: dispatched → started → completed | failed.
    #[error("job {job_id} is {from}; it cannot become {to}")]
    JobTransition { job_id: String, from: &'static str, to: &'static str },
    /// The job asks for more VRAM than any GPU of the device has.
    #[error("job needs {requested_mib} MiB of VRAM but device {device_id} has at most {available_mib} MiB per GPU")]
    VramExceeded { device_id: String, requested_mib: u64, available_mib: u64 },
    /// The actor may not issue this command (an agent speaking for another device, an auditor writing, ...).
    #[error("{actor} may not {action}")]
    Forbidden { actor: String, action: String },
    /// The stream is not at the version the command expected.
    #[error("stream {stream} is at version {actual}, the command expected {expected}")]
    VersionConflict { stream: String, expected: u64, actual: u64 },
    /// The command id was already used for a different command.
    #[error("command id {command_id} was already used for a different command")]
    DuplicateConflict { command_id: String },
    /// A field is malformed or out of range.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The bootstrap token is not known.
    #[error("bootstrap token is not known")]
    TokenUnknown,
    /// The bootstrap token expired.
    #[error("bootstrap token expired")]
    TokenExpired,
    /// The bootstrap token was already used.
    #[error("bootstrap token was already used")]
    TokenUsed,
    /// The certificate fingerprint is not pinned.
    #[error("certificate {fingerprint} is not known")]
    CertificateUnknown { fingerprint: String },
    /// The certificate fingerprint is already pinned (issued twice).
    #[error("certificate {fingerprint} is already recorded")]
    CertificateExists { fingerprint: String },
}

impl Rejection {
    /// The stable machine-readable code of this rejection (part of the API; a test pins every one).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::DeviceUnknown { .. } => "device_unknown",
            Rejection::DeviceDecommissioned { .. } => "device_decommissioned",
            Rejection::DeviceExists { .. } => "device_exists",
            Rejection::JobUnknown { .. } => "job_unknown",
            Rejection::JobExists { .. } => "job_exists",
            Rejection::JobTransition { .. } => "job_transition",
            Rejection::VramExceeded { .. } => "vram_exceeded",
            Rejection::Forbidden { .. } => "forbidden",
            Rejection::VersionConflict { .. } => "version_conflict",
            Rejection::DuplicateConflict { .. } => "duplicate_conflict",
            Rejection::Invalid(_) => "invalid_command",
            Rejection::TokenUnknown => "token_unknown",
            Rejection::TokenExpired => "token_expired",
            Rejection::TokenUsed => "token_used",
            Rejection::CertificateUnknown { .. } => "certificate_unknown",
            Rejection::CertificateExists { .. } => "certificate_exists",
        }
    }
}

/// The stream a command targets (for `expected_version`), resolved against state where needed.
pub fn command_stream<'a>(command: &'a Command) -> StreamRef<'a> {
    match command {
        Command::EnrollDevice { device_id, .. }
        | Command::RegisterDevice { device_id, .. }
        | Command::RecordTelemetry { device_id, .. }
        | Command::DecommissionDevice { device_id, .. }
        | Command::SetDeviceRate { device_id, .. }
        | Command::PinHostKey { device_id, .. }
        | Command::RecordProbe { device_id, .. } => StreamRef::Device(device_id),
        Command::DispatchJob { job_id, .. }
        | Command::StartJob { job_id }
        | Command::CompleteJob { job_id, .. }
        | Command::FailJob { job_id, .. } => StreamRef::Job(job_id),
        Command::QuoteRentalPrice { .. } => StreamRef::Prices,
        Command::IssueCertificate { .. }
        | Command::RevokeCertificate { .. }
        | Command::CreateBootstrapToken { .. }
        | Command::RedeemBootstrapToken { .. } => StreamRef::Pki,
        Command::ObserveRentalInstance { .. } => StreamRef::Rentals,
    }
}

fn actor_name(actor: &Actor) -> String {
    match actor {
        Actor::Agent(d) => format!("agent {d}"),
        Actor::Operator(n) => format!("operator {n}"),
        Actor::Auditor(n) => format!("auditor {n}"),
        Actor::System => "system".to_owned(),
    }
}

fn forbidden(ctx: &Context, action: impl Into<String>) -> Rejection {
    Rejection::Forbidden { actor: actor_name(&ctx.actor), action: action.into() }
}

fn invalid(msg: impl Into<String>) -> Rejection {
    Rejection::Invalid(msg.into())
}

fn check_id(what: &str, id: &str) -> Result<(), Rejection> {
    if validate_id(id) {
        Ok(())
    } else {
        Err(invalid(format!("{what} {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with '.'")))
    }
}

fn check_text(what: &str, text: &str) -> Result<(), Rejection> {
    if text.len() > MAX_TEXT_LEN {
        return Err(invalid(format!("{what} is {} bytes, over the {MAX_TEXT_LEN}-byte limit", text.len())));
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(format!("{what} contains control characters")));
    }
    Ok(())
}

/// Operator or system only.
fn require_operator(ctx: &Context, action: &str) -> Result<(), Rejection> {
    match ctx.actor {
        Actor::Operator(_) | Actor::System => Ok(()),
        _ => Err(forbidden(ctx, action)),
    }
}

/// The actor may speak for `device_id`: an agent only for its own device; operators and the system for any.
fn require_speaks_for(ctx: &Context, device_id: &str, action: &str) -> Result<(), Rejection> {
    match &ctx.actor {
        Actor::Agent(own) if own == device_id => Ok(()),
        Actor::Operator(_) | Actor::System => Ok(()),
        Actor::Agent(_) | Actor::Auditor(_) => Err(forbidden(ctx, format!("{action} for device {device_id}"))),
    }
}

/// The device exists and is not decommissioned.
fn live_device<'s>(state: &'s State, device_id: &str) -> Result<&'s DeviceState, Rejection> {
    match state.devices.get(device_id) {
        None => Err(Rejection::DeviceUnknown { device_id: device_id.to_owned() }),
        Some(d) if d.status == DeviceStatus::Decommissioned => {
            Err(Rejection::DeviceDecommissioned { device_id: device_id.to_owned() })
        }
        Some(d) => Ok(d),
    }
}

fn check_readings(gpus: &[GpuReading]) -> Result<(), Rejection> {
    if gpus.len() > MAX_GPUS {
        return Err(invalid(format!("{} GPUs, over the limit of {MAX_GPUS}", gpus.len())));
    }
    for g in gpus {
        let in_range = |v: Option<f32>, lo: f32, hi: f32| v.is_none_or(|x| x.is_finite() && x >= lo && x <= hi);
        if !in_range(g.utilization_pct, 0.0, 100.0) {
            return Err(invalid(format!("GPU {}: utilization must be 0-100 %", g.index)));
        }
        if !in_range(g.temperature_c, -60.0, 200.0) {
            return Err(invalid(format!("GPU {}: temperature must be -60-200 °C", g.index)));
        }
        if !in_range(g.power_w, 0.0, 10_000.0) {
            return Err(invalid(format!("GPU {}: power must be 0-10000 W", g.index)));
        }
        if let (Some(used), Some(total)) = (g.vram_used_mib, g.vram_total_mib) {
            if used > total {
                return Err(invalid(format!("GPU {}: VRAM used {used} MiB exceeds total {total} MiB", g.index)));
            }
        }
    }
    Ok(())
}

fn check_kind(kind: &DeviceKind) -> Result<(), Rejection> {
    match kind {
        DeviceKind::Local => Ok(()),
        DeviceKind::Ssh { target } => check_text("ssh target", target),
        DeviceKind::Rental { provider, instance_id } => {
            check_id("provider", provider)?;
            check_text("instance id", instance_id)
        }
    }
}

fn job_transition(
    state: &State,
    ctx: &Context,
    job_id: &str,
    allowed_from: &[JobStatus],
    to: JobStatus,
) -> Result<(), Rejection> {
    let job = state.jobs.get(job_id).ok_or_else(|| Rejection::JobUnknown { job_id: job_id.to_owned() })?;
    require_speaks_for(ctx, &job.device_id, &format!("report job {job_id}"))?;
    if !allowed_from.contains(&job.status) {
        return Err(Rejection::JobTransition { job_id: job_id.to_owned(), from: job.status.as_str(), to: to.as_str() });
    }
    Ok(())
}

/// Decides a command against the state: the events to append, or why not.
pub fn decide(state: &State, command: &Command, ctx: &Context) -> Result<Vec<Event>, Rejection> {
    if matches!(ctx.actor, Actor::Auditor(_)) {
        return Err(forbidden(ctx, command.type_name()));
    }
    match command {
        Command::EnrollDevice { device_id, kind, hostname, labels } => {
            require_operator(ctx, "enroll devices")?;
            check_id("device id", device_id)?;
            check_kind(kind)?;
            if let Some(h) = hostname {
                check_text("hostname", h)?;
            }
            if labels.len() > MAX_LABELS {
                return Err(invalid(format!("{} labels, over the limit of {MAX_LABELS}", labels.len())));
            }
            for (k, v) in labels {
                check_id("label key", k)?;
                check_text("label value", v)?;
            }
            if state.devices.contains_key(device_id) {
                return Err(Rejection::DeviceExists { device_id: device_id.clone() });
            }
            Ok(vec![Event::DeviceEnrolled {
                device_id: device_id.clone(),
                kind: kind.clone(),
                hostname: hostname.clone(),
                labels: labels.clone(),
            }])
        }
        Command::RegisterDevice { device_id, hostname, gpus } => {
            require_speaks_for(ctx, device_id, "register")?;
            live_device(state, device_id)?;
            if let Some(h) = hostname {
                check_text("hostname", h)?;
            }
            if gpus.len() > MAX_GPUS {
                return Err(invalid(format!("{} GPUs, over the limit of {MAX_GPUS}", gpus.len())));
            }
            for g in gpus {
                check_text("GPU name", &g.name)?;
                if let Some(u) = &g.uuid {
                    check_text("GPU uuid", u)?;
                }
            }
            Ok(vec![Event::DeviceRegistered {
                device_id: device_id.clone(),
                hostname: hostname.clone(),
                gpus: gpus.clone(),
            }])
        }
        Command::RecordTelemetry { device_id, sampled_at, gpus } => {
            require_speaks_for(ctx, device_id, "record telemetry")?;
            live_device(state, device_id)?;
            check_readings(gpus)?;
            Ok(vec![Event::TelemetryRecorded {
                device_id: device_id.clone(),
                sampled_at: *sampled_at,
                gpus: gpus.clone(),
            }])
        }
        Command::DecommissionDevice { device_id, reason } => {
            require_operator(ctx, "decommission devices")?;
            check_text("reason", reason)?;
            live_device(state, device_id)?;
            Ok(vec![Event::DeviceDecommissioned { device_id: device_id.clone(), reason: reason.clone() }])
        }
        Command::DispatchJob { job_id, device_id, model, vram_mib, price } => {
            require_operator(ctx, "dispatch jobs")?;
            check_id("job id", job_id)?;
            check_text("model", model)?;
            let device = live_device(state, device_id)?;
            if state.jobs.contains_key(job_id) {
                return Err(Rejection::JobExists { job_id: job_id.clone() });
            }
            let available = device.max_gpu_vram_mib();
            if *vram_mib > available {
                return Err(Rejection::VramExceeded {
                    device_id: device_id.clone(),
                    requested_mib: *vram_mib,
                    available_mib: available,
                });
            }
            let price = price.clone().or_else(|| ctx.quote.clone());
            if let Some(p) = &price {
                check_id("price source", &p.source)?;
                if let Some(o) = &p.offer_id {
                    check_text("offer id", o)?;
                }
            }
            Ok(vec![Event::JobDispatched {
                job_id: job_id.clone(),
                device_id: device_id.clone(),
                model: model.clone(),
                vram_mib: *vram_mib,
                price,
            }])
        }
        Command::StartJob { job_id } => {
            job_transition(state, ctx, job_id, &[JobStatus::Dispatched], JobStatus::Started)?;
            Ok(vec![Event::JobStarted { job_id: job_id.clone() }])
        }
        Command::CompleteJob { job_id, exit_status } => {
            job_transition(state, ctx, job_id, &[JobStatus::Started], JobStatus::Completed)?;
            Ok(vec![Event::JobCompleted { job_id: job_id.clone(), exit_status: *exit_status }])
        }
        Command::FailJob { job_id, exit_status, reason } => {
            check_text("reason", reason)?;
            job_transition(state, ctx, job_id, &[JobStatus::Dispatched, JobStatus::Started], JobStatus::Failed)?;
            Ok(vec![Event::JobFailed { job_id: job_id.clone(), exit_status: *exit_status, reason: reason.clone() }])
        }
        Command::QuoteRentalPrice { provider, gpu_name, gpu_count, micro_usd_per_hour, offer_id, quoted_at } => {
            require_operator(ctx, "record rental prices")?;
            check_id("provider", provider)?;
            check_text("GPU name", gpu_name)?;
            if let Some(o) = offer_id {
                check_text("offer id", o)?;
            }
            Ok(vec![Event::RentalPriceQuoted {
                provider: provider.clone(),
                gpu_name: gpu_name.clone(),
                gpu_count: *gpu_count,
                micro_usd_per_hour: *micro_usd_per_hour,
                offer_id: offer_id.clone(),
                quoted_at: *quoted_at,
            }])
        }
        Command::SetDeviceRate { device_id, micro_usd_per_hour } => {
            require_operator(ctx, "set device rates")?;
            live_device(state, device_id)?;
            Ok(vec![Event::DeviceRateSet { device_id: device_id.clone(), micro_usd_per_hour: *micro_usd_per_hour }])
        }
        Command::IssueCertificate { role, fingerprint, serial, not_after } => {
            require_operator(ctx, "record certificates")?;
            check_text("serial", serial)?;
            match role {
                CertRole::Agent(device_id) => {
                    live_device(state, device_id)?;
                }
                CertRole::Operator(name) | CertRole::Auditor(name) => check_id("name", name)?,
            }
            if state.certs.contains_key(fingerprint) {
                return Err(Rejection::CertificateExists { fingerprint: hex::encode(fingerprint) });
            }
            Ok(vec![Event::CertificateIssued {
                role: role.clone(),
                fingerprint: *fingerprint,
                serial: serial.clone(),
                not_after: *not_after,
            }])
        }
        Command::RevokeCertificate { fingerprint, reason } => {
            require_operator(ctx, "revoke certificates")?;
            check_text("reason", reason)?;
            match state.certs.get(fingerprint) {
                None => Err(Rejection::CertificateUnknown { fingerprint: hex::encode(fingerprint) }),
                Some(_) => Ok(vec![Event::CertificateRevoked { fingerprint: *fingerprint, reason: reason.clone() }]),
            }
        }
        Command::CreateBootstrapToken { token_hash, device_id, expires_at } => {
            require_operator(ctx, "create bootstrap tokens")?;
            check_id("device id", device_id)?;
            if let Some(d) = state.devices.get(device_id) {
                if d.status == DeviceStatus::Decommissioned {
                    return Err(Rejection::DeviceDecommissioned { device_id: device_id.clone() });
                }
            }
            if *expires_at <= ctx.now {
                return Err(invalid("bootstrap token expiry must be in the future"));
            }
            if state.tokens.contains_key(token_hash) {
                return Err(invalid("bootstrap token already exists"));
            }
            Ok(vec![Event::BootstrapTokenCreated {
                token_hash: *token_hash,
                device_id: device_id.clone(),
                expires_at: *expires_at,
            }])
        }
        Command::RedeemBootstrapToken { token_hash, fingerprint, serial, not_after, hostname } => {
            // Only the front door (system) redeems, after checking the CSR; the token is the authority.
            if ctx.actor != Actor::System {
                return Err(forbidden(ctx, "redeem bootstrap tokens"));
            }
            check_text("serial", serial)?;
            if let Some(h) = hostname {
                check_text("hostname", h)?;
            }
            let token = state.tokens.get(token_hash).ok_or(Rejection::TokenUnknown)?;
            if token.used {
                return Err(Rejection::TokenUsed);
            }
            if token.expires_at <= ctx.now {
                return Err(Rejection::TokenExpired);
            }
            if state.certs.contains_key(fingerprint) {
                return Err(Rejection::CertificateExists { fingerprint: hex::encode(fingerprint) });
            }
            let mut events = vec![Event::BootstrapTokenUsed { token_hash: *token_hash }];
            match state.devices.get(&token.device_id) {
                Some(d) if d.status == DeviceStatus::Decommissioned => {
                    return Err(Rejection::DeviceDecommissioned { device_id: token.device_id.clone() });
                }
                Some(_) => {}
                None => events.push(Event::DeviceEnrolled {
                    device_id: token.device_id.clone(),
                    kind: DeviceKind::Local,
                    hostname: hostname.clone(),
                    labels: Default::default(),
                }),
            }
            events.push(Event::CertificateIssued {
                role: CertRole::Agent(token.device_id.clone()),
                fingerprint: *fingerprint,
                serial: serial.clone(),
                not_after: *not_after,
            });
            Ok(events)
        }
        Command::PinHostKey { device_id, key_fingerprint } => {
            require_operator(ctx, "pin host keys")?;
            check_text("host key fingerprint", key_fingerprint)?;
            let device = live_device(state, device_id)?;
            if let Some(existing) = &device.host_key {
                if existing != key_fingerprint {
                    return Err(invalid(format!(
                        "device {device_id} already has host key {existing} pinned; refusing to replace it with {key_fingerprint}"
                    )));
                }
            }
            Ok(vec![Event::HostKeyPinned { device_id: device_id.clone(), key_fingerprint: key_fingerprint.clone() }])
        }
        Command::RecordProbe { device_id, ok, detail, gpus } => {
            require_operator(ctx, "record probes")?;
            check_text("detail", detail)?;
            live_device(state, device_id)?;
            check_readings(gpus)?;
            Ok(vec![Event::HostProbed {
                device_id: device_id.clone(),
                ok: *ok,
                detail: detail.clone(),
                gpus: gpus.clone(),
            }])
        }
        Command::ObserveRentalInstance { provider, instance_id, gpu_name, gpu_count, status, micro_usd_per_hour } => {
            require_operator(ctx, "record rental instances")?;
            check_id("provider", provider)?;
            check_text("instance id", instance_id)?;
            check_text("GPU name", gpu_name)?;
            check_text("status", status)?;
            Ok(vec![Event::RentalInstanceObserved {
                provider: provider.clone(),
                instance_id: instance_id.clone(),
                gpu_name: gpu_name.clone(),
                gpu_count: *gpu_count,
                status: status.clone(),
                micro_usd_per_hour: *micro_usd_per_hour,
            }])
        }
    }
}
