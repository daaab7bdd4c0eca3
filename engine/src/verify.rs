//! Offline verification: the forensic report of a data directory or an export file.
//!
//! Read-only. Walks every stored event in storage order and checks, without trusting anything it read:
//! the chain hash of each body against its predecessor, that bodies decode and carry the seq of their position
//! (gaps and reorderings are told apart), the Merkle tiles against a tree rebuilt from the bodies, an optional
//! recorded head (`--head SEQ:HASH`: catches truncation and consistent rewrites), and signed checkpoints
//! against a pinned verifier key (catches a rewrite even of the whole chain). Every break names its seq, its
//! kind and the evidence.

use serde::Serialize;

use crate::chain::{GENESIS, Hash, chain_hash, to_hex};
use crate::checkpoint::{Checkpoint, open_checkpoint};
use crate::codec::decode_record;
use crate::merkle::{NodeSource, leaf_hash, verify_consistency};
use crate::note::Verifier;
use crate::tiles::{CompletedTile, TileBuilder, hash_in_tile};

/// The kinds of break, with stable names (`--json` and exit reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A body no longer matches its stored chain hash.
    PayloadAltered,
    /// An event is absent from the sequence.
    EventMissing,
    /// Events are stored out of order.
    EventsReordered,
    /// The log ends before a recorded head.
    Truncated,
    /// The event at a recorded head has another hash: history was rewritten.
    HeadMismatch,
    /// A body does not decode.
    Undecodable,
    /// A stored Merkle tile does not match the events.
    MerkleMismatch,
    /// A signed checkpoint does not verify, or does not match the events.
    CheckpointMismatch,
    /// The log is not a consistent extension of an older checkpoint.
    Inconsistent,
    /// The container itself (block, export file) is malformed.
    Framing,
}

impl BreakKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::PayloadAltered => "payload_altered",
            BreakKind::EventMissing => "event_missing",
            BreakKind::EventsReordered => "events_reordered",
            BreakKind::Truncated => "truncated",
            BreakKind::HeadMismatch => "head_mismatch",
            BreakKind::Undecodable => "undecodable",
            BreakKind::MerkleMismatch => "merkle_mismatch",
            BreakKind::CheckpointMismatch => "checkpoint_mismatch",
            BreakKind::Inconsistent => "inconsistent",
            BreakKind::Framing => "framing",
        }
    }
}

/// One break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// Where (the seq the break is detected at).
    pub seq: u64,
    /// What kind.
    pub kind: BreakKind,
    /// Human explanation.
    pub detail: String,
    /// Expected value (hash hex, seq), if one applies.
    pub expected: Option<String>,
    /// Found value, if one applies.
    pub found: Option<String>,
}

/// What to check beyond the log itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// A head recorded earlier: the log must reach `seq` and have `hash` there.
    pub head: Option<(u64, Hash)>,
    /// The pinned checkpoint verifier key.
    pub verifier: Option<Verifier>,
    /// An older signed checkpoint the log must consistently extend.
    pub since: Option<String>,
}

/// The forensic report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// What was verified (path).
    pub source: String,
    /// The checks that ran, in words.
    pub checks: Vec<String>,
    /// Events read.
    pub events: u64,
    /// Bytes of event bodies read.
    pub bytes: u64,
    /// Last seq and its stored hash.
    pub head_seq: u64,
    /// Hex of the stored hash at `head_seq`.
    pub head_hash: String,
    /// Merkle root of all events read (hex).
    pub merkle_root: String,
    /// Size of the signed checkpoint that was checked, if any.
    pub checkpoint_size: Option<u64>,
    /// Every break, by seq.
    pub breaks: Vec<Break>,
}

impl Report {
    /// True when nothing is broken.
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// Streaming verifier: feed it framed events in storage order, then [`Verifier::finish`].
pub struct ChainVerifier {
    report: Report,
    expected: u64,
    prev: Option<(u64, Hash)>,
    /// Missing seq ranges `[start, end)` by start (ranges, so a forged huge seq costs O(1) memory).
    pending_missing: std::collections::BTreeMap<u64, u64>,
    builder: TileBuilder,
    tiles_done: Vec<CompletedTile>,
    /// Full tiles as rebuilt. With the builder's partial tiles they hold every complete subtree of the
    /// tree, so the root at any earlier size (a checkpoint's) is computed after the walk.
    rebuilt_tiles: std::collections::HashMap<(u8, u64), Vec<u8>>,
    /// The recorded head's seq, and the stored hash found there.
    want_head: Option<u64>,
    head_found: Option<Hash>,
}

impl std::fmt::Debug for ChainVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainVerifier").field("expected", &self.expected).finish()
    }
}

struct RebuiltNodes<'a> {
    builder: &'a TileBuilder,
    tiles: &'a std::collections::HashMap<(u8, u64), Vec<u8>>,
}

impl NodeSource for RebuiltNodes<'_> {
    type Error = String;
    fn node(&self, level: u8, index: u64) -> Result<Hash, String> {
        match self.builder.locate(level, index) {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(format!("node ({level},{index}) missing")),
            Err((t, k, off)) => self
                .tiles
                .get(&(t, k))
                .and_then(|b| hash_in_tile(b, off))
                .ok_or_else(|| format!("tile ({t},{k}) missing")),
        }
    }
}

impl ChainVerifier {
    /// A verifier for `source`; `want_head` is the seq of a recorded head to compare with.
    pub fn new(source: &str, want_head: Option<u64>) -> ChainVerifier {
        ChainVerifier {
            report: Report { source: source.to_owned(), ..Report::default() },
            expected: 1,
            prev: None,
            pending_missing: Default::default(),
            builder: TileBuilder::new(),
            tiles_done: Vec::new(),
            rebuilt_tiles: Default::default(),
            want_head,
            head_found: None,
        }
    }

    fn add(&mut self, seq: u64, kind: BreakKind, detail: String, expected: Option<String>, found: Option<String>) {
        self.report.breaks.push(Break { seq, kind, detail, expected, found });
    }

    /// Feeds the next stored event.
    pub fn event(&mut self, body: &[u8], stored: &Hash) {
        self.report.events += 1;
        self.report.bytes += body.len() as u64;
        let position = self.expected;
        let seq = match decode_record(body) {
            Ok(r) => r.seq,
            Err(e) => {
                self.add(position, BreakKind::Undecodable, e.to_string(), None, None);
                position
            }
        };
        if seq > position {
            self.pending_missing.insert(position, seq);
            self.expected = seq.saturating_add(1);
        } else if seq < position {
            if self.take_missing(seq) {
                self.add(
                    seq,
                    BreakKind::EventsReordered,
                    format!("event {seq} is stored after event {}", position - 1),
                    Some(seq.to_string()),
                    Some((position - 1).to_string()),
                );
            } else {
                self.add(
                    seq,
                    BreakKind::EventsReordered,
                    format!("event {seq} appears again after event {}", position - 1),
                    None,
                    None,
                );
            }
        } else {
            self.expected = seq.saturating_add(1);
        }
        // The chain link can be checked when the predecessor is the event just before.
        let prev_hash = match self.prev {
            None if seq == 1 => Some(GENESIS),
            Some((p, h)) if p.checked_add(1) == Some(seq) => Some(h),
            _ => None,
        };
        if let Some(prev) = prev_hash {
            let computed = chain_hash(&prev, body);
            if computed != *stored {
                self.add(
                    seq,
                    BreakKind::PayloadAltered,
                    format!("event {seq}: stored hash does not match SHA-256 of its predecessor and body"),
                    Some(to_hex(stored)),
                    Some(to_hex(&computed)),
                );
            }
        }
        self.prev = Some((seq, *stored));
        if self.want_head == Some(seq) {
            self.head_found = Some(*stored);
        }
        self.report.head_seq = seq.max(self.report.head_seq);
        if seq == self.report.head_seq {
            self.report.head_hash = to_hex(stored);
        }
        self.builder.push_leaf(leaf_hash(body), &mut self.tiles_done);
        for t in self.tiles_done.drain(..) {
            self.rebuilt_tiles.insert((t.level, t.index), t.bytes);
        }
    }

    /// Removes `seq` from the missing ranges; true if it was there.
    fn take_missing(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.pending_missing.range(..=seq).next_back() else { return false };
        if seq >= end {
            return false;
        }
        self.pending_missing.remove(&start);
        if start < seq {
            self.pending_missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.pending_missing.insert(seq + 1, end);
        }
        true
    }

    /// Records a framing error at `seq`.
    pub fn framing(&mut self, seq: u64, detail: String) {
        self.add(seq, BreakKind::Framing, detail, None, None);
    }

    /// Compares a stored tile with the rebuilt one.
    pub fn stored_tile(&mut self, level: u8, index: u64, bytes: &[u8]) {
        match self.rebuilt_tiles.get(&(level, index)) {
            Some(rebuilt) if rebuilt.as_slice() == bytes => {}
            Some(_) | None => {
                let first_seq = index.checked_shl(8 * (u32::from(level) + 1)).unwrap_or(u64::MAX).saturating_add(1);
                self.add(
                    first_seq,
                    BreakKind::MerkleMismatch,
                    format!("stored Merkle tile ({level}, {index}) does not match the events from seq {first_seq}"),
                    None,
                    None,
                );
            }
        }
    }

    /// Events fed so far.
    pub fn root_size(&self) -> u64 {
        self.builder.size
    }

    /// The Merkle root of everything fed so far.
    pub fn root(&self) -> Hash {
        self.root_at(self.builder.size).unwrap_or(GENESIS)
    }

    /// The Merkle root of the first `size` events fed (`size` ≤ events fed).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        let nodes = RebuiltNodes { builder: &self.builder, tiles: &self.rebuilt_tiles };
        crate::merkle::root(&nodes, size).ok()
    }

    /// Ends the walk: missing events, head, checkpoints.
    pub fn finish(mut self, opts: &VerifyOptions, checkpoint: Option<&str>) -> Report {
        for (start, end) in std::mem::take(&mut self.pending_missing) {
            let detail = if end == start + 1 {
                format!("event {start} is missing")
            } else {
                format!("events {start} to {} are missing", end - 1)
            };
            self.add(start, BreakKind::EventMissing, detail, None, Some((end - start).to_string()));
        }
        self.report.checks.push(format!("chain: {} events hashed and linked", self.report.events));
        self.report.checks.push("merkle: tree rebuilt from the event bodies".into());
        let root = self.root();
        self.report.merkle_root = to_hex(&root);
        if let Some((seq, hash)) = opts.head {
            self.report.checks.push(format!("head: log reaches seq {seq} with the recorded hash"));
            if self.report.head_seq < seq {
                self.add(
                    self.report.head_seq.saturating_add(1),
                    BreakKind::Truncated,
                    format!("log ends at seq {} but the recorded head is seq {seq}", self.report.head_seq),
                    Some(seq.to_string()),
                    Some(self.report.head_seq.to_string()),
                );
            } else if let Some(found) = self.hash_at(seq) {
                if found != hash {
                    self.add(
                        seq,
                        BreakKind::HeadMismatch,
                        format!(
                            "hash at seq {seq} differs from the recorded head: history was rewritten at or before it"
                        ),
                        Some(to_hex(&hash)),
                        Some(to_hex(&found)),
                    );
                }
            }
        }
        let tree_size = self.builder.size;
        let roots: Vec<(u64, Hash)> = [checkpoint, opts.since.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(checkpoint_size)
            .filter(|&size| size <= tree_size)
            .filter_map(|size| self.root_at(size).map(|r| (size, r)))
            .collect();
        let root_at = |size: u64| -> Option<Hash> { roots.iter().find(|(s, _)| *s == size).map(|(_, r)| *r) };
        let mut latest: Option<Checkpoint> = None;
        if let Some(note) = checkpoint {
            // With a key the checkpoint must open (signature and origin). Without one its signature cannot be
            // checked, but whether it is a checkpoint of these events can: one that disagrees with the log is
            // evidence either way (and `import` refuses it), so it is a break without a key too.
            let (opened, unsigned) = match &opts.verifier {
                Some(v) => {
                    self.report.checks.push(format!("checkpoint: signature by {} and root", v.name()));
                    (open_checkpoint(note, v).map_err(|e| format!("checkpoint does not verify: {e}")), "")
                }
                None => {
                    self.report.checks.push(
                        "checkpoint: root against the events (signature not checked: no verifier key given)".into(),
                    );
                    let parsed =
                        checkpoint_unverified(note).ok_or_else(|| "the stored checkpoint does not parse".into());
                    (parsed, " (the stored checkpoint's signature was not checked)")
                }
            };
            match opened {
                Err(detail) => {
                    let seq = self.report.head_seq;
                    self.add(seq, BreakKind::CheckpointMismatch, detail, None, None);
                }
                Ok(cp) => {
                    match root_at(cp.size) {
                        Some(r) if r == cp.root => {}
                        Some(r) => self.add(
                            cp.size,
                            BreakKind::CheckpointMismatch,
                            format!("signed root for size {} does not match the events{unsigned}", cp.size),
                            Some(to_hex(&cp.root)),
                            Some(to_hex(&r)),
                        ),
                        None => self.add(
                            cp.size,
                            BreakKind::Truncated,
                            format!("checkpoint covers {} events but the log has {tree_size}{unsigned}", cp.size),
                            Some(cp.size.to_string()),
                            Some(tree_size.to_string()),
                        ),
                    }
                    // Only an opened checkpoint counts as the log's signed size (and for `--since`).
                    if opts.verifier.is_some() {
                        self.report.checkpoint_size = Some(cp.size);
                        latest = Some(cp);
                    }
                }
            }
        } else if opts.verifier.is_some() {
            self.report.checks.push("checkpoint: none stored".into());
        }
        if let (Some(since), Some(v)) = (&opts.since, &opts.verifier) {
            self.report.checks.push("consistency: log extends the older checkpoint".into());
            match open_checkpoint(since, v) {
                Err(e) => self.add(0, BreakKind::CheckpointMismatch, format!("older checkpoint does not verify: {e}"), None, None),
                Ok(old) => match root_at(old.size) {
                    Some(r) if r == old.root => {
                        if let Some(new) = &latest {
                            if new.size < old.size {
                                self.add(new.size, BreakKind::Inconsistent, "newer checkpoint is smaller than the older one".into(), None, None);
                            }
                        }
                    }
                    Some(r) => self.add(
                        old.size,
                        BreakKind::Inconsistent,
                        format!("the log's first {} events do not hash to the older checkpoint's root: history was rewritten", old.size),
                        Some(to_hex(&old.root)),
                        Some(to_hex(&r)),
                    ),
                    None => self.add(
                        tree_size + 1,
                        BreakKind::Truncated,
                        format!("older checkpoint covers {} events but the log has {tree_size}", old.size),
                        Some(old.size.to_string()),
                        Some(tree_size.to_string()),
                    ),
                },
            }
        }
        self.report.breaks.sort_by_key(|b| (b.seq, b.kind.as_str()));
        self.report
    }

    fn hash_at(&self, seq: u64) -> Option<Hash> {
        if self.want_head == Some(seq) { self.head_found } else { None }
    }
}

/// Checks a consistency proof between two checkpoints (used by `verify --since` on live stores and by
/// `receipt verify`).
pub fn check_consistency(old: &Checkpoint, new: &Checkpoint, proof: &[Hash]) -> Result<(), String> {
    verify_consistency(old.size, new.size, proof, &old.root, &new.root).map_err(|e| e.to_string())
}

/// Why verification could not run at all (distinct from a broken log, which is a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The export file could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Verifies a data directory (no server may hold it). `progress` is called with events done so far.
pub fn verify_dir(
    dir: &std::path::Path,
    opts: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<Report, VerifyError> {
    let store = crate::store::Store::open(dir)?;
    let checkpoint = store.checkpoint_at_or_before(u64::MAX)?;
    let mut v = ChainVerifier::new(&dir.display().to_string(), opts.head.map(|h| h.0));
    // Events are checked by their own seqs, so a missing or moved block shows up as missing/reordered events.
    for block in store.blocks_from(0) {
        let (first_seq, bytes) = block?;
        match crate::store::parse_block(&bytes) {
            Ok(events) => {
                for e in events {
                    v.event(e.body, &e.hash);
                }
            }
            Err(detail) => v.framing(first_seq, format!("block at seq {first_seq}: {detail}")),
        }
        progress(v.report.events);
    }
    for tile in store.tiles() {
        let (level, index, bytes) = tile?;
        v.stored_tile(level, index, &bytes);
    }
    Ok(v.finish(opts, checkpoint.as_ref().map(|c| c.1.as_str())))
}

/// The tree size of a signed checkpoint note, read without checking its signature (that happens later).
pub fn checkpoint_size(note: &str) -> Option<u64> {
    checkpoint_unverified(note).map(|c| c.size)
}

/// The checkpoint text of a signed note, parsed without checking any signature (so never to be trusted
/// alone: for sizes to plan with, and to compare with the events a file carries).
pub fn checkpoint_unverified(note: &str) -> Option<Checkpoint> {
    let text = note.find("\n\n").map(|i| &note[..=i])?;
    Checkpoint::parse(text).ok()
}
