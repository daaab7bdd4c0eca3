//! One-time bootstrap tokens for enrollment: 32 random bytes shown once to the operator as
//! base64url; only their SHA-256 is ever stored (the ledger records it as an event), and a
//! presented token is checked against that hash in constant time.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::error::PkiError;

/// Random bytes in a token: 256 bits, beyond any guessing.
const TOKEN_BYTES: usize = 32;

/// Longest presented token that is even hashed; a real one is 43 characters.
const MAX_PRESENTED_LEN: usize = 256;

/// A freshly minted bootstrap token: the secret handed to the operator once.
///
/// `Debug` does not print the secret, so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// The token text (base64url, no padding) to give to the device.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash to store.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BootstrapToken(<redacted>)")
    }
}

/// SHA-256 of a bootstrap token's text: what the ledger stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of a token's text.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token this is the hash of. Constant time in the hash
    /// comparison; over-long input is refused without hashing it.
    pub fn verify(&self, presented: &str) -> bool {
        if presented.len() > MAX_PRESENTED_LEN {
            return false;
        }
        constant_time_eq(&TokenHash::of(presented).0, &self.0)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

/// Why a string is not a token hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token hash is 64 hex digits")]
pub struct TokenHashParseError;

impl FromStr for TokenHash {
    type Err = TokenHashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| TokenHashParseError)?;
        Ok(TokenHash(out))
    }
}

impl serde::Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Mints a new bootstrap token and its hash. Store the hash, show the token once.
pub fn new_bootstrap_token() -> Result<(BootstrapToken, TokenHash), PkiError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    let token = BootstrapToken(URL_SAFE_NO_PAD.encode(bytes));
    let hash = token.hash();
    Ok((token, hash))
}

/// Mints a bootstrap token for `device_id`, valid until `expires_at` (unix ms), and the submission that
/// records only its hash in the ledger (`create_bootstrap_token`; the command id derives from the hash, so
/// re-sending it is idempotent). Submit it as an operator, locally or over the API; show the token once.
pub fn bootstrap_token_submission(
    device_id: &str,
    expires_at: i64,
) -> Result<(BootstrapToken, hwledger_engine::Submission), PkiError> {
    super::role::validate_name("device id", device_id)?;
    let (token, hash) = new_bootstrap_token()?;
    let submission = hwledger_engine::Submission {
        command_id: format!("bootstrap-token-{}", &hash.to_string()[..32]),
        expected_version: None,
        command: hwledger_engine::Command::CreateBootstrapToken {
            token_hash: hash.0,
            device_id: device_id.to_owned(),
            expires_at,
        },
    };
    Ok((token, submission))
}

/// Compares two byte strings in time that depends only on their lengths, not their contents.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_against_their_hash_only() -> Result<(), PkiError> {
        let (token, hash) = new_bootstrap_token()?;
        assert_eq!(token.as_str().len(), 43);
        assert!(token.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(hash.verify(token.as_str()));
        let (other, _) = new_bootstrap_token()?;
        assert_ne!(token, other);
        assert!(!hash.verify(other.as_str()));
        assert!(!hash.verify(""));
        assert!(!hash.verify(&"x".repeat(10_000)));
        assert!(!format!("{token:?}").contains(token.as_str()));
        Ok(())
    }

    #[test]
    fn token_submission_stores_only_the_hash() -> Result<(), Box<dyn std::error::Error>> {
        let (token, sub) = bootstrap_token_submission("gpu-1", 1_000)?;
        let text = serde_json::to_string(&sub)?;
        assert!(!text.contains(token.as_str()), "{text}");
        assert!(text.contains(&token.hash().to_string()), "{text}");
        assert!(bootstrap_token_submission("bad id!", 1_000).is_err());
        Ok(())
    }

    #[test]
    fn hash_text_round_trip() {
        let hash = TokenHash::of("abc");
        assert_eq!(hash.to_string().parse::<TokenHash>(), Ok(hash));
        assert!("zz".parse::<TokenHash>().is_err());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
