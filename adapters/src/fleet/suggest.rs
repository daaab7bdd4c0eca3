//! Where could a job needing `vram_mib` of one GPU run, and what would it cost?
//!
//! Candidates are the enrolled, not decommissioned devices that have a GPU whose **free** VRAM (total
//! minus used, both from its latest telemetry or probe) holds the job — a GPU whose use is unknown is
//! not assumed free — and the available rental offers whose per-GPU memory is stated and holds it.
//! They are listed cheapest first by price per hour: a device's operator-set rate, an offer's price
//! for the whole offer (what renting it costs). Devices without a rate have no price and come after
//! every priced candidate (most free VRAM first), never "free". Ties: devices before offers, then by id.

use std::collections::HashMap;

use hwledger_engine::event::{MicroUsd, UnixMillis};
use serde::Serialize;

use super::price::usd_to_micro;
use super::{GpuLoad, KnownDevice, cost_of_duration};
use crate::cloud::PriceOffer;

/// An enrolled device that can take the job now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceCandidate {
    /// Device id.
    pub device_id: String,
    /// `local`, `ssh` or the rental provider.
    pub backend: String,
    /// The GPU with the most free VRAM.
    pub gpu_index: u32,
    /// Its name from the inventory (empty if not registered).
    pub gpu_name: String,
    /// Its free VRAM, MiB.
    pub free_vram_mib: u64,
    /// When that GPU was last sampled.
    pub sampled_at: UnixMillis,
    /// The device's rate, if set.
    pub micro_usd_per_hour: Option<MicroUsd>,
    /// The rate × the hours asked about.
    pub cost_micro_usd: Option<MicroUsd>,
}

/// A rental offer that fits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfferCandidate {
    /// The offer.
    pub offer: PriceOffer,
    /// Its whole-offer price per hour, micro-USD.
    pub micro_usd_per_hour: MicroUsd,
    /// That × the hours asked about.
    pub cost_micro_usd: MicroUsd,
}

/// One place a job could run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Suggestion {
    /// An enrolled device.
    Device(DeviceCandidate),
    /// A rental offer.
    Offer(OfferCandidate),
}

impl Suggestion {
    /// Price per hour, if known.
    pub fn micro_usd_per_hour(&self) -> Option<MicroUsd> {
        match self {
            Suggestion::Device(d) => d.micro_usd_per_hour,
            Suggestion::Offer(o) => Some(o.micro_usd_per_hour),
        }
    }
}

/// The request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// VRAM the job needs on one GPU, MiB.
    pub vram_mib: u64,
    /// How long it would run, ms (for the inline cost).
    pub duration_ms: u64,
    /// At most this many rental offers are listed (devices are all listed).
    pub max_offers: usize,
}

/// Free VRAM of one GPU: total (from the reading, else the inventory) minus used; unknown if either is.
fn free_vram(load: &GpuLoad, inventory_total: Option<u64>) -> Option<u64> {
    let total = load.vram_total_mib.or(inventory_total.filter(|t| *t > 0))?;
    Some(total.saturating_sub(load.vram_used_mib?))
}

/// The candidates for `need`, cheapest first. `loads` maps device id → latest reading of each GPU.
pub fn suggest(
    devices: &[KnownDevice],
    loads: &HashMap<String, Vec<GpuLoad>>,
    offers: &[PriceOffer],
    need: Need,
) -> Vec<Suggestion> {
    let mut out = Vec::new();
    for device in devices.iter().filter(|d| !d.decommissioned) {
        let Some(gpus) = loads.get(&device.device_id) else { continue };
        let best = gpus
            .iter()
            .filter_map(|load| {
                let info = device.gpus.iter().find(|g| g.index == load.index);
                free_vram(load, info.map(|g| g.vram_total_mib)).map(|free| (load, info, free))
            })
            .filter(|(_, _, free)| *free >= need.vram_mib)
            .max_by(|a, b| a.2.cmp(&b.2).then_with(|| b.0.index.cmp(&a.0.index)));
        if let Some((load, info, free)) = best {
            out.push(Suggestion::Device(DeviceCandidate {
                device_id: device.device_id.clone(),
                backend: device.kind.backend().to_owned(),
                gpu_index: load.index,
                gpu_name: info.map(|g| g.name.clone()).unwrap_or_default(),
                free_vram_mib: free,
                sampled_at: load.sampled_at,
                micro_usd_per_hour: device.micro_usd_per_hour,
                cost_micro_usd: device.micro_usd_per_hour.map(|r| cost_of_duration(need.duration_ms, r)),
            }));
        }
    }
    let mut fitting: Vec<OfferCandidate> = offers
        .iter()
        .filter(|o| o.available && o.vram_mib.is_some_and(|v| v >= need.vram_mib))
        .filter_map(|o| {
            let rate = usd_to_micro(o.price_per_hour_usd)?;
            Some(OfferCandidate {
                offer: o.clone(),
                micro_usd_per_hour: rate,
                cost_micro_usd: cost_of_duration(need.duration_ms, rate),
            })
        })
        .collect();
    fitting.sort_by(|a, b| {
        a.micro_usd_per_hour
            .cmp(&b.micro_usd_per_hour)
            .then_with(|| a.offer.provider.cmp(&b.offer.provider))
            .then_with(|| a.offer.offer_id.cmp(&b.offer.offer_id))
    });
    out.extend(fitting.into_iter().take(need.max_offers).map(Suggestion::Offer));
    out.sort_by(|a, b| {
        let rank = |s: &Suggestion| match (s.micro_usd_per_hour(), s) {
            (Some(rate), Suggestion::Device(_)) => (0, rate, 0, 0),
            (Some(rate), Suggestion::Offer(_)) => (0, rate, 1, 0),
            (None, Suggestion::Device(d)) => (1, 0, 0, u64::MAX - d.free_vram_mib),
            (None, Suggestion::Offer(_)) => (1, 0, 1, 0),
        };
        let id = |s: &Suggestion| match s {
            Suggestion::Device(d) => d.device_id.clone(),
            Suggestion::Offer(o) => format!("{}/{}", o.offer.provider, o.offer.offer_id),
        };
        rank(a).cmp(&rank(b)).then_with(|| id(a).cmp(&id(b)))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Provider;
    use hwledger_engine::event::{DeviceKind, GpuInfo};

    fn device(id: &str, rate: Option<MicroUsd>, total: u64) -> KnownDevice {
        KnownDevice {
            device_id: id.into(),
            kind: DeviceKind::Ssh { target: format!("root@{id}:22") },
            hostname: None,
            gpus: vec![GpuInfo { index: 0, name: "RTX 4090".into(), uuid: None, vram_total_mib: total }],
            host_key: None,
            micro_usd_per_hour: rate,
            decommissioned: false,
            last_seen: None,
        }
    }

    fn load(used: Option<u64>, total: Option<u64>) -> GpuLoad {
        GpuLoad { index: 0, sampled_at: 5, vram_used_mib: used, vram_total_mib: total }
    }

    fn offer(id: &str, price: f64, vram: Option<u64>) -> PriceOffer {
        PriceOffer {
            provider: Provider::Vast,
            offer_id: id.into(),
            gpu_name: "RTX 3090".into(),
            gpu_count: 1,
            vram_mib: vram,
            price_per_hour_usd: price,
            price_per_gpu_hour_usd: price,
            region: None,
            available: true,
        }
    }

    #[test]
    fn fitting_devices_and_offers_cheapest_first_unpriced_last() {
        let devices = vec![
            device("cheap", Some(100_000), 24_000),
            device("busy", Some(1), 24_000),
            device("norate", None, 24_000),
            device("unknown-use", Some(1), 24_000),
        ];
        let loads = HashMap::from([
            ("cheap".to_owned(), vec![load(Some(4_000), Some(24_000))]),
            ("busy".to_owned(), vec![load(Some(20_000), Some(24_000))]),
            ("norate".to_owned(), vec![load(Some(0), None)]),
            ("unknown-use".to_owned(), vec![load(None, Some(24_000))]),
        ]);
        let offers = vec![
            offer("o1", 0.5, Some(24_576)),
            offer("o2", 0.05, Some(24_576)),
            offer("small", 0.01, Some(8_192)),
            offer("nomem", 0.01, None),
        ];
        let need = Need { vram_mib: 16_000, duration_ms: 2 * 3_600_000, max_offers: 5 };
        let got = suggest(&devices, &loads, &offers, need);
        let ids: Vec<String> = got
            .iter()
            .map(|s| match s {
                Suggestion::Device(d) => d.device_id.clone(),
                Suggestion::Offer(o) => o.offer.offer_id.clone(),
            })
            .collect();
        assert_eq!(ids, ["o2", "cheap", "o1", "norate"]);
        match &got[1] {
            Suggestion::Device(d) => {
                assert_eq!((d.free_vram_mib, d.cost_micro_usd), (20_000, Some(200_000)));
                assert_eq!(d.gpu_name, "RTX 4090");
            }
            other => panic!("{other:?}"),
        }
        match &got[0] {
            Suggestion::Offer(o) => assert_eq!(o.cost_micro_usd, 100_000),
            other => panic!("{other:?}"),
        }
        // The inventory's total stands in when the reading has none.
        match &got[3] {
            Suggestion::Device(d) => assert_eq!((d.free_vram_mib, d.cost_micro_usd), (24_000, None)),
            other => panic!("{other:?}"),
        }
    }
}
