//! The agent's on-disk outbox: every command the agent makes is written here, durably, **before** it is
//! sent, and leaves only when the server's receipt for it arrives (or the server refuses it for good, when
//! it moves to a small dead-letter record with the server's code). So a server outage, a network cut or a
//! crash of the agent loses nothing; the deterministic command ids make the resend after a crash
//! idempotent, so nothing is doubled either.
//!
//! Storage is a sled database in `<state-dir>/outbox/` — the second user of sled in hwledger besides
//! `engine::store` (ARCHITECTURE.md says why). Every change is one atomic sled batch followed by sled's
//! flush **and** an fdatasync of sled's data file (sled's flush alone ends in `sync_file_range`, which does
//! not reach stable storage; DEPENDENCIES.md). One tree, `outbox`, with these keys (docs/FORMAT.md has the
//! bytes):
//!
//! | key | value |
//! | --- | --- |
//! | `Q` ‖ outbox seq (u64 BE) | a queued command: `0x01 ‖ kind ‖ queued_at (i64 LE) ‖ JSON submission` |
//! | `R` ‖ outbox seq (u64 BE) | the receipt of a sent command: `0x01 ‖ JSON` (the most recent [`OutboxOptions::max_receipts`]) |
//! | `D` ‖ outbox seq (u64 BE) | a dead letter: `0x01 ‖ JSON` with the server's code (the most recent [`OutboxOptions::max_dead_letters`]) |
//! | `M` ‖ name | metadata: `next_seq`, `sampled_at`, `inventory`, `coalesced` |
//!
//! **When full** (more than [`OutboxOptions::max_entries`] commands or [`OutboxOptions::max_bytes`] bytes
//! queued), old telemetry is coalesced: the oldest half of the queued heartbeats loses every other sample
//! (the 2nd, 4th, … of them; the oldest is kept), repeated until the new commands fit. Registrations and
//! other commands are never dropped; if thinning heartbeats cannot make room (fewer than two queued),
//! the new commands are refused with [`EnqueueError::Full`]. Repeated passes thin the oldest part of a
//! long outage most, so a week-long outage keeps recent heartbeats at full resolution and older ones
//! progressively sparser. Every dropped sample is counted (`coalesced`) and named in the log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hwledger_engine::command::{Command, Submission};
use hwledger_engine::event::UnixMillis;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Version byte of every value the outbox writes.
pub const FORMAT_V1: u8 = 1;
/// Largest queued command, in bytes of its JSON. A command must fit alone in one request under the
/// server's 64 KiB body limit (with the batch's `[` `]`); a bigger one could never be delivered, so it is
/// refused when queued instead of blocking the outbox.
pub const MAX_ENTRY_BYTES: usize = 63 * 1024;
/// Header of a queued value: version, kind, queued_at.
const QUEUED_HEADER: usize = 1 + 1 + 8;
/// sled segment size; as in `engine::store`, large segments keep every value inline in the data file
/// (sled's blob files are not fdatasynced by this module).
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;
/// sled page cache bound: the outbox is small and read sequentially.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
const TREE: &str = "outbox";

/// Bounds of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxOptions {
    /// Most queued commands. Default 20 000: a week of 30-second heartbeats.
    pub max_entries: usize,
    /// Most bytes of queued command JSON. Default 32 MiB (a heartbeat of 8 GPUs is about 1.3 KB).
    pub max_bytes: u64,
    /// Receipts kept after delivery, newest first dropped last. Default 10 000.
    pub max_receipts: usize,
    /// Dead letters kept, oldest dropped first. Default 1 000.
    pub max_dead_letters: usize,
}

impl Default for OutboxOptions {
    fn default() -> OutboxOptions {
        OutboxOptions {
            max_entries: 20_000,
            max_bytes: 32 * 1024 * 1024,
            max_receipts: 10_000,
            max_dead_letters: 1_000,
        }
    }
}

/// What a queued command is, for the when-full policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// `register_device`: never dropped.
    Registration,
    /// `record_telemetry`: may be coalesced when the outbox is full.
    Telemetry,
    /// Anything else: never dropped.
    Other,
}

impl EntryKind {
    /// The kind of a command.
    pub fn of(command: &Command) -> EntryKind {
        match command {
            Command::RegisterDevice { .. } => EntryKind::Registration,
            Command::RecordTelemetry { .. } => EntryKind::Telemetry,
            _ => EntryKind::Other,
        }
    }

    fn byte(self) -> u8 {
        match self {
            EntryKind::Registration => 1,
            EntryKind::Telemetry => 2,
            EntryKind::Other => 3,
        }
    }

    fn from_byte(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::Registration),
            2 => Some(EntryKind::Telemetry),
            3 => Some(EntryKind::Other),
            _ => None,
        }
    }
}

/// A queued command as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Position in the outbox (strictly increasing, never reused).
    pub seq: u64,
    /// What it is.
    pub kind: EntryKind,
    /// When it was queued (unix ms, the agent's clock).
    pub queued_at: UnixMillis,
    /// Its exact JSON, as it goes on the wire.
    pub json: Vec<u8>,
    /// The submission.
    pub submission: Submission,
}

impl Pending {
    /// `sampled_at` of a heartbeat.
    pub fn sampled_at(&self) -> Option<UnixMillis> {
        match &self.submission.command {
            Command::RecordTelemetry { sampled_at, .. } => Some(*sampled_at),
            _ => None,
        }
    }
}

/// The server's receipt for a delivered command, as the outbox keeps it (evidence that the ledger holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRecord {
    /// Position the command had in the outbox.
    pub outbox_seq: u64,
    /// The command id.
    pub command_id: String,
    /// What it was.
    pub kind: EntryKind,
    /// `sampled_at` of a heartbeat.
    pub sampled_at: Option<UnixMillis>,
    /// Seq of the command's last event in the ledger.
    pub ledger_seq: u64,
    /// The ledger's chain hash after that event, hex.
    pub hash: String,
    /// Whether the server had already recorded it (a resend after a crash or a lost answer).
    pub duplicate: bool,
    /// When the receipt arrived (unix ms, the agent's clock).
    pub received_at: UnixMillis,
}

/// A command the server refused for good, kept so that nothing vanishes silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Position the command had in the outbox.
    pub outbox_seq: u64,
    /// The server's stable error code (`invalid_command`, `duplicate_conflict`, `body_too_large`, ...).
    pub code: String,
    /// The server's message.
    pub message: String,
    /// When it was refused (unix ms, the agent's clock).
    pub dead_at: UnixMillis,
    /// The refused submission, unchanged.
    pub submission: Submission,
}

/// How a sent command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The server's receipt.
    Receipt {
        /// Seq of the command's last event.
        ledger_seq: u64,
        /// Chain hash after it, hex.
        hash: String,
        /// Recorded before (a resend).
        duplicate: bool,
    },
    /// Refused for good.
    Dead {
        /// The server's code.
        code: String,
        /// The server's message.
        message: String,
    },
}

/// Extra facts written atomically with an enqueue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The `sampled_at` these commands were made with (kept strictly increasing across restarts).
    pub sampled_at: Option<UnixMillis>,
    /// The inventory digest a queued registration declares.
    pub inventory: Option<[u8; 32]>,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Outbox seqs given to the new commands, in order.
    pub seqs: Vec<u64>,
    /// Command ids of the old heartbeats dropped to make room (oldest first).
    pub coalesced: Vec<String>,
    /// Commands queued after the enqueue.
    pub pending: usize,
}

/// Counters of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Queued commands.
    pub pending: usize,
    /// Bytes of queued command JSON.
    pub pending_bytes: u64,
    /// Receipts kept.
    pub receipts: usize,
    /// Dead letters kept.
    pub dead_letters: usize,
    /// Heartbeats dropped by the when-full policy, ever.
    pub coalesced_total: u64,
    /// The seq the next command gets.
    pub next_seq: u64,
}

/// A storage failure of the outbox. Fail-stop for the operation; nothing was partly applied.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// sled reported an error.
    #[error("outbox storage: {0}")]
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
    /// Another agent holds the outbox.
    #[error("the outbox in {path} is in use by another process (is another agent running with this state directory?)")]
    Locked {
        /// The outbox directory.
        path: PathBuf,
    },
    /// Stored bytes are not in the outbox's format.
    #[error("corrupt outbox entry {key}: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A previous sync failed: the outbox refuses further writes, since what is on disk is unknown.
    #[error("the outbox failed to sync earlier and refuses writes; restart the agent")]
    Poisoned,
}

impl OutboxError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            OutboxError::Sled(_) => "outbox_storage",
            OutboxError::Io { .. } => "outbox_io",
            OutboxError::Locked { .. } => "outbox_locked",
            OutboxError::Corrupt { .. } => "outbox_corrupt",
            OutboxError::Poisoned => "outbox_poisoned",
        }
    }
}

/// Why commands could not be queued. Nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The outbox is full and coalescing old heartbeats cannot make room.
    #[error(
        "the outbox is full ({pending} commands, {pending_bytes} bytes; limits {max_entries} and {max_bytes}) and has fewer than two heartbeats to coalesce"
    )]
    Full {
        /// Queued commands.
        pending: usize,
        /// Queued bytes.
        pending_bytes: u64,
        /// The entry limit.
        max_entries: usize,
        /// The byte limit.
        max_bytes: u64,
    },
    /// One command's JSON exceeds [`MAX_ENTRY_BYTES`]; it could never be delivered.
    #[error("command {command_id} is {len} bytes of JSON, over the {MAX_ENTRY_BYTES}-byte limit of one request")]
    TooLarge {
        /// Its id.
        command_id: String,
        /// Its size.
        len: usize,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] OutboxError),
}

impl EnqueueError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EnqueueError::Full { .. } => "outbox_full",
            EnqueueError::TooLarge { .. } => "command_too_large",
            EnqueueError::Storage(e) => e.code(),
        }
    }
}

/// In-memory counters, kept equal to what is on disk (recomputed at open).
#[derive(Debug)]
struct Inner {
    next_seq: u64,
    pending: usize,
    pending_bytes: u64,
    receipts: usize,
    dead: usize,
    coalesced_total: u64,
    /// The greatest `sampled_at` handed out or stored.
    last_sampled_at: Option<UnixMillis>,
    inventory: Option<[u8; 32]>,
}

/// The outbox.
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file, fdatasynced after every flush.
    data_file: File,
    dir: PathBuf,
    options: OutboxOptions,
    inner: Mutex<Inner>,
    /// Set when a sync failed: the in-memory counters may then disagree with the disk.
    poisoned: AtomicBool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).finish()
    }
}

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'M');
    k.extend_from_slice(name.as_bytes());
    k
}

fn printable_key(k: &[u8]) -> String {
    match k.split_first() {
        Some((p, rest)) if rest.len() == 8 => {
            format!("{}{}", char::from(*p), u64::from_be_bytes(rest.try_into().unwrap_or([0; 8])))
        }
        _ => hex::encode(k),
    }
}

fn seq_of(k: &[u8]) -> Result<u64, OutboxError> {
    k.get(1..9)
        .filter(|_| k.len() == 9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| OutboxError::Corrupt { key: hex::encode(k), reason: "key is not prefix ‖ u64".into() })
}

/// Encodes a queued value: `0x01 ‖ kind ‖ queued_at (i64 LE) ‖ JSON`.
fn encode_queued(kind: EntryKind, queued_at: UnixMillis, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(QUEUED_HEADER + json.len());
    v.push(FORMAT_V1);
    v.push(kind.byte());
    v.extend_from_slice(&queued_at.to_le_bytes());
    v.extend_from_slice(json);
    v
}

/// Decodes a queued value. Total: any bytes give an entry or a description of what is wrong.
fn decode_queued(k: &[u8], v: &[u8]) -> Result<Pending, OutboxError> {
    let corrupt = |reason: String| OutboxError::Corrupt { key: printable_key(k), reason };
    let seq = seq_of(k)?;
    let header = v
        .get(..QUEUED_HEADER)
        .ok_or_else(|| corrupt(format!("value of {} bytes is shorter than its header", v.len())))?;
    if header[0] != FORMAT_V1 {
        return Err(corrupt(format!("unknown format version {}", header[0])));
    }
    let kind = EntryKind::from_byte(header[1]).ok_or_else(|| corrupt(format!("unknown kind {}", header[1])))?;
    let queued_at = i64::from_le_bytes(header[2..10].try_into().map_err(|_| corrupt("queued_at".into()))?);
    let json = v[QUEUED_HEADER..].to_vec();
    let submission: Submission = serde_json::from_slice(&json).map_err(|e| corrupt(format!("submission JSON: {e}")))?;
    Ok(Pending { seq, kind, queued_at, json, submission })
}

fn encode_json_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = vec![FORMAT_V1];
    // Serialising these plain structs cannot fail (string keys, no maps with non-string keys).
    v.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    v
}

fn decode_json_record<T: for<'de> Deserialize<'de>>(k: &[u8], v: &[u8]) -> Result<T, OutboxError> {
    let corrupt = |reason: String| OutboxError::Corrupt { key: printable_key(k), reason };
    match v.split_first() {
        Some((&FORMAT_V1, json)) => serde_json::from_slice(json).map_err(|e| corrupt(format!("JSON: {e}"))),
        Some((other, _)) => Err(corrupt(format!("unknown format version {other}"))),
        None => Err(corrupt("empty value".into())),
    }
}

fn decode_u64(k: &[u8], v: &[u8]) -> Result<u64, OutboxError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| OutboxError::Corrupt { key: printable_key(k), reason: format!("{} bytes, expected 8", v.len()) })
}

fn decode_i64(k: &[u8], v: &[u8]) -> Result<i64, OutboxError> {
    <[u8; 8]>::try_from(v)
        .map(i64::from_be_bytes)
        .map_err(|_| OutboxError::Corrupt { key: printable_key(k), reason: format!("{} bytes, expected 8", v.len()) })
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` (mode 0700), recomputing its counters from disk.
    pub fn open(dir: &Path, options: OutboxOptions) -> Result<Outbox, OutboxError> {
        let io = |op, source| OutboxError::Io { op, path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| io("create outbox directory", e))?;
        set_private_dir(dir).map_err(|e| io("restrict outbox directory permissions", e))?;
        let db = open_with_lock_retry(dir)?;
        let tree = db.open_tree(TREE)?;
        let data_path = dir.join("db");
        let data_file = File::open(&data_path).map_err(|source| OutboxError::Io {
            op: "open sled data file",
            path: data_path.clone(),
            source,
        })?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let mut inner = Inner {
            next_seq: 1,
            pending: 0,
            pending_bytes: 0,
            receipts: 0,
            dead: 0,
            coalesced_total: 0,
            last_sampled_at: None,
            inventory: None,
        };
        let mut max_seq = 0u64;
        for r in tree.scan_prefix([b'Q']) {
            let (k, v) = r?;
            let p = decode_queued(&k, &v)?;
            max_seq = max_seq.max(p.seq);
            inner.pending += 1;
            inner.pending_bytes += u64::try_from(p.json.len()).unwrap_or(u64::MAX);
        }
        for (prefix, counter) in [(b'R', &mut inner.receipts), (b'D', &mut inner.dead)] {
            for r in tree.scan_prefix([prefix]) {
                let (k, _) = r?;
                max_seq = max_seq.max(seq_of(&k)?);
                *counter += 1;
            }
        }
        if let Some(v) = tree.get(meta_key("next_seq"))? {
            inner.next_seq = decode_u64(b"Mnext_seq", &v)?;
        }
        inner.next_seq = inner.next_seq.max(max_seq.saturating_add(1));
        if let Some(v) = tree.get(meta_key("coalesced"))? {
            inner.coalesced_total = decode_u64(b"Mcoalesced", &v)?;
        }
        if let Some(v) = tree.get(meta_key("sampled_at"))? {
            inner.last_sampled_at = Some(decode_i64(b"Msampled_at", &v)?);
        }
        if let Some(v) = tree.get(meta_key("inventory"))? {
            inner.inventory = Some(<[u8; 32]>::try_from(&v[..]).map_err(|_| OutboxError::Corrupt {
                key: "Minventory".into(),
                reason: format!("{} bytes, expected 32", v.len()),
            })?);
        }
        Ok(Outbox {
            db,
            tree,
            data_file,
            dir: dir.to_path_buf(),
            options,
            inner: Mutex::new(inner),
            poisoned: AtomicBool::new(false),
        })
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bounds.
    pub fn options(&self) -> OutboxOptions {
        self.options
    }

    /// A `sampled_at` for a new sample taken at `now`: `now`, or one more than the last one handed out if
    /// the clock went backwards (so command ids built from it never repeat, even across restarts).
    pub fn next_sampled_at(&self, now: UnixMillis) -> UnixMillis {
        let mut inner = self.inner.lock();
        let t = match inner.last_sampled_at {
            Some(last) if now <= last => last.saturating_add(1),
            _ => now,
        };
        inner.last_sampled_at = Some(t);
        t
    }

    /// The inventory digest of the last registration queued.
    pub fn registered_inventory(&self) -> Option<[u8; 32]> {
        self.inner.lock().inventory
    }

    /// Counters.
    pub fn stats(&self) -> OutboxStats {
        let inner = self.inner.lock();
        OutboxStats {
            pending: inner.pending,
            pending_bytes: inner.pending_bytes,
            receipts: inner.receipts,
            dead_letters: inner.dead,
            coalesced_total: inner.coalesced_total,
            next_seq: inner.next_seq,
        }
    }

    fn sync(&self) -> Result<(), OutboxError> {
        let result = self.db.flush().map_err(OutboxError::from).and_then(|_| {
            self.data_file.sync_data().map_err(|source| OutboxError::Io {
                op: "fdatasync",
                path: self.dir.join("db"),
                source,
            })
        });
        if result.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        result.map(|_| ())
    }

    fn check_poisoned(&self) -> Result<(), OutboxError> {
        if self.poisoned.load(Ordering::SeqCst) { Err(OutboxError::Poisoned) } else { Ok(()) }
    }

    /// Queues `items` in order, atomically and durably (returns after the fdatasync), coalescing old
    /// heartbeats first if the outbox would be over its bounds (see the module docs).
    pub fn enqueue(&self, items: &[Submission], stamp: Stamp, now: UnixMillis) -> Result<Enqueued, EnqueueError> {
        self.check_poisoned()?;
        let mut encoded = Vec::with_capacity(items.len());
        for sub in items {
            // A Submission always serialises (plain data, string keys).
            let json = serde_json::to_vec(sub).unwrap_or_default();
            if json.len() > MAX_ENTRY_BYTES {
                return Err(EnqueueError::TooLarge { command_id: sub.command_id.clone(), len: json.len() });
            }
            encoded.push((EntryKind::of(&sub.command), json));
        }
        let new_count = encoded.len();
        let new_bytes: u64 = encoded.iter().map(|(_, j)| u64::try_from(j.len()).unwrap_or(u64::MAX)).sum();

        let mut inner = self.inner.lock();
        let mut batch = sled::Batch::default();
        let (mut count, mut bytes) = (inner.pending, inner.pending_bytes);
        let over = |count: usize, bytes: u64| {
            count + new_count > self.options.max_entries || bytes + new_bytes > self.options.max_bytes
        };
        let mut coalesced = Vec::new();
        if over(count, bytes) {
            // The queued heartbeats, oldest first: (key, bytes, command id).
            let mut beats: Vec<(u64, u64, String)> = Vec::new();
            for r in self.tree.scan_prefix([b'Q']) {
                let (k, v) = r.map_err(OutboxError::from)?;
                let p = decode_queued(&k, &v)?;
                if p.kind == EntryKind::Telemetry {
                    beats.push((p.seq, u64::try_from(p.json.len()).unwrap_or(u64::MAX), p.submission.command_id));
                }
            }
            while over(count, bytes) && beats.len() >= 2 {
                let half = beats.len().div_ceil(2).max(2);
                let mut kept = Vec::with_capacity(beats.len());
                for (i, beat) in beats.drain(..).enumerate() {
                    if i < half && i % 2 == 1 {
                        batch.remove(&key(b'Q', beat.0));
                        count = count.saturating_sub(1);
                        bytes = bytes.saturating_sub(beat.1);
                        coalesced.push(beat);
                    } else {
                        kept.push(beat);
                    }
                }
                beats = kept;
            }
            if over(count, bytes) {
                return Err(EnqueueError::Full {
                    pending: inner.pending,
                    pending_bytes: inner.pending_bytes,
                    max_entries: self.options.max_entries,
                    max_bytes: self.options.max_bytes,
                });
            }
        }
        coalesced.sort_by_key(|c| c.0);
        let mut seqs = Vec::with_capacity(new_count);
        let mut next = inner.next_seq;
        for (kind, json) in &encoded {
            batch.insert(&key(b'Q', next), encode_queued(*kind, now, json));
            seqs.push(next);
            next += 1;
        }
        batch.insert(meta_key("next_seq"), &next.to_be_bytes());
        let coalesced_total = inner.coalesced_total + u64::try_from(coalesced.len()).unwrap_or(u64::MAX);
        if !coalesced.is_empty() {
            batch.insert(meta_key("coalesced"), &coalesced_total.to_be_bytes());
        }
        let sampled_at = match (stamp.sampled_at, inner.last_sampled_at) {
            (Some(s), Some(last)) => Some(s.max(last)),
            (s, last) => s.or(last),
        };
        if let Some(s) = stamp.sampled_at.and(sampled_at) {
            batch.insert(meta_key("sampled_at"), &s.to_be_bytes());
        }
        if let Some(digest) = stamp.inventory {
            batch.insert(meta_key("inventory"), &digest[..]);
        }
        self.tree.apply_batch(batch).map_err(OutboxError::from)?;
        self.sync()?;
        inner.next_seq = next;
        inner.pending = count + new_count;
        inner.pending_bytes = bytes + new_bytes;
        inner.coalesced_total = coalesced_total;
        inner.last_sampled_at = sampled_at;
        if stamp.inventory.is_some() {
            inner.inventory = stamp.inventory;
        }
        Ok(Enqueued { seqs, coalesced: coalesced.into_iter().map(|c| c.2).collect(), pending: inner.pending })
    }

    /// The oldest queued commands, in order: at most `max_count`, and at most `max_bytes` of JSON counting
    /// the batch's brackets and commas — but always at least one when anything is queued.
    pub fn peek(&self, max_count: usize, max_bytes: usize) -> Result<Vec<Pending>, OutboxError> {
        let mut out = Vec::new();
        let mut size = 2usize; // `[` and `]`
        for r in self.tree.scan_prefix([b'Q']) {
            if out.len() >= max_count.max(1) {
                break;
            }
            let (k, v) = r?;
            let p = decode_queued(&k, &v)?;
            let extra = p.json.len() + usize::from(!out.is_empty());
            if !out.is_empty() && size + extra > max_bytes {
                break;
            }
            size += extra;
            out.push(p);
        }
        Ok(out)
    }

    /// Every queued command, in order.
    pub fn pending(&self) -> Result<Vec<Pending>, OutboxError> {
        self.peek(usize::MAX, usize::MAX)
    }

    /// Records how sent commands ended, atomically and durably: each leaves the queue, and its receipt or
    /// dead letter is kept (the oldest ones beyond the bounds are dropped). A command that is no longer
    /// queued (coalesced while it was in flight) still gets its receipt recorded.
    pub fn resolve(&self, done: &[(&Pending, Resolution)], now: UnixMillis) -> Result<(), OutboxError> {
        self.check_poisoned()?;
        if done.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        let mut batch = sled::Batch::default();
        let (mut pending, mut bytes, mut receipts, mut dead) =
            (inner.pending, inner.pending_bytes, inner.receipts, inner.dead);
        let mut seen = std::collections::BTreeSet::new();
        for (p, resolution) in done {
            if !seen.insert(p.seq) {
                continue;
            }
            let qk = key(b'Q', p.seq);
            if self.tree.contains_key(qk)? {
                batch.remove(&qk);
                pending = pending.saturating_sub(1);
                bytes = bytes.saturating_sub(u64::try_from(p.json.len()).unwrap_or(u64::MAX));
            }
            match resolution {
                Resolution::Receipt { ledger_seq, hash, duplicate } => {
                    let rk = key(b'R', p.seq);
                    if !self.tree.contains_key(rk)? {
                        receipts += 1;
                    }
                    let record = ReceiptRecord {
                        outbox_seq: p.seq,
                        command_id: p.submission.command_id.clone(),
                        kind: p.kind,
                        sampled_at: p.sampled_at(),
                        ledger_seq: *ledger_seq,
                        hash: hash.clone(),
                        duplicate: *duplicate,
                        received_at: now,
                    };
                    batch.insert(&rk, encode_json_record(&record));
                }
                Resolution::Dead { code, message } => {
                    let dk = key(b'D', p.seq);
                    if !self.tree.contains_key(dk)? {
                        dead += 1;
                    }
                    let letter = DeadLetter {
                        outbox_seq: p.seq,
                        code: code.clone(),
                        message: message.clone(),
                        dead_at: now,
                        submission: p.submission.clone(),
                    };
                    batch.insert(&dk, encode_json_record(&letter));
                }
            }
        }
        // Trim the oldest records beyond the bounds (the new ones have the greatest seqs in practice).
        for (prefix, count, max) in
            [(b'R', &mut receipts, self.options.max_receipts), (b'D', &mut dead, self.options.max_dead_letters)]
        {
            if *count > max {
                let excess = *count - max;
                for r in self.tree.scan_prefix([prefix]).keys().take(excess) {
                    batch.remove(r?);
                }
                *count = max;
            }
        }
        self.tree.apply_batch(batch)?;
        self.sync()?;
        inner.pending = pending;
        inner.pending_bytes = bytes;
        inner.receipts = receipts;
        inner.dead = dead;
        Ok(())
    }

    /// The receipts kept, oldest first.
    pub fn receipts(&self) -> Result<Vec<ReceiptRecord>, OutboxError> {
        self.records(b'R')
    }

    /// The dead letters kept, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        self.records(b'D')
    }

    fn records<T: for<'de> Deserialize<'de>>(&self, prefix: u8) -> Result<Vec<T>, OutboxError> {
        self.tree
            .scan_prefix([prefix])
            .map(|r| r.map_err(OutboxError::from).and_then(|(k, v)| decode_json_record(&k, &v)))
            .collect()
    }

    /// Flushes and fdatasyncs (every change already does; this is for shutdown paths that want certainty).
    pub fn sync_now(&self) -> Result<(), OutboxError> {
        self.sync()
    }
}

/// Opens sled, retrying briefly while its file lock is held: a handle dropped a moment ago in this process
/// releases the lock only when sled's background flusher exits. Another live agent still gets
/// [`OutboxError::Locked`] after the bounded wait.
fn open_with_lock_retry(dir: &Path) -> Result<sled::Db, OutboxError> {
    let mut attempts = 0;
    loop {
        match sled::Config::new().path(dir).segment_size(SEGMENT_SIZE).cache_capacity(CACHE_BYTES).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if attempts >= 100 {
                    return Err(OutboxError::Locked { path: dir.to_path_buf() });
                }
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
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
