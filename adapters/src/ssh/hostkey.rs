//! Host key checking: the only thing standing between an agentless probe and a man in the middle.
//!
//! Two policies exist. [`HostKeyPolicy::KnownHosts`] reads an OpenSSH `known_hosts` file (plain,
//! `[host]:port`, wildcard and negated patterns, hashed `|1|salt|hash` entries, `@revoked` markers).
//! [`HostKeyPolicy::Pinned`] compares with the SHA-256 fingerprint the ledger pinned for the device, or —
//! with no pin yet — trusts on first use and reports the key so the caller records the pin as an event.
//! A key that differs from what is expected is always refused with [`SshError::HostKeyChanged`]; nothing
//! here ever accepts a changed key silently.
//!
//! The `known_hosts` parser is total: unparseable lines, unsupported key types (RSA, DSA, security-key
//! types) and unknown markers are skipped and listed in [`KnownHosts::skipped`]; they can never make a
//! host match.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use parking_lot::Mutex;
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PublicKey, PublicKeyOrCertificate};
use sha1::Sha1;

use super::error::SshError;

/// Largest `known_hosts` file read: large fleets have big files, but anything beyond this is not a
/// `known_hosts` file and must not be slurped into memory.
pub const MAX_KNOWN_HOSTS_BYTES: u64 = 16 * 1024 * 1024;

/// The key types hwledger negotiates and can verify (no RSA: see DEPENDENCIES.md).
const SUPPORTED_KEY_TYPES: &[&str] =
    &["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"];

/// How the server's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Accept only keys recorded for the host in this OpenSSH `known_hosts` file.
    KnownHosts(PathBuf),
    /// Compare with the fingerprint pinned in the ledger.
    Pinned {
        /// `SHA256:<base64>` as OpenSSH prints it. `None` = trust on first use: accept the key and
        /// report it (see [`HostKeyTrust::FirstUse`]) so the caller can pin it with an event.
        expected: Option<String>,
    },
}

/// Why a host key was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyTrust {
    /// Found in the `known_hosts` file.
    KnownHosts,
    /// Matched the pinned fingerprint.
    Pinned,
    /// No pin existed: accepted on first use. The caller must record the fingerprint.
    FirstUse,
}

/// The host key a session was established with.
#[derive(Debug, Clone)]
pub struct AcceptedHostKey {
    /// The server's public key.
    pub key: PublicKey,
    /// Its `SHA256:<base64>` fingerprint.
    pub fingerprint: String,
    /// Why it was accepted.
    pub trust: HostKeyTrust,
}

/// `SHA256:<base64>` fingerprint of a public key, exactly as `ssh-keygen -l` prints it.
pub fn fingerprint_sha256(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses a pinned fingerprint (`SHA256:<base64>`, or `SHA512:<base64>`).
pub fn parse_pin(pin: &str) -> Result<Fingerprint, SshError> {
    Fingerprint::from_str(pin.trim()).map_err(|_| SshError::InvalidPin { pin: pin.to_owned() })
}

/// `@marker` at the start of a `known_hosts` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsMarker {
    /// A plain host key line.
    None,
    /// `@revoked`: the key must never be accepted.
    Revoked,
    /// `@cert-authority`: a CA for host certificates (hwledger does not use certificates, so these
    /// lines never make a plain key acceptable).
    CertAuthority,
}

/// One usable `known_hosts` line.
#[derive(Debug, Clone)]
pub struct KnownHostsEntry {
    /// 1-based line number, for messages.
    pub line: usize,
    /// The line's marker.
    pub marker: KnownHostsMarker,
    /// The comma-separated host patterns as written (possibly one hashed `|1|` entry).
    pub patterns: String,
    /// The recorded key, if its type is one hwledger supports.
    pub key: Option<PublicKey>,
    /// The key type as written (`ssh-ed25519`, `ssh-rsa`, ...).
    pub key_type: String,
}

/// A `known_hosts` line that was not understood, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What a `known_hosts` file says about a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownHostsVerdict {
    /// A plain entry for the host holds exactly this key.
    Match {
        /// The matching line.
        line: usize,
    },
    /// An `@revoked` entry matching the host holds this key.
    Revoked {
        /// The revoking line.
        line: usize,
    },
    /// The host is known, but with other keys: these are their fingerprints (or key types when the
    /// recorded key is of a type hwledger cannot verify).
    Changed {
        /// What the file expects.
        expected: Vec<String>,
    },
    /// No entry for the host.
    Unknown,
}

/// A parsed OpenSSH `known_hosts` file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<KnownHostsEntry>,
    skipped: Vec<SkippedLine>,
}

impl KnownHosts {
    /// Reads and parses a file, refusing files over [`MAX_KNOWN_HOSTS_BYTES`].
    pub fn load(path: &Path) -> Result<KnownHosts, SshError> {
        let unreadable = |reason: String| SshError::KnownHostsUnreadable { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
        if meta.len() > MAX_KNOWN_HOSTS_BYTES {
            return Err(unreadable(format!(
                "file is {} bytes, more than the {MAX_KNOWN_HOSTS_BYTES}-byte limit",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        // The file may have grown between metadata() and read().
        if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_KNOWN_HOSTS_BYTES) {
            return Err(unreadable(format!(
                "file grew beyond the {MAX_KNOWN_HOSTS_BYTES}-byte limit while being read"
            )));
        }
        Ok(KnownHosts::parse_bytes(&bytes))
    }

    /// Parses `known_hosts` text. Never fails: bad lines are recorded in [`KnownHosts::skipped`].
    pub fn parse(text: &str) -> KnownHosts {
        KnownHosts::parse_bytes(text.as_bytes())
    }

    /// Parses `known_hosts` bytes; lines that are not UTF-8 are skipped.
    pub fn parse_bytes(bytes: &[u8]) -> KnownHosts {
        let mut out = KnownHosts::default();
        for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = index.saturating_add(1);
            let Ok(text) = std::str::from_utf8(raw) else {
                out.skip(line, "line is not valid UTF-8");
                continue;
            };
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let mut fields = text.split_ascii_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = if let Some(name) = first.strip_prefix('@') {
                let marker = match name {
                    "revoked" => KnownHostsMarker::Revoked,
                    "cert-authority" => KnownHostsMarker::CertAuthority,
                    other => {
                        out.skip(line, &format!("unknown marker @{other}"));
                        continue;
                    }
                };
                first = fields.next().unwrap_or_default();
                marker
            } else {
                KnownHostsMarker::None
            };
            let (Some(key_type), Some(blob)) = (fields.next(), fields.next()) else {
                out.skip(line, "expected: [@marker] hosts key-type base64-key [comment]");
                continue;
            };
            if first.is_empty() {
                out.skip(line, "empty host pattern");
                continue;
            }
            let key = if SUPPORTED_KEY_TYPES.contains(&key_type) {
                match PublicKey::from_openssh(&format!("{key_type} {blob}")) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        out.skip(line, &format!("cannot decode {key_type} key: {e}"));
                        continue;
                    }
                }
            } else {
                // Kept so the host still counts as known (with a key we cannot verify), which turns
                // a would-be "unknown host" into a refusal naming the recorded type.
                None
            };
            out.entries.push(KnownHostsEntry {
                line,
                marker,
                patterns: first.to_owned(),
                key,
                key_type: key_type.to_owned(),
            });
        }
        out
    }

    fn skip(&mut self, line: usize, reason: &str) {
        self.skipped.push(SkippedLine { line, reason: reason.to_owned() });
    }

    /// The usable entries, in file order.
    pub fn entries(&self) -> &[KnownHostsEntry] {
        &self.entries
    }

    /// Lines that were ignored, with reasons.
    pub fn skipped(&self) -> &[SkippedLine] {
        &self.skipped
    }

    /// Entries whose host patterns match `host_name` (`host`, or `[host]:port` off port 22).
    pub fn entries_for<'a>(&'a self, host_name: &'a str) -> impl Iterator<Item = &'a KnownHostsEntry> + 'a {
        self.entries.iter().filter(move |e| host_patterns_match(&e.patterns, host_name))
    }

    /// Supported key algorithms recorded (not revoked) for the host, in file order, so the client can
    /// ask the server for a key type it can verify first.
    pub fn known_algorithms(&self, host_name: &str) -> Vec<Algorithm> {
        let mut algorithms = Vec::new();
        for entry in self.entries_for(host_name) {
            if entry.marker != KnownHostsMarker::None {
                continue;
            }
            if let Some(key) = &entry.key {
                let algorithm = key.algorithm();
                if !algorithms.contains(&algorithm) {
                    algorithms.push(algorithm);
                }
            }
        }
        algorithms
    }

    /// Decides what the file says about `key` presented by `host_name`.
    pub fn check(&self, host_name: &str, key: &PublicKey) -> KnownHostsVerdict {
        let mut expected = Vec::new();
        let mut matched = None;
        for entry in self.entries_for(host_name) {
            let same_key = entry.key.as_ref().is_some_and(|k| k.key_data() == key.key_data());
            match entry.marker {
                KnownHostsMarker::Revoked if same_key => {
                    return KnownHostsVerdict::Revoked { line: entry.line };
                }
                KnownHostsMarker::None if same_key => {
                    matched.get_or_insert(entry.line);
                }
                KnownHostsMarker::None => expected.push(match &entry.key {
                    Some(k) => format!("{} ({})", fingerprint_sha256(k), entry.key_type),
                    None => format!("a {} key (not verifiable by hwledger)", entry.key_type),
                }),
                KnownHostsMarker::Revoked | KnownHostsMarker::CertAuthority => {}
            }
        }
        match matched {
            Some(line) => KnownHostsVerdict::Match { line },
            None if expected.is_empty() => KnownHostsVerdict::Unknown,
            None => KnownHostsVerdict::Changed { expected },
        }
    }
}

/// OpenSSH host pattern list semantics: comma-separated patterns with `*`/`?` wildcards; a matching
/// `!pattern` vetoes the line; a `|1|salt|hash` entry matches by HMAC-SHA1 of the host name.
fn host_patterns_match(patterns: &str, host_name: &str) -> bool {
    let host_lower = host_name.to_ascii_lowercase();
    let mut positive = false;
    for pattern in patterns.split(',') {
        if pattern.starts_with("|1|") {
            if hashed_entry_matches(pattern, host_name) {
                positive = true;
            }
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(&negated.to_ascii_lowercase(), &host_lower) {
                return false;
            }
        } else if wildcard_match(&pattern.to_ascii_lowercase(), &host_lower) {
            positive = true;
        }
    }
    positive
}

/// `|1|<base64 salt>|<base64 HMAC-SHA1(salt, host)>`; malformed entries never match.
fn hashed_entry_matches(entry: &str, host_name: &str) -> bool {
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
        return false;
    };
    let Ok(mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(host_name.as_bytes()).verify_slice(&hash).is_ok()
}

/// Glob match with `*` (any run) and `?` (one character), linear backtracking on the last `*`.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// Host-key algorithms offered to the server, most preferred first: types already recorded for the
/// host (so a host with several keys presents the one we can check), then ed25519, then ECDSA.
pub(crate) fn preferred_host_key_algorithms(known_first: &[Algorithm]) -> Vec<Algorithm> {
    let mut out: Vec<Algorithm> = known_first.to_vec();
    let defaults = [
        Algorithm::Ed25519,
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
    ];
    for algorithm in defaults {
        if !out.contains(&algorithm) {
            out.push(algorithm);
        }
    }
    out
}

/// A policy made ready for one connection (file read, pin parsed).
#[derive(Debug, Clone)]
pub(crate) enum ResolvedPolicy {
    KnownHosts { path: PathBuf, db: Arc<KnownHosts> },
    Pinned(Option<Fingerprint>),
}

impl ResolvedPolicy {
    pub(crate) fn resolve(policy: &HostKeyPolicy) -> Result<ResolvedPolicy, SshError> {
        match policy {
            HostKeyPolicy::KnownHosts(path) => {
                Ok(ResolvedPolicy::KnownHosts { path: path.clone(), db: Arc::new(KnownHosts::load(path)?) })
            }
            HostKeyPolicy::Pinned { expected: None } => Ok(ResolvedPolicy::Pinned(None)),
            HostKeyPolicy::Pinned { expected: Some(pin) } => Ok(ResolvedPolicy::Pinned(Some(parse_pin(pin)?))),
        }
    }

    /// Algorithms to offer for `host_name` (see [`preferred_host_key_algorithms`]).
    pub(crate) fn preferred_algorithms(&self, host_name: &str) -> Vec<Algorithm> {
        match self {
            ResolvedPolicy::KnownHosts { db, .. } => preferred_host_key_algorithms(&db.known_algorithms(host_name)),
            ResolvedPolicy::Pinned(_) => preferred_host_key_algorithms(&[]),
        }
    }

    /// Accepts `key` for `host_name` or says why not.
    pub(crate) fn verify(&self, host_name: &str, key: &PublicKey) -> Result<HostKeyTrust, SshError> {
        let found = fingerprint_sha256(key);
        match self {
            ResolvedPolicy::KnownHosts { path, db } => match db.check(host_name, key) {
                KnownHostsVerdict::Match { .. } => Ok(HostKeyTrust::KnownHosts),
                KnownHostsVerdict::Revoked { .. } => {
                    Err(SshError::HostKeyRevoked { host: host_name.to_owned(), found })
                }
                KnownHostsVerdict::Changed { expected } => {
                    Err(SshError::HostKeyChanged { host: host_name.to_owned(), expected: expected.join(", "), found })
                }
                KnownHostsVerdict::Unknown => {
                    Err(SshError::HostKeyUnknown { host: host_name.to_owned(), path: path.clone(), found })
                }
            },
            ResolvedPolicy::Pinned(None) => Ok(HostKeyTrust::FirstUse),
            ResolvedPolicy::Pinned(Some(pin)) => {
                if key.fingerprint(pin.algorithm()) == *pin {
                    Ok(HostKeyTrust::Pinned)
                } else {
                    Err(SshError::HostKeyChanged { host: host_name.to_owned(), expected: pin.to_string(), found })
                }
            }
        }
    }
}

/// Error type of the russh handler: a library error, or our refusal of the host key (carried through
/// russh unchanged so the caller gets the typed [`SshError`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    #[error(transparent)]
    Russh(#[from] russh::Error),
    #[error(transparent)]
    Rejected(Box<SshError>),
}

/// The russh client handler: checks the host key once, during the initial key exchange, and records
/// the accepted key for the session.
pub(crate) struct HostKeyHandler {
    pub(crate) host_name: String,
    pub(crate) policy: ResolvedPolicy,
    pub(crate) accepted: Arc<Mutex<Option<AcceptedHostKey>>>,
}

impl russh::client::Handler for HostKeyHandler {
    type Error = HandlerError;

    async fn check_server_key(&mut self, server_public_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                // Never requested (no certificate algorithms are offered); refuse rather than guess.
                return Err(HandlerError::Rejected(Box::new(SshError::HostKeyUnsupported {
                    host: self.host_name.clone(),
                    detail: format!("a host certificate ({})", cert.algorithm()),
                })));
            }
        };
        let trust = self.policy.verify(&self.host_name, key).map_err(|e| HandlerError::Rejected(Box::new(e)))?;
        *self.accepted.lock() = Some(AcceptedHostKey { key: key.clone(), fingerprint: fingerprint_sha256(key), trust });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Public keys generated with `ssh-keygen -t ed25519` / `-t ecdsa` for these tests only.
    const ED_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIFIaL8Tud9efYSVQeD1ypdnww5Kpuu9i2ukn5xQH+jYq";
    const ED_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHkbmx24rNlcC57lrYIuCxE1M4vlyaJPfU/0GFH7ip9V";

    fn key(b64: &str) -> PublicKey {
        match PublicKey::from_openssh(&format!("ssh-ed25519 {b64}")) {
            Ok(k) => k,
            Err(e) => panic!("test key does not decode: {e}"),
        }
    }

    #[test]
    fn plain_and_port_forms_match() {
        let db = KnownHosts::parse(&format!(
            "gpu1,10.0.0.1 ssh-ed25519 {ED_A}\n[gpu1]:2222 ssh-ed25519 {ED_B} comment here\n"
        ));
        assert!(db.skipped().is_empty(), "{:?}", db.skipped());
        assert_eq!(db.check("gpu1", &key(ED_A)), KnownHostsVerdict::Match { line: 1 });
        assert_eq!(db.check("10.0.0.1", &key(ED_A)), KnownHostsVerdict::Match { line: 1 });
        assert_eq!(db.check("[gpu1]:2222", &key(ED_B)), KnownHostsVerdict::Match { line: 2 });
        assert!(matches!(db.check("[gpu1]:2222", &key(ED_A)), KnownHostsVerdict::Changed { .. }));
        assert_eq!(db.check("[gpu1]:2223", &key(ED_B)), KnownHostsVerdict::Unknown);
        assert_eq!(db.check("gpu2", &key(ED_A)), KnownHostsVerdict::Unknown);
    }

    #[test]
    fn changed_key_reports_expected_fingerprint() {
        let db = KnownHosts::parse(&format!("gpu1 ssh-ed25519 {ED_A}\n"));
        let KnownHostsVerdict::Changed { expected } = db.check("gpu1", &key(ED_B)) else {
            panic!("a different key for a known host must be reported as changed");
        };
        assert_eq!(expected.len(), 1);
        assert!(expected.iter().all(|e| e.starts_with(&fingerprint_sha256(&key(ED_A)))));
    }

    #[test]
    fn wildcards_and_negation() {
        let db = KnownHosts::parse(&format!("*.lab,!bad.lab ssh-ed25519 {ED_A}\n"));
        assert!(matches!(db.check("gpu7.lab", &key(ED_A)), KnownHostsVerdict::Match { .. }));
        assert_eq!(db.check("bad.lab", &key(ED_A)), KnownHostsVerdict::Unknown);
        assert!(wildcard_match("g?u*", "gpu-17"));
        assert!(!wildcard_match("g?u", "gpu-17"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn hashed_entries_match_by_hmac_and_garbage_is_ignored() {
        // Entry for "localhost" with ED_A, hashed by `ssh-keygen -H` for this test.
        let db = KnownHosts::parse(&format!(
            "|1|pFSLgheOJ0pBtYy6TM8XrJOUnOQ=|09f4A+/yX/Hix6Skf6VQOW1ETog= ssh-ed25519 {ED_A}\n\
             |1|!!notbase64|xx ssh-ed25519 {ED_B}\n|1|| ssh-ed25519 {ED_B}\n"
        ));
        assert!(matches!(db.check("localhost", &key(ED_A)), KnownHostsVerdict::Match { .. }));
        assert_eq!(db.check("otherhost", &key(ED_A)), KnownHostsVerdict::Unknown);
        assert_eq!(db.check("otherhost", &key(ED_B)), KnownHostsVerdict::Unknown);
    }

    #[test]
    fn revoked_marker_wins() {
        let db = KnownHosts::parse(&format!("gpu1 ssh-ed25519 {ED_A}\n@revoked * ssh-ed25519 {ED_A}\n"));
        assert_eq!(db.check("gpu1", &key(ED_A)), KnownHostsVerdict::Revoked { line: 2 });
    }

    #[test]
    fn hostile_lines_are_skipped_never_matched() {
        let mut text = b"# comment\n\n@weird gpu1 ssh-ed25519 AAAA\ngpu1 ssh-ed25519\n".to_vec();
        text.extend_from_slice(b"gpu1 ssh-ed25519 !!!!\n\xff\xfe garbage\n");
        text.extend_from_slice(b"gpu1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFIaL8Tud9ef\n");
        text.extend_from_slice(format!("gpu1 ecdsa-sha2-nistp256 {ED_A}\n").as_bytes());
        let db = KnownHosts::parse_bytes(&text);
        assert_eq!(db.skipped().len(), 6, "{:?}", db.skipped());
        assert!(db.entries().is_empty());
        assert_eq!(db.check("gpu1", &key(ED_A)), KnownHostsVerdict::Unknown);
    }

    #[test]
    fn unsupported_recorded_type_refuses_instead_of_unknown() {
        let db = KnownHosts::parse("gpu1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC\n");
        let KnownHostsVerdict::Changed { expected } = db.check("gpu1", &key(ED_A)) else {
            panic!("a host known only by an RSA key must not look unknown");
        };
        assert!(expected.iter().all(|e| e.contains("ssh-rsa")));
    }

    #[test]
    fn pins_are_parsed_and_compared() {
        let fp = fingerprint_sha256(&key(ED_A));
        assert!(fp.starts_with("SHA256:"));
        let policy = ResolvedPolicy::resolve(&HostKeyPolicy::Pinned { expected: Some(fp.clone()) });
        let Ok(policy) = policy else {
            panic!("a fingerprint we printed must parse as a pin");
        };
        assert_eq!(policy.verify("h", &key(ED_A)).ok(), Some(HostKeyTrust::Pinned));
        match policy.verify("h", &key(ED_B)) {
            Err(SshError::HostKeyChanged { expected, found, .. }) => {
                assert_eq!(expected, fp);
                assert_eq!(found, fingerprint_sha256(&key(ED_B)));
            }
            other => panic!("expected HostKeyChanged, got {other:?}"),
        }
        for bad in ["", "SHA256:", "MD5:aa:bb", "SHA256:@@@", "sha256 abc"] {
            assert_eq!(parse_pin(bad).map_err(|e| e.code()).err(), Some("invalid_pin"), "{bad:?}");
        }
    }

    #[test]
    fn preferred_algorithms_put_known_types_first() {
        let p256 = Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 };
        let prefs = preferred_host_key_algorithms(std::slice::from_ref(&p256));
        assert_eq!(prefs.first(), Some(&p256));
        assert_eq!(prefs.len(), 4);
        assert!(!prefs.iter().any(|a| matches!(a, Algorithm::Rsa { .. })));
    }
}
