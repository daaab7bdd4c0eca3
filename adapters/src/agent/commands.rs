//! From a [`Sample`] to the commands the agent sends: `register_device` (the hardware inventory) and
//! `record_telemetry` (a heartbeat), each with a deterministic command id so a retry after a crash or an
//! outage is recognised by the ledger as the same command (idempotent) instead of a new one.
//!
//! Command ids: `<device>:reg:<sampled_at_ms>` and `<device>:hb:<sampled_at_ms>`. The agent keeps
//! `sampled_at` strictly increasing across restarts (see [`super::outbox::Outbox::next_sampled_at`]), so
//! two different commands never share an id. A value the tool did not report stays `None`; the only
//! stand-ins are the ones the engine's inventory type cannot leave empty, documented on [`gpu_info`].

use hwledger_engine::command::{Command, Submission};
use hwledger_engine::event::{GpuInfo, GpuReading, UnixMillis};
use sha2::{Digest, Sha256};

use super::collector::Sample;
use crate::gpu::{GpuSample, Vendor};

/// What a device declares about itself in `register_device`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Inventory {
    /// The machine's host name, if known.
    pub hostname: Option<String>,
    /// Its GPUs (empty for a CPU-only device).
    pub gpus: Vec<GpuInfo>,
}

impl Inventory {
    /// The inventory a sample shows.
    pub fn from_sample(hostname: Option<String>, sample: &Sample) -> Inventory {
        Inventory {
            hostname,
            gpus: sample.gpus.iter().enumerate().map(|(position, gpu)| gpu_info(position, gpu)).collect(),
        }
    }

    /// SHA-256 of the inventory's canonical JSON: the agent re-registers when it changes.
    pub fn digest(&self) -> [u8; 32] {
        // Struct fields serialise in declaration order, so the JSON (and its hash) is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&json).into()
    }

    /// The `register_device` submission for this inventory.
    pub fn register(&self, device_id: &str, sampled_at: UnixMillis) -> Submission {
        Submission {
            command_id: registration_id(device_id, sampled_at),
            expected_version: None,
            command: Command::RegisterDevice {
                device_id: device_id.to_owned(),
                hostname: self.hostname.clone(),
                gpus: self.gpus.clone(),
            },
        }
    }
}

/// `<device>:reg:<sampled_at_ms>`.
pub fn registration_id(device_id: &str, sampled_at: UnixMillis) -> String {
    format!("{device_id}:reg:{sampled_at}")
}

/// `<device>:hb:<sampled_at_ms>`.
pub fn heartbeat_id(device_id: &str, sampled_at: UnixMillis) -> String {
    format!("{device_id}:hb:{sampled_at}")
}

/// The `record_telemetry` submission (a heartbeat) for a sample.
pub fn heartbeat(device_id: &str, sampled_at: UnixMillis, sample: &Sample) -> Submission {
    Submission {
        command_id: heartbeat_id(device_id, sampled_at),
        expected_version: None,
        command: Command::RecordTelemetry {
            device_id: device_id.to_owned(),
            sampled_at,
            gpus: sample.gpus.iter().enumerate().map(|(position, gpu)| gpu_reading(position, gpu)).collect(),
        },
    }
}

/// The GPU's index: the tool's own, else its position in the tool's listing (the order is stable between
/// runs of the same tool, which is all an index promises).
fn index(position: usize, gpu: &GpuSample) -> u32 {
    gpu.index.unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX))
}

/// A GPU's inventory entry. The engine's type requires a name and a VRAM total: a tool that reports no
/// name gives `"<vendor> GPU (name not reported)"`, and unknown VRAM is `0`, which the engine documents as
/// "unknown" (unified-memory Apple GPUs, for example).
pub fn gpu_info(position: usize, gpu: &GpuSample) -> GpuInfo {
    GpuInfo {
        index: index(position, gpu),
        name: gpu.name.clone().unwrap_or_else(|| format!("{} GPU (name not reported)", vendor_name(gpu.vendor))),
        uuid: gpu.uuid.clone(),
        vram_total_mib: gpu.vram_total_mib.unwrap_or(0),
    }
}

/// A GPU's telemetry reading; every value the tool did not report stays `None`.
pub fn gpu_reading(position: usize, gpu: &GpuSample) -> GpuReading {
    GpuReading {
        index: index(position, gpu),
        vram_used_mib: gpu.vram_used_mib,
        vram_total_mib: gpu.vram_total_mib,
        // The ledger stores f32: tools print at most two decimals, far inside f32's precision.
        utilization_pct: gpu.utilization_pct.map(|v| v as f32),
        temperature_c: gpu.temperature_c.map(|v| v as f32),
        power_w: gpu.power_w.map(|v| v as f32),
    }
}

fn vendor_name(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Nvidia => "NVIDIA",
        Vendor::Amd => "AMD",
        Vendor::Apple => "Apple",
        Vendor::Intel => "Intel",
        Vendor::Other => "unknown-vendor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::collector::Tool;
    use crate::gpu::{NVIDIA_QUERY, parse_nvidia_csv};

    fn h100() -> Sample {
        let text = "0, GPU-00000000-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 81559, 19818, 100, 59, \
                    631.95, 590.48.01\n";
        Sample { tool: Some(Tool::NvidiaSmi), gpus: parse_nvidia_csv(text, Some(NVIDIA_QUERY)).unwrap_or_default() }
    }

    #[test]
    fn heartbeat_carries_the_readings_and_a_deterministic_id() {
        let s = heartbeat("box-1", 1_700_000_000_123, &h100());
        assert_eq!(s.command_id, "box-1:hb:1700000000123");
        let Command::RecordTelemetry { device_id, sampled_at, gpus } = s.command else { panic!("not telemetry") };
        assert_eq!((device_id.as_str(), sampled_at), ("box-1", 1_700_000_000_123));
        assert_eq!(
            gpus,
            vec![GpuReading {
                index: 0,
                vram_used_mib: Some(19818),
                vram_total_mib: Some(81559),
                utilization_pct: Some(100.0),
                temperature_c: Some(59.0),
                power_w: Some(631.95),
            }]
        );
    }

    #[test]
    fn unavailable_values_stay_none() {
        let text = "0, [N/A], NVIDIA A100-SXM4-40GB, [Insufficient Permissions], [Insufficient Permissions], \
                    [N/A], 31, [Not Supported], 550.54.15\n";
        let sample = Sample { tool: Some(Tool::NvidiaSmi), gpus: parse_nvidia_csv(text, Some(NVIDIA_QUERY)).unwrap() };
        let s = heartbeat("d", 5, &sample);
        let Command::RecordTelemetry { gpus, .. } = s.command else { panic!("not telemetry") };
        assert_eq!(
            gpus[0],
            GpuReading {
                index: 0,
                vram_used_mib: None,
                vram_total_mib: None,
                utilization_pct: None,
                temperature_c: Some(31.0),
                power_w: None
            }
        );
        let inv = Inventory::from_sample(None, &sample);
        assert_eq!(inv.gpus[0].uuid, None);
        assert_eq!(inv.gpus[0].vram_total_mib, 0);
    }

    #[test]
    fn inventory_digest_changes_with_the_hardware_only() {
        let a = Inventory::from_sample(Some("h".into()), &h100());
        let mut busier = h100();
        busier.gpus[0].vram_used_mib = Some(1);
        busier.gpus[0].temperature_c = Some(80.0);
        assert_eq!(a.digest(), Inventory::from_sample(Some("h".into()), &busier).digest());
        let cpu = Sample { tool: None, gpus: vec![] };
        assert_ne!(a.digest(), Inventory::from_sample(Some("h".into()), &cpu).digest());
        assert_ne!(a.digest(), Inventory::from_sample(Some("other".into()), &h100()).digest());
        let reg = a.register("box-1", 42);
        assert_eq!(reg.command_id, "box-1:reg:42");
        assert!(matches!(reg.command, Command::RegisterDevice { ref gpus, .. } if gpus[0].vram_total_mib == 81559));
    }

    #[test]
    fn nameless_gpu_gets_a_labelled_stand_in_and_its_position() {
        let mut gpu = h100().gpus.remove(0);
        gpu.name = None;
        gpu.index = None;
        let info = gpu_info(3, &gpu);
        assert_eq!(info.name, "NVIDIA GPU (name not reported)");
        assert_eq!(info.index, 3);
    }
}
