//! Certificate fingerprints: the SHA-256 of a certificate's DER, the value the registry pins
//! for each device and the key every handler looks a peer up by.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding.
///
/// Displays as 64 lowercase hex digits; parses from that form, from upper case, and from the
/// colon-separated form `openssl x509 -fingerprint -sha256` prints, so an operator can paste
/// either.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintParseError {
    /// Wrong number of hex digits.
    #[error("a SHA-256 fingerprint has 64 hex digits, this has {digits}")]
    Length {
        /// How many hex digits (after removing colons) were given.
        digits: usize,
    },
    /// A character that is not a hex digit.
    #[error("a fingerprint is hex digits, optionally colon-separated; found {found:?}")]
    NotHex {
        /// The offending character.
        found: char,
    },
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        let mut digits = 0usize;
        let mut high: Option<u8> = None;
        for c in s.trim().chars() {
            if c == ':' {
                continue;
            }
            let v =
                c.to_digit(16).and_then(|d| u8::try_from(d).ok()).ok_or(FingerprintParseError::NotHex { found: c })?;
            if let Some(slot) = out.get_mut(digits / 2) {
                match high.take() {
                    None => high = Some(v),
                    Some(h) => *slot = (h << 4) | v,
                }
            }
            digits += 1;
        }
        if digits != 64 {
            return Err(FingerprintParseError::Length { digits });
        }
        Ok(Fingerprint(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let fp = Fingerprint::of_der(b"not really a certificate");
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(text.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>(), Ok(fp));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!("abc".parse::<Fingerprint>(), Err(FingerprintParseError::Length { digits: 3 }));
        let long = "a".repeat(200);
        assert_eq!(long.parse::<Fingerprint>(), Err(FingerprintParseError::Length { digits: 200 }));
        let bad = format!("{}g", "a".repeat(63));
        assert_eq!(bad.parse::<Fingerprint>(), Err(FingerprintParseError::NotHex { found: 'g' }));
        assert!("ä".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn serde_is_the_hex_string() {
        let fp = Fingerprint([0xab; 32]);
        let json = serde_json::to_string(&fp).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        let back: Result<Fingerprint, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(fp));
    }
}
