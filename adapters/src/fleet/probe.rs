//! An SSH probe's outcome as ledger commands.
//!
//! A successful probe of a host becomes, in this order: `enroll_device` (kind `ssh`, only if the
//! device is not enrolled yet), `pin_host_key` (only when the key was trusted on first use — the pin
//! the next probe is checked against), `register_device` (only if the GPU inventory differs from the
//! registered one, so dispatch can check VRAM) and `record_probe` with the readings. A failed probe of
//! an enrolled device becomes a `record_probe` with `ok: false` and the error's code and message.

use hwledger_engine::Command;
use hwledger_engine::Submission;
use hwledger_engine::event::{DeviceKind, GpuInfo, GpuReading, UnixMillis};

use super::{KnownDevice, clip_text, device_id_from_name, submission};
use crate::gpu::GpuSample;
use crate::ssh::{HostKeyTrust, ProbeReport, SshError, SshTarget};

/// The device id used for a target when the operator names none: the host, plus `-<port>` off port 22.
pub fn device_id_for_target(target: &SshTarget) -> Option<String> {
    let name = if target.port == crate::ssh::DEFAULT_SSH_PORT {
        target.host.clone()
    } else {
        format!("{}-{}", target.host, target.port)
    };
    device_id_from_name(&name)
}

/// The inventory a probe shows: one entry per GPU, indexed as the tool does (by position when it does
/// not say). A name or total the tool did not report stays empty / 0, never guessed.
pub fn inventory(samples: &[GpuSample]) -> Vec<GpuInfo> {
    samples
        .iter()
        .zip(0u32..)
        .map(|(s, position)| GpuInfo {
            index: s.index.unwrap_or(position),
            name: s.name.clone().unwrap_or_default(),
            uuid: s.uuid.clone(),
            vram_total_mib: s.vram_total_mib.unwrap_or(0),
        })
        .collect()
}

/// A reading as the engine stores it (`f32`; `None` stays `None`, and so does a non-finite value).
fn narrow(v: Option<f64>) -> Option<f32> {
    // f64 → f32 only rounds: GPU percentages, degrees and watts are far inside f32's range.
    v.filter(|x| x.is_finite()).map(|x| x as f32)
}

/// The telemetry a probe shows, one reading per GPU.
pub fn readings(samples: &[GpuSample]) -> Vec<GpuReading> {
    samples
        .iter()
        .zip(0u32..)
        .map(|(s, position)| GpuReading {
            index: s.index.unwrap_or(position),
            vram_used_mib: s.vram_used_mib,
            vram_total_mib: s.vram_total_mib,
            utilization_pct: narrow(s.utilization_pct),
            temperature_c: narrow(s.temperature_c),
            power_w: narrow(s.power_w),
        })
        .collect()
}

fn trust_label(trust: HostKeyTrust) -> &'static str {
    match trust {
        HostKeyTrust::KnownHosts => "known_hosts",
        HostKeyTrust::Pinned => "pinned",
        HostKeyTrust::FirstUse => "first use, now pinned",
    }
}

/// `pin_host_key`: the fingerprint trusted on first use becomes the one every later connection must present.
pub fn pin_host_key(device_id: &str, fingerprint: &str) -> Submission {
    submission(
        format!("pin/{device_id}/{fingerprint}"),
        Command::PinHostKey { device_id: device_id.to_owned(), key_fingerprint: fingerprint.to_owned() },
    )
}

/// The commands recording a successful probe of `target` as device `device_id` at `at`.
pub fn probe_succeeded(
    device_id: &str,
    target: &SshTarget,
    known: Option<&KnownDevice>,
    report: &ProbeReport,
    at: UnixMillis,
) -> Vec<Submission> {
    let mut out = Vec::new();
    if known.is_none() {
        out.push(submission(
            format!("enroll/{device_id}"),
            Command::EnrollDevice {
                device_id: device_id.to_owned(),
                kind: DeviceKind::Ssh { target: target.to_string() },
                hostname: Some(target.host.clone()),
                labels: Default::default(),
            },
        ));
    }
    if report.host_key_trust == HostKeyTrust::FirstUse {
        out.push(pin_host_key(device_id, &report.host_key_fingerprint));
    }
    let gpus = inventory(&report.samples);
    if known.is_none_or(|k| k.gpus != gpus) {
        out.push(submission(
            format!("register/{device_id}/{at}"),
            Command::RegisterDevice {
                device_id: device_id.to_owned(),
                hostname: known.and_then(|k| k.hostname.clone()).or_else(|| Some(target.host.clone())),
                gpus,
            },
        ));
    }
    let detail = format!(
        "{} on {target}: {} GPU(s); host key {} ({})",
        report.tool,
        report.samples.len(),
        report.host_key_fingerprint,
        trust_label(report.host_key_trust)
    );
    out.push(submission(
        format!("probe/{device_id}/{at}"),
        Command::RecordProbe {
            device_id: device_id.to_owned(),
            ok: true,
            detail: clip_text(&detail),
            gpus: readings(&report.samples),
        },
    ));
    out
}

/// The command recording that probing enrolled device `device_id` failed with `error` at `at`.
pub fn probe_failed(device_id: &str, error: &SshError, at: UnixMillis) -> Submission {
    submission(
        format!("probe/{device_id}/{at}"),
        Command::RecordProbe {
            device_id: device_id.to_owned(),
            ok: false,
            detail: clip_text(&format!("{}: {error}", error.code())),
            gpus: Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{NVIDIA_QUERY, parse_nvidia_csv};
    use crate::ssh::ProbeTool;

    fn report(trust: HostKeyTrust) -> ProbeReport {
        let csv = "0, GPU-1, NVIDIA H100 80GB HBM3, 81559, 19818, 100, 59, 631.95, 590.48.01\n";
        ProbeReport {
            target: "root@10.0.0.7:2222".parse().expect("target"),
            host_key_fingerprint: "SHA256:abc".to_owned(),
            host_key_trust: trust,
            tool: ProbeTool::NvidiaSmi,
            raw_output: csv.to_owned(),
            samples: parse_nvidia_csv(csv, Some(NVIDIA_QUERY)).expect("parse"),
        }
    }

    fn types(subs: &[Submission]) -> Vec<&'static str> {
        subs.iter().map(|s| s.command.type_name()).collect()
    }

    #[test]
    fn first_contact_enrolls_pins_registers_and_records() {
        let r = report(HostKeyTrust::FirstUse);
        let subs = probe_succeeded("gpu-7", &r.target, None, &r, 1_000);
        assert_eq!(types(&subs), ["enroll_device", "pin_host_key", "register_device", "record_probe"]);
        assert_eq!(subs[1].command_id, "pin/gpu-7/SHA256:abc");
        match &subs[2].command {
            Command::RegisterDevice { gpus, .. } => {
                assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
                assert_eq!(gpus[0].vram_total_mib, 81559);
            }
            other => panic!("{other:?}"),
        }
        match &subs[3].command {
            Command::RecordProbe { ok: true, gpus, detail, .. } => {
                assert_eq!(gpus[0].vram_used_mib, Some(19818));
                assert_eq!(gpus[0].power_w, Some(631.95));
                assert!(detail.contains("first use"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_known_device_with_the_same_inventory_only_gets_the_probe() {
        let r = report(HostKeyTrust::Pinned);
        let known = KnownDevice {
            device_id: "gpu-7".into(),
            kind: DeviceKind::Ssh { target: r.target.to_string() },
            hostname: None,
            gpus: inventory(&r.samples),
            host_key: Some("SHA256:abc".into()),
            micro_usd_per_hour: None,
            decommissioned: false,
            last_seen: None,
        };
        let subs = probe_succeeded("gpu-7", &r.target, Some(&known), &r, 2_000);
        assert_eq!(types(&subs), ["record_probe"]);
        assert_eq!(subs[0].command_id, "probe/gpu-7/2000");
    }

    #[test]
    fn default_device_ids_come_from_host_and_port() {
        let t: SshTarget = "ops@GPU-Box.lan".parse().expect("target");
        assert_eq!(device_id_for_target(&t).as_deref(), Some("gpu-box.lan"));
        let t: SshTarget = "ops@[::1]:2222".parse().expect("target");
        assert_eq!(device_id_for_target(&t).as_deref(), Some("1-2222"));
    }
}
