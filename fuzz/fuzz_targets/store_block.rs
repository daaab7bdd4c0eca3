//! Fuzz the store's own framing: `store::parse_block` (a block of framed events, `B` keys),
//! `store::decode_command_group` (idempotency entries, `C` keys) and `store::decode_seq_hash` (the
//! `verified` head). Stored bytes are read back at every open and by `hwledger verify`, which must report
//! a damaged store, not crash on it. Whatever parses re-encodes to exactly the input bytes (the formats
//! have one encoding each).
#![no_main]

use hwledger_engine::store::{
    CommandEntry, decode_command_group, decode_seq_hash, encode_command_group, encode_seq_hash, finish_block,
    frame_event, parse_block, start_block,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = parse_block(data) {
        let mut block = Vec::new();
        start_block(&mut block);
        for e in &events {
            frame_event(&mut block, e.body, &e.hash);
        }
        finish_block(&mut block, u32::try_from(events.len()).expect("count came from a u32"));
        assert_eq!(block, data, "a parsed block re-frames to the same bytes");
    }
    let mut entries: Vec<(String, CommandEntry)> = Vec::new();
    if decode_command_group(data, |id, e| entries.push((id.to_owned(), e))).is_ok() {
        assert_eq!(encode_command_group(&entries), data, "an idempotency group re-encodes to the same bytes");
    }
    if let Some((seq, hash)) = decode_seq_hash(data) {
        assert_eq!(encode_seq_hash(seq, &hash), data);
    }
});
