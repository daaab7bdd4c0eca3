//! A price cache: offers are kept per provider and GPU filter for a TTL (an hour by default) so repeated
//! `prices` / `suggest` runs reuse one quote instead of calling the providers each time. Time is passed
//! in as an [`Instant`] so tests advance it without sleeping, and the cache never reads the clock.
//! Errors are not cached: a failed fetch leaves the previous (possibly expired) entry untouched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{CloudClient, CloudError, PriceOffer, Provider, gpu_type_key};

/// How long a quote stays fresh. Rental prices move over hours, not seconds; an hour keeps the
/// providers' rate limits far away while showing prices at most an hour old.
pub const DEFAULT_PRICE_TTL: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    provider: Provider,
    /// The filter's [`gpu_type_key`], so "RTX_3090" and "rtx 3090" share an entry; `None` for no filter.
    filter: Option<String>,
}

impl CacheKey {
    fn new(provider: Provider, filter: Option<&str>) -> Self {
        CacheKey { provider, filter: filter.map(gpu_type_key).filter(|f| !f.is_empty()) }
    }
}

#[derive(Debug, Clone)]
struct CacheEntry {
    fetched_at: Instant,
    offers: Vec<PriceOffer>,
}

/// The cheapest available offer of one GPU type.
#[derive(Debug, Clone, PartialEq)]
pub struct CheapestOffer {
    /// The GPU type, as [`gpu_type_key`] spells it (e.g. "rtx 3090").
    pub gpu_type: String,
    /// The offer with the lowest price per GPU-hour among the fresh, available ones.
    pub offer: PriceOffer,
}

/// Offers per provider and filter, each with the instant it was fetched.
#[derive(Debug, Clone)]
pub struct PriceCache {
    ttl: Duration,
    entries: HashMap<CacheKey, CacheEntry>,
}

impl Default for PriceCache {
    fn default() -> Self {
        PriceCache::new(DEFAULT_PRICE_TTL)
    }
}

impl PriceCache {
    /// An empty cache whose entries stay fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        PriceCache { ttl, entries: HashMap::new() }
    }

    /// The configured time-to-live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn is_fresh(&self, entry: &CacheEntry, now: Instant) -> bool {
        // An entry "from the future" (now earlier than fetched_at) has age zero: still fresh.
        now.saturating_duration_since(entry.fetched_at) < self.ttl
    }

    /// The cached offers for `provider` and `filter` if they are younger than the TTL at `now`.
    pub fn fresh(&self, provider: Provider, filter: Option<&str>, now: Instant) -> Option<&[PriceOffer]> {
        self.entries
            .get(&CacheKey::new(provider, filter))
            .filter(|entry| self.is_fresh(entry, now))
            .map(|entry| entry.offers.as_slice())
    }

    /// Records offers fetched at `now`, replacing what was cached for that provider and filter.
    pub fn store(&mut self, provider: Provider, filter: Option<&str>, offers: Vec<PriceOffer>, now: Instant) {
        self.entries.insert(CacheKey::new(provider, filter), CacheEntry { fetched_at: now, offers });
    }

    /// The offers of `client` for `filter`: from the cache if fresh at `now`, otherwise fetched (one
    /// API call) and cached as of `now`.
    pub async fn offers(
        &mut self,
        client: &CloudClient,
        filter: Option<&str>,
        now: Instant,
    ) -> Result<Vec<PriceOffer>, CloudError> {
        let provider = client.provider();
        if let Some(offers) = self.fresh(provider, filter, now) {
            tracing::debug!(%provider, "price cache hit");
            return Ok(offers.to_vec());
        }
        let offers = client.offers(filter).await?;
        self.store(provider, filter, offers.clone(), now);
        Ok(offers)
    }

    /// Drops entries that are no longer fresh at `now`.
    pub fn evict_expired(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries.retain(|_, entry| now.saturating_duration_since(entry.fetched_at) < ttl);
    }

    /// For every GPU type present in the fresh entries, the available offer with the lowest price
    /// per GPU-hour across all providers; sorted by that price, cheapest first (ties by GPU type).
    pub fn cheapest_per_gpu_type(&self, now: Instant) -> Vec<CheapestOffer> {
        cheapest_per_gpu_type(
            self.entries.values().filter(|entry| self.is_fresh(entry, now)).flat_map(|entry| entry.offers.iter()),
        )
    }

    /// Every fresh entry at `now` with its age, so a caller can persist the cache (see
    /// [`super::PriceCacheFile`]); sorted by provider and filter.
    pub fn fresh_entries(&self, now: Instant) -> Vec<CachedQuotes> {
        let mut out: Vec<CachedQuotes> = self
            .entries
            .iter()
            .filter(|(_, entry)| self.is_fresh(entry, now))
            .map(|(key, entry)| CachedQuotes {
                provider: key.provider,
                filter: key.filter.clone(),
                age: now.saturating_duration_since(entry.fetched_at),
                offers: entry.offers.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider).then_with(|| a.filter.cmp(&b.filter)));
        out
    }

    /// How long ago (as of `now`) the entry for `provider` and `filter` was fetched, if it is fresh.
    pub fn age(&self, provider: Provider, filter: Option<&str>, now: Instant) -> Option<Duration> {
        self.entries
            .get(&CacheKey::new(provider, filter))
            .filter(|entry| self.is_fresh(entry, now))
            .map(|entry| now.saturating_duration_since(entry.fetched_at))
    }

    /// Puts back an entry that was fetched `age` before `now` (read from disk). An entry already
    /// older than the TTL, or one too old for this process's monotonic clock to express, is dropped.
    pub fn restore(&mut self, quotes: CachedQuotes, now: Instant) {
        if quotes.age >= self.ttl {
            return;
        }
        let Some(fetched_at) = now.checked_sub(quotes.age) else {
            return;
        };
        let key = CacheKey::new(quotes.provider, quotes.filter.as_deref());
        self.entries.insert(key, CacheEntry { fetched_at, offers: quotes.offers });
    }
}

/// One cache entry as handed out for persisting: whose offers, for which filter, fetched how long ago.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedQuotes {
    /// The provider.
    pub provider: Provider,
    /// The filter's GPU type key (`None`: unfiltered).
    pub filter: Option<String>,
    /// Time since the offers were fetched.
    pub age: Duration,
    /// The offers.
    pub offers: Vec<PriceOffer>,
}

/// For every GPU type among `offers`, the available one with the lowest price per GPU-hour; sorted by
/// that price, cheapest first (ties by GPU type).
pub fn cheapest_per_gpu_type<'a>(offers: impl IntoIterator<Item = &'a PriceOffer>) -> Vec<CheapestOffer> {
    let mut best: HashMap<String, &PriceOffer> = HashMap::new();
    for offer in offers.into_iter().filter(|offer| offer.available && offer.price_per_gpu_hour_usd.is_finite()) {
        let key = gpu_type_key(&offer.gpu_name);
        if key.is_empty() {
            continue;
        }
        match best.get(&key) {
            Some(current) if !cheaper(offer, current) => {}
            _ => {
                best.insert(key, offer);
            }
        }
    }
    let mut cheapest: Vec<CheapestOffer> =
        best.into_iter().map(|(gpu_type, offer)| CheapestOffer { gpu_type, offer: offer.clone() }).collect();
    cheapest.sort_by(|a, b| {
        a.offer
            .price_per_gpu_hour_usd
            .total_cmp(&b.offer.price_per_gpu_hour_usd)
            .then_with(|| a.gpu_type.cmp(&b.gpu_type))
    });
    cheapest
}

/// Strictly cheaper per GPU-hour; equal prices are decided by provider and offer id so the result does
/// not depend on hash-map order.
fn cheaper(candidate: &PriceOffer, current: &PriceOffer) -> bool {
    candidate
        .price_per_gpu_hour_usd
        .total_cmp(&current.price_per_gpu_hour_usd)
        .then_with(|| candidate.provider.cmp(&current.provider))
        .then_with(|| candidate.offer_id.cmp(&current.offer_id))
        .is_lt()
}
