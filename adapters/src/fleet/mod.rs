//! Agentless fleet operations: turning what the other adapters observed (an SSH probe, a command run
//! over SSH, rental offers and instances, Tailscale peers) into ledger commands, and ranking where a
//! job could run.
//!
//! Everything here is pure: the functions take observations plus what the ledger already knows
//! ([`KnownDevice`], [`GpuLoad`], read from the registry and snapshots projections) and return
//! [`Submission`]s. Submitting them — to a local data directory or a server — is the binary's job, so
//! adapters still never write ledger state.
//!
//! **Command ids** are deterministic and say what they are (`job/<job>/dispatch`,
//! `pin/<device>/<fingerprint>`, `probe/<device>/<unix ms>`, ...), so a retried submission of the same
//! fact is a duplicate (the original receipt, nothing appended) rather than a second event. Ids of
//! observations carry the observation time, because a new probe is a new fact.
//!
//! * [`probe`] — probe report → enroll (first contact) + pin host key (trust on first use) + register
//!   inventory (when it changed) + record the probe; a failed probe → a failed-probe record.
//! * [`job`] — the dispatch lifecycle and [`job::classify`], which never calls a job completed unless
//!   the server confirmed exit status 0.
//! * [`price`] — rental offers → quotes (and the `quote_rental_price` command), dollars → micro-USD.
//! * [`suggest`] — enrolled devices with enough free VRAM and fitting rental offers, cheapest first.
//! * [`discover`] — Tailscale peers not yet in the registry, and bootstrap-token commands for them.
//! * [`rentals`] — instances seen on a provider → rental devices.

pub mod discover;
pub mod job;
pub mod price;
pub mod probe;
pub mod rentals;
pub mod suggest;

use hwledger_engine::event::{DeviceKind, GpuInfo, MicroUsd, UnixMillis};
use hwledger_engine::{Command, Submission};
use serde::{Deserialize, Serialize};

/// Longest free-text field the engine accepts (`hwledger_engine::decide::MAX_TEXT_LEN`).
pub const MAX_DETAIL_BYTES: usize = hwledger_engine::decide::MAX_TEXT_LEN;

/// What the ledger knows about one device, as far as fleet operations care. Filled from the registry
/// read model (locally, or from the server's `GET /v1/devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownDevice {
    /// Device id.
    pub device_id: String,
    /// How it is reached.
    pub kind: DeviceKind,
    /// Hostname as last reported or declared.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Registered inventory.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// The SSH host key fingerprint pinned for it (trust on first use), if any.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Operator-set hourly rate, micro-USD.
    #[serde(default)]
    pub micro_usd_per_hour: Option<MicroUsd>,
    /// Decommissioned devices are never probed, suggested or dispatched to.
    #[serde(default)]
    pub decommissioned: bool,
    /// When the device was last heard from (registration, telemetry or a successful probe).
    #[serde(default)]
    pub last_seen: Option<UnixMillis>,
}

/// The latest telemetry of one GPU (from the snapshots projection).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuLoad {
    /// Index of the GPU on its device.
    pub index: u32,
    /// When it was sampled (unix ms).
    pub sampled_at: UnixMillis,
    /// VRAM in use, MiB (`None`: the tool could not say).
    pub vram_used_mib: Option<u64>,
    /// VRAM total, MiB.
    pub vram_total_mib: Option<u64>,
}

/// A submission with no expected version.
pub(crate) fn submission(command_id: String, command: Command) -> Submission {
    Submission { command_id, expected_version: None, command }
}

/// Makes `text` acceptable as a free-text field of a command: control characters other than newline
/// and tab become spaces, and it is cut (on a character boundary, with "…") to the engine's limit.
pub fn clip_text(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { ' ' } else { c }).collect();
    if cleaned.len() <= MAX_DETAIL_BYTES {
        return cleaned;
    }
    let ellipsis = '…';
    let mut end = MAX_DETAIL_BYTES - ellipsis.len_utf8();
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = cleaned[..end].to_owned();
    out.push(ellipsis);
    out
}

/// Turns any name into a device id (`[A-Za-z0-9._-]`, 1–64 characters, not starting with `.`):
/// lower case, other characters as `-`, runs of `-` collapsed, cut to 64. `None` if nothing is left.
pub fn device_id_from_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let trimmed: String = out.trim_matches(|c| c == '-' || c == '.').chars().take(64).collect();
    let trimmed = trimmed.trim_end_matches(['-', '.']).to_owned();
    hwledger_engine::command::validate_id(&trimmed).then_some(trimmed)
}

/// Exact micro-USD cost of `duration_ms` at `micro_usd_per_hour`, rounded half up (the cost
/// projection's rule, so a suggestion's estimate is what the job would be charged).
pub fn cost_of_duration(duration_ms: u64, micro_usd_per_hour: MicroUsd) -> MicroUsd {
    const MS_PER_HOUR: u128 = 3_600_000;
    let rounded = (u128::from(duration_ms) * u128::from(micro_usd_per_hour) + MS_PER_HOUR / 2) / MS_PER_HOUR;
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_text_removes_control_characters_and_respects_the_limit() {
        assert_eq!(clip_text("a\u{1b}[31mb\nc\td"), "a [31mb\nc\td");
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let clipped = clip_text(&long);
        assert!(clipped.len() <= MAX_DETAIL_BYTES);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn names_become_valid_device_ids() {
        assert_eq!(device_id_from_name("iStoreOS").as_deref(), Some("istoreos"));
        assert_eq!(device_id_from_name("My Box (2)").as_deref(), Some("my-box-2"));
        assert_eq!(device_id_from_name(".hidden").as_deref(), Some("hidden"));
        assert_eq!(device_id_from_name("fe80::1").as_deref(), Some("fe80-1"));
        assert_eq!(device_id_from_name("---"), None);
        assert_eq!(device_id_from_name(&"x".repeat(100)).map(|s| s.len()), Some(64));
    }

    #[test]
    fn cost_rounds_half_up_like_the_cost_projection() {
        assert_eq!(cost_of_duration(3_600_000, 1_000_000), 1_000_000);
        assert_eq!(cost_of_duration(1_800, 1_000), 1); // 0.5 µ$ rounds up
        assert_eq!(cost_of_duration(1_799, 1_000), 0);
        assert_eq!(cost_of_duration(u64::MAX, u64::MAX), u64::MAX);
    }
}
