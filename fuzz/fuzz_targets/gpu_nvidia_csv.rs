//! Fuzz `parse_nvidia_csv`: any UTF-8 input, read with hwledger's default query and with a short
//! custom one, must give samples or a typed error, never a panic.
#![no_main]

use hwledger_adapters::gpu::parse_nvidia_csv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_nvidia_csv(text, None);
        let _ = parse_nvidia_csv(text, Some(&["gpu_name", "memory.total", "power.draw"]));
    }
});
