//! The ledger: submit commands, get durable receipts.
//!
//! The write path, in one writer thread that owns all appends:
//!
//! 1. take every submission waiting (group commit, up to [`LedgerOptions::max_group`] commands);
//! 2. for each: check the command id (duplicate → original receipt; same id, other body → conflict), the
//!    expected stream version, then [`crate::decide`] against the state including earlier commands of the group;
//! 3. assign gapless seqs, encode bodies, chain-hash them, append their leaves to the Merkle tiles,
//!    [`crate::state::apply`] them;
//! 4. write blocks, idempotency entries, completed tiles, a signed checkpoint when due and the state snapshot
//!    when due in **one atomic sled batch**, then flush and fdatasync ([`Store::commit`]);
//! 5. only then answer every submitter and publish the events to live-tail subscribers.
//!
//! If step 4 fails nothing is acknowledged. sled's first write error is sticky and its memory may hold the batch
//! that failed, so the writer **reopens the store** (closing sled and recovering it from disk) and reloads the
//! decision state, the idempotency index, the Merkle edge, the head and the checkpoint from what is really on
//! disk, all before any reader sees the state again. A batch either landed whole (and a retry with the same
//! command id gets its receipt as a duplicate) or not at all. If the reopen fails too, the ledger is
//! *unavailable*: the state is emptied (so nothing can be authorised from a state that is not on disk) and
//! every later group first tries the reopen again, so a full disk gives `storage_unavailable` errors until
//! space is freed and then recovers by itself. A failed fdatasync is different: Linux may already have dropped
//! the pages it could not write, so the ledger refuses writes until restarted (fail-stop, as PostgreSQL does).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chain::{GENESIS, Hash, chain_hash};
use crate::checkpoint::{Checkpoint, sign_checkpoint};
use crate::codec::{decode_value, encode_record_into, encode_value};
use crate::command::{Context, Submission, validate_command_id};
use crate::decide::{Rejection, command_stream, decide};
use crate::event::{EventRecord, UnixMillis};
use crate::merkle::{self, NodeSource, leaf_hash};
use crate::note::Signer;
use crate::replay::{ReadError, for_each_raw, read_events};
use crate::state::{State, StreamRef, apply};
use crate::store::{
    CommandEntry, CommitBatch, MAX_BLOCK_BYTES, Store, StoreError, decode_seq_hash, encode_seq_hash, finish_block,
    start_block,
};
use crate::tiles::{CompletedTile, TileBuilder, hash_in_tile};

/// Tunables of a ledger.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Signs checkpoints; without one, no checkpoints are made.
    pub signer: Option<Signer>,
    /// The checkpoint origin line (the log's name), e.g. `hwledger.example/fleet`.
    pub origin: String,
    /// A new checkpoint is signed in the first commit at least this long (ledger time) after the last one.
    pub checkpoint_interval_ms: i64,
    /// A decision-state snapshot is written every this many events (bounds the replay at open).
    pub snapshot_every: u64,
    /// Most commands in one group commit.
    pub max_group: usize,
}

impl Default for LedgerOptions {
    fn default() -> LedgerOptions {
        LedgerOptions {
            signer: None,
            origin: "hwledger".to_owned(),
            checkpoint_interval_ms: 1_000,
            snapshot_every: 100_000,
            max_group: 4096,
        }
    }
}

/// Proof that a command's events are in the log: what an agent keeps as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The command's idempotency key.
    pub command_id: String,
    /// Seq of the first event the command appended.
    pub first_seq: u64,
    /// Seq of the last event the command appended.
    pub seq: u64,
    /// Merkle leaf index of the last event (`seq - 1`).
    pub leaf_index: u64,
    /// Chain hash after the last event.
    #[serde(with = "crate::codec::hex32")]
    pub hash: Hash,
    /// Stream of the last event.
    pub stream: String,
    /// That stream's version after the command.
    pub stream_version: u64,
}

/// What became of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended; durable.
    Accepted(Receipt),
    /// The command id was seen before with the same command: the original receipt, nothing appended.
    Duplicate(Receipt),
    /// Refused by a rule; nothing appended.
    Rejected(Rejection),
}

impl Outcome {
    /// The receipt, if the command is (now or before) in the log.
    pub fn receipt(&self) -> Option<&Receipt> {
        match self {
            Outcome::Accepted(r) | Outcome::Duplicate(r) => Some(r),
            Outcome::Rejected(_) => None,
        }
    }
}

/// A fail-stop error of a submission: nothing about the command is known to be durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Writing failed (disk full, I/O error). Retry later with the same command id.
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The ledger refuses writes because its chain is broken (see `hwledger verify`).
    #[error("ledger refuses writes: {0}")]
    Broken(String),
    /// The ledger is shutting down.
    #[error("ledger is closed")]
    Closed,
}

impl SubmitError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::Storage(_) => "storage_unavailable",
            SubmitError::Broken(_) => "ledger_broken",
            SubmitError::Closed => "ledger_closed",
        }
    }
}

/// Why a ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the log failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// An event that was just made durable, as published to live-tail subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedEvent {
    /// Seq.
    pub seq: u64,
    /// Chain hash.
    pub hash: Hash,
    /// The record.
    pub record: EventRecord,
}

/// The head of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Last seq (0 when empty).
    pub seq: u64,
    /// Chain hash at that seq ([`GENESIS`] when empty).
    pub hash: Hash,
}

/// One or more submissions and where to send their outcomes.
struct Request {
    items: Vec<(Submission, Context)>,
    /// Sign a checkpoint of the head in this group even if the interval has not passed.
    sign_now: Option<UnixMillis>,
    reply: tokio::sync::oneshot::Sender<Vec<Result<Outcome, SubmitError>>>,
}

/// Awaitable outcomes of a submission (blocking or async).
#[derive(Debug)]
pub struct Ticket(tokio::sync::oneshot::Receiver<Vec<Result<Outcome, SubmitError>>>);

impl Ticket {
    /// Blocks until the outcomes are known. Do not call inside an async runtime (use [`Ticket::outcomes`]).
    pub fn wait(self) -> Vec<Result<Outcome, SubmitError>> {
        self.0.blocking_recv().unwrap_or_default()
    }

    /// Waits for the outcomes asynchronously.
    pub async fn outcomes(self) -> Vec<Result<Outcome, SubmitError>> {
        self.0.await.unwrap_or_default()
    }
}

struct Shared {
    store: Store,
    state: RwLock<State>,
    ids: Mutex<IdIndex>,
    tiles: RwLock<TileBuilder>,
    head: RwLock<Head>,
    /// Set when the chain failed its check at open (or an fdatasync failed): the ledger serves reads but
    /// refuses writes.
    broken: RwLock<Option<String>>,
    /// Set while the store could not be reopened after a failed commit: every access is refused until a later
    /// group's reopen succeeds.
    unavailable: RwLock<Option<String>>,
    tail: tokio::sync::broadcast::Sender<Arc<Vec<CommittedEvent>>>,
    /// The latest signed checkpoint: (tree size, note text).
    checkpoint: RwLock<Option<(u64, String)>>,
    /// Bumped after every commit that may change who is allowed in (pins, revocations, devices), before its
    /// receipts are sent: see [`Ledger::auth_epoch`].
    auth_epoch: AtomicU64,
    options: LedgerOptions,
}

/// An open ledger. Cheap to share behind an `Arc`; dropping it stops the writer after pending work.
pub struct Ledger {
    shared: Arc<Shared>,
    tx: Mutex<Option<crossbeam_channel::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.shared.store.dir()).field("head", &self.head()).finish()
    }
}

const META_VERIFIED: &str = "verified";
const TAIL_CAPACITY: usize = 1024;

impl Ledger {
    /// Opens (or creates) the ledger in `dir`: loads the state snapshot, checks the chain since the last
    /// verified point, replays events after the snapshot, and rebuilds the in-memory Merkle edge.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<Ledger, OpenError> {
        let store = Store::open(dir)?;
        let loaded = load(&store)?;
        let (tail, _) = tokio::sync::broadcast::channel(TAIL_CAPACITY);
        let shared = Arc::new(Shared {
            store,
            state: RwLock::new(loaded.state),
            ids: Mutex::new(IdIndex::default()),
            tiles: RwLock::new(loaded.tiles),
            head: RwLock::new(loaded.head),
            broken: RwLock::new(loaded.broken),
            unavailable: RwLock::new(None),
            tail,
            checkpoint: RwLock::new(loaded.checkpoint),
            auth_epoch: AtomicU64::new(0),
            options,
        });
        if let Some(why) = shared.broken.read().as_deref() {
            tracing::error!(dir = %dir.display(), "ledger chain check failed, writes refused: {why}");
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let w = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("hwledger-writer".into())
            .spawn(move || writer_loop(&w, &rx))
            .map_err(|source| StoreError::Io { op: "spawn writer thread", path: dir.to_path_buf(), source })?;
        Ok(Ledger { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) })
    }

    /// Has the writer load the idempotency index now, in the background, instead of at the first submission
    /// (servers call it at start so the first command is not slowed by it).
    pub fn warm_up(&self) {
        drop(self.submit_many(Vec::new()));
    }

    /// Queues submissions; their outcomes arrive on the ticket once durable (or refused).
    pub fn submit_many(&self, items: Vec<(Submission, Context)>) -> Ticket {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let n = items.len();
        let guard = self.tx.lock();
        match guard.as_ref() {
            Some(tx) => {
                if let Err(e) = tx.send(Request { items, reply, sign_now: None }) {
                    let _ = e.0.reply.send(vec![Err(SubmitError::Closed); n]);
                }
            }
            None => {
                let _ = reply.send(vec![Err(SubmitError::Closed); n]);
            }
        }
        Ticket(rx)
    }

    /// While the ledger is [unavailable](Ledger::unavailable), asks the writer to try reopening the store now,
    /// without waiting (a reader that refuses requests meanwhile must call this, or nothing would ever retry).
    /// Requests queued together are handled as one attempt. No-op otherwise.
    pub fn retry_storage(&self) {
        if self.shared.unavailable.read().is_none() {
            return;
        }
        let (reply, _) = tokio::sync::oneshot::channel();
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(Request { items: Vec::new(), reply, sign_now: None });
        }
    }

    /// Submits one command and waits (blocking) for its outcome.
    pub fn submit(&self, submission: Submission, ctx: Context) -> Result<Outcome, SubmitError> {
        self.submit_many(vec![(submission, ctx)]).wait().pop().unwrap_or(Err(SubmitError::Closed))
    }

    /// Submits one command and waits asynchronously.
    pub async fn submit_async(&self, submission: Submission, ctx: Context) -> Result<Outcome, SubmitError> {
        self.submit_many(vec![(submission, ctx)]).outcomes().await.pop().unwrap_or(Err(SubmitError::Closed))
    }

    /// The head of the log (durable).
    pub fn head(&self) -> Head {
        *self.shared.head.read()
    }

    /// Why the ledger refuses writes, if it does.
    pub fn broken(&self) -> Option<String> {
        self.shared.broken.read().clone()
    }

    /// Why the ledger cannot serve at all right now, if it cannot: its store failed and could not be reopened
    /// yet (the decision state is empty meanwhile). Clears by itself once a later submission's reopen works.
    pub fn unavailable(&self) -> Option<String> {
        self.shared.unavailable.read().clone()
    }

    /// A copy of the decision state (for tests and tools; projections are the read models).
    pub fn state(&self) -> State {
        self.shared.state.read().clone()
    }

    /// Runs `f` with the decision state (e.g. to check a certificate pin on every request).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.state.read())
    }

    /// A counter that changes whenever a commit may have changed the answer of an authorization check:
    /// every event except the hot-path ones that cannot ([`AUTH_NEUTRAL_EVENTS`]). It is bumped after the
    /// commit is durable and before any of its receipts is sent (and after a failed commit reloads the
    /// state), so a check cached at epoch `e` is still right while `auth_epoch() == e`: a request made after
    /// a revocation or decommission was acknowledged never sees the old epoch.
    pub fn auth_epoch(&self) -> u64 {
        self.shared.auth_epoch.load(Ordering::Acquire)
    }

    /// [`Ledger::with_state`] if the state can be read at once, else `None`: the writer holds it for the
    /// whole group commit (flush and fdatasync included), so an async caller should not block a runtime
    /// worker on it; it retries on a blocking thread instead.
    pub fn try_with_state<R>(&self, f: impl FnOnce(&State) -> R) -> Option<R> {
        self.shared.state.try_read().map(|s| f(&s))
    }

    /// The underlying store (read access for replay, projections and proofs).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Subscribes to events committed from now on. A subscriber that falls more than 1024 commits behind gets
    /// `Lagged` and should re-read from the store.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<CommittedEvent>>> {
        self.shared.tail.subscribe()
    }

    /// Reads events `[from, to]`.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<crate::replay::LoggedEvent>, ReadError> {
        read_events(&self.shared.store, from, to.min(self.head().seq))
    }

    /// The Merkle root of the tree of the first `size` events (`size` ≤ head).
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        merkle::root(&self.nodes(), size).map_err(ProofError::Store)
    }

    /// An inclusion proof that the event at `seq` is in the tree of `size` events.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if seq == 0 || seq > size {
            return Err(ProofError::Range(format!("event {seq} is not in a tree of size {size}")));
        }
        merkle::inclusion_proof(&self.nodes(), seq - 1, size).map_err(|e| ProofError::Range(format!("{e:?}")))
    }

    /// A consistency proof between trees of `size1` and `size2` events.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size2)?;
        merkle::consistency_proof(&self.nodes(), size1, size2).map_err(|e| ProofError::Range(format!("{e:?}")))
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        let head = self.head().seq;
        if size > head {
            return Err(ProofError::Range(format!("tree size {size} is beyond the log's {head} events")));
        }
        Ok(())
    }

    fn nodes(&self) -> LedgerNodes<'_> {
        LedgerNodes { shared: &self.shared }
    }

    /// The latest signed checkpoint (tree size, signed note), if any.
    pub fn latest_checkpoint(&self) -> Option<(u64, String)> {
        self.shared.checkpoint.read().clone()
    }

    /// Signs a checkpoint of the current head now (waits for pending writes), returning the note.
    pub fn sign_checkpoint_now(&self, now: UnixMillis) -> Result<Option<(u64, String)>, SubmitError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.tx.lock().as_ref() {
            Some(tx) => {
                if tx.send(Request { items: Vec::new(), reply, sign_now: Some(now) }).is_err() {
                    return Err(SubmitError::Closed);
                }
            }
            None => return Err(SubmitError::Closed),
        }
        rx.blocking_recv().map_err(|_| SubmitError::Closed)?;
        if let Some(why) = self.broken() {
            return Err(SubmitError::Broken(why));
        }
        if let Some(why) = self.unavailable() {
            return Err(SubmitError::Storage(why));
        }
        Ok(self.latest_checkpoint())
    }

    /// Stops the writer after the work already queued, writes a final state snapshot, and syncs.
    pub fn close(&self) -> Result<(), StoreError> {
        self.tx.lock().take();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
        if self.shared.broken.read().is_none() && self.shared.unavailable.read().is_none() {
            let state = self.shared.state.read();
            let batch = CommitBatch { snapshot: Some(snapshot_bytes(&state)), ..CommitBatch::default() };
            self.shared.store.commit(batch)?;
        }
        Ok(())
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("closing ledger: {e}");
        }
    }
}

/// Why a proof could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Sizes or seqs out of range.
    #[error("{0}")]
    Range(String),
    /// Storage failed or a node is missing.
    #[error("{0}")]
    Store(String),
}

/// Merkle nodes of a live ledger: the right edge from memory, full tiles from the store.
struct LedgerNodes<'a> {
    shared: &'a Shared,
}

impl NodeSource for LedgerNodes<'_> {
    type Error = String;
    fn node(&self, level: u8, index: u64) -> Result<Hash, String> {
        let located = self.shared.tiles.read().locate(level, index);
        match located {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(format!("node ({level}, {index}) does not exist yet")),
            Err((t, k, offset)) => {
                let tile = self.shared.store.tile(t, k).map_err(|e| e.to_string())?;
                tile.as_deref()
                    .and_then(|b| hash_in_tile(b, offset))
                    .ok_or_else(|| format!("Merkle tile ({t}, {k}) is missing"))
            }
        }
    }
}

/// Merkle nodes straight from a store (for tools without a live ledger).
pub struct StoreNodes<'a> {
    /// The store.
    pub store: &'a Store,
    /// Its rebuilt right edge.
    pub tiles: TileBuilder,
}

impl NodeSource for StoreNodes<'_> {
    type Error = String;
    fn node(&self, level: u8, index: u64) -> Result<Hash, String> {
        match self.tiles.locate(level, index) {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(format!("node ({level}, {index}) does not exist")),
            Err((t, k, offset)) => {
                let tile = self.store.tile(t, k).map_err(|e| e.to_string())?;
                tile.as_deref()
                    .and_then(|b| hash_in_tile(b, offset))
                    .ok_or_else(|| format!("Merkle tile ({t}, {k}) is missing"))
            }
        }
    }
}

/// The idempotency index, in memory: a 64-bit BLAKE3 prefix of every accepted command id → the seq of its
/// last event, about 17 bytes per command (a million commands: ~34 MiB). The command's digest and first seq
/// stay on disk in the per-group `C` records (a group commit writes one value, not one sled key per command:
/// sled's per-key cost bounded ingest), read back only on a hit, i.e. a retry. A hit is confirmed there by the
/// full command id, so a prefix shared with another id can never return that command's receipt; an id whose
/// prefix is already taken is kept in full in `collided` (about one in ten million ids at a million
/// commands), so a retry of either is always recognised.
///
/// Built by the writer thread when it starts, never by `open`, so a ledger opened to answer reads does not
/// wait for it.
#[derive(Debug, Default)]
struct IdIndex {
    map: HashMap<u64, u64, BuildHasherDefault<PrefixHasher>>,
    collided: HashMap<String, u64>,
}

impl IdIndex {
    fn key(id: &str) -> u64 {
        let h = blake3::hash(id.as_bytes());
        let mut k = [0u8; 8];
        k.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(k)
    }

    /// Records `id` (not yet in the index) as ending at `last_seq`.
    fn insert(&mut self, id: &str, last_seq: u64) {
        self.insert_keyed(Self::key(id), id, last_seq);
    }

    fn insert_keyed(&mut self, key: u64, id: &str, last_seq: u64) {
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(last_seq);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id.to_owned(), last_seq);
            }
        }
    }

    /// The stored idempotency entry of `id`, if it was accepted before.
    fn lookup(&self, store: &Store, id: &str) -> Result<Option<CommandEntry>, StoreError> {
        self.lookup_keyed(store, Self::key(id), id)
    }

    fn lookup_keyed(&self, store: &Store, key: u64, id: &str) -> Result<Option<CommandEntry>, StoreError> {
        let candidates = [self.collided.get(id).copied(), self.map.get(&key).copied()];
        for last_seq in candidates.into_iter().flatten() {
            if let Some(e) = store.command_entry(id, last_seq)? {
                if e.last_seq == last_seq {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }
}

/// Hashes the index's keys, which are already uniformly distributed BLAKE3 prefixes, by taking them as they are.
#[derive(Debug, Default)]
struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Reads every stored idempotency group into an index (entries beyond `head` belong to no event and are
/// skipped).
fn load_ids(store: &Store, head: u64) -> Result<IdIndex, StoreError> {
    let mut ids = IdIndex::default();
    store.for_each_command(|id, e| {
        if e.last_seq <= head {
            ids.insert(id, e.last_seq);
        }
    })?;
    Ok(ids)
}

struct Loaded {
    state: State,
    tiles: TileBuilder,
    head: Head,
    broken: Option<String>,
    checkpoint: Option<(u64, String)>,
}

fn snapshot_bytes(state: &State) -> Vec<u8> {
    encode_value(state)
}

/// Rebuilds the in-memory right edge of the Merkle tree for a log of `size` events.
pub fn restore_tiles(store: &Store, size: u64) -> Result<TileBuilder, ReadError> {
    let tail_start = (size & !0xff) + 1;
    let mut leaves = Vec::new();
    if size >= tail_start {
        for_each_raw(store, tail_start, size, |_, body, _| {
            leaves.push(leaf_hash(body));
            Ok(())
        })?;
    }
    TileBuilder::restore(size, &leaves, |t, k| {
        let tile = store.tile(t, k)?;
        tile.as_deref()
            .and_then(|b| hash_in_tile(b, crate::tiles::TILE_HASHES - 1))
            .ok_or_else(|| ReadError::Framing { seq: 0, detail: format!("Merkle tile ({t}, {k}) is missing") })
    })
}

fn load(store: &Store) -> Result<Loaded, OpenError> {
    // State from the snapshot, if it decodes; a bad snapshot only costs a longer replay.
    let mut state = match store.snapshot()? {
        Some(bytes) => decode_value::<State>(&bytes).unwrap_or_else(|e| {
            tracing::warn!("state snapshot unreadable ({e}); replaying the whole log");
            State::default()
        }),
        None => State::default(),
    };
    let verified = store.meta(META_VERIFIED)?.as_deref().and_then(decode_seq_hash);
    let (verified_seq, verified_hash) = verified.unwrap_or((0, GENESIS));
    let mut broken = None;

    // Check the chain from the last verified point, and replay events after the snapshot.
    let from = (verified_seq + 1).min(state.last_seq + 1);
    let mut prev: Option<Hash> = if from == verified_seq + 1 { Some(verified_hash) } else { None };
    let mut head = Head { seq: 0, hash: GENESIS };
    if from > 1 {
        if let Some(e) = read_events(store, from - 1, from - 1)?.pop() {
            prev = prev.or(Some(e.hash));
            head = Head { seq: e.seq, hash: e.hash };
        }
    } else {
        prev = Some(GENESIS);
    }
    let mut prev = prev.unwrap_or(GENESIS);
    let result = for_each_raw(store, from, u64::MAX, |seq, body, stored| {
        if broken.is_some() {
            return Ok(());
        }
        let computed = chain_hash(&prev, body);
        if seq > verified_seq && computed != *stored {
            broken = Some(format!("event {seq}: stored hash does not match its body and predecessor"));
            return Ok(());
        }
        prev = *stored;
        head = Head { seq, hash: *stored };
        if seq > state.last_seq {
            match crate::codec::decode_record(body) {
                Ok(record) if record.seq == seq => apply(&mut state, &record),
                Ok(record) => broken = Some(format!("event {seq}: body says seq {}", record.seq)),
                Err(e) => broken = Some(format!("event {seq}: {e}")),
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        broken = Some(e.to_string());
    }
    if state.last_seq > head.seq && broken.is_none() {
        broken = Some(format!("state snapshot is at seq {} but the log ends at {}", state.last_seq, head.seq));
    }
    let tiles = restore_tiles(store, head.seq)?;
    let checkpoint = store.checkpoint_at_or_before(u64::MAX)?;
    if let (Some((size, _)), None) = (&checkpoint, &broken) {
        if *size > head.seq {
            broken = Some(format!("a checkpoint of size {size} was signed but the log has only {} events", head.seq));
        }
    }
    Ok(Loaded { state, tiles, head, broken, checkpoint })
}

/// Reopens the store and reloads everything the writer keeps in memory from what is on disk. Called with the
/// state and id locks held, so no reader sees a state between the failure and the reload.
fn recover(shared: &Shared, state: &mut State, ids: &mut IdIndex) -> Result<(), String> {
    shared.store.reopen().map_err(|e| format!("reopening the store: {e}"))?;
    let loaded = load(&shared.store).map_err(|e| format!("reloading the ledger: {e}"))?;
    *ids = load_ids(&shared.store, loaded.head.seq).map_err(|e| format!("reloading the idempotency index: {e}"))?;
    *state = loaded.state;
    *shared.tiles.write() = loaded.tiles;
    *shared.head.write() = loaded.head;
    *shared.checkpoint.write() = loaded.checkpoint;
    if let Some(why) = loaded.broken {
        tracing::error!("after reopening, the chain check failed, writes refused: {why}");
        *shared.broken.write() = Some(why);
    }
    *shared.unavailable.write() = None;
    Ok(())
}

fn submission_digest(sub: &Submission, ctx: &Context) -> Hash {
    let mut h = Sha256::new();
    h.update(encode_value(&(&sub.command, sub.expected_version, &ctx.actor)));
    h.finalize().into()
}

/// Builds a receipt for events `[first, last]` already in the store.
fn stored_receipt(store: &Store, command_id: &str, entry: &CommandEntry) -> Result<Option<Receipt>, ReadError> {
    let last = read_events(store, entry.last_seq, entry.last_seq)?
        .pop()
        .ok_or(ReadError::Gap { expected: entry.last_seq, found: 0 })?;
    if last.record.command_id != command_id {
        return Ok(None);
    }
    Ok(Some(Receipt {
        command_id: command_id.to_owned(),
        first_seq: entry.first_seq,
        seq: last.seq,
        leaf_index: last.seq - 1,
        hash: last.hash,
        stream: StreamRef::of_event(&last.record.event).name(),
        stream_version: last.record.stream_version,
    }))
}

fn writer_loop(shared: &Shared, rx: &crossbeam_channel::Receiver<Request>) {
    let mut w = Writer::new(shared);
    let mut indexed = false;
    while let Ok(first) = rx.recv() {
        if !indexed {
            // The idempotency index is built when the first request arrives (or `warm_up` asks), not in `open`:
            // a ledger opened to answer reads never pays for it.
            indexed = true;
            let head = shared.head.read().seq;
            match load_ids(&shared.store, head) {
                Ok(ids) => *shared.ids.lock() = ids,
                Err(e) => {
                    tracing::error!("idempotency index unreadable, writes refused: {e}");
                    w.ids_unavailable = Some(format!("idempotency index unreadable: {e}"));
                }
            }
        }
        let mut requests = vec![first];
        let mut n = requests[0].items.len();
        while n < shared.options.max_group {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.items.len();
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        w.process(requests);
    }
}

/// Event types that never change certificate pins, revocations or device existence/decommissioning, so
/// they leave [`Ledger::auth_epoch`] alone (heartbeats and job progress: the hot path). Every other type
/// bumps it.
pub const AUTH_NEUTRAL_EVENTS: &[&str] =
    &["telemetry_recorded", "job_dispatched", "job_started", "job_completed", "job_failed"];

/// Per-group scratch space, reused across groups.
struct Writer<'a> {
    shared: &'a Shared,
    block: Vec<u8>,
    events_since_snapshot: u64,
    last_checkpoint_at: Option<UnixMillis>,
    /// Set when the idempotency records could not be read: accepting a command then could duplicate a retry.
    ids_unavailable: Option<String>,
}

impl<'a> Writer<'a> {
    fn new(shared: &'a Shared) -> Writer<'a> {
        Writer {
            shared,
            block: Vec::with_capacity(MAX_BLOCK_BYTES + 4096),
            events_since_snapshot: 0,
            last_checkpoint_at: None,
            ids_unavailable: None,
        }
    }

    fn process(&mut self, requests: Vec<Request>) {
        let shared = self.shared;
        let refuse = |requests: Vec<Request>, err: SubmitError| {
            for r in requests {
                let n = r.items.len();
                let _ = r.reply.send(vec![Err(err.clone()); n]);
            }
        };
        if let Some(why) = shared.broken.read().clone().or_else(|| self.ids_unavailable.clone()) {
            return refuse(requests, SubmitError::Broken(why));
        }
        if shared.unavailable.read().is_some() {
            let mut state = shared.state.write();
            let mut ids = shared.ids.lock();
            if let Err(why) = recover(shared, &mut state, &mut ids) {
                return refuse(requests, SubmitError::Storage(why));
            }
            tracing::info!(head = shared.head.read().seq, "storage is back: store reopened and state reloaded");
            if let Some(why) = shared.broken.read().clone() {
                return refuse(requests, SubmitError::Broken(why));
            }
        }
        // Nothing to decide (`warm_up`, or a nudge from `retry_storage`, whose reopen above was all it asked for).
        if requests.iter().all(|r| r.items.is_empty() && r.sign_now.is_none()) {
            for r in requests {
                let _ = r.reply.send(Vec::new());
            }
            return;
        }
        let mut outcomes: Vec<Vec<Result<Outcome, SubmitError>>> = Vec::with_capacity(requests.len());
        let mut batch = CommitBatch::default();
        let mut committed: Vec<CommittedEvent> = Vec::new();
        let mut in_group: HashMap<String, (Hash, Receipt)> = HashMap::new();
        let mut completed_tiles: Vec<CompletedTile> = Vec::new();
        let mut sign_now = false;
        let mut latest_now = i64::MIN;

        let mut state = shared.state.write();
        let mut ids = shared.ids.lock();
        let mut tiles = shared.tiles.write();
        let head_before = *shared.head.read();
        let mut head = head_before;
        let mut block_first = head.seq + 1;
        let mut block_count: u32 = 0;
        start_block(&mut self.block);

        for req in &requests {
            if let Some(now) = req.sign_now {
                sign_now = true;
                latest_now = latest_now.max(now);
            }
            let mut out = Vec::with_capacity(req.items.len());
            for (sub, ctx) in &req.items {
                latest_now = latest_now.max(ctx.now);
                if !validate_command_id(&sub.command_id) {
                    out.push(Ok(Outcome::Rejected(Rejection::Invalid(
                        "command_id must be 1-128 printable ASCII characters without spaces".into(),
                    ))));
                    continue;
                }
                let digest = submission_digest(sub, ctx);
                if let Some((d, receipt)) = in_group.get(&sub.command_id) {
                    out.push(Ok(if *d == digest {
                        Outcome::Duplicate(receipt.clone())
                    } else {
                        Outcome::Rejected(Rejection::DuplicateConflict { command_id: sub.command_id.clone() })
                    }));
                    continue;
                }
                let known = match ids.lookup(&shared.store, &sub.command_id) {
                    Ok(known) => known,
                    Err(e) => {
                        out.push(Err(SubmitError::Storage(e.to_string())));
                        continue;
                    }
                };
                if let Some(entry) = known {
                    // An all-zero digest marks an imported entry whose command body is unknown.
                    let same = entry.digest == digest || entry.digest == [0; 32];
                    match stored_receipt(&shared.store, &sub.command_id, &entry) {
                        Err(e) => {
                            out.push(Err(SubmitError::Storage(e.to_string())));
                            continue;
                        }
                        Ok(Some(receipt)) => {
                            out.push(Ok(if same {
                                Outcome::Duplicate(receipt)
                            } else {
                                Outcome::Rejected(Rejection::DuplicateConflict { command_id: sub.command_id.clone() })
                            }));
                            continue;
                        }
                        // A 128-bit hash collision with another id: treat as new.
                        Ok(None) => {}
                    }
                }
                let stream = command_stream(&sub.command);
                if let Some(expected) = sub.expected_version {
                    let actual = state.stream_version(&stream);
                    if actual != expected {
                        out.push(Ok(Outcome::Rejected(Rejection::VersionConflict {
                            stream: stream.name(),
                            expected,
                            actual,
                        })));
                        continue;
                    }
                }
                let events = match decide(&state, &sub.command, ctx) {
                    Ok(events) => events,
                    Err(rejection) => {
                        out.push(Ok(Outcome::Rejected(rejection)));
                        continue;
                    }
                };
                let recorded_at = ctx.now.max(state.last_recorded_at);
                let first_seq = head.seq + 1;
                let mut last_stream = String::new();
                let mut last_version = 0;
                for event in events {
                    let seq = head.seq + 1;
                    let stream_version = state.next_version(&event);
                    let record = EventRecord {
                        seq,
                        recorded_at,
                        command_id: sub.command_id.clone(),
                        actor: ctx.actor.clone(),
                        stream_version,
                        event,
                    };
                    let body_start = self.block.len() + 4;
                    // Frame in place: length, body, then the hash once known.
                    self.block.extend_from_slice(&[0; 4]);
                    encode_record_into(&record, &mut self.block);
                    let body_len = self.block.len() - body_start;
                    let body = &self.block[body_start..];
                    let hash = chain_hash(&head.hash, body);
                    tiles.push_leaf(leaf_hash(body), &mut completed_tiles);
                    let len = u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes();
                    self.block[body_start - 4..body_start].copy_from_slice(&len);
                    self.block.extend_from_slice(&hash);
                    block_count += 1;
                    head = Head { seq, hash };
                    apply(&mut state, &record);
                    last_stream = StreamRef::of_event(&record.event).name();
                    last_version = stream_version;
                    committed.push(CommittedEvent { seq, hash, record });
                    if self.block.len() >= MAX_BLOCK_BYTES {
                        finish_block(&mut self.block, block_count);
                        batch.blocks.push((block_first, std::mem::take(&mut self.block)));
                        self.block = Vec::with_capacity(MAX_BLOCK_BYTES + 4096);
                        start_block(&mut self.block);
                        block_first = seq + 1;
                        block_count = 0;
                    }
                }
                let receipt = Receipt {
                    command_id: sub.command_id.clone(),
                    first_seq,
                    seq: head.seq,
                    leaf_index: head.seq - 1,
                    hash: head.hash,
                    stream: last_stream,
                    stream_version: last_version,
                };
                batch.commands.push((sub.command_id.clone(), CommandEntry { digest, first_seq, last_seq: head.seq }));
                in_group.insert(sub.command_id.clone(), (digest, receipt.clone()));
                out.push(Ok(Outcome::Accepted(receipt)));
            }
            outcomes.push(out);
        }
        if block_count > 0 {
            finish_block(&mut self.block, block_count);
            batch.blocks.push((block_first, std::mem::take(&mut self.block)));
            self.block = Vec::with_capacity(MAX_BLOCK_BYTES + 4096);
        }
        for t in completed_tiles {
            batch.tiles.push((t.level, t.index, t.bytes));
        }
        let appended = head.seq - head_before.seq;
        if appended > 0 {
            batch.meta.push((META_VERIFIED, encode_seq_hash(head.seq, &head.hash)));
            self.events_since_snapshot += appended;
            if self.events_since_snapshot >= shared.options.snapshot_every {
                batch.snapshot = Some(snapshot_bytes(&state));
                self.events_since_snapshot = 0;
            }
        }
        // A checkpoint for the new head, signed in the same atomic batch.
        let mut new_checkpoint = None;
        if let Some(signer) = &shared.options.signer {
            let last_size = shared.checkpoint.read().as_ref().map_or(0, |c| c.0);
            // `latest_now` is i64::MIN for a group without items or a signing request: never due then.
            let due = self
                .last_checkpoint_at
                .is_none_or(|t| latest_now.saturating_sub(t) >= shared.options.checkpoint_interval_ms);
            if head.seq > last_size && (sign_now || due) {
                let nodes = LedgerNodes { shared };
                drop(tiles);
                match merkle::root(&nodes, head.seq) {
                    Ok(root) => {
                        let cp = Checkpoint {
                            origin: shared.options.origin.clone(),
                            size: head.seq,
                            root,
                            extensions: vec![],
                        };
                        match sign_checkpoint(&cp, signer) {
                            Ok(note) => {
                                batch.checkpoints.push((head.seq, note.clone()));
                                new_checkpoint = Some((head.seq, note));
                            }
                            Err(e) => tracing::error!("signing checkpoint: {e}"),
                        }
                    }
                    Err(e) => tracing::error!("computing Merkle root for checkpoint: {e}"),
                }
            } else {
                drop(tiles);
            }
        } else {
            drop(tiles);
        }
        let nothing_to_write = batch.blocks.is_empty() && batch.checkpoints.is_empty();
        // Index entries to add once durable; an id whose prefix is taken is cloned in full (rare).
        let mut group_keys = std::collections::HashSet::with_capacity(batch.commands.len());
        let new_ids: Vec<(u64, u64, Option<String>)> = batch
            .commands
            .iter()
            .map(|(id, e)| {
                let key = IdIndex::key(id);
                let taken = ids.map.contains_key(&key) || !group_keys.insert(key);
                (key, e.last_seq, taken.then(|| id.clone()))
            })
            .collect();
        let result = if nothing_to_write { Ok(()) } else { shared.store.commit(batch) };
        match result {
            Ok(()) => {
                for (key, last_seq, full) in new_ids {
                    match full {
                        Some(id) => ids.insert(&id, last_seq),
                        None => {
                            ids.map.insert(key, last_seq);
                        }
                    }
                }
                drop(ids);
                *shared.head.write() = head;
                if committed.iter().any(|e| !AUTH_NEUTRAL_EVENTS.contains(&e.record.event.type_name())) {
                    shared.auth_epoch.fetch_add(1, Ordering::AcqRel);
                }
                if let Some(cp) = new_checkpoint {
                    self.last_checkpoint_at = Some(latest_now);
                    *shared.checkpoint.write() = Some(cp);
                }
                drop(state);
                if !committed.is_empty() {
                    let _ = shared.tail.send(Arc::new(committed));
                }
                for (req, out) in requests.into_iter().zip(outcomes) {
                    let _ = req.reply.send(out);
                }
            }
            Err(e) => {
                tracing::error!("group commit failed, nothing acknowledged: {e}");
                if matches!(&e, StoreError::Io { op: "fdatasync", .. }) {
                    *shared.broken.write() = Some(format!(
                        "{e}: the kernel may have dropped pages it could not write, so later writes could not be \
                         trusted; check the disk, restart the server and run `hwledger verify`"
                    ));
                }
                // The state (and sled's memory) may hold this group: reopen and reload what is really on disk
                // before anyone reads the state again (the locks are still held).
                match recover(shared, &mut state, &mut ids) {
                    Ok(()) => tracing::info!(head = shared.head.read().seq, "store reopened after the failed commit"),
                    Err(why) => {
                        tracing::error!("storage unavailable until a reopen succeeds: {why}");
                        // Nothing may be decided or authorised from a state that is not on disk.
                        *state = State::default();
                        *ids = IdIndex::default();
                        *shared.unavailable.write() = Some(why);
                    }
                }
                shared.auth_epoch.fetch_add(1, Ordering::AcqRel);
                drop(ids);
                drop(state);
                let msg = e.to_string();
                for (req, out) in requests.into_iter().zip(outcomes) {
                    let answers = out
                        .into_iter()
                        .map(|o| match o {
                            Ok(Outcome::Accepted(_)) => Err(SubmitError::Storage(msg.clone())),
                            other => other,
                        })
                        .collect();
                    let _ = req.reply.send(answers);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CommitBatch;

    fn entry(byte: u8, first_seq: u64, last_seq: u64) -> CommandEntry {
        CommandEntry { digest: [byte; 32], first_seq, last_seq }
    }

    /// Two ids sharing an index prefix (forced here; about one in ten million at a million commands) are both
    /// found, each with its own entry, and a third id with that prefix is not mistaken for either.
    #[test]
    fn ids_sharing_a_prefix_are_told_apart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let (a, b) = (entry(1, 1, 1), entry(2, 2, 3));
        store.commit(CommitBatch { commands: vec![("a".into(), a)], ..CommitBatch::default() }).expect("commit a");
        store.commit(CommitBatch { commands: vec![("b".into(), b)], ..CommitBatch::default() }).expect("commit b");
        let mut ids = IdIndex::default();
        ids.insert_keyed(7, "a", a.last_seq);
        ids.insert_keyed(7, "b", b.last_seq);
        assert_eq!(ids.collided.len(), 1, "the second id is kept in full");
        assert_eq!(ids.lookup_keyed(&store, 7, "a").expect("lookup a"), Some(a));
        assert_eq!(ids.lookup_keyed(&store, 7, "b").expect("lookup b"), Some(b));
        assert_eq!(ids.lookup_keyed(&store, 7, "c").expect("lookup c"), None);
        // Rebuilt from the store, the real (distinct) prefixes find both.
        let loaded = load_ids(&store, 3).expect("load");
        assert_eq!(loaded.lookup(&store, "a").expect("a"), Some(a));
        assert_eq!(loaded.lookup(&store, "b").expect("b"), Some(b));
        assert_eq!(loaded.lookup(&store, "c").expect("c"), None);
    }
}
