//! Fuzz `parse_status`: any UTF-8 input must give a result or a typed error, never a panic.
#![no_main]

use hwledger_adapters::tailscale::parse_status;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_status(text);
    }
});
