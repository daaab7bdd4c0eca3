//! `SshPool`: a bounded set of authenticated sessions, keyed by target, so fleet scans and repeated
//! probes reuse connections instead of paying a key exchange every time.
//!
//! The bounds count *live* sessions — checked out or idle — because every one holds a TCP connection
//! and an sshd process on the remote host: at most `max_sessions` overall and `max_per_host` per host.
//! When a bound is reached, the oldest idle session of another target is closed to make room (one on
//! the same host if the per-host bound is the one reached); when nothing can be evicted, a checkout waits (up to `acquire_timeout`) for a session to come back.
//! An idle session is reused only if it is still connected, younger than `idle_timeout`, and its host
//! key still satisfies the caller's [`HostKeyPolicy`].

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::SshError;
use super::hostkey::HostKeyPolicy;
use super::probe::{ProbeReport, probe};
use super::session::{Session, SshClientConfig};
use super::target::SshTarget;

/// Limits of an [`SshPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Live sessions overall (checked out + idle).
    pub max_sessions: usize,
    /// Live sessions per host name. sshd's `MaxStartups` and per-user limits make more than a few
    /// parallel connections to one host counterproductive.
    pub max_per_host: usize,
    /// Idle sessions older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// How long a checkout waits for room before failing with [`SshError::PoolExhausted`].
    pub acquire_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_sessions: 64,
            max_per_host: 2,
            idle_timeout: Duration::from_secs(120),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters describing the pool, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Live sessions (checked out + idle + being connected).
    pub live: usize,
    /// Idle sessions.
    pub idle: usize,
    /// Connections opened since the pool was created.
    pub connects: u64,
    /// Checkouts served by an idle session.
    pub reuses: u64,
}

struct IdleSession {
    session: Session,
    since: Instant,
}

#[derive(Default)]
struct PoolState {
    idle: HashMap<SshTarget, Vec<IdleSession>>,
    live_total: usize,
    live_per_host: HashMap<String, usize>,
    connects: u64,
    reuses: u64,
}

/// Per-host accounting key: the host name, case-insensitively (ports and users share the machine).
fn host_key(target: &SshTarget) -> String {
    target.host.to_ascii_lowercase()
}

impl PoolState {
    fn per_host(&self, target: &SshTarget) -> usize {
        self.live_per_host.get(&host_key(target)).copied().unwrap_or(0)
    }

    fn reserve(&mut self, target: &SshTarget) {
        self.live_total = self.live_total.saturating_add(1);
        let n = self.live_per_host.entry(host_key(target)).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn release(&mut self, target: &SshTarget) {
        self.live_total = self.live_total.saturating_sub(1);
        let key = host_key(target);
        if let Some(n) = self.live_per_host.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live_per_host.remove(&key);
            }
        }
    }

    fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Removes idle sessions that are closed or too old; returns them for dropping outside the lock.
    fn prune(&mut self, now: Instant, idle_timeout: Duration) -> Vec<Session> {
        let mut dead = Vec::new();
        let mut released = Vec::new();
        for (target, list) in self.idle.iter_mut() {
            let mut keep = Vec::with_capacity(list.len());
            for idle in list.drain(..) {
                if idle.session.is_closed() || now.duration_since(idle.since) > idle_timeout {
                    released.push(target.clone());
                    dead.push(idle.session);
                } else {
                    keep.push(idle);
                }
            }
            *list = keep;
        }
        for target in &released {
            self.release(target);
        }
        self.idle.retain(|_, list| !list.is_empty());
        dead
    }

    /// Takes the oldest idle session of another target that `eligible` accepts, freeing its slot.
    fn evict_idle(&mut self, target: &SshTarget, eligible: impl Fn(&SshTarget) -> bool) -> Option<Session> {
        let victim = self
            .idle
            .iter()
            .filter(|(t, list)| *t != target && eligible(t) && !list.is_empty())
            .min_by_key(|(_, list)| list.first().map(|i| i.since))
            .map(|(t, _)| t.clone())?;
        let list = self.idle.get_mut(&victim)?;
        let session = if list.is_empty() { None } else { Some(list.remove(0).session) }?;
        if list.is_empty() {
            self.idle.remove(&victim);
        }
        self.release(&victim);
        Some(session)
    }
}

struct PoolInner {
    config: SshClientConfig,
    limits: PoolLimits,
    state: Mutex<PoolState>,
    /// Woken whenever a slot may have become free (session returned, released or evicted).
    returned: Notify,
}

impl PoolInner {
    fn release(&self, target: &SshTarget) {
        self.state.lock().release(target);
        self.returned.notify_waiters();
    }
}

/// A live-session slot reserved before connecting; released on drop unless handed to a session, so a
/// cancelled or failed connect never leaks capacity.
struct Reservation {
    pool: Arc<PoolInner>,
    target: SshTarget,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(&self.target);
        }
    }
}

/// A bounded pool of authenticated SSH sessions. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SshPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for SshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPool").field("limits", &self.inner.limits).field("stats", &self.stats()).finish()
    }
}

enum Step {
    Reuse(Box<Session>),
    Connect(Reservation),
    Wait,
}

impl SshPool {
    /// Creates a pool; limits of zero are refused.
    pub fn new(config: SshClientConfig, limits: PoolLimits) -> Result<SshPool, SshError> {
        if limits.max_sessions == 0 || limits.max_per_host == 0 {
            return Err(SshError::InvalidConfig {
                reason: format!(
                    "pool limits must be at least 1 (max_sessions {}, max_per_host {})",
                    limits.max_sessions, limits.max_per_host
                ),
            });
        }
        Ok(SshPool {
            inner: Arc::new(PoolInner {
                config,
                limits,
                state: Mutex::new(PoolState::default()),
                returned: Notify::new(),
            }),
        })
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state.lock();
        PoolStats { live: st.live_total, idle: st.idle_count(), connects: st.connects, reuses: st.reuses }
    }

    /// The client configuration sessions are opened with.
    pub fn config(&self) -> &SshClientConfig {
        &self.inner.config
    }

    /// Checks out a session for `target`: an idle one if possible, else a new connection, else waits
    /// for room up to `acquire_timeout`.
    pub async fn get(&self, target: &SshTarget, policy: &HostKeyPolicy) -> Result<PooledSession, SshError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.limits.acquire_timeout;
        // Each round either returns, or waits for a notification; the deadline bounds the rounds.
        loop {
            let notified = inner.returned.notified();
            tokio::pin!(notified);
            // Register before inspecting the state so a return between the check and the wait
            // is not missed.
            notified.as_mut().enable();

            let (step, dead) = {
                let mut st = inner.state.lock();
                let dead = st.prune(Instant::now(), inner.limits.idle_timeout);
                let step = if let Some(idle) = st.idle.get_mut(target).and_then(Vec::pop) {
                    Step::Reuse(Box::new(idle.session))
                } else {
                    let host_full = st.per_host(target) >= inner.limits.max_per_host;
                    let total_full = st.live_total >= inner.limits.max_sessions;
                    let own_host = host_key(target);
                    // Make room by closing an idle session of another target: one on the same
                    // host if the per-host bound is hit (that frees both bounds), any otherwise.
                    let room = if !host_full && !total_full {
                        true
                    } else if host_full {
                        st.evict_idle(target, |t| host_key(t) == own_host).is_some()
                    } else {
                        st.evict_idle(target, |_| true).is_some()
                    };
                    if room {
                        st.reserve(target);
                        Step::Connect(self.reservation(target))
                    } else {
                        Step::Wait
                    }
                };
                st.idle.retain(|_, list| !list.is_empty());
                (step, dead)
            };
            if !dead.is_empty() {
                drop(dead);
                inner.returned.notify_waiters();
            }

            match step {
                Step::Reuse(session) => {
                    // Checked outside the lock: the policy may read a known_hosts file.
                    if !session.is_closed() && session.satisfies(policy) {
                        inner.state.lock().reuses += 1;
                        return Ok(self.pooled(*session));
                    }
                    drop(session);
                    inner.release(target);
                }
                Step::Connect(mut reservation) => {
                    let session = Session::connect(target, policy, &inner.config).await?;
                    reservation.armed = false;
                    inner.state.lock().connects += 1;
                    return Ok(self.pooled(session));
                }
                Step::Wait => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(SshError::PoolExhausted { target: target.clone(), waited: started.elapsed() });
                    }
                }
            }
        }
    }

    fn reservation(&self, target: &SshTarget) -> Reservation {
        Reservation { pool: Arc::clone(&self.inner), target: target.clone(), armed: true }
    }

    fn pooled(&self, session: Session) -> PooledSession {
        PooledSession { session: Some(session), pool: Arc::clone(&self.inner) }
    }

    /// Checks out a session for `target` and probes it (see [`probe`]). A session whose connection
    /// was lost is not returned to the pool.
    pub async fn probe(&self, target: &SshTarget, policy: &HostKeyPolicy) -> Result<ProbeReport, SshError> {
        let session = self.get(target, policy).await?;
        let result = probe(&session).await;
        if matches!(result, Err(SshError::ConnectionLost { .. } | SshError::CommandTimeout { .. })) {
            session.discard();
        }
        result
    }

    /// Probes many hosts with at most `concurrency` probes in flight (0 is treated as 1). Results are
    /// in input order, one per target; one host's failure never affects the others.
    pub async fn probe_many<I>(&self, targets: I, concurrency: usize) -> Vec<(SshTarget, Result<ProbeReport, SshError>)>
    where
        I: IntoIterator<Item = (SshTarget, HostKeyPolicy)>,
    {
        futures_util::stream::iter(targets)
            .map(|(target, policy)| async move {
                let result = self.probe(&target, &policy).await;
                (target, result)
            })
            .buffered(concurrency.max(1))
            .collect()
            .await
    }

    /// Closes every idle session now.
    pub fn clear_idle(&self) {
        let dead: Vec<Session> = {
            let mut st = self.inner.state.lock();
            let drained: Vec<(SshTarget, Vec<IdleSession>)> = st.idle.drain().collect();
            let mut dead = Vec::new();
            for (target, list) in drained {
                for idle in list {
                    st.release(&target);
                    dead.push(idle.session);
                }
            }
            dead
        };
        drop(dead);
        self.inner.returned.notify_waiters();
    }
}

/// A session checked out of an [`SshPool`]; returns to the pool when dropped (unless its connection
/// is gone, or [`PooledSession::discard`] is called).
pub struct PooledSession {
    session: Option<Session>,
    pool: Arc<PoolInner>,
}

impl std::fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PooledSession").field(&self.session).finish()
    }
}

impl PooledSession {
    /// Closes the session instead of returning it to the pool (e.g. after a timeout left a command
    /// possibly running on it).
    pub fn discard(mut self) {
        if let Some(session) = self.session.take() {
            let target = session.target().clone();
            drop(session);
            self.pool.release(&target);
        }
    }
}

impl Deref for PooledSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        // Invariant: `session` is only taken by `discard` (which consumes self) and `drop`.
        match &self.session {
            Some(session) => session,
            None => unreachable!("PooledSession used after its session was taken"),
        }
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let target = session.target().clone();
        if session.is_closed() {
            drop(session);
            self.pool.release(&target);
            return;
        }
        self.pool.state.lock().idle.entry(target).or_default().push(IdleSession { session, since: Instant::now() });
        self.pool.returned.notify_waiters();
    }
}
