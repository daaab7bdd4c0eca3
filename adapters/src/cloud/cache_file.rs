//! The price cache on disk, so that repeated CLI runs (`hwledger prices`, `suggest`, `dispatch
//! --price-from vast`) within the hour reuse one quote instead of calling the providers every time.
//!
//! The file is JSON: `{"version": 1, "entries": [{"provider", "filter", "fetched_at_ms", "offers"}]}`,
//! with `fetched_at_ms` in wall-clock unix milliseconds (an [`std::time::Instant`] means nothing to
//! another process). It holds only public price data — never an API key. It is derived data: a missing,
//! unreadable, oversized or corrupt file, or an entry stamped in the future (the clock moved back),
//! means "nothing cached" (with a warning for the caller to log), never an error that stops a command.
//! It is replaced atomically (temporary file + rename), so a crash mid-write leaves the old file.
//! Neither function reads a clock: the caller passes "now" on both clocks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cache::{CachedQuotes, PriceCache};
use super::{PriceOffer, Provider};

/// Format version of the file; a file of another version is ignored (and rewritten on the next save).
pub const PRICE_CACHE_FILE_VERSION: u32 = 1;

/// Largest cache file read. A full unfiltered fetch of all three providers is a few hundred KiB.
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    provider: Provider,
    /// GPU type key of the filter, `null` for an unfiltered fetch.
    filter: Option<String>,
    fetched_at_ms: i64,
    offers: Vec<PriceOffer>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    version: u32,
    entries: Vec<FileEntry>,
}

/// Why the cache file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PriceCacheSaveError {
    /// Creating the directory, writing the temporary file or renaming it failed.
    #[error("cannot write the price cache {path}: {source}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The entries could not be encoded (a non-finite price would be one way).
    #[error("cannot encode the price cache: {0}")]
    Encode(#[from] serde_json::Error),
}

impl PriceCacheSaveError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PriceCacheSaveError::Io { .. } => "price_cache_io",
            PriceCacheSaveError::Encode(_) => "price_cache_encode",
        }
    }
}

/// A [`PriceCache`] bound to its file.
#[derive(Debug)]
pub struct PriceCacheFile {
    path: PathBuf,
    /// The in-memory cache, restored from the file.
    pub cache: PriceCache,
}

impl PriceCacheFile {
    /// Reads the file at `path` into a cache with `ttl`, as of `now` (monotonic) = `now_ms` (wall
    /// clock). Returns the cache and, if the file was there but unusable, why it was ignored.
    pub fn load(path: &Path, ttl: Duration, now: Instant, now_ms: i64) -> (PriceCacheFile, Option<String>) {
        let mut cache = PriceCache::new(ttl);
        let warning = match read_body(path) {
            Ok(None) => None,
            Ok(Some(body)) if body.version != PRICE_CACHE_FILE_VERSION => {
                Some(format!("ignoring price cache {}: version {}", path.display(), body.version))
            }
            Ok(Some(body)) => {
                for entry in body.entries {
                    // An entry from the future (the clock went back) is not trusted to be fresh.
                    let Some(age_ms) = now_ms.checked_sub(entry.fetched_at_ms).and_then(|a| u64::try_from(a).ok())
                    else {
                        continue;
                    };
                    cache.restore(
                        CachedQuotes {
                            provider: entry.provider,
                            filter: entry.filter,
                            age: Duration::from_millis(age_ms),
                            offers: entry.offers,
                        },
                        now,
                    );
                }
                None
            }
            Err(reason) => Some(format!("ignoring price cache {}: {reason}", path.display())),
        };
        (PriceCacheFile { path: path.to_owned(), cache }, warning)
    }

    /// The file this cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the fresh entries (as of `now` = `now_ms`) to the file, atomically.
    pub fn save(&self, now: Instant, now_ms: i64) -> Result<(), PriceCacheSaveError> {
        let entries = self
            .cache
            .fresh_entries(now)
            .into_iter()
            .map(|q| FileEntry {
                provider: q.provider,
                filter: q.filter,
                fetched_at_ms: now_ms.saturating_sub(i64::try_from(q.age.as_millis()).unwrap_or(i64::MAX)),
                offers: q.offers,
            })
            .collect();
        let bytes = serde_json::to_vec(&FileBody { version: PRICE_CACHE_FILE_VERSION, entries })?;
        let io = |source| PriceCacheSaveError::Io { path: self.path.clone(), source };
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

fn read_body(path: &Path) -> Result<Option<FileBody>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} bytes, over the {MAX_FILE_BYTES}-byte limit", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("not a price cache: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, price: f64) -> PriceOffer {
        PriceOffer {
            provider: Provider::Vast,
            offer_id: id.to_owned(),
            gpu_name: "RTX 3090".to_owned(),
            gpu_count: 1,
            vram_mib: Some(24_576),
            price_per_hour_usd: price,
            price_per_gpu_hour_usd: price,
            region: None,
            available: true,
        }
    }

    #[test]
    fn entries_survive_a_round_trip_with_their_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache/prices.json");
        let t0 = Instant::now();
        let (mut file, warning) = PriceCacheFile::load(&path, Duration::from_secs(3600), t0, 1_000_000);
        assert_eq!(warning, None, "a missing file is just empty");
        file.cache.store(Provider::Vast, Some("RTX_3090"), vec![offer("1", 0.5)], t0);
        file.save(t0, 1_000_000).expect("save");

        // Another process, ten minutes later by the wall clock.
        let t1 = Instant::now();
        let (again, warning) = PriceCacheFile::load(&path, Duration::from_secs(3600), t1, 1_000_000 + 600_000);
        assert_eq!(warning, None);
        let fresh = again.cache.fresh(Provider::Vast, Some("rtx 3090"), t1).expect("restored");
        assert_eq!(fresh, [offer("1", 0.5)]);
        assert_eq!(again.cache.age(Provider::Vast, Some("rtx 3090"), t1), Some(Duration::from_secs(600)));

        // An hour after the fetch it is gone; an entry from the future is not trusted.
        let (late, _) = PriceCacheFile::load(&path, Duration::from_secs(3600), t1, 1_000_000 + 3_600_000);
        assert!(late.cache.fresh_entries(t1).is_empty());
        let (future, _) = PriceCacheFile::load(&path, Duration::from_secs(3600), t1, 999_999);
        assert!(future.cache.fresh_entries(t1).is_empty());
    }

    #[test]
    fn a_corrupt_file_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prices.json");
        std::fs::write(&path, b"{\"version\": 1, \"entries\": [").expect("write");
        let (file, warning) = PriceCacheFile::load(&path, Duration::from_secs(60), Instant::now(), 0);
        assert!(warning.is_some_and(|w| w.contains("not a price cache")));
        assert!(file.cache.fresh_entries(Instant::now()).is_empty());
        std::fs::write(&path, b"{\"version\": 7, \"entries\": []}").expect("write");
        let (_, warning) = PriceCacheFile::load(&path, Duration::from_secs(60), Instant::now(), 0);
        assert!(warning.is_some_and(|w| w.contains("version 7")));
    }
}
