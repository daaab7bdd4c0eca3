//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys: key identifiers, the verifier-key
//! (`vkey`) and signer-key text encodings, signing a note and opening (parsing and verifying) one.
//!
//! A signed note is a UTF-8 text ending in a newline, a blank line, then one or more lines
//! `— <key name> <base64(key ID || signature)>`. hwledger signs its checkpoints this way (see
//! [`crate::checkpoint`]), so anyone holding the log's vkey can check a checkpoint with any C2SP tool. Opening is
//! total: malformed, oversized or hostile input yields a [`NoteError`], never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Largest note [`open_note`] accepts. A checkpoint with a few cosignatures is well under 1 KiB; the cap bounds
/// the work a hostile peer can cause.
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// Most signature lines [`open_note`] reads. The spec requires accepting at least 16; witness-cosigned
/// checkpoints stay far below 100, and the cap bounds verification work.
pub const MAX_SIGNATURES: usize = 100;

/// Signature type byte of Ed25519 in key IDs and keys (signed-note §"Signature types").
const ALG_ED25519: u8 = 0x01;

/// Start of every signature line: U+2014 EM DASH and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Start of a signer key string, as the Go `note` package writes it, so a secret key is recognisable as such.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Length of an Ed25519 public key and of an Ed25519 seed (RFC 8032).
const ED25519_KEY_LEN: usize = 32;

/// Why a key name or a key string was refused.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key name breaks the signed-note rules.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A signer key string must start with `PRIVATE+KEY+`.
    #[error("not a signer key: it does not start with \"PRIVATE+KEY+\"")]
    NotSignerKey,
    /// A signer key string was given where a verifier key was expected; refused so the secret is not misused.
    #[error("this is a signer (private) key, not a verifier key; give the vkey instead")]
    SignerKeyGivenAsVerifier,
    /// The key string does not have the three `+`-separated fields name, key ID, key.
    #[error("a key must have 3 '+'-separated fields (name+keyid+key), found {found}")]
    WrongFieldCount {
        /// Fields found.
        found: usize,
    },
    /// The key ID field is not exactly 8 lowercase hexadecimal digits.
    #[error("key ID {text:?} is not 8 lowercase hexadecimal digits")]
    MalformedKeyId {
        /// The key ID field as written.
        text: String,
    },
    /// The key ID does not belong to this name and key.
    #[error("key ID {stated:08x} does not match name {name:?} and its key (the key ID should be {computed:08x})")]
    KeyIdMismatch {
        /// The key name.
        name: String,
        /// The key ID written in the key string.
        stated: u32,
        /// The key ID computed from the name and key.
        computed: u32,
    },
    /// The key field is not valid standard base64.
    #[error("the key field is not valid base64: {source}")]
    Base64 {
        /// The decoding failure.
        #[source]
        source: base64::DecodeError,
    },
    /// The key field is empty after decoding.
    #[error("the key field is empty")]
    EmptyKey,
    /// The signature type byte is not Ed25519 (0x01).
    #[error("unsupported signature type 0x{byte:02x} (only Ed25519, 0x01, is supported)")]
    UnsupportedAlgorithm {
        /// The signature type byte found.
        byte: u8,
    },
    /// The key material has the wrong length.
    #[error("Ed25519 key material must be {want} bytes, found {found}")]
    WrongKeyLength {
        /// Bytes found after the signature type byte.
        found: usize,
        /// Bytes required.
        want: usize,
    },
    /// The public key is not a valid Ed25519 point or is of small order (accepts forged signatures).
    #[error("the public key of {name:?} is not a usable Ed25519 public key")]
    InvalidPublicKey {
        /// The key name.
        name: String,
    },
    /// The operating system's random source failed while generating a key.
    #[error("read randomness for a new key: {0}")]
    Entropy(getrandom::Error),
}

impl KeyError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::InvalidName { .. } => "key_invalid_name",
            KeyError::NotSignerKey => "key_not_signer_key",
            KeyError::SignerKeyGivenAsVerifier => "key_signer_key_given_as_verifier",
            KeyError::WrongFieldCount { .. } => "key_wrong_field_count",
            KeyError::MalformedKeyId { .. } => "key_malformed_key_id",
            KeyError::KeyIdMismatch { .. } => "key_id_mismatch",
            KeyError::Base64 { .. } => "key_base64",
            KeyError::EmptyKey => "key_empty",
            KeyError::UnsupportedAlgorithm { .. } => "key_unsupported_algorithm",
            KeyError::WrongKeyLength { .. } => "key_wrong_length",
            KeyError::InvalidPublicKey { .. } => "key_invalid_public_key",
            KeyError::Entropy(_) => "key_entropy",
        }
    }
}

/// Why a note could not be signed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// The note is larger than [`MAX_NOTE_BYTES`].
    #[error("note is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Size of the note.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The note is not valid UTF-8.
    #[error("note is not valid UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The note contains an ASCII control character other than newline.
    #[error("note contains control character 0x{byte:02x} at byte offset {offset}; only newline is allowed")]
    ControlCharacter {
        /// Byte offset of the character.
        offset: usize,
        /// The character.
        byte: u8,
    },
    /// The text to sign does not end with a newline.
    #[error("note text must end with a newline")]
    TextUnterminated,
    /// No blank line separates the text from the signatures.
    #[error("note has no blank line separating its text from the signature lines")]
    MissingSeparator,
    /// Nothing follows the blank line.
    #[error("note has no signature lines after the blank line")]
    NoSignatures,
    /// The last signature line does not end with a newline.
    #[error("the last signature line of the note does not end with a newline")]
    SignatureBlockUnterminated,
    /// A signature line is not `— <name> <base64>`.
    #[error("signature line {line} is malformed: {reason}")]
    MalformedSignatureLine {
        /// 1-based number of the line within the signature block.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A signature by a known key (name and key ID both match) does not verify: the note was altered or forged.
    #[error("signature by known key {name:?} (key ID {key_id:08x}) does not verify")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// No signature line is from a known key.
    #[error("note has no signature from a known key ({unknown} signature(s) from unknown keys)")]
    NoKnownSignature {
        /// Signature lines from keys the caller does not know.
        unknown: usize,
    },
}

impl NoteError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            NoteError::TooLarge { .. } => "note_too_large",
            NoteError::NotUtf8 { .. } => "note_not_utf8",
            NoteError::ControlCharacter { .. } => "note_control_character",
            NoteError::TextUnterminated => "note_text_unterminated",
            NoteError::MissingSeparator => "note_missing_separator",
            NoteError::NoSignatures => "note_no_signatures",
            NoteError::SignatureBlockUnterminated => "note_signature_block_unterminated",
            NoteError::MalformedSignatureLine { .. } => "note_malformed_signature_line",
            NoteError::TooManySignatures { .. } => "note_too_many_signatures",
            NoteError::InvalidSignature { .. } => "note_invalid_signature",
            NoteError::NoKnownSignature { .. } => "note_no_known_signature",
        }
    }
}

/// Checks a key name against the signed-note rules: non-empty, no Unicode white space, no `+`. Control
/// characters are refused too, since a note may not contain them.
pub fn check_key_name(name: &str) -> Result<(), KeyError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('+') {
        "it contains '+'"
    } else if name.chars().any(char::is_whitespace) {
        "it contains white space"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(KeyError::InvalidName { name: name.to_owned(), reason })
}

/// The key ID of an Ed25519 key: the first 4 bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; ED25519_KEY_LEN]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let digest: [u8; 32] = h.finalize().into();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A named Ed25519 signing key.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    // Never print the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a key name and a 32-byte Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; ED25519_KEY_LEN]) -> Result<Self, KeyError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self { name: name.to_owned(), key_id, key })
    }

    /// Parses a signer key string `PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 || seed)>`.
    pub fn from_key_string(text: &str) -> Result<Self, KeyError> {
        let rest = text.strip_prefix(PRIVATE_KEY_PREFIX).ok_or(KeyError::NotSignerKey)?;
        let (name, stated, seed) = split_key(rest)?;
        let signer = Self::from_seed(name, &seed)?;
        if signer.key_id != stated {
            return Err(KeyError::KeyIdMismatch { name: name.to_owned(), stated, computed: signer.key_id });
        }
        Ok(signer)
    }

    /// The signer key string (secret: whoever holds it can sign as this key).
    pub fn to_key_string(&self) -> String {
        format!("{PRIVATE_KEY_PREFIX}{}", key_text(&self.name, self.key_id, self.key.as_bytes()))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }
}

/// A named Ed25519 public key that checks signatures on notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// A verifier from a key name and a 32-byte Ed25519 public key.
    pub fn from_public_key(name: &str, public_key: &[u8; ED25519_KEY_LEN]) -> Result<Self, KeyError> {
        check_key_name(name)?;
        let key = VerifyingKey::from_bytes(public_key)
            .ok()
            .filter(|k| !k.is_weak())
            .ok_or_else(|| KeyError::InvalidPublicKey { name: name.to_owned() })?;
        Ok(Self { name: name.to_owned(), key_id: key_id(name, public_key), key })
    }

    /// Parses a verifier key (vkey) `<name>+<hex8 key ID>+<base64(0x01 || public key)>`.
    pub fn from_vkey(text: &str) -> Result<Self, KeyError> {
        if text.starts_with(PRIVATE_KEY_PREFIX) {
            return Err(KeyError::SignerKeyGivenAsVerifier);
        }
        let (name, stated, public_key) = split_key(text)?;
        let verifier = Self::from_public_key(name, &public_key)?;
        if verifier.key_id != stated {
            return Err(KeyError::KeyIdMismatch { name: name.to_owned(), stated, computed: verifier.key_id });
        }
        Ok(verifier)
    }

    /// The vkey text of this verifier.
    pub fn to_vkey(&self) -> String {
        key_text(&self.name, self.key_id, self.key.as_bytes())
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; ED25519_KEY_LEN] {
        self.key.to_bytes()
    }

    /// Whether `signature` is this key's signature of `text`.
    fn verifies(&self, text: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature).map(|sig| self.key.verify_strict(text, &sig).is_ok()).unwrap_or(false)
    }
}

impl std::str::FromStr for Verifier {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_vkey(s)
    }
}

/// `<name>+<hex8 key ID>+<base64(0x01 || key)>`, shared by vkeys and signer keys.
fn key_text(name: &str, key_id: u32, key: &[u8; ED25519_KEY_LEN]) -> String {
    let mut material = Vec::with_capacity(1 + ED25519_KEY_LEN);
    material.push(ALG_ED25519);
    material.extend_from_slice(key);
    format!("{name}+{key_id:08x}+{}", BASE64.encode(material))
}

/// Splits `<name>+<hex8>+<base64(0x01 || 32 bytes)>` into its checked parts (the key ID is not yet compared).
fn split_key(text: &str) -> Result<(&str, u32, [u8; ED25519_KEY_LEN]), KeyError> {
    // Only the first two '+' separate fields: the base64 key itself may contain '+'.
    let fields: Vec<&str> = text.splitn(3, '+').collect();
    let [name, id, material] = fields.as_slice() else {
        return Err(KeyError::WrongFieldCount { found: fields.len() });
    };
    check_key_name(name)?;
    let id_ok = id.len() == 8 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let stated = id_ok
        .then(|| u32::from_str_radix(id, 16).ok())
        .flatten()
        .ok_or_else(|| KeyError::MalformedKeyId { text: (*id).to_owned() })?;
    let bytes = BASE64.decode(material).map_err(|source| KeyError::Base64 { source })?;
    let (&alg, key) = bytes.split_first().ok_or(KeyError::EmptyKey)?;
    if alg != ALG_ED25519 {
        return Err(KeyError::UnsupportedAlgorithm { byte: alg });
    }
    let key: [u8; ED25519_KEY_LEN] =
        key.try_into().map_err(|_| KeyError::WrongKeyLength { found: key.len(), want: ED25519_KEY_LEN })?;
    Ok((name, stated, key))
}

/// Generates a new Ed25519 key named `name` from the operating system's random source. Returns the signer,
/// its signer key string (secret) and its vkey (public).
pub fn generate_signer(name: &str) -> Result<(Signer, String, String), KeyError> {
    check_key_name(name)?;
    let mut seed = [0u8; ED25519_KEY_LEN];
    getrandom::fill(&mut seed).map_err(KeyError::Entropy)?;
    let signer = Signer::from_seed(name, &seed)?;
    seed.fill(0);
    let skey = signer.to_key_string();
    let vkey = signer.verifier().to_vkey();
    Ok((signer, skey, vkey))
}

/// The first ASCII control character other than newline, as a [`NoteError`].
fn check_controls(bytes: &[u8]) -> Result<(), NoteError> {
    match bytes.iter().enumerate().find(|&(_, &b)| b < 0x20 && b != b'\n') {
        Some((offset, &byte)) => Err(NoteError::ControlCharacter { offset, byte }),
        None => Ok(()),
    }
}

/// Signs `text` (which must end with a newline and contain no control character but newline) and returns the
/// signed note: the text, a blank line and one signature line.
pub fn sign_note(text: &str, signer: &Signer) -> Result<String, NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::TextUnterminated);
    }
    check_controls(text.as_bytes())?;
    let signature = signer.key.sign(text.as_bytes());
    let mut blob = Vec::with_capacity(4 + 64);
    blob.extend_from_slice(&signer.key_id.to_be_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    let note = format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", signer.name, BASE64.encode(blob));
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge { len: note.len(), max: MAX_NOTE_BYTES });
    }
    Ok(note)
}

/// A note whose signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text, including its final newline.
    pub text: String,
    /// Names of the known keys whose signatures verified, each once, in order of appearance.
    pub verified_by: Vec<String>,
    /// Signature lines from keys the caller does not know (ignored, as the spec requires).
    pub unknown_signatures: usize,
}

/// Opens a signed note: parses it strictly and verifies every signature whose key name and key ID both match
/// one of `verifiers`. Fails if any such signature is bad, or if none verifies.
pub fn open_note(note: &str, verifiers: &[Verifier]) -> Result<OpenedNote, NoteError> {
    open_note_bytes(note.as_bytes(), verifiers)
}

/// [`open_note`] for raw bytes (as read from the network or a file), which must be UTF-8.
pub fn open_note_bytes(note: &[u8], verifiers: &[Verifier]) -> Result<OpenedNote, NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge { len: note.len(), max: MAX_NOTE_BYTES });
    }
    let note = std::str::from_utf8(note).map_err(|e| NoteError::NotUtf8 { offset: e.valid_up_to() })?;
    check_controls(note.as_bytes())?;
    // The text ends at the last blank line; it keeps its final newline, the blank line belongs to neither.
    let split = note.rfind("\n\n").ok_or(NoteError::MissingSeparator)?;
    let (text, rest) = note.split_at(split + 1);
    let signatures = rest.get(1..).unwrap_or_default();
    if signatures.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let Some(signatures) = signatures.strip_suffix('\n') else {
        return Err(NoteError::SignatureBlockUnterminated);
    };

    let mut verified_by: Vec<String> = Vec::new();
    let mut unknown_signatures = 0usize;
    for (i, line) in signatures.split('\n').enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures { max: MAX_SIGNATURES });
        }
        let malformed = |reason| NoteError::MalformedSignatureLine { line: i + 1, reason };
        let body = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or_else(|| malformed("it does not start with an em dash (U+2014) and a space"))?;
        let (name, b64) =
            body.split_once(' ').ok_or_else(|| malformed("no space between the key name and the signature"))?;
        if check_key_name(name).is_err() {
            return Err(malformed("the key name is empty or contains white space or '+'"));
        }
        if b64.is_empty() {
            return Err(malformed("the signature is empty"));
        }
        let blob = BASE64.decode(b64).map_err(|_| malformed("the signature is not valid base64"))?;
        let Some((id, signature)) = blob.split_first_chunk::<4>() else {
            return Err(malformed("the signature is shorter than its 4-byte key ID"));
        };
        if signature.is_empty() {
            return Err(malformed("the signature has a key ID but no signature bytes"));
        }
        let id = u32::from_be_bytes(*id);
        // Only a key matching both name and ID is known; a match on one alone is someone else's key.
        let Some(verifier) = verifiers.iter().find(|v| v.name == name && v.key_id == id) else {
            unknown_signatures += 1;
            continue;
        };
        if !verifier.verifies(text.as_bytes(), signature) {
            return Err(NoteError::InvalidSignature { name: name.to_owned(), key_id: id });
        }
        if !verified_by.iter().any(|n| n == name) {
            verified_by.push(name.to_owned());
        }
    }
    if verified_by.is_empty() {
        return Err(NoteError::NoKnownSignature { unknown: unknown_signatures });
    }
    Ok(OpenedNote { text: text.to_owned(), verified_by, unknown_signatures })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_signer(name: &str, byte: u8) -> Signer {
        Signer::from_seed(name, &[byte; 32]).unwrap()
    }

    #[test]
    fn key_names_follow_the_spec() {
        for good in ["example.com/foo", "a", "ünïcödé/λ", "x—y"] {
            assert!(check_key_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a+b", "a b", "a\tb", "a\u{a0}b", "a\u{2003}b", "a\u{1}b", "a\nb"] {
            let err = check_key_name(bad).unwrap_err();
            assert_eq!(err.code(), "key_invalid_name", "{bad:?}");
        }
    }

    #[test]
    fn signer_key_string_round_trips() {
        let signer = test_signer("hwledger.test/log", 7);
        let skey = signer.to_key_string();
        assert!(skey.starts_with("PRIVATE+KEY+hwledger.test/log+"));
        let back = Signer::from_key_string(&skey).unwrap();
        assert_eq!(back.verifier(), signer.verifier());
        assert_eq!(back.to_key_string(), skey);
        let debug = format!("{signer:?}");
        assert!(!debug.contains(&skey[skey.len() - 20..]), "Debug must not leak the key: {debug}");
    }

    #[test]
    fn key_string_errors_are_typed() {
        let signer = test_signer("hwledger.test/log", 7);
        let vkey = signer.verifier().to_vkey();
        let skey = signer.to_key_string();
        let cases: Vec<(String, &str)> = vec![
            (vkey.replacen("hwledger.test/log", "other", 1), "key_id_mismatch"),
            (vkey.replacen('+', "++", 1), "key_malformed_key_id"),
            ("a+b".to_owned(), "key_wrong_field_count"),
            (vkey.replacen("hwledger.test/log", "", 1), "key_invalid_name"),
            (format!("n+ABCDEF12+{}", BASE64.encode([1u8; 33])), "key_malformed_key_id"),
            (format!("n+1234567+{}", BASE64.encode([1u8; 33])), "key_malformed_key_id"),
            (format!("n+1234567g+{}", BASE64.encode([1u8; 33])), "key_malformed_key_id"),
            ("n+12345678+not base64".to_owned(), "key_base64"),
            ("n+12345678+".to_owned(), "key_empty"),
            (format!("n+12345678+{}", BASE64.encode([2u8; 33])), "key_unsupported_algorithm"),
            (format!("n+12345678+{}", BASE64.encode([1u8; 32])), "key_wrong_length"),
            (format!("n+12345678+{}", BASE64.encode([1u8; 34])), "key_wrong_length"),
            (skey.clone(), "key_signer_key_given_as_verifier"),
        ];
        for (text, code) in &cases {
            let err = Verifier::from_vkey(text).unwrap_err();
            assert_eq!(err.code(), *code, "{text}: {err}");
        }
        // A small-order point (the identity) is refused: it would accept forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let err = Verifier::from_public_key("n", &identity).unwrap_err();
        assert_eq!(err.code(), "key_invalid_public_key");

        assert_eq!(Signer::from_key_string(&vkey).unwrap_err().code(), "key_not_signer_key");
        let wrong_id = skey.replacen(&format!("{:08x}", signer.key_id()), "00000000", 1);
        assert_eq!(Signer::from_key_string(&wrong_id).unwrap_err().code(), "key_id_mismatch");
        assert_eq!(Signer::from_key_string("PRIVATE+KEY+a b+00000000+AQ==").unwrap_err().code(), "key_invalid_name");
        // Error messages about a signer key never echo its secret material.
        let secret_b64 = skey.rsplit('+').next().unwrap();
        let broken = skey.replacen(&format!("{:08x}", signer.key_id()), "0000000", 1);
        let msg = Signer::from_key_string(&broken).unwrap_err().to_string();
        assert!(!msg.contains(secret_b64), "{msg}");
    }

    #[test]
    fn base64_plus_signs_in_keys_are_not_field_separators() {
        // Try seeds until the encoded keys contain '+', so the test exercises that case whatever the key.
        let mut seen_plus = (false, false);
        for byte in 0u8..=255 {
            let signer = test_signer("n", byte);
            let (vkey, skey) = (signer.verifier().to_vkey(), signer.to_key_string());
            let vkey_key = vkey.splitn(3, '+').nth(2).unwrap();
            let skey_key = skey.splitn(5, '+').nth(4).unwrap();
            seen_plus.0 |= vkey_key.contains('+');
            seen_plus.1 |= skey_key.contains('+');
            assert_eq!(Verifier::from_vkey(&vkey).unwrap(), signer.verifier());
            assert_eq!(Signer::from_key_string(&skey).unwrap().verifier(), signer.verifier());
        }
        assert_eq!(seen_plus, (true, true));
    }

    #[test]
    fn generated_keys_work() {
        let (signer, skey, vkey) = generate_signer("hwledger.test/gen").unwrap();
        let (other, _, _) = generate_signer("hwledger.test/gen").unwrap();
        assert_ne!(signer.verifier(), other.verifier(), "two generated keys must differ");
        let verifier = Verifier::from_vkey(&vkey).unwrap();
        let reparsed = Signer::from_key_string(&skey).unwrap();
        let note = sign_note("hello\n", &reparsed).unwrap();
        assert_eq!(open_note(&note, &[verifier]).unwrap().verified_by, vec!["hwledger.test/gen"]);
        assert_eq!(generate_signer("bad name").unwrap_err().code(), "key_invalid_name");
    }

    #[test]
    fn sign_refuses_bad_text() {
        let s = test_signer("n", 1);
        assert_eq!(sign_note("no newline", &s).unwrap_err(), NoteError::TextUnterminated);
        assert_eq!(sign_note("", &s).unwrap_err(), NoteError::TextUnterminated);
        assert_eq!(sign_note("tab\there\n", &s).unwrap_err(), NoteError::ControlCharacter { offset: 3, byte: 9 });
        let big = "a".repeat(MAX_NOTE_BYTES) + "\n";
        assert_eq!(sign_note(&big, &s).unwrap_err().code(), "note_too_large");
    }

    #[test]
    fn open_applies_the_spec_rules() {
        let a = test_signer("a.example/log", 1);
        let b = test_signer("b.example/witness", 2);
        let text = "line one\n\nline three after an empty line\n";
        let note_a = sign_note(text, &a).unwrap();
        let sig_a = note_a.strip_prefix(text).unwrap().strip_prefix('\n').unwrap();
        let note_b = sign_note(text, &b).unwrap();
        let sig_b = note_b.strip_prefix(text).unwrap().strip_prefix('\n').unwrap();
        let both = format!("{text}\n{sig_a}{sig_b}");

        // Unknown signatures are ignored; known ones verify; text keeps its inner empty line.
        let opened = open_note(&both, &[a.verifier()]).unwrap();
        assert_eq!(opened.text, text);
        assert_eq!(opened.verified_by, vec!["a.example/log"]);
        assert_eq!(opened.unknown_signatures, 1);
        let opened = open_note(&both, &[b.verifier(), a.verifier()]).unwrap();
        assert_eq!(opened.verified_by, vec!["a.example/log", "b.example/witness"]);

        // No known key at all.
        let err = open_note(&note_a, &[b.verifier()]).unwrap_err();
        assert_eq!(err, NoteError::NoKnownSignature { unknown: 1 });

        // Same name, different key (so a different ID): ignored, not a failure of the known key.
        let impostor = test_signer("a.example/log", 9);
        let err = open_note(&sign_note(text, &impostor).unwrap(), &[a.verifier()]).unwrap_err();
        assert_eq!(err.code(), "note_no_known_signature");

        // A known key's bad signature rejects the whole note even when another known key verified.
        let mut blob = BASE64.decode(sig_b.trim_end().rsplit(' ').next().unwrap()).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let bad_b = format!("\u{2014} b.example/witness {}\n", BASE64.encode(&blob));
        let err = open_note(&format!("{text}\n{sig_a}{bad_b}"), &[a.verifier(), b.verifier()]).unwrap_err();
        assert_eq!(err.code(), "note_invalid_signature");
        // A known key's signature of the wrong length is a bad signature too.
        let short = format!("\u{2014} b.example/witness {}\n", BASE64.encode(&blob[..10]));
        let err = open_note(&format!("{text}\n{sig_a}{short}"), &[a.verifier(), b.verifier()]).unwrap_err();
        assert_eq!(err.code(), "note_invalid_signature");
    }

    #[test]
    fn open_rejects_malformed_notes() {
        let a = test_signer("a", 1);
        let v = [a.verifier()];
        let note = sign_note("text\n", &a).unwrap();
        let sig_line = note.strip_prefix("text\n\n").unwrap();
        let line_body = sig_line.strip_prefix("\u{2014} a ").unwrap().trim_end();
        let cases: Vec<(String, &str)> = vec![
            ("text\n".to_owned(), "note_missing_separator"),
            (note.replace("\n\n", "\n"), "note_missing_separator"),
            ("text\n\n".to_owned(), "note_no_signatures"),
            (note.trim_end().to_owned(), "note_signature_block_unterminated"),
            (note.replace('\u{2014}', "-"), "note_malformed_signature_line"),
            (format!("text\n\n\u{2014} a{line_body}\n"), "note_malformed_signature_line"),
            (format!("text\n\n\u{2014}  {line_body}\n"), "note_malformed_signature_line"),
            (format!("text\n\n\u{2014} a+b {line_body}\n"), "note_malformed_signature_line"),
            ("text\n\n\u{2014} a \n".to_owned(), "note_malformed_signature_line"),
            ("text\n\n\u{2014} a !!!!\n".to_owned(), "note_malformed_signature_line"),
            (format!("text\n\n\u{2014} a {line_body} extra\n"), "note_malformed_signature_line"),
            ("text\n\n\u{2014} a AAAA\n".to_owned(), "note_malformed_signature_line"),
            ("text\n\n\u{2014} a AAAAAA==\n".to_owned(), "note_malformed_signature_line"),
            (format!("{note}\n"), "note_no_signatures"),
            (note.replace("text", "te\rxt"), "note_control_character"),
            // The last blank line separates text from signatures, so this text includes the first signature
            // line and the signature no longer matches it.
            (format!("{note}\n{sig_line}"), "note_invalid_signature"),
        ];
        for (text, code) in &cases {
            let err = open_note(text, &v).unwrap_err();
            assert_eq!(err.code(), *code, "{text:?}: {err}");
        }
        assert_eq!(open_note_bytes(b"text\xff\n\n", &v).unwrap_err(), NoteError::NotUtf8 { offset: 4 });
        let huge = vec![b'a'; MAX_NOTE_BYTES + 1];
        assert_eq!(open_note_bytes(&huge, &v).unwrap_err().code(), "note_too_large");
    }

    #[test]
    fn signature_count_is_capped() {
        let a = test_signer("a", 1);
        let other = test_signer("someone.else", 3);
        let note = sign_note("text\n", &a).unwrap();
        let sig_a = note.strip_prefix("text\n\n").unwrap();
        let note_other = sign_note("text\n", &other).unwrap();
        let sig_other = note_other.strip_prefix("text\n\n").unwrap();
        let at_cap = format!("text\n\n{sig_a}{}", sig_other.repeat(MAX_SIGNATURES - 1));
        assert_eq!(open_note(&at_cap, &[a.verifier()]).unwrap().unknown_signatures, MAX_SIGNATURES - 1);
        let over = format!("{at_cap}{sig_other}");
        assert_eq!(
            open_note(&over, &[a.verifier()]).unwrap_err(),
            NoteError::TooManySignatures { max: MAX_SIGNATURES }
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let codes = [
            NoteError::TooLarge { len: 2, max: 1 }.code(),
            NoteError::NotUtf8 { offset: 0 }.code(),
            NoteError::ControlCharacter { offset: 0, byte: 0 }.code(),
            NoteError::TextUnterminated.code(),
            NoteError::MissingSeparator.code(),
            NoteError::NoSignatures.code(),
            NoteError::SignatureBlockUnterminated.code(),
            NoteError::MalformedSignatureLine { line: 1, reason: "x" }.code(),
            NoteError::TooManySignatures { max: 1 }.code(),
            NoteError::InvalidSignature { name: "n".into(), key_id: 0 }.code(),
            NoteError::NoKnownSignature { unknown: 0 }.code(),
        ];
        assert_eq!(
            codes,
            [
                "note_too_large",
                "note_not_utf8",
                "note_control_character",
                "note_text_unterminated",
                "note_missing_separator",
                "note_no_signatures",
                "note_signature_block_unterminated",
                "note_malformed_signature_line",
                "note_too_many_signatures",
                "note_invalid_signature",
                "note_no_known_signature",
            ]
        );
    }
}
