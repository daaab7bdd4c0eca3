//! Prices for dispatch: turning a rental offer into the quote a job is dispatched at, and into the
//! `quote_rental_price` command that records the quote itself as an event.
//!
//! `dispatch --price-from vast|runpod|lambda` prices a job at what one GPU of the device's type costs
//! at that provider right now: the cheapest available offer whose GPU type ([`gpu_type_key`]) is the
//! device's and whose per-GPU memory (when stated) holds the job; the job is charged the offer's price
//! **per GPU-hour** (a job runs on one GPU). The `quote_rental_price` event records the offer as the
//! provider quoted it (whole offer, its GPU count, its id) at the time it was fetched.

use hwledger_engine::event::{MicroUsd, PriceQuote, UnixMillis};
use hwledger_engine::{Command, Submission};
use sha2::{Digest, Sha256};

use super::submission;
use crate::cloud::{PriceOffer, Provider, gpu_type_key};

/// The price source of an operator-set device rate (`dispatch --price-from rate`).
pub const RATE_SOURCE: &str = "rate";

/// US dollars as whole micro-USD, rounded to nearest; `None` for a negative, non-finite or absurd
/// amount (over a billion dollars), which no provider quotes.
pub fn usd_to_micro(usd: f64) -> Option<MicroUsd> {
    const MAX_USD: f64 = 1e9;
    if !usd.is_finite() || !(0.0..=MAX_USD).contains(&usd) {
        return None;
    }
    let micro = (usd * 1e6).round();
    // In range by the check above (≤ 1e15 < 2^53), so the conversion is exact.
    format!("{micro:.0}").parse().ok()
}

/// Micro-USD as dollars for display, `$1.234567`.
pub fn format_usd(micro: MicroUsd) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Whether `offer` is for the GPU type whose [`gpu_type_key`] is `wanted`. Providers name GPUs their own
/// way; RunPod's offer id starts with its GPU type id, which is the name `nvidia-smi` prints
/// ("NVIDIA H100 80GB HBM3:community" for the type it displays as "H100 SXM"), so that counts too.
pub fn offer_is_type(offer: &PriceOffer, wanted: &str) -> bool {
    if gpu_type_key(&offer.gpu_name) == wanted {
        return true;
    }
    offer.provider == Provider::RunPod
        && offer.offer_id.rsplit_once(':').is_some_and(|(type_id, _)| gpu_type_key(type_id) == wanted)
}

/// The cheapest available offer of `gpu_name`'s type that can hold `vram_mib` on one GPU.
pub fn pick_offer<'a>(offers: &'a [PriceOffer], gpu_name: &str, vram_mib: u64) -> Option<&'a PriceOffer> {
    let wanted = gpu_type_key(gpu_name);
    if wanted.is_empty() {
        return None;
    }
    offers
        .iter()
        .filter(|o| o.available && offer_is_type(o, &wanted))
        .filter(|o| o.vram_mib.is_none_or(|v| v >= vram_mib))
        .filter(|o| usd_to_micro(o.price_per_gpu_hour_usd).is_some())
        .min_by(|a, b| {
            a.price_per_gpu_hour_usd.total_cmp(&b.price_per_gpu_hour_usd).then_with(|| a.offer_id.cmp(&b.offer_id))
        })
}

/// A quote ready to record: the `quote_rental_price` command and the price the job is dispatched at.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchQuote {
    /// Records the provider's quote (whole offer) as an event.
    pub quote: Submission,
    /// What the job is charged per hour (one GPU of the offer).
    pub price: PriceQuote,
}

/// The quote for `offer`, fetched at `quoted_at`. `None` if its price cannot be expressed in micro-USD.
pub fn dispatch_quote(offer: &PriceOffer, quoted_at: UnixMillis) -> Option<DispatchQuote> {
    let whole = usd_to_micro(offer.price_per_hour_usd)?;
    let per_gpu = usd_to_micro(offer.price_per_gpu_hour_usd)?;
    let provider = offer.provider.as_str();
    // Offer ids may hold spaces (RunPod's "NVIDIA GeForce RTX 3090:community"): the command id carries
    // a digest of it instead, so it stays short printable ASCII and the same quote maps to the same id.
    let digest = Sha256::digest(offer.offer_id.as_bytes());
    let id_digest = hex::encode(digest.get(..8).unwrap_or_default());
    let quote = submission(
        format!("quote/{provider}/{id_digest}/{quoted_at}"),
        Command::QuoteRentalPrice {
            provider: provider.to_owned(),
            gpu_name: offer.gpu_name.clone(),
            gpu_count: offer.gpu_count,
            micro_usd_per_hour: whole,
            offer_id: Some(offer.offer_id.clone()),
            quoted_at,
        },
    );
    let price = PriceQuote {
        source: provider.to_owned(),
        micro_usd_per_hour: per_gpu,
        offer_id: Some(offer.offer_id.clone()),
        quoted_at,
    };
    Some(DispatchQuote { quote, price })
}

/// The quote of an operator-set device rate.
pub fn rate_quote(micro_usd_per_hour: MicroUsd, quoted_at: UnixMillis) -> PriceQuote {
    PriceQuote { source: RATE_SOURCE.to_owned(), micro_usd_per_hour, offer_id: None, quoted_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, name: &str, count: u32, price: f64, vram: Option<u64>, available: bool) -> PriceOffer {
        PriceOffer {
            provider: Provider::RunPod,
            offer_id: id.to_owned(),
            gpu_name: name.to_owned(),
            gpu_count: count,
            vram_mib: vram,
            price_per_hour_usd: price,
            price_per_gpu_hour_usd: price / f64::from(count),
            region: None,
            available,
        }
    }

    #[test]
    fn dollars_become_exact_micro_usd() {
        assert_eq!(usd_to_micro(0.22), Some(220_000));
        assert_eq!(usd_to_micro(2.6680555555555556), Some(2_668_056));
        assert_eq!(usd_to_micro(-1.0), None);
        assert_eq!(usd_to_micro(f64::NAN), None);
        assert_eq!(usd_to_micro(1e12), None);
        assert_eq!(format_usd(2_668_056), "$2.668056");
        assert_eq!(format_usd(5), "$0.000005");
    }

    #[test]
    fn the_cheapest_fitting_offer_of_the_same_type_is_picked() {
        let offers = vec![
            offer("a", "RTX 3090", 2, 1.0, Some(24_576), true),
            offer("b", "RTX 3090 Ti", 1, 0.1, Some(24_576), true),
            offer("c", "NVIDIA GeForce RTX 3090", 1, 0.6, Some(24_576), true),
            offer("d", "RTX 3090", 1, 0.2, Some(24_576), false),
            offer("e", "RTX 3090", 1, 0.3, Some(8_192), true),
        ];
        // a: 0.5/GPU-h beats c: 0.6; b is another type, d is unavailable, e is too small.
        assert_eq!(pick_offer(&offers, "NVIDIA GeForce RTX 3090", 20_000).map(|o| o.offer_id.as_str()), Some("a"));
        assert_eq!(pick_offer(&offers, "H100", 1).map(|o| o.offer_id.as_str()), None);
        // RunPod's type id is the nvidia-smi name, whatever the display name.
        let h100 = [offer("NVIDIA H100 80GB HBM3:community", "H100 SXM", 1, 2.69, Some(81_920), true)];
        assert!(pick_offer(&h100, "NVIDIA H100 80GB HBM3", 40_000).is_some());
        let q = dispatch_quote(&offers[0], 77).expect("quote");
        assert_eq!(q.price.micro_usd_per_hour, 500_000);
        assert_eq!(q.price.source, "runpod");
        match &q.quote.command {
            Command::QuoteRentalPrice { micro_usd_per_hour, gpu_count, quoted_at, .. } => {
                assert_eq!((*micro_usd_per_hour, *gpu_count, *quoted_at), (1_000_000, 2, 77));
            }
            other => panic!("{other:?}"),
        }
        assert!(hwledger_engine::command::validate_command_id(&q.quote.command_id), "{}", q.quote.command_id);
    }
}
