//! Fuzz the event decoder (`codec::decode_record`), the reader of every stored body: any bytes give a
//! record or a typed `DecodeError`, never a panic or an allocation beyond the body limit. A body that
//! decodes re-encodes to bytes that decode to the same encoding (the encoder is canonical, the decoder
//! also accepts longer varints, so the first re-encoding may be shorter than the input), and every
//! reader-side rendering of a record (type name, stream, the JSON of `hwledger log --json` and SSE)
//! is total.
#![no_main]

use hwledger_engine::codec::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode_record(data) else { return };
    let canonical = encode_record(&record);
    assert!(canonical.len() <= data.len(), "canonical encoding is never longer than an accepted one");
    let again = decode_record(&canonical).expect("a re-encoded record decodes");
    assert_eq!(encode_record(&again), canonical, "encoding is stable");
    assert_eq!(again.seq, record.seq);
    let _ = record.event.type_name();
    let _ = record.event.stream();
    let _ = serde_json::to_string(&record).expect("every record renders as JSON");
});
