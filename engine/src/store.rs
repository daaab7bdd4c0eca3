//! The only module that names sled: the ledger's bytes on disk.
//!
//! One sled tree, `log`, holds everything the ledger writes, so that a group commit is **one atomic
//! `apply_batch`** followed by one flush and one fdatasync. Keys (docs/FORMAT.md has the byte layout):
//!
//! | key | value |
//! | --- | --- |
//! | `B` ‖ first seq (u64 BE) | a block: the events of (part of) one group commit, with their chain hashes |
//! | `C` ‖ first seq (u64 BE) | the idempotency entries of one group commit (id, command digest, first and last seq) |
//! | `T` ‖ tile level (u8) ‖ tile index (u64 BE) | a full Merkle tile (511 hashes) |
//! | `K` ‖ tree size (u64 BE) | a signed checkpoint (signed-note text) |
//! | `M` ‖ name | metadata (`verified`: the last verified seq and hash) |
//! | `S` | snapshot of the decision state (a cache: bincode of the state, which records its own last seq) |
//!
//! After a failed commit sled refuses every later write (its first I/O error is sticky) and its in-memory view
//! may hold the batch that did not reach the disk, so [`Store::reopen`] closes the database and opens it again
//! from what is really on disk; the ledger does that after every failed commit (see `ledger.rs`). While it is
//! closed every access fails with [`StoreError::Unavailable`]. Iterators that outlive a reopen keep the old
//! database alive until they are dropped.
//!
//! Storing each group commit as one block (instead of one key per event) is what makes sled fast enough:
//! sled's per-key cost, not hashing, bounds ingest. An event is found by seq with one reverse range lookup
//! (the block with the greatest first seq ≤ seq). Blocks are capped at [`MAX_BLOCK_BYTES`] so that sled pages
//! stay below its blob threshold (blob files are not fsynced by sled).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::chain::Hash;

/// Largest block written, in bytes. With the 8 MiB segments configured below, sled's blob threshold is
/// 2 MiB; a leaf page holds at most 17 entries, so 64 KiB blocks keep every page inline in the log.
pub const MAX_BLOCK_BYTES: usize = 64 * 1024;
/// Block format version byte.
pub const BLOCK_FORMAT_V1: u8 = 1;

const SEGMENT_SIZE: usize = 8 * 1024 * 1024;
/// Upper bound of sled's page cache (its default is 1 GiB). The ledger's reads are sequential block scans
/// and tile lookups, which need little cache; a small fleet's server should not hold a gigabyte for it.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
const TREE: &str = "log";

/// A storage failure. Fail-stop: the ledger refuses writes after one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, corruption, lock held by another process...).
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Stored bytes are not in the expected layout.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database is closed while it is reopened after a storage failure (retry later).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// One event as framed in a block.
#[derive(Debug, Clone, Copy)]
pub struct FramedEvent<'a> {
    /// The exact stored body bytes (leaf of the Merkle tree, input of the chain hash).
    pub body: &'a [u8],
    /// The stored chain hash after this event.
    pub hash: Hash,
}

/// Appends one framed event to a block under construction (`[u32 LE len][body][hash]`).
pub fn frame_event(block: &mut Vec<u8>, body: &[u8], hash: &Hash) {
    // Bodies are bounded by codec::MAX_BODY_LEN, far below u32::MAX.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    block.extend_from_slice(&len.to_le_bytes());
    block.extend_from_slice(body);
    block.extend_from_slice(hash);
}

/// Starts a block: version byte and a count placeholder (fixed by [`finish_block`]).
pub fn start_block(block: &mut Vec<u8>) {
    block.clear();
    block.push(BLOCK_FORMAT_V1);
    block.extend_from_slice(&0u32.to_le_bytes());
}

/// Writes the event count into a block started with [`start_block`].
pub fn finish_block(block: &mut [u8], count: u32) {
    if let Some(slot) = block.get_mut(1..5) {
        slot.copy_from_slice(&count.to_le_bytes());
    }
}

/// Splits a block into its events. Total: any bytes give events or a description of what is wrong.
pub fn parse_block(block: &[u8]) -> Result<Vec<FramedEvent<'_>>, String> {
    let (&version, rest) = block.split_first().ok_or("empty block")?;
    if version != BLOCK_FORMAT_V1 {
        return Err(format!("unknown block format {version}"));
    }
    let count_bytes: [u8; 4] = rest.get(..4).and_then(|b| b.try_into().ok()).ok_or("block shorter than its header")?;
    let count = u32::from_le_bytes(count_bytes) as usize;
    let mut rest = &rest[4..];
    // Each event takes at least 4 + 32 bytes, so a forged count cannot make us allocate much.
    if count > rest.len() / 36 + 1 {
        return Err(format!("block claims {count} events but has {} bytes", rest.len()));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("event {i} of {count}: truncated length"))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = rest.get(4..4 + len).ok_or_else(|| format!("event {i} of {count}: truncated body"))?;
        let hash: Hash = rest
            .get(4 + len..4 + len + 32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("event {i} of {count}: truncated hash"))?;
        out.push(FramedEvent { body, hash });
        rest = &rest[4 + len + 32..];
    }
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after {count} events", rest.len()));
    }
    Ok(out)
}

/// An idempotency entry: which events a command id produced, and a digest of the command to spot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandEntry {
    /// SHA-256 of the submission (command, expected version, actor).
    pub digest: Hash,
    /// First event's seq.
    pub first_seq: u64,
    /// Last event's seq.
    pub last_seq: u64,
}

/// Encodes the idempotency entries of one group commit as one value:
/// `u32 LE count`, then per entry `u16 LE id length ‖ id ‖ digest (32) ‖ first seq (u64 LE) ‖ last seq (u64 LE)`.
pub fn encode_command_group(entries: &[(String, CommandEntry)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + entries.len() * 64);
    v.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (id, e) in entries {
        // Command ids are validated to at most 128 bytes.
        v.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_le_bytes());
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(&e.digest);
        v.extend_from_slice(&e.first_seq.to_le_bytes());
        v.extend_from_slice(&e.last_seq.to_le_bytes());
    }
    v
}

/// Decodes a value written by [`encode_command_group`], calling `f(id, entry)` for each entry.
pub fn decode_command_group(v: &[u8], mut f: impl FnMut(&str, CommandEntry)) -> Result<(), StoreError> {
    let bad = || StoreError::Corrupt("idempotency group is malformed".into());
    let count = u32::from_le_bytes(v.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(bad)?);
    let mut rest = &v[4..];
    for _ in 0..count {
        let len = u16::from_le_bytes(rest.get(..2).and_then(|b| b.try_into().ok()).ok_or_else(bad)?) as usize;
        let id = rest.get(2..2 + len).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(bad)?;
        let tail = rest.get(2 + len..2 + len + 48).ok_or_else(bad)?;
        let entry = CommandEntry {
            digest: tail[..32].try_into().map_err(|_| bad())?,
            first_seq: u64::from_le_bytes(tail[32..40].try_into().map_err(|_| bad())?),
            last_seq: u64::from_le_bytes(tail[40..48].try_into().map_err(|_| bad())?),
        };
        f(id, entry);
        rest = &rest[2 + len + 48..];
    }
    if rest.is_empty() { Ok(()) } else { Err(bad()) }
}

/// Length of an idempotency value in the first build's layout (kept readable: `fixtures/ledgers/v1`): one key
/// per command, `C ‖ command id` → digest ‖ first seq (u64 BE) ‖ last seq (u64 BE). A group value is never this
/// long (its smallest is 4 + 2 + 1 + 48).
const V1_ENTRY_LEN: usize = 48;

fn decode_v1_entry(v: &[u8]) -> Result<CommandEntry, StoreError> {
    let bad = || StoreError::Corrupt("idempotency entry is malformed".into());
    Ok(CommandEntry {
        digest: v.get(..32).and_then(|b| b.try_into().ok()).ok_or_else(bad)?,
        first_seq: u64::from_be_bytes(v.get(32..40).and_then(|b| b.try_into().ok()).ok_or_else(bad)?),
        last_seq: u64::from_be_bytes(v.get(40..48).and_then(|b| b.try_into().ok()).ok_or_else(bad)?),
    })
}

/// Everything one group commit writes, applied atomically.
#[derive(Debug, Default)]
pub struct CommitBatch {
    /// `(first seq, block bytes)`.
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// `(command id, entry)`, stored as one value keyed by the group's first seq.
    pub commands: Vec<(String, CommandEntry)>,
    /// `(tile level, tile index, 511 hashes)`.
    pub tiles: Vec<(u8, u64, Vec<u8>)>,
    /// `(tree size, signed note)`.
    pub checkpoints: Vec<(u64, String)>,
    /// `(name, value)`.
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// A new decision-state snapshot.
    pub snapshot: Option<Vec<u8>>,
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn block_key(seq: u64) -> [u8; 9] {
    let mut k = [b'B'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn tile_key(level: u8, index: u64) -> [u8; 10] {
    let mut k = [b'T'; 10];
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The ledger's sled database. The open database sits behind a lock so that [`Store::reopen`] can replace it.
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// The open database; `None` while closed for a reopen (or after a reopen failed).
    open: RwLock<Option<Arc<Instance>>>,
    /// Serialises reopens.
    reopening: Mutex<()>,
}

/// One open instance of the database.
struct Instance {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file, fdatasynced after every flush: sled's own flush ends in `sync_file_range`, which
    /// neither flushes the disk's write cache nor persists the file size (DEPENDENCIES.md).
    data_file: File,
}

/// Longest [`Store::reopen`] waits for readers of the old database (iterators in flight) to finish. sled holds
/// an exclusive file lock until the last handle is dropped, so the new instance cannot open before.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.shared.dir).finish()
    }
}

/// A block as read back: its first seq and bytes.
pub type RawBlock = (u64, sled::IVec);

impl Store {
    /// Opens (creating if needed) the store in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |op, source| StoreError::Io { op, path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| io("create data directory", e))?;
        set_private_dir(dir).map_err(|e| io("restrict data directory permissions", e))?;
        let open = Instance::open(dir)?;
        // Make the data file's directory entry durable once.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                open: RwLock::new(Some(Arc::new(open))),
                reopening: Mutex::new(()),
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn open_db(&self) -> Result<Arc<Instance>, StoreError> {
        self.shared.current()
    }

    /// Whether the database is open (false between a failed commit and a successful [`Store::reopen`]).
    pub fn is_open(&self) -> bool {
        self.shared.open.read().is_some()
    }

    /// Closes the database and opens it again from disk, discarding whatever sled holds in memory that did not
    /// reach the disk. Waits (bounded) for readers of the old instance to finish. On failure the store stays
    /// closed (every access fails with [`StoreError::Unavailable`]) and a later call tries again.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let _one = self.shared.reopening.lock();
        let old = self.shared.open.write().take();
        if let Some(old) = old {
            let mut waited = Duration::ZERO;
            let step = Duration::from_millis(10);
            let mut old = Some(old);
            while let Some(o) = old.take() {
                match Arc::try_unwrap(o) {
                    Ok(open) => drop(open),
                    Err(o) if waited < REOPEN_WAIT => {
                        old = Some(o);
                        std::thread::sleep(step);
                        waited += step;
                    }
                    Err(_) => {
                        return Err(StoreError::Unavailable(format!(
                            "readers of the old database did not finish within {REOPEN_WAIT:?}; retrying later"
                        )));
                    }
                }
            }
        }
        let open = Instance::open(&self.shared.dir)?;
        *self.shared.open.write() = Some(Arc::new(open));
        Ok(())
    }

    /// Applies a batch atomically and makes it durable: sled flush, then fdatasync of the data file.
    pub fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        let open = self.open_db()?;
        let mut b = sled::Batch::default();
        for (seq, bytes) in batch.blocks {
            b.insert(&block_key(seq), bytes);
        }
        // Keyed by the group's lowest first seq, so the group covering a seq is the greatest key ≤ it.
        if let Some(lowest) = batch.commands.iter().map(|(_, e)| e.first_seq).min() {
            b.insert(key(b'C', &lowest.to_be_bytes()), encode_command_group(&batch.commands));
        }
        for (level, index, bytes) in batch.tiles {
            b.insert(&tile_key(level, index), bytes);
        }
        for (size, note) in batch.checkpoints {
            b.insert(key(b'K', &size.to_be_bytes()), note.as_bytes());
        }
        for (name, value) in batch.meta {
            b.insert(key(b'M', name.as_bytes()), value);
        }
        if let Some(s) = batch.snapshot {
            b.insert(&b"S"[..], s);
        }
        open.tree.apply_batch(b)?;
        open.sync(&self.shared.dir)
    }

    /// Flushes sled and fdatasyncs its data file.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.open_db()?.sync(&self.shared.dir)
    }

    /// Every stored idempotency group, in seq order: `f(id, entry)` per entry.
    pub fn for_each_command(&self, mut f: impl FnMut(&str, CommandEntry)) -> Result<(), StoreError> {
        let open = self.open_db()?;
        for r in open.tree.scan_prefix([b'C']) {
            let (k, v) = r?;
            if v.len() == V1_ENTRY_LEN {
                let id =
                    std::str::from_utf8(&k[1..]).map_err(|_| StoreError::Corrupt("command id is not UTF-8".into()))?;
                f(id, decode_v1_entry(&v)?);
                continue;
            }
            decode_command_group(&v, &mut f)?;
        }
        Ok(())
    }

    /// The idempotency entry of `command_id`, whose last event is `last_seq`: found in the group record
    /// covering `last_seq` (the greatest group key ≤ it), or under the first build's one-key-per-command layout.
    /// `None` if neither holds that id (the in-memory index matched only a hash prefix of another id).
    pub fn command_entry(&self, command_id: &str, last_seq: u64) -> Result<Option<CommandEntry>, StoreError> {
        let lo = key(b'C', &0u64.to_be_bytes());
        let hi = key(b'C', &last_seq.to_be_bytes());
        let open = self.open_db()?;
        if let Some(r) = open.tree.range(lo..=hi).next_back() {
            let (_, v) = r?;
            let mut found = None;
            decode_command_group(&v, |id, e| {
                if found.is_none() && id == command_id {
                    found = Some(e);
                }
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        // The first build's layout: `C ‖ command id` → 48 bytes (see `for_each_command`). Its keys never fall in
        // the range above: ids are printable ASCII, group keys start with the seq's zero high byte.
        if let Some(v) = open.tree.get(key(b'C', command_id.as_bytes()))? {
            if v.len() == V1_ENTRY_LEN {
                return decode_v1_entry(&v).map(Some);
            }
        }
        drop(open);
        // Not where it should be: an index prefix shared with another id (about one in ten million), or an
        // import by an earlier build, which keyed its one group by an arbitrary entry. Look everywhere.
        let mut found = None;
        self.for_each_command(|id, e| {
            if found.is_none() && id == command_id && e.last_seq == last_seq {
                found = Some(e);
            }
        })?;
        Ok(found)
    }

    /// The block containing `seq` (greatest first seq ≤ seq).
    pub fn block_containing(&self, seq: u64) -> Result<Option<RawBlock>, StoreError> {
        let hi = block_key(seq);
        match self.open_db()?.tree.range(&block_key(0)[..]..=&hi[..]).next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                Ok(Some((parse_block_key(&k)?, v)))
            }
        }
    }

    /// Blocks in seq order whose first seq ≥ `from` (use [`Store::block_containing`] for the one before).
    pub fn blocks_from(&self, from: u64) -> impl Iterator<Item = Result<RawBlock, StoreError>> + use<> {
        let (open, closed) = split_open(self.open_db());
        closed.into_iter().map(Err).chain(open.into_iter().flat_map(move |open| {
            let range = open.tree.range(&block_key(from)[..]..=&block_key(u64::MAX)[..]);
            // The iterator keeps its database instance alive (a reopen waits for it).
            range.map(move |r| {
                let _instance = &open;
                let (k, v) = r?;
                Ok((parse_block_key(&k)?, v))
            })
        }))
    }

    /// The last block.
    pub fn last_block(&self) -> Result<Option<RawBlock>, StoreError> {
        self.block_containing(u64::MAX)
    }

    /// A full Merkle tile.
    pub fn tile(&self, level: u8, index: u64) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.open_db()?.tree.get(tile_key(level, index))?)
    }

    /// All stored full tiles in key order: `(level, index, bytes)`.
    pub fn tiles(&self) -> impl Iterator<Item = Result<(u8, u64, sled::IVec), StoreError>> + use<> {
        let (open, closed) = split_open(self.open_db());
        closed.into_iter().map(Err).chain(open.into_iter().flat_map(|open| {
            let scan = open.tree.scan_prefix([b'T']);
            scan.map(move |r| {
                let _instance = &open;
                tile_entry(r)
            })
        }))
    }

    /// A metadata value.
    pub fn meta(&self, name: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.open_db()?.tree.get(key(b'M', name.as_bytes()))?)
    }

    /// The decision-state snapshot.
    pub fn snapshot(&self) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.open_db()?.tree.get(b"S")?)
    }

    /// The stored checkpoint with the greatest tree size ≤ `size`.
    pub fn checkpoint_at_or_before(&self, size: u64) -> Result<Option<(u64, String)>, StoreError> {
        let lo = key(b'K', &0u64.to_be_bytes());
        let hi = key(b'K', &size.to_be_bytes());
        match self.open_db()?.tree.range(lo..=hi).next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                let size = k
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("checkpoint key".into()))?;
                let text =
                    String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("checkpoint is not UTF-8".into()))?;
                Ok(Some((size, text)))
            }
        }
    }

    /// Bytes the data directory takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.open_db()?.db.size_on_disk()?)
    }

    /// Drops another tree of the database (earlier builds kept projection checkpoints in trees).
    pub fn drop_tree(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.open_db()?.db.drop_tree(name)?)
    }

    /// Test and forensics support: overwrite or delete raw entries of the log tree (used only by tamper tests
    /// and the `testing` feature; the ledger never calls it).
    #[doc(hidden)]
    pub fn raw_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.open_db()?.tree.clone())
    }
}

impl Shared {
    fn current(&self) -> Result<Arc<Instance>, StoreError> {
        self.open
            .read()
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is being reopened after a storage failure".to_owned()))
    }
}

impl Instance {
    fn open(dir: &Path) -> Result<Instance, StoreError> {
        let db = open_with_lock_retry(dir)?;
        let tree = db.open_tree(TREE)?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(|source| StoreError::Io {
            op: "open sled data file",
            path: data_path.clone(),
            source,
        })?;
        Ok(Instance { db, tree, data_file })
    }

    fn sync(&self, dir: &Path) -> Result<(), StoreError> {
        self.db.flush()?;
        self.data_file.sync_data().map_err(|source| StoreError::Io { op: "fdatasync", path: dir.join("db"), source })
    }
}

fn tile_entry(r: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(u8, u64, sled::IVec), StoreError> {
    let (k, v) = r?;
    if k.len() != 10 {
        return Err(StoreError::Corrupt("tile key of wrong length".into()));
    }
    let index = u64::from_be_bytes(k[2..10].try_into().map_err(|_| StoreError::Corrupt("tile key".into()))?);
    Ok((k[1], index, v))
}

/// `Ok(open)` → `(Some(open), None)`; `Err(e)` → `(None, Some(e))`.
fn split_open(r: Result<Arc<Instance>, StoreError>) -> (Option<Arc<Instance>>, Option<StoreError>) {
    match r {
        Ok(o) => (Some(o), None),
        Err(e) => (None, Some(e)),
    }
}

/// Opens sled, retrying briefly while its file lock is held: a handle dropped a moment ago in this process
/// releases the lock only when sled's background flusher thread exits. Another process holding the store
/// (a running server) still gets a clear error after the bounded wait.
fn open_with_lock_retry(dir: &Path) -> Result<sled::Db, StoreError> {
    let mut attempts = 0;
    loop {
        match sled::Config::new().path(dir).segment_size(SEGMENT_SIZE).cache_capacity(CACHE_BYTES).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Io {
                    op: "lock the data directory (is a server or another hwledger using it? beside `hwledger serve`, pass --server URL)",
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn parse_block_key(k: &[u8]) -> Result<u64, StoreError> {
    k.get(1..9)
        .filter(|_| k.len() == 9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("block key of {} bytes", k.len())))
}

/// Encodes a `(seq, hash)` pair for metadata.
pub fn encode_seq_hash(seq: u64, hash: &Hash) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

/// Decodes a `(seq, hash)` pair written by [`encode_seq_hash`].
pub fn decode_seq_hash(v: &[u8]) -> Option<(u64, Hash)> {
    if v.len() != 40 {
        return None;
    }
    Some((u64::from_be_bytes(v[..8].try_into().ok()?), v[8..].try_into().ok()?))
}

#[cfg(unix)]
fn set_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn set_private_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
