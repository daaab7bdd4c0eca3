//! C2SP transparency-log checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed tree head hwledger
//! publishes. The note text is exactly `<origin>\n<tree size>\n<base64 root hash>\n` followed by optional
//! extension lines; it is signed as a C2SP signed note ([`crate::note`]). Holding one signed checkpoint and a
//! consistency proof to a later one shows the log was only appended to.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use thiserror::Error;

use crate::merkle::Hash;
use crate::note::{NoteError, Signer, Verifier, open_note, sign_note};

/// A log's tree head at one size, with its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (its first line); hwledger uses the log key's name, e.g. `hwledger.example/fleet`.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 root hash of the tree of `size` leaves.
    pub root: Hash,
    /// Opaque extension lines after the root, each non-empty (the spec advises against using them).
    pub extensions: Vec<String>,
}

/// Why a checkpoint could not be parsed, signed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The signed note around the checkpoint was refused.
    #[error("open checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// The checkpoint text does not end with a newline.
    #[error("checkpoint text must end with a newline")]
    Unterminated,
    /// Fewer than the three mandatory lines (origin, size, root).
    #[error("checkpoint has {found} line(s); it needs at least origin, tree size and root hash")]
    TooFewLines {
        /// Lines found.
        found: usize,
    },
    /// The origin line is empty.
    #[error("checkpoint origin (line 1) is empty")]
    EmptyOrigin,
    /// A line contains a control character (only possible in text that did not come from a signed note).
    #[error("checkpoint line {line} contains a control character")]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
    },
    /// The tree size line is not a canonical decimal number that fits in 64 bits.
    #[error("checkpoint tree size {text:?} (line 2) is invalid: {reason}")]
    InvalidSize {
        /// The line as written.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The root hash line is not canonical standard base64.
    #[error("checkpoint root hash {text:?} (line 3) is not valid base64")]
    RootNotBase64 {
        /// The line as written.
        text: String,
    },
    /// The root hash does not decode to 32 bytes.
    #[error("checkpoint root hash (line 3) is {len} bytes; a SHA-256 root is 32")]
    WrongRootLength {
        /// Decoded length.
        len: usize,
    },
    /// An extension line (or the origin when signing) is empty or contains a newline.
    #[error("checkpoint line {line} is empty or contains a newline")]
    InvalidLine {
        /// 1-based line number.
        line: usize,
    },
    /// The checkpoint's origin is not the log the verifier's key belongs to.
    #[error("checkpoint origin {origin:?} does not match the log key name {key_name:?}")]
    OriginMismatch {
        /// The origin line of the checkpoint.
        origin: String,
        /// The name of the verifier's key.
        key_name: String,
    },
}

impl CheckpointError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointError::Note(_) => "checkpoint_note",
            CheckpointError::Unterminated => "checkpoint_unterminated",
            CheckpointError::TooFewLines { .. } => "checkpoint_too_few_lines",
            CheckpointError::EmptyOrigin => "checkpoint_empty_origin",
            CheckpointError::ControlCharacter { .. } => "checkpoint_control_character",
            CheckpointError::InvalidSize { .. } => "checkpoint_invalid_size",
            CheckpointError::RootNotBase64 { .. } => "checkpoint_root_not_base64",
            CheckpointError::WrongRootLength { .. } => "checkpoint_wrong_root_length",
            CheckpointError::InvalidLine { .. } => "checkpoint_invalid_line",
            CheckpointError::OriginMismatch { .. } => "checkpoint_origin_mismatch",
        }
    }
}

/// The tree size as the spec writes it: ASCII decimal, no sign, no leading zero (except `0` itself).
fn parse_size(text: &str) -> Result<u64, CheckpointError> {
    let invalid = |reason| CheckpointError::InvalidSize { text: text.to_owned(), reason };
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("it is not a plain decimal number"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(invalid("it has a leading zero"));
    }
    text.parse::<u64>().map_err(|_| invalid("it does not fit in 64 bits"))
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n` and one line per extension.
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root));
        for ext in &self.extensions {
            text.push_str(ext);
            text.push('\n');
        }
        text
    }

    /// Parses checkpoint note text strictly (the signature lines must already be removed, e.g. by
    /// [`open_checkpoint`]).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Unterminated)?;
        let lines: Vec<&str> = body.split('\n').collect();
        if let Some(i) = lines.iter().position(|l| l.chars().any(char::is_control)) {
            return Err(CheckpointError::ControlCharacter { line: i + 1 });
        }
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines { found: lines.len() });
        };
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = parse_size(size)?;
        let root_bytes =
            BASE64.decode(root).map_err(|_| CheckpointError::RootNotBase64 { text: (*root).to_owned() })?;
        let root: Hash =
            root_bytes.as_slice().try_into().map_err(|_| CheckpointError::WrongRootLength { len: root_bytes.len() })?;
        if let Some(i) = extensions.iter().position(|l| l.is_empty()) {
            return Err(CheckpointError::InvalidLine { line: i + 4 });
        }
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|l| (*l).to_owned()).collect(),
        })
    }

    /// Checks that [`Checkpoint::to_text`] will produce text that parses back to this checkpoint.
    fn check_writable(&self) -> Result<(), CheckpointError> {
        if self.origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        check_line(&self.origin, 1)?;
        for (i, ext) in self.extensions.iter().enumerate() {
            check_line(ext, i + 4)?;
        }
        Ok(())
    }
}

/// One free-text line of a checkpoint to be written: non-empty, a single line, no control character.
fn check_line(line: &str, number: usize) -> Result<(), CheckpointError> {
    if line.is_empty() || line.contains('\n') {
        return Err(CheckpointError::InvalidLine { line: number });
    }
    if line.chars().any(char::is_control) {
        return Err(CheckpointError::ControlCharacter { line: number });
    }
    Ok(())
}

/// Signs a checkpoint with the log's key; returns the signed note.
pub fn sign_checkpoint(checkpoint: &Checkpoint, signer: &Signer) -> Result<String, CheckpointError> {
    checkpoint.check_writable()?;
    Ok(sign_note(&checkpoint.to_text(), signer)?)
}

/// Opens a signed checkpoint: the note must carry a valid signature by `verifier` (other signatures, such as
/// witness cosignatures, are ignored), its text must be a valid checkpoint, and its origin must be the
/// verifier's key name (hwledger names its log key after the log).
pub fn open_checkpoint(note: &str, verifier: &Verifier) -> Result<Checkpoint, CheckpointError> {
    let opened = open_note(note, std::slice::from_ref(verifier))?;
    let checkpoint = Checkpoint::parse(&opened.text)?;
    if checkpoint.origin != verifier.name() {
        return Err(CheckpointError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: verifier.name().to_owned(),
        });
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Signer;

    /// The example of the tlog-checkpoint specification (text only; its signing key is not published).
    const SPEC_EXAMPLE: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: "hwledger.test/log".to_owned(),
            size: 42,
            root: [0xab; 32],
            extensions: vec!["ext one".to_owned(), "ext-two".to_owned()],
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let cp = Checkpoint::parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20_852_163);
        assert_eq!(hex::encode(cp.root), "0ac5186a91863e8e1d90c808014aa89bf5da8e3ee1d9f07630f0378f68f1ab62");
        assert!(cp.extensions.is_empty());
        assert_eq!(cp.to_text(), SPEC_EXAMPLE);
    }

    #[test]
    fn text_round_trips_exactly() {
        let cp = sample();
        let text = cp.to_text();
        assert_eq!(text, format!("hwledger.test/log\n42\n{}\next one\next-two\n", BASE64.encode([0xab; 32])));
        assert_eq!(Checkpoint::parse(&text).unwrap(), cp);
        let empty = Checkpoint { origin: "o".into(), size: 0, root: crate::merkle::empty_root(), extensions: vec![] };
        assert_eq!(Checkpoint::parse(&empty.to_text()).unwrap(), empty);
        let max = Checkpoint { size: u64::MAX, ..empty };
        assert_eq!(Checkpoint::parse(&max.to_text()).unwrap(), max);
    }

    #[test]
    fn parse_is_strict() {
        let root = BASE64.encode([7u8; 32]);
        let cases: Vec<(String, &str)> = vec![
            (format!("o\n1\n{root}"), "checkpoint_unterminated"),
            ("o\n1\n".to_owned(), "checkpoint_too_few_lines"),
            (String::new(), "checkpoint_unterminated"),
            ("\n".to_owned(), "checkpoint_too_few_lines"),
            (format!("\n1\n{root}\n"), "checkpoint_empty_origin"),
            (format!("o\n\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n01\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n00\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n+1\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n-1\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n 1\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n1.0\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n0x10\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n18446744073709551616\n{root}\n"), "checkpoint_invalid_size"),
            (format!("o\n\u{0661}\n{root}\n"), "checkpoint_invalid_size"),
            ("o\n1\n\n".to_owned(), "checkpoint_wrong_root_length"),
            (format!("o\n1\n{}\n", root.trim_end_matches('=')), "checkpoint_root_not_base64"),
            (format!("o\n1\n{root} \n"), "checkpoint_root_not_base64"),
            (format!("o\n1\n{}\n", BASE64.encode([7u8; 31])), "checkpoint_wrong_root_length"),
            (format!("o\n1\n{}\n", BASE64.encode([7u8; 33])), "checkpoint_wrong_root_length"),
            (format!("o\n1\n{}\n", URL_SAFE_ROOT), "checkpoint_root_not_base64"),
            (format!("o\n1\n{root}\n\n"), "checkpoint_invalid_line"),
            (format!("o\n1\n{root}\next\n\nmore\n"), "checkpoint_invalid_line"),
            (format!("o\tx\n1\n{root}\n"), "checkpoint_control_character"),
        ];
        for (text, code) in &cases {
            let err = Checkpoint::parse(text).unwrap_err();
            assert_eq!(err.code(), *code, "{text:?}: {err}");
        }
        // Non-canonical base64: the last character carries bits that a canonical encoder leaves zero.
        let mut chars: Vec<char> = root.chars().collect();
        let last_data = chars.len() - 2;
        assert_eq!(chars[last_data], 'c');
        chars[last_data] = 'd';
        let noncanonical: String = chars.into_iter().collect();
        let err = Checkpoint::parse(&format!("o\n1\n{noncanonical}\n")).unwrap_err();
        assert_eq!(err.code(), "checkpoint_root_not_base64");
    }

    /// 32 bytes of 0xff in the URL-safe alphabet ('_' instead of '/'): not standard base64.
    const URL_SAFE_ROOT: &str = "__________________________________________8=";

    #[test]
    fn sign_and_open() {
        let signer = Signer::from_seed("hwledger.test/log", &[5; 32]).unwrap();
        let cp = sample();
        let note = sign_checkpoint(&cp, &signer).unwrap();
        assert!(note.starts_with(&cp.to_text()));
        assert_eq!(open_checkpoint(&note, &signer.verifier()).unwrap(), cp);

        // Another key of the same name is not the log's key.
        let other = Signer::from_seed("hwledger.test/log", &[6; 32]).unwrap();
        let err = open_checkpoint(&note, &other.verifier()).unwrap_err();
        assert_eq!(err, CheckpointError::Note(NoteError::NoKnownSignature { unknown: 1 }));
        assert_eq!(err.code(), "checkpoint_note");

        // A checkpoint of another origin signed by this key is refused.
        let foreign = Checkpoint { origin: "elsewhere.test/log".into(), ..sample() };
        let note = sign_checkpoint(&foreign, &signer).unwrap();
        assert_eq!(open_checkpoint(&note, &signer.verifier()).unwrap_err().code(), "checkpoint_origin_mismatch");

        // A signed note that is not a checkpoint is refused after its signature verified.
        let note = crate::note::sign_note("hwledger.test/log\nnot a size\nroot\n", &signer).unwrap();
        assert_eq!(open_checkpoint(&note, &signer.verifier()).unwrap_err().code(), "checkpoint_invalid_size");

        // Changing the size in a signed checkpoint breaks the signature.
        let note = sign_checkpoint(&cp, &signer).unwrap();
        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(open_checkpoint(&tampered, &signer.verifier()).unwrap_err().code(), "checkpoint_note");
    }

    #[test]
    fn sign_refuses_unwritable_checkpoints() {
        let signer = Signer::from_seed("o", &[5; 32]).unwrap();
        let bad = [
            (Checkpoint { origin: String::new(), ..sample() }, "checkpoint_empty_origin"),
            (Checkpoint { origin: "a\nb".into(), ..sample() }, "checkpoint_invalid_line"),
            (Checkpoint { origin: "a\rb".into(), ..sample() }, "checkpoint_control_character"),
            (Checkpoint { extensions: vec![String::new()], ..sample() }, "checkpoint_invalid_line"),
            (Checkpoint { extensions: vec!["x\ny".into()], ..sample() }, "checkpoint_invalid_line"),
            (Checkpoint { extensions: vec!["x\u{7}".into()], ..sample() }, "checkpoint_control_character"),
        ];
        for (cp, code) in bad {
            let err = sign_checkpoint(&cp, &signer).unwrap_err();
            assert_eq!(err.code(), code, "{cp:?}: {err}");
        }
    }
}
