//! Instances seen on a rental provider's account, recorded as rental devices (`hwledger rentals sync`).
//!
//! Each instance becomes: `enroll_device` (kind `rental`, first time only; device id
//! `<provider>-<instance id>`), `register_device` (when the listing names the GPU and count and they
//! differ from the inventory; the listing states no memory, so VRAM stays 0 = unknown),
//! `observe_rental_instance` (always: a sync is an observation; a field the listing lacks is recorded
//! empty / 0) and `set_device_rate` (when the listing states a price that differs from the device's
//! rate), so jobs on rentals are priced at what the provider charges.

use hwledger_engine::event::{DeviceKind, GpuInfo, UnixMillis};
use hwledger_engine::{Command, Submission};

use super::price::usd_to_micro;
use super::{KnownDevice, clip_text, device_id_from_name, submission};
use crate::cloud::RentalInstance;

/// The device id of an instance: `<provider>-<instance id>`.
pub fn device_id(instance: &RentalInstance) -> Option<String> {
    device_id_from_name(&format!("{}-{}", instance.provider, instance.instance_id))
}

/// The commands recording `instance` at `at`; `None` if its id makes no valid device id.
pub fn instance_submissions(
    instance: &RentalInstance,
    known: Option<&KnownDevice>,
    at: UnixMillis,
) -> Option<(String, Vec<Submission>)> {
    let device_id = device_id(instance)?;
    let provider = instance.provider.as_str();
    let mut out = Vec::new();
    if known.is_none() {
        out.push(submission(
            format!("enroll/{device_id}"),
            Command::EnrollDevice {
                device_id: device_id.clone(),
                kind: DeviceKind::Rental { provider: provider.to_owned(), instance_id: instance.instance_id.clone() },
                hostname: instance.ssh_host.clone(),
                labels: Default::default(),
            },
        ));
    }
    if let (Some(name), Some(count)) = (&instance.gpu_name, instance.gpu_count) {
        let gpus: Vec<GpuInfo> = (0..count.min(64))
            .map(|index| GpuInfo { index, name: name.clone(), uuid: None, vram_total_mib: 0 })
            .collect();
        if known.is_none_or(|k| k.gpus != gpus) {
            out.push(submission(
                format!("register/{device_id}/{at}"),
                Command::RegisterDevice { device_id: device_id.clone(), hostname: instance.ssh_host.clone(), gpus },
            ));
        }
    }
    let rate = instance.price_per_hour_usd.and_then(usd_to_micro);
    out.push(submission(
        format!("observe/{device_id}/{at}"),
        Command::ObserveRentalInstance {
            provider: provider.to_owned(),
            instance_id: instance.instance_id.clone(),
            gpu_name: clip_text(instance.gpu_name.as_deref().unwrap_or_default()),
            gpu_count: instance.gpu_count.unwrap_or(0),
            status: clip_text(instance.status.as_deref().unwrap_or_default()),
            micro_usd_per_hour: rate,
        },
    ));
    if let Some(rate) = rate {
        if known.and_then(|k| k.micro_usd_per_hour) != Some(rate) {
            out.push(submission(
                format!("rate/{device_id}/{at}"),
                Command::SetDeviceRate { device_id: device_id.clone(), micro_usd_per_hour: rate },
            ));
        }
    }
    Some((device_id, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Provider;

    #[test]
    fn a_new_instance_becomes_a_priced_rental_device() {
        let instance = RentalInstance {
            provider: Provider::Vast,
            instance_id: "13445220".into(),
            gpu_name: Some("RTX 3090".into()),
            gpu_count: Some(1),
            status: Some("running".into()),
            price_per_hour_usd: Some(2.672222222222222),
            ssh_host: Some("ssh8.vast.ai".into()),
            ssh_port: Some(15220),
        };
        let (id, subs) = instance_submissions(&instance, None, 9).expect("valid");
        assert_eq!(id, "vast-13445220");
        let types: Vec<_> = subs.iter().map(|s| s.command.type_name()).collect();
        assert_eq!(types, ["enroll_device", "register_device", "observe_rental_instance", "set_device_rate"]);
        assert!(matches!(subs[3].command, Command::SetDeviceRate { micro_usd_per_hour: 2_672_222, .. }));
    }
}
