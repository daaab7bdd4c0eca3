//! The portable export / bundle file, and import.
//!
//! Layout (docs/FORMAT.md): magic `HWLX`, format byte `0x01`, event count (u64 LE), then each event framed
//! as in a block (`u32 LE length ‖ body ‖ 32-byte chain hash`), then the latest signed checkpoint and the
//! verifier key, each as `u32 LE length ‖ UTF-8` (length 0 = absent). A bundle is an export that carries a
//! checkpoint and a key; verification never trusts the key inside the file alone (`--vkey` pins it).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::chain::Hash;
use crate::codec::MAX_BODY_LEN;
use crate::store::Store;
use crate::verify::{ChainVerifier, Report, VerifyError, VerifyOptions, checkpoint_size};

/// File magic.
pub const MAGIC: &[u8; 4] = b"HWLX";
/// Export format version.
pub const EXPORT_FORMAT_V1: u8 = 1;
/// Longest checkpoint or key section accepted.
const MAX_TEXT_SECTION: u32 = 1 << 20;

/// Why an export could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// I/O.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the store.
    #[error(transparent)]
    Read(#[from] crate::replay::ReadError),
    /// Store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The file is not an export.
    #[error("{0}")]
    Format(String),
}

/// Summary of a written export.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// Events written.
    pub events: u64,
    /// File size.
    pub bytes: u64,
    /// Tree size of the included checkpoint.
    pub checkpoint_size: Option<u64>,
    /// BLAKE3 of the whole file (to compare copies quickly; integrity comes from the chain and signature).
    pub blake3: String,
}

/// Writes every event of `store` up to its head, plus `checkpoint` and `vkey`, to `path` (atomically:
/// a temporary file renamed into place).
pub fn export(
    store: &Store,
    path: &Path,
    checkpoint: Option<&str>,
    vkey: Option<&str>,
) -> Result<ExportSummary, ExportError> {
    let io = |op, source| ExportError::Io { op, path: path.display().to_string(), source };
    let head = store
        .last_block()?
        .map(|(first, bytes)| crate::store::parse_block(&bytes).map(|e| first + e.len() as u64 - 1))
        .transpose()
        .map_err(ExportError::Format)?
        .unwrap_or(0);
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    let mut hasher = blake3::Hasher::new();
    let mut w = HashingWriter { inner: BufWriter::new(file), hasher: &mut hasher, bytes: 0 };
    w.write_all(MAGIC).map_err(|e| io("write", e))?;
    w.write_all(&[EXPORT_FORMAT_V1]).map_err(|e| io("write", e))?;
    w.write_all(&head.to_le_bytes()).map_err(|e| io("write", e))?;
    let mut err = None;
    crate::replay::for_each_raw(store, 1, head, |_, body, hash| {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let r = w.write_all(&len.to_le_bytes()).and_then(|_| w.write_all(body)).and_then(|_| w.write_all(hash));
        if let Err(e) = r {
            err = Some(e);
        }
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(io("write", e));
    }
    for section in [checkpoint, vkey] {
        let text = section.unwrap_or("");
        let len = u32::try_from(text.len()).map_err(|_| ExportError::Format("section too large".into()))?;
        w.write_all(&len.to_le_bytes()).and_then(|_| w.write_all(text.as_bytes())).map_err(|e| io("write", e))?;
    }
    let bytes = w.bytes;
    let mut inner = w.inner.into_inner().map_err(|e| io("flush", e.into_error()))?;
    inner.flush().map_err(|e| io("flush", e))?;
    inner.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    Ok(ExportSummary {
        events: head,
        bytes,
        checkpoint_size: checkpoint.and_then(checkpoint_size),
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

struct HashingWriter<'a, W: Write> {
    inner: W,
    hasher: &'a mut blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The sections of an export file that follow the events.
#[derive(Debug, Clone, Default)]
pub struct Trailer {
    /// Signed checkpoint note.
    pub checkpoint: Option<String>,
    /// Verifier key carried in the file (informational: never trusted alone).
    pub vkey: Option<String>,
}

/// Reads an export file, handing each framed event to `f(seq_position, body, hash)`. Total: a malformed file
/// yields an error naming the offset and what was wrong; nothing is trusted.
pub fn read_export(path: &Path, mut f: impl FnMut(u64, &[u8], &Hash)) -> Result<(u64, Trailer), ExportError> {
    let file = std::fs::File::open(path).map_err(|source| ExportError::Io {
        op: "open",
        path: path.display().to_string(),
        source,
    })?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 13];
    read_exact(&mut r, &mut header, "header")?;
    if &header[..4] != MAGIC {
        return Err(ExportError::Format("not an hwledger export (bad magic)".into()));
    }
    if header[4] != EXPORT_FORMAT_V1 {
        return Err(ExportError::Format(format!("unknown export format {}", header[4])));
    }
    let count = u64::from_le_bytes(header[5..13].try_into().map_err(|_| ExportError::Format("header".into()))?);
    let mut body = Vec::new();
    for i in 1..=count {
        let mut len = [0u8; 4];
        read_exact(&mut r, &mut len, "event length").map_err(|e| truncated(e, i, count))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_BODY_LEN {
            return Err(ExportError::Format(format!("event {i}: body of {len} bytes exceeds the limit")));
        }
        body.resize(len, 0);
        read_exact(&mut r, &mut body, "event body").map_err(|e| truncated(e, i, count))?;
        let mut hash = [0u8; 32];
        read_exact(&mut r, &mut hash, "event hash").map_err(|e| truncated(e, i, count))?;
        f(i, &body, &hash);
    }
    let checkpoint = read_text(&mut r, "checkpoint")?;
    let vkey = read_text(&mut r, "verifier key")?;
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(|source| ExportError::Io { op: "read", path: path.display().to_string(), source })?
        != 0
    {
        return Err(ExportError::Format("trailing bytes after the last section".into()));
    }
    Ok((count, Trailer { checkpoint, vkey }))
}

fn truncated(e: ExportError, i: u64, count: u64) -> ExportError {
    match e {
        ExportError::Format(m) => ExportError::Format(format!("truncated at event {i} of {count}: {m}")),
        other => other,
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), ExportError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ExportError::Format(format!("file ends inside {what}"))
        } else {
            ExportError::Io { op: "read", path: what.to_owned(), source: e }
        }
    })
}

fn read_text(r: &mut impl Read, what: &str) -> Result<Option<String>, ExportError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, what)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_TEXT_SECTION {
        return Err(ExportError::Format(format!("{what} section of {len} bytes exceeds the limit")));
    }
    if len == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(r, &mut buf, what)?;
    String::from_utf8(buf).map(Some).map_err(|_| ExportError::Format(format!("{what} is not UTF-8")))
}

/// Verifies an export or bundle file offline.
pub fn verify_export(path: &Path, opts: &VerifyOptions, mut progress: impl FnMut(u64)) -> Result<Report, VerifyError> {
    let mut v = ChainVerifier::new(&path.display().to_string(), opts.head.map(|h| h.0));
    let result = read_export(path, |i, body, hash| {
        v.event(body, hash);
        if i % 65536 == 0 {
            progress(i);
        }
    });
    match result {
        Ok((_, trailer)) => Ok(v.finish(opts, trailer.checkpoint.as_deref())),
        Err(ExportError::Io { source, path, .. }) => Err(VerifyError::Io { path, source }),
        Err(e) => {
            let seq = v.root_size() + 1;
            v.framing(seq, e.to_string());
            Ok(v.finish(opts, None))
        }
    }
}

/// Imports an export into an empty data directory, writing blocks, Merkle tiles, idempotency entries and the
/// state exactly as the ledger would. The caller verifies the file first (`hwledger import` does). Imported
/// idempotency entries carry an all-zero digest: the original command bodies are not in the log, so a retry of
/// an imported command id gets its original receipt whatever its body.
pub fn import(path: &Path, dir: &Path) -> Result<u64, ExportError> {
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(ExportError::Format(format!(
            "{} is not empty; import only into a new data directory",
            dir.display()
        )));
    }
    let store = Store::open(dir)?;
    let mut state = crate::state::State::default();
    let mut tiles = crate::tiles::TileBuilder::new();
    let mut done = Vec::new();
    let mut batch = crate::store::CommitBatch::default();
    let mut block = Vec::new();
    crate::store::start_block(&mut block);
    let mut block_first = 1u64;
    let mut count = 0u32;
    let mut last = (0u64, crate::chain::GENESIS);
    let mut commands: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    let mut failure = None;
    let flush = |batch: &mut crate::store::CommitBatch| -> Result<(), ExportError> {
        store.commit(std::mem::take(batch))?;
        Ok(())
    };
    let result = read_export(path, |seq, body, hash| {
        if failure.is_some() {
            return;
        }
        match crate::codec::decode_record(body) {
            Ok(record) => {
                crate::state::apply(&mut state, &record);
                let e = commands.entry(record.command_id.clone()).or_insert((seq, seq));
                e.1 = seq;
            }
            Err(e) => failure = Some(ExportError::Format(format!("event {seq}: {e}"))),
        }
        tiles.push_leaf(crate::merkle::leaf_hash(body), &mut done);
        crate::store::frame_event(&mut block, body, hash);
        count += 1;
        last = (seq, *hash);
        if block.len() >= crate::store::MAX_BLOCK_BYTES {
            crate::store::finish_block(&mut block, count);
            batch.blocks.push((block_first, std::mem::take(&mut block)));
            crate::store::start_block(&mut block);
            block_first = seq + 1;
            count = 0;
        }
        for t in done.drain(..) {
            batch.tiles.push((t.level, t.index, t.bytes));
        }
        if batch.blocks.len() >= 64 {
            if let Err(e) = flush(&mut batch) {
                failure = Some(e);
            }
        }
    });
    let (n, trailer) = result?;
    if let Some(e) = failure {
        return Err(e);
    }
    if count > 0 {
        crate::store::finish_block(&mut block, count);
        batch.blocks.push((block_first, block));
    }
    let mut commands: Vec<_> = commands.into_iter().collect();
    commands.sort_unstable_by_key(|(_, (first_seq, _))| *first_seq);
    for (id, (first_seq, last_seq)) in commands {
        batch.commands.push((id, crate::store::CommandEntry { digest: [0; 32], first_seq, last_seq }));
    }
    if let Some(cp) = trailer.checkpoint {
        if let Some(size) = checkpoint_size(&cp) {
            batch.checkpoints.push((size, cp));
        }
    }
    batch.meta.push(("verified", crate::store::encode_seq_hash(last.0, &last.1)));
    batch.snapshot = Some(crate::codec::encode_value(&state));
    flush(&mut batch)?;
    Ok(n)
}
