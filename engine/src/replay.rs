//! Reading the log back: an iterator over stored events from any seq, used by projections, tools and open.

use crate::chain::Hash;
use crate::codec::{DecodeError, decode_record};
use crate::event::EventRecord;
use crate::store::{RawBlock, Store, StoreError, parse_block};

/// One event as stored: its position, chain hash, body bytes and decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// Position in the log.
    pub seq: u64,
    /// Stored chain hash after this event.
    pub hash: Hash,
    /// The decoded record.
    pub record: EventRecord,
}

/// Why reading the log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A block's framing is broken.
    #[error("block at seq {seq}: {detail}")]
    Framing {
        /// First seq of the block.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// An event body does not decode.
    #[error("event {seq}: {source}")]
    Decode {
        /// Its seq.
        seq: u64,
        /// Why.
        source: DecodeError,
    },
    /// Blocks are not contiguous (a gap or overlap in seqs).
    #[error("expected event {expected}, the log continues at {found}")]
    Gap {
        /// Seq expected next.
        expected: u64,
        /// Seq found.
        found: u64,
    },
}

/// Visits raw framed events with seq in `[from, to]` in order: `f(seq, body, stored_hash)`. Stops at the first
/// framing error or gap. Returns the last seq visited (or `from - 1`).
pub fn for_each_raw(
    store: &Store,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, &[u8], &Hash) -> Result<(), ReadError>,
) -> Result<u64, ReadError> {
    let from = from.max(1);
    let mut expected = from;
    let first = store.block_containing(from)?;
    let rest = store.blocks_from(from.saturating_add(1));
    let mut visit = |(first_seq, bytes): RawBlock| -> Result<bool, ReadError> {
        let events = parse_block(&bytes).map_err(|detail| ReadError::Framing { seq: first_seq, detail })?;
        let last = first_seq + events.len() as u64;
        if first_seq > expected {
            return Err(ReadError::Gap { expected, found: first_seq });
        }
        if last <= expected {
            // Entirely before `from` (the block before it).
            return Ok(true);
        }
        let skip = usize::try_from(expected - first_seq).unwrap_or(usize::MAX);
        for (i, ev) in events.iter().enumerate().skip(skip) {
            let seq = first_seq + i as u64;
            if seq > to {
                return Ok(false);
            }
            f(seq, ev.body, &ev.hash)?;
            expected = seq + 1;
        }
        Ok(true)
    };
    if let Some(b) = first {
        if !visit(b)? {
            return Ok(expected - 1);
        }
    }
    for b in rest {
        if !visit(b?)? {
            break;
        }
    }
    Ok(expected - 1)
}

/// Visits decoded events with seq in `[from, to]` in order.
pub fn for_each_event(
    store: &Store,
    from: u64,
    to: u64,
    mut f: impl FnMut(LoggedEvent) -> Result<(), ReadError>,
) -> Result<u64, ReadError> {
    for_each_raw(store, from, to, |seq, body, hash| {
        let record = decode_record(body).map_err(|source| ReadError::Decode { seq, source })?;
        f(LoggedEvent { seq, hash: *hash, record })
    })
}

/// Reads events with seq in `[from, to]` into a vector (for small ranges: receipts, `log`, tests).
pub fn read_events(store: &Store, from: u64, to: u64) -> Result<Vec<LoggedEvent>, ReadError> {
    let mut out = Vec::new();
    for_each_event(store, from, to, |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}
