//! A per-server cache of authorization results, keyed by certificate fingerprint and validated by the
//! ledger's [`auth_epoch`](hwledger_engine::Ledger::auth_epoch): the pin check is still made for **every**
//! request, but while no commit has touched pins, revocations or devices since an answer was computed, that
//! answer is reused without taking the ledger's state lock (which the writer holds for each whole group
//! commit, fdatasync included). Expiry is re-checked against the clock on every use.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::routes::Principal;
use crate::pki::Fingerprint;

/// Most cached identities; past it the cache starts over (a fleet has far fewer certificates).
const MAX_ENTRIES: usize = 16 * 1024;

struct Entry {
    /// The epoch the answer was computed at.
    epoch: u64,
    /// The pin's expiry (unix ms): the answer is only reused before it.
    not_after: i64,
    principal: Principal,
}

/// Cached successful authorizations (refusals are not cached: they are rare and must stay cheap to lift).
#[derive(Default)]
pub(crate) struct AuthCache {
    entries: Mutex<HashMap<Fingerprint, Entry>>,
}

impl AuthCache {
    /// The cached principal for `fingerprint`, if it was computed at `epoch` and the pin has not expired.
    pub(crate) fn get(&self, fingerprint: &Fingerprint, epoch: u64, now: i64) -> Option<Principal> {
        let entries = self.entries.lock();
        let e = entries.get(fingerprint)?;
        (e.epoch == epoch && now < e.not_after).then(|| e.principal.clone())
    }

    /// Remembers an answer computed from the state at `epoch` (read before the state was).
    pub(crate) fn put(&self, fingerprint: Fingerprint, epoch: u64, not_after: i64, principal: Principal) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&fingerprint) {
            entries.clear();
        }
        entries.insert(fingerprint, Entry { epoch, not_after, principal });
    }
}
