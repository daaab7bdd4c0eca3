//! The [`Projector`]: keeps the four read models up to date with the log, persists them, and answers reads.
//!
//! ## Persistence
//!
//! Each projection has one checkpoint file, `<store dir>/projections/<name>.ckpt` (replaced atomically; see
//! [`crate::checkpoint_file`] for why it is not a sled value):
//!
//! ```text
//! 0x01 (format) ‖ version (u32 LE) ‖ seq (u64 LE) ‖ chain hash at seq (32 bytes) ‖ bincode(state)
//! ```
//!
//! State and seq are one value, so they are written atomically together. A checkpoint is written every
//! [`ProjectorOptions::persist_every`] events of that projection and on demand ([`Projector::persist`]); on open
//! the projector loads it and catches up from its seq, not from 0. The checkpoint is discarded (and the
//! projection rebuilt from the log) when its version differs from the code's [`Projection::version`], when it
//! does not decode, or when its seq/hash is not in this log (a restored or replaced data directory).
//!
//! ## Keeping up
//!
//! [`Projector::catch_up`] applies everything the store has beyond each projection's seq;
//! [`Projector::follow`] catches up, then applies the ledger's live tail as it is published (re-reading the
//! store after a lag or a gap) until told to stop. Every event is applied to a projection exactly once, in
//! order: an event at or below a projection's seq is skipped, one beyond `seq + 1` is never applied (the store
//! is read instead). Readers wait for a seq with [`Projector::wait_for`].
//!
//! ## Time travel
//!
//! [`as_of`] computes all four projections at an earlier seq or time from the log, in fresh memory: the live
//! read models and their checkpoints are not touched.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hwledger_engine::Ledger;
use hwledger_engine::chain::Hash;
use hwledger_engine::event::{EventRecord, UnixMillis};
use hwledger_engine::ledger::CommittedEvent;
use hwledger_engine::replay::{ReadError, for_each_event, read_events};
use hwledger_engine::store::{Store, StoreError, parse_block};
use parking_lot::{Condvar, MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::checkpoint_file::CheckpointFile;
use crate::cost::{Cost, CostReport, GroupBy, JobView};
use crate::dashboard::{Dashboard, DashboardView};
use crate::projection::{Digest, Projection};
use crate::registry::{DeviceView, Registry};
use crate::snapshots::{DeviceTelemetry, Snapshots};

/// Checkpoint value format version.
const STATE_FORMAT_V1: u8 = 1;
/// Bytes before the state in a checkpoint value: format, version, seq, hash.
const HEADER_LEN: usize = 1 + 4 + 8 + 32;
/// Events applied per write-lock acquisition during catch-up: large enough to amortise the lock, small enough
/// that readers are never held up for more than a few milliseconds.
const CHUNK: usize = 4096;
/// How often a follower blocked on the live tail checks its shutdown flag.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
/// Longest pause of a follower between retries of a log read that failed (e.g. while the store is reopened
/// after a full disk).
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(1);

/// The four read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionName {
    /// [`Registry`].
    Registry,
    /// [`Snapshots`].
    Snapshots,
    /// [`Cost`].
    Cost,
    /// [`Dashboard`].
    Dashboard,
}

impl ProjectionName {
    /// All of them, in slot order.
    pub const ALL: [ProjectionName; 4] =
        [ProjectionName::Registry, ProjectionName::Snapshots, ProjectionName::Cost, ProjectionName::Dashboard];

    /// The name (`registry`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionName::Registry => "registry",
            ProjectionName::Snapshots => "snapshots",
            ProjectionName::Cost => "cost",
            ProjectionName::Dashboard => "dashboard",
        }
    }

    /// Parses a name as printed by [`ProjectionName::as_str`].
    pub fn parse(name: &str) -> Option<ProjectionName> {
        ProjectionName::ALL.into_iter().find(|p| p.as_str() == name)
    }

    fn slot(self) -> usize {
        match self {
            ProjectionName::Registry => 0,
            ProjectionName::Snapshots => 1,
            ProjectionName::Cost => 2,
            ProjectionName::Dashboard => 3,
        }
    }
}

impl std::fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tunables of a projector.
#[derive(Debug, Clone)]
pub struct ProjectorOptions {
    /// A projection's checkpoint is written every this many events it applies (bounds the catch-up at open).
    pub persist_every: u64,
}

impl Default for ProjectorOptions {
    fn default() -> ProjectorOptions {
        ProjectorOptions { persist_every: 100_000 }
    }
}

/// Why the projector failed. Persisted projection states are caches: an unreadable one is rebuilt, never an
/// error; what fails is reading the log or writing to the database.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Opening a tree or reading the store failed.
    #[error("projection storage: {0}")]
    Store(#[from] StoreError),
    /// Writing or reading a projection's checkpoint file failed.
    #[error("{op} the {projection} checkpoint {path}: {source}")]
    Persist {
        /// What was being done.
        op: &'static str,
        /// Which projection.
        projection: ProjectionName,
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the log failed (framing, decoding or a gap in the log).
    #[error("reading the log for projections: {0}")]
    Read(#[from] ReadError),
}

/// `wait_for` gave up before the projections reached the seq.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read models are at seq {applied}, not yet {wanted}, after waiting {waited:?}")]
pub struct WaitTimeout {
    /// The seq waited for.
    pub wanted: u64,
    /// The seq every projection had applied when the wait ended.
    pub applied: u64,
    /// How long it waited.
    pub waited: Duration,
}

/// The four read models at one point of the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projections {
    /// Devices.
    pub registry: Registry,
    /// GPU telemetry.
    pub snapshots: Snapshots,
    /// Jobs and cost.
    pub cost: Cost,
    /// Dashboard state.
    pub dashboard: Dashboard,
}

impl Projections {
    /// One projection, as the trait.
    pub fn get(&self, name: ProjectionName) -> &dyn Projection {
        match name {
            ProjectionName::Registry => &self.registry,
            ProjectionName::Snapshots => &self.snapshots,
            ProjectionName::Cost => &self.cost,
            ProjectionName::Dashboard => &self.dashboard,
        }
    }

    fn get_mut(&mut self, slot: usize) -> &mut dyn Projection {
        match slot {
            0 => &mut self.registry,
            1 => &mut self.snapshots,
            2 => &mut self.cost,
            _ => &mut self.dashboard,
        }
    }

    /// The digest of every projection, in [`ProjectionName::ALL`] order.
    pub fn digests(&self) -> [(ProjectionName, Digest); 4] {
        ProjectionName::ALL.map(|n| (n, self.get(n).digest()))
    }

    /// Applies one event to all four.
    pub fn apply(&mut self, record: &EventRecord) {
        self.registry.apply(record);
        self.snapshots.apply(record);
        self.cost.apply(record);
        self.dashboard.apply(record);
    }

    /// The dashboard composed from all four (see [`crate::dashboard::view`]).
    pub fn dashboard_view(&self, seq: u64, now: UnixMillis, heartbeat: Duration) -> DashboardView {
        crate::dashboard::view(&self.registry, &self.snapshots, &self.cost, &self.dashboard, seq, now, heartbeat)
    }
}

/// Events handed to the snapshots thread of [`replay_into`] at a time.
const REPLAY_BATCH: usize = 512;

/// Replays the log's events `[from, to]` into the `targets` of `p`, in order, and returns the seq and hash of
/// the last one (or `None` if there was none).
///
/// Snapshots costs as much per event as the other three projections together, so when it is replayed with
/// others and the machine has a second core, it runs on a thread of its own: this thread reads, decodes and
/// applies the rest, handing each decoded batch to that thread as well. Each projection still sees every
/// event once and in seq order, so the result is the one a single thread computes.
fn replay_into(
    store: &Store,
    from: u64,
    to: u64,
    p: &mut Projections,
    targets: &[ProjectionName],
) -> Result<Option<(u64, Hash)>, ReadError> {
    let mut last = None;
    let with_snapshots = targets.contains(&ProjectionName::Snapshots);
    let others: Vec<ProjectionName> = targets.iter().copied().filter(|n| *n != ProjectionName::Snapshots).collect();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if !with_snapshots || others.is_empty() || cores < 2 || from > to {
        for_each_event(store, from, to, |e| {
            for n in targets {
                p.get_mut(n.slot()).apply(&e.record);
            }
            last = Some((e.seq, e.hash));
            Ok(())
        })?;
        return Ok(last);
    }
    let Projections { registry, snapshots, cost, dashboard } = p;
    let mut rest: Vec<&mut dyn Projection> = [
        (ProjectionName::Registry, registry as &mut dyn Projection),
        (ProjectionName::Cost, cost as &mut dyn Projection),
        (ProjectionName::Dashboard, dashboard as &mut dyn Projection),
    ]
    .into_iter()
    .filter(|(n, _)| others.contains(n))
    .map(|(_, q)| q)
    .collect();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<EventRecord>>>(8);
        let worker = std::thread::Builder::new()
            .name("replay-snapshots".into())
            .spawn_scoped(scope, move || {
                for batch in rx {
                    for record in batch.iter() {
                        snapshots.apply(record);
                    }
                }
            })
            .map_err(|source| {
                ReadError::Store(StoreError::Io {
                    op: "starting the replay thread for",
                    path: store.dir().to_owned(),
                    source,
                })
            })?;
        let mut batch: Vec<EventRecord> = Vec::with_capacity(REPLAY_BATCH);
        let hand_over = |batch: &mut Vec<EventRecord>, rest: &mut Vec<&mut dyn Projection>| -> bool {
            let full = Arc::new(std::mem::replace(batch, Vec::with_capacity(REPLAY_BATCH)));
            // Hand over first, so both threads work on the batch at once.
            let sent = tx.send(full.clone()).is_ok();
            for record in full.iter() {
                for q in rest.iter_mut() {
                    q.apply(record);
                }
            }
            sent
        };
        let mut worker_gone = false;
        let read = for_each_event(store, from, to, |e| {
            last = Some((e.seq, e.hash));
            batch.push(e.record);
            if batch.len() >= REPLAY_BATCH && !hand_over(&mut batch, &mut rest) {
                worker_gone = true;
                // The snapshots thread ended early (it panicked): stop reading; the join below reports it.
                return Err(ReadError::Gap { expected: 0, found: 0 });
            }
            Ok(())
        });
        if !worker_gone && !batch.is_empty() {
            hand_over(&mut batch, &mut rest);
        }
        drop(tx);
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
        read.map(|_| last)
    })
}

/// Where one projection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    /// Last applied seq (0: nothing).
    seq: u64,
    /// Chain hash of the event at `seq`.
    hash: Hash,
    /// Seq of the last checkpoint written (or loaded).
    persisted_seq: u64,
    /// Seq the projection was loaded at when the projector opened or it was rebuilt.
    loaded_seq: u64,
    /// Why the checkpoint was not used, if it was not.
    rebuilt: Option<String>,
    /// After a checkpoint write failed (a full disk), the next attempt waits until this seq, so a failing
    /// disk costs an occasional retry instead of encoding the state on every event.
    retry_persist_at: u64,
}

/// Status of one projection, for `hwledger projections status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// Which.
    pub name: ProjectionName,
    /// Code version.
    pub version: u32,
    /// Last applied seq.
    pub applied_seq: u64,
    /// Seq of the last checkpoint written or loaded.
    pub persisted_seq: u64,
    /// Seq it resumed from at open (or 0 after a rebuild).
    pub loaded_seq: u64,
    /// Why it was rebuilt from the log instead of resuming, if it was.
    pub rebuilt: Option<String>,
    /// BLAKE3 of its canonical state, hex.
    pub digest: String,
}

struct Live {
    projections: Projections,
    slots: [Slot; 4],
}

/// An event beyond `seq + 1` of some projection: the caller must read the store instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap;

impl Live {
    fn min_seq(&self) -> u64 {
        self.slots.iter().map(|s| s.seq).min().unwrap_or(0)
    }

    /// Applies one event to every projection that needs it, checkpointing those that are due.
    fn apply(
        &mut self,
        seq: u64,
        hash: &Hash,
        record: &EventRecord,
        files: &[CheckpointFile; 4],
        persist_every: u64,
    ) -> Result<(), Gap> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if seq <= slot.seq {
                continue;
            }
            if seq != slot.seq + 1 {
                return Err(Gap);
            }
            let p = self.projections.get_mut(i);
            p.apply(record);
            slot.seq = seq;
            slot.hash = *hash;
            if slot.seq - slot.persisted_seq >= persist_every && slot.seq >= slot.retry_persist_at {
                // A checkpoint is a cache: failing to write one must not stop the read model from following.
                if let Err(e) = persist_slot(&files[i], ProjectionName::ALL[i], p, slot) {
                    slot.retry_persist_at = slot.seq + (persist_every / 8).max(1);
                    tracing::warn!(projection = %ProjectionName::ALL[i], seq, "{e}; retrying later");
                }
            }
        }
        Ok(())
    }
}

fn persist_slot(
    file: &CheckpointFile,
    name: ProjectionName,
    p: &dyn Projection,
    slot: &mut Slot,
) -> Result<(), ProjectionError> {
    let state = p.encode();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(STATE_FORMAT_V1);
    header.extend_from_slice(&p.version().to_le_bytes());
    header.extend_from_slice(&slot.seq.to_le_bytes());
    header.extend_from_slice(&slot.hash);
    // One file holds header and state, replaced atomically and durably, so a killed process resumes from here
    // and state and seq never disagree.
    file.write(&[&header, &state]).map_err(|source| persist_error("writing", name, file, source))?;
    slot.persisted_seq = slot.seq;
    slot.retry_persist_at = 0;
    // Operators see checkpoints with HWLEDGER_LOG=debug; the catch-up kill test parses this line.
    tracing::debug!(projection = %name, seq = slot.seq, "projection checkpoint written");
    Ok(())
}

fn persist_error(
    op: &'static str,
    projection: ProjectionName,
    file: &CheckpointFile,
    source: std::io::Error,
) -> ProjectionError {
    ProjectionError::Persist { op, projection, path: file.path().to_path_buf(), source }
}

/// A checkpoint value's header.
struct Header {
    version: u32,
    seq: u64,
    hash: Hash,
}

fn parse_header(value: &[u8]) -> Result<(Header, &[u8]), String> {
    if value.len() < HEADER_LEN {
        return Err(format!("checkpoint is {} bytes, shorter than its {HEADER_LEN}-byte header", value.len()));
    }
    let (head, state) = value.split_at(HEADER_LEN);
    match head.first() {
        Some(&STATE_FORMAT_V1) => {}
        other => return Err(format!("unknown checkpoint format {other:?}")),
    }
    let version = head.get(1..5).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let seq = head.get(5..13).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let hash = head.get(13..45).and_then(|b| b.try_into().ok());
    match (version, seq, hash) {
        (Some(version), Some(seq), Some(hash)) => Ok((Header { version, seq, hash }, state)),
        _ => Err("checkpoint header is malformed".to_owned()),
    }
}

/// The last seq in the store (0 for an empty log).
pub fn log_head(store: &Store) -> Result<u64, ProjectionError> {
    match store.last_block()? {
        None => Ok(0),
        Some((first, bytes)) => {
            let events = parse_block(&bytes).map_err(|detail| ReadError::Framing { seq: first, detail })?;
            Ok((first + events.len() as u64).saturating_sub(1))
        }
    }
}

/// Loads a projection from its checkpoint, or starts it fresh (saying why).
fn load<P: Projection + Default>(
    file: &CheckpointFile,
    store: &Store,
    head: u64,
    name: ProjectionName,
) -> Result<(P, Slot), ProjectionError> {
    let fresh = |why: String| {
        tracing::info!(projection = %name, "rebuilding from the log: {why}");
        (
            P::default(),
            Slot { seq: 0, hash: [0; 32], persisted_seq: 0, loaded_seq: 0, rebuilt: Some(why), retry_persist_at: 0 },
        )
    };
    let value = match file.read().map_err(|source| persist_error("reading", name, file, source))? {
        None => return Ok(fresh("no checkpoint".to_owned())),
        Some(v) => v,
    };
    let (header, state) = match parse_header(&value) {
        Ok(h) => h,
        Err(why) => return Ok(fresh(why)),
    };
    let code_version = P::default().version();
    if header.version != code_version {
        return Ok(fresh(format!("version changed from {} to {code_version}", header.version)));
    }
    if header.seq > head {
        return Ok(fresh(format!("checkpoint at seq {} is beyond the log's end at {head}", header.seq)));
    }
    if header.seq > 0 {
        let at = read_events(store, header.seq, header.seq)?;
        if at.first().map(|e| e.hash) != Some(header.hash) {
            return Ok(fresh(format!("checkpoint at seq {} does not match this log's chain hash", header.seq)));
        }
    }
    match P::decode(state) {
        Ok(p) => Ok((
            p,
            Slot {
                seq: header.seq,
                hash: header.hash,
                persisted_seq: header.seq,
                loaded_seq: header.seq,
                rebuilt: None,
                retry_persist_at: 0,
            },
        )),
        Err(e) => Ok(fresh(format!("checkpoint unreadable: {e}"))),
    }
}

/// Which point of the log to compute projections at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After the event with this seq (clamped to the log's end).
    Seq(u64),
    /// After every event with `recorded_at` ≤ this time (the log's recorded times never decrease).
    Time(UnixMillis),
}

/// Projections computed at an earlier point of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct PastProjections {
    /// The last seq included (0: none).
    pub seq: u64,
    /// The four read models at that seq.
    pub projections: Projections,
}

/// The greatest seq whose event was recorded at or before `t` (0 if none). Binary search: `recorded_at` never
/// decreases along the log.
fn seq_at_time(store: &Store, head: u64, t: UnixMillis) -> Result<u64, ProjectionError> {
    let (mut lo, mut hi) = (0u64, head);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let recorded_at = read_events(store, mid, mid)?
            .first()
            .map(|e| e.record.recorded_at)
            .ok_or(ReadError::Gap { expected: mid, found: 0 })?;
        if recorded_at <= t {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// Computes all four projections as of an earlier point, replaying the log into fresh memory. Live read models
/// and their checkpoints are not touched.
pub fn as_of(store: &Store, at: AsOf) -> Result<PastProjections, ProjectionError> {
    let head = log_head(store)?;
    let seq = match at {
        AsOf::Seq(s) => s.min(head),
        AsOf::Time(t) => seq_at_time(store, head, t)?,
    };
    let mut projections = Projections::default();
    if seq > 0 {
        replay_into(store, 1, seq, &mut projections, &ProjectionName::ALL)?;
    }
    Ok(PastProjections { seq, projections })
}

/// Wakes a thread blocked in [`Projector::follow`] when the live tail has something.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The read models, kept up to date with the log.
pub struct Projector {
    live: RwLock<Live>,
    /// Lowest seq applied by every projection; `wait_for` sleeps on `applied_changed`.
    applied: Mutex<u64>,
    applied_changed: Condvar,
    files: [CheckpointFile; 4],
    options: ProjectorOptions,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector").field("applied_seq", &self.applied_seq()).finish()
    }
}

impl Projector {
    /// Opens the projections stored beside the log in `store`, rebuilding any whose checkpoint is unusable, and
    /// catches them up to the end of the log.
    pub fn open(store: &Store, options: ProjectorOptions) -> Result<Projector, ProjectionError> {
        let head = log_head(store)?;
        let file = |n: ProjectionName| {
            CheckpointFile::open(store.dir(), n.as_str()).map_err(|source| ProjectionError::Persist {
                op: "opening",
                projection: n,
                path: store.dir().join("projections"),
                source,
            })
        };
        // Earlier builds kept checkpoints in sled trees `projection.<name>`: free that space (they are only
        // caches; the projections are rebuilt from the log once).
        for n in ProjectionName::ALL {
            store.drop_tree(&format!("projection.{}", n.as_str()))?;
        }
        let files = [
            file(ProjectionName::Registry)?,
            file(ProjectionName::Snapshots)?,
            file(ProjectionName::Cost)?,
            file(ProjectionName::Dashboard)?,
        ];
        let (registry, s0) = load::<Registry>(&files[0], store, head, ProjectionName::Registry)?;
        let (snapshots, s1) = load::<Snapshots>(&files[1], store, head, ProjectionName::Snapshots)?;
        let (cost, s2) = load::<Cost>(&files[2], store, head, ProjectionName::Cost)?;
        let (dashboard, s3) = load::<Dashboard>(&files[3], store, head, ProjectionName::Dashboard)?;
        let live = Live { projections: Projections { registry, snapshots, cost, dashboard }, slots: [s0, s1, s2, s3] };
        let applied = live.min_seq();
        let projector = Projector {
            live: RwLock::new(live),
            applied: Mutex::new(applied),
            applied_changed: Condvar::new(),
            files,
            options: ProjectorOptions { persist_every: options.persist_every.max(1) },
        };
        projector.catch_up(store)?;
        Ok(projector)
    }

    fn publish_applied(&self, seq: u64) {
        let mut applied = self.applied.lock();
        if *applied != seq {
            *applied = seq;
            self.applied_changed.notify_all();
        }
    }

    /// Applies a run of events under one write lock. `Err(Gap)` if one was beyond some projection's next seq.
    fn apply_run<'a>(&self, events: impl Iterator<Item = (u64, &'a Hash, &'a EventRecord)>) -> Result<(), Gap> {
        let mut live = self.live.write();
        let mut outcome = Ok(());
        for (seq, hash, record) in events {
            outcome = live.apply(seq, hash, record, &self.files, self.options.persist_every);
            if outcome.is_err() {
                break;
            }
        }
        // Published under the lock: two appliers racing must not publish their seqs out of order.
        self.publish_applied(live.min_seq());
        drop(live);
        outcome
    }

    /// Applies every event the store has beyond each projection's seq. Returns the seq all have applied.
    /// With a live ledger writing to the store, use [`Projector::catch_up_to`] with its durable head instead:
    /// the store may briefly hold a group whose commit has not (yet, or ever) completed.
    pub fn catch_up(&self, store: &Store) -> Result<u64, ProjectionError> {
        self.catch_up_to(store, u64::MAX)
    }

    /// [`Projector::catch_up`], applying no event beyond seq `until`.
    pub fn catch_up_to(&self, store: &Store, until: u64) -> Result<u64, ProjectionError> {
        let from = self.live.read().min_seq() + 1;
        let mut chunk: Vec<(u64, Hash, EventRecord)> = Vec::with_capacity(CHUNK);
        let mut failure: Option<ProjectionError> = None;
        let flush = |chunk: &mut Vec<(u64, Hash, EventRecord)>| -> Result<(), ProjectionError> {
            let run = self.apply_run(chunk.iter().map(|(s, h, r)| (*s, h, r)));
            chunk.clear();
            // Events from the store are contiguous from the lowest seq: a gap here means the log has one.
            match run {
                Ok(()) => Ok(()),
                Err(Gap) => Err(ReadError::Gap { expected: self.applied_seq() + 1, found: 0 }.into()),
            }
        };
        let read = for_each_event(store, from, until, |e| {
            chunk.push((e.seq, e.hash, e.record));
            if chunk.len() >= CHUNK {
                if let Err(err) = flush(&mut chunk) {
                    failure = Some(err);
                    // Stop the read: the error itself is reported from `failure` below.
                    return Err(ReadError::Gap { expected: 0, found: 0 });
                }
            }
            Ok(())
        });
        if let Some(err) = failure {
            return Err(err);
        }
        read?;
        flush(&mut chunk)?;
        Ok(self.applied_seq())
    }

    /// Applies a batch from the live tail. `Err(Gap)` if it does not follow on from what was applied.
    fn apply_committed(&self, batch: &[CommittedEvent]) -> Result<(), Gap> {
        self.apply_run(batch.iter().map(|c| (c.seq, &c.hash, &c.record)))
    }

    /// Catches up, then applies the ledger's live tail as it is published, until `shutdown` is set (checked at
    /// least every 50 ms). Run it on a thread of its own. After a lag or a gap it re-reads the store, so no event
    /// is missed; it never applies an event beyond the ledger's durable head. A failed read of the log (the
    /// store is being reopened after a full disk, say) is retried with a growing pause (at most 1 s) instead of
    /// ending the follower. It does not write a final checkpoint: call [`Projector::persist`] after it returns.
    pub fn follow(&self, ledger: &Ledger, shutdown: &AtomicBool) -> Result<(), ProjectionError> {
        let mut rx = ledger.subscribe();
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut behind = true;
        let mut retry = FOLLOW_POLL;
        while !shutdown.load(Ordering::Acquire) {
            if behind {
                match self.catch_up_to(ledger.store(), ledger.head().seq) {
                    Ok(_) => {
                        behind = false;
                        retry = FOLLOW_POLL;
                    }
                    Err(e) => {
                        tracing::warn!("projections: reading the log failed ({e}); retrying in {retry:?}");
                        std::thread::park_timeout(retry);
                        retry = (retry * 2).min(FOLLOW_RETRY_MAX);
                        continue;
                    }
                }
            }
            let next = {
                let mut recv = std::pin::pin!(rx.recv());
                loop {
                    match recv.as_mut().poll(&mut cx) {
                        Poll::Ready(r) => break Some(r),
                        Poll::Pending => {
                            if shutdown.load(Ordering::Acquire) {
                                break None;
                            }
                            std::thread::park_timeout(FOLLOW_POLL);
                        }
                    }
                }
            };
            match next {
                None | Some(Err(RecvError::Closed)) => break,
                Some(Err(RecvError::Lagged(missed))) => {
                    tracing::debug!(missed, "projections fell behind the live tail; reading the store");
                    behind = true;
                }
                Some(Ok(batch)) => {
                    if self.apply_committed(&batch).is_err() {
                        behind = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes every projection's checkpoint now and flushes it to disk.
    pub fn persist(&self) -> Result<(), ProjectionError> {
        let mut live = self.live.write();
        let Live { projections, slots } = &mut *live;
        for (i, slot) in slots.iter_mut().enumerate() {
            // Nothing new since the last checkpoint (a read-only CLI run): rewriting it would only cost I/O.
            if slot.persisted_seq == slot.seq {
                continue;
            }
            persist_slot(&self.files[i], ProjectionName::ALL[i], projections.get_mut(i), slot)?;
        }
        Ok(())
    }

    /// Drops one projection (or all, for `None`) — its checkpoint and state — rebuilds it from the log, and
    /// catches everything up. Reads keep being served from the old state until the rebuilt one is swapped in.
    pub fn rebuild(&self, store: &Store, which: Option<ProjectionName>) -> Result<u64, ProjectionError> {
        let targets: Vec<ProjectionName> = match which {
            Some(n) => vec![n],
            None => ProjectionName::ALL.to_vec(),
        };
        // Replay into fresh memory, outside the lock.
        let mut fresh = Projections::default();
        let at: (u64, Hash) = replay_into(store, 1, u64::MAX, &mut fresh, &targets)?.unwrap_or((0, [0; 32]));
        {
            let mut live = self.live.write();
            for n in &targets {
                let i = n.slot();
                // The live projection may have moved past the replayed end meanwhile: bring the fresh one to the
                // same seq, so the swap never takes a reader's view (or `applied_seq`) backwards.
                let (live_seq, live_hash) = (live.slots[i].seq, live.slots[i].hash);
                let mut seq_hash = at;
                if live_seq > at.0 {
                    let p = fresh.get_mut(i);
                    for_each_event(store, at.0 + 1, live_seq, |e| {
                        p.apply(&e.record);
                        Ok(())
                    })?;
                    seq_hash = (live_seq, live_hash);
                }
                self.files[i].clear().map_err(|source| persist_error("removing", *n, &self.files[i], source))?;
                let Live { projections, slots } = &mut *live;
                match n {
                    ProjectionName::Registry => std::mem::swap(&mut projections.registry, &mut fresh.registry),
                    ProjectionName::Snapshots => std::mem::swap(&mut projections.snapshots, &mut fresh.snapshots),
                    ProjectionName::Cost => std::mem::swap(&mut projections.cost, &mut fresh.cost),
                    ProjectionName::Dashboard => std::mem::swap(&mut projections.dashboard, &mut fresh.dashboard),
                }
                let slot = &mut slots[i];
                *slot = Slot {
                    seq: seq_hash.0,
                    hash: seq_hash.1,
                    persisted_seq: 0,
                    loaded_seq: 0,
                    rebuilt: Some("on command".into()),
                    retry_persist_at: 0,
                };
                persist_slot(&self.files[i], *n, projections.get_mut(i), slot)?;
            }
            self.publish_applied(live.min_seq());
        }
        self.catch_up(store)
    }

    /// The seq every projection has applied.
    pub fn applied_seq(&self) -> u64 {
        *self.applied.lock()
    }

    /// Waits until every projection has applied `seq` (read-your-writes), at most `timeout`.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> Result<u64, WaitTimeout> {
        let mut applied = self.applied.lock();
        if *applied < seq {
            let _ = self.applied_changed.wait_while_for(&mut applied, |a| *a < seq, timeout);
        }
        if *applied >= seq {
            Ok(*applied)
        } else {
            Err(WaitTimeout { wanted: seq, applied: *applied, waited: timeout })
        }
    }

    /// All four read models, read-locked (hold the guard briefly: the follower waits for it).
    pub fn read(&self) -> MappedRwLockReadGuard<'_, Projections> {
        RwLockReadGuard::map(self.live.read(), |l| &l.projections)
    }

    /// The registry, read-locked.
    pub fn registry(&self) -> MappedRwLockReadGuard<'_, Registry> {
        RwLockReadGuard::map(self.live.read(), |l| &l.projections.registry)
    }

    /// The snapshots, read-locked.
    pub fn snapshots(&self) -> MappedRwLockReadGuard<'_, Snapshots> {
        RwLockReadGuard::map(self.live.read(), |l| &l.projections.snapshots)
    }

    /// The cost projection, read-locked.
    pub fn cost_state(&self) -> MappedRwLockReadGuard<'_, Cost> {
        RwLockReadGuard::map(self.live.read(), |l| &l.projections.cost)
    }

    /// Every device with its status at `now` (stale after missed heartbeats; see [`crate::registry`]).
    pub fn devices(&self, now: UnixMillis, heartbeat: Duration) -> Vec<DeviceView> {
        self.registry().devices(now, heartbeat)
    }

    /// A device's telemetry between `from` and `to`.
    pub fn telemetry(
        &self,
        device_id: &str,
        gpu: Option<u32>,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Option<DeviceTelemetry> {
        self.snapshots().telemetry(device_id, gpu, from, to)
    }

    /// Every job, in dispatch order.
    pub fn jobs(&self) -> Vec<JobView> {
        self.cost_state().jobs()
    }

    /// Costs over `(window_end − window, window_end]`.
    pub fn cost(&self, window_end: UnixMillis, window: Duration, group_by: GroupBy) -> CostReport {
        self.cost_state().cost(window_end, window, group_by)
    }

    /// The dashboard for a reader at `now`.
    pub fn dashboard(&self, now: UnixMillis, heartbeat: Duration) -> DashboardView {
        let live = self.live.read();
        live.projections.dashboard_view(live.min_seq(), now, heartbeat)
    }

    /// Digests of the four projections (with the seq they are at).
    pub fn digests(&self) -> (u64, [(ProjectionName, Digest); 4]) {
        let live = self.live.read();
        (live.min_seq(), live.projections.digests())
    }

    /// Where each projection stands.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let live = self.live.read();
        ProjectionName::ALL
            .iter()
            .zip(&live.slots)
            .map(|(n, s)| {
                let p = live.projections.get(*n);
                ProjectionStatus {
                    name: *n,
                    version: p.version(),
                    applied_seq: s.seq,
                    persisted_seq: s.persisted_seq,
                    loaded_seq: s.loaded_seq,
                    rebuilt: s.rebuilt.clone(),
                    digest: p.digest().to_hex().to_string(),
                }
            })
            .collect()
    }

    /// The projections as of an earlier point (see [`as_of`]); live state is not touched.
    pub fn as_of(&self, store: &Store, at: AsOf) -> Result<PastProjections, ProjectionError> {
        as_of(store, at)
    }
}
