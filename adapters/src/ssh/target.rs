//! `SshTarget`: who to log in as, where. Parsed from the operator's `user@host[:port]` notation (IPv6
//! literals in brackets, `user@[::1]:2222`), validated once so the rest of the SSH code can format the
//! `known_hosts` lookup name and the socket address without re-checking.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// The SSH port used when the target string names none.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// Longest accepted user name. Linux caps login names at 32 bytes; we allow more for directory-backed
/// accounts but refuse anything that could only be garbage.
const MAX_USER_LEN: usize = 256;

/// Longest accepted host name (the DNS limit for a full name).
const MAX_HOST_LEN: usize = 253;

/// A remote account to probe or run commands on: `user@host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SshTarget {
    /// Remote login name.
    pub user: String,
    /// Host name or IP address literal (IPv6 without brackets).
    pub host: String,
    /// TCP port of the remote sshd.
    pub port: u16,
}

/// Why a `user@host[:port]` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetParseError {
    /// Nothing to parse.
    #[error("empty SSH target; expected user@host[:port]")]
    Empty,
    /// No `user@` part: hwledger never guesses the remote account.
    #[error("SSH target {input:?} has no user; expected user@host[:port]")]
    MissingUser {
        /// The refused input.
        input: String,
    },
    /// The user part is empty, too long, or holds whitespace/control characters.
    #[error("SSH target {input:?} has an invalid user name")]
    InvalidUser {
        /// The refused input.
        input: String,
    },
    /// The host part is empty, too long, or holds characters no host name or address can contain.
    #[error("SSH target {input:?} has an invalid host {host:?}")]
    InvalidHost {
        /// The refused input.
        input: String,
        /// The host part as written.
        host: String,
    },
    /// A `[` without its `]`, or text between `]` and `:port`.
    #[error("SSH target {input:?} has a malformed bracketed address; expected user@[addr]:port")]
    MalformedBrackets {
        /// The refused input.
        input: String,
    },
    /// The port is not a number in 1..=65535.
    #[error("SSH target {input:?} has an invalid port {port:?}; expected 1-65535")]
    InvalidPort {
        /// The refused input.
        input: String,
        /// The port part as written.
        port: String,
    },
}

impl TargetParseError {
    /// Stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            TargetParseError::Empty => "target_empty",
            TargetParseError::MissingUser { .. } => "target_missing_user",
            TargetParseError::InvalidUser { .. } => "target_invalid_user",
            TargetParseError::InvalidHost { .. } => "target_invalid_host",
            TargetParseError::MalformedBrackets { .. } => "target_malformed_brackets",
            TargetParseError::InvalidPort { .. } => "target_invalid_port",
        }
    }
}

impl SshTarget {
    /// Builds a target from parts, applying the same validation as [`FromStr`].
    pub fn new(user: impl Into<String>, host: impl Into<String>, port: u16) -> Result<Self, TargetParseError> {
        let user = user.into();
        let host = host.into();
        let input = format!("{user}@{host}:{port}");
        if !valid_user(&user) {
            return Err(TargetParseError::InvalidUser { input });
        }
        if !valid_host(&host) {
            return Err(TargetParseError::InvalidHost { input, host });
        }
        if port == 0 {
            return Err(TargetParseError::InvalidPort { input, port: "0".to_owned() });
        }
        Ok(SshTarget { user, host, port })
    }

    /// The host as written in URLs and `known_hosts`: IPv6 literals get brackets.
    fn bracketed_host(&self) -> String {
        if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() }
    }

    /// The name OpenSSH looks up in `known_hosts`: `host` on port 22, `[host]:port` otherwise.
    pub fn known_hosts_name(&self) -> String {
        if self.port == DEFAULT_SSH_PORT { self.host.clone() } else { format!("[{}]:{}", self.host, self.port) }
    }

    /// `host:port` suitable for `tokio::net::TcpStream::connect` (IPv6 literals bracketed).
    pub fn socket_addr_string(&self) -> String {
        format!("{}:{}", self.bracketed_host(), self.port)
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.bracketed_host(), self.port)
    }
}

impl FromStr for SshTarget {
    type Err = TargetParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(TargetParseError::Empty);
        }
        let owned = || trimmed.to_owned();
        // OpenSSH splits at the last '@', so user names may themselves contain one.
        let (user, rest) = trimmed.rsplit_once('@').ok_or_else(|| TargetParseError::MissingUser { input: owned() })?;
        if !valid_user(user) {
            return Err(TargetParseError::InvalidUser { input: owned() });
        }
        let (host, port_text) = if let Some(after_bracket) = rest.strip_prefix('[') {
            let (inside, tail) =
                after_bracket.split_once(']').ok_or_else(|| TargetParseError::MalformedBrackets { input: owned() })?;
            let port = if tail.is_empty() {
                None
            } else {
                Some(tail.strip_prefix(':').ok_or_else(|| TargetParseError::MalformedBrackets { input: owned() })?)
            };
            (inside, port)
        } else if rest.matches(':').count() >= 2 {
            // A bare IPv6 literal (`user@::1`): it cannot carry a port without brackets.
            if rest.parse::<Ipv6Addr>().is_err() {
                return Err(TargetParseError::InvalidHost { input: owned(), host: rest.to_owned() });
            }
            (rest, None)
        } else if let Some((host, port)) = rest.split_once(':') {
            (host, Some(port))
        } else {
            (rest, None)
        };
        if !valid_host(host) {
            return Err(TargetParseError::InvalidHost { input: owned(), host: host.to_owned() });
        }
        let port = match port_text {
            None => DEFAULT_SSH_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 && !text.starts_with('+') => port,
                _ => {
                    return Err(TargetParseError::InvalidPort { input: owned(), port: text.to_owned() });
                }
            },
        };
        Ok(SshTarget { user: user.to_owned(), host: host.to_owned(), port })
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && !user.starts_with('-')
        && user.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != ':' && c != '/')
}

fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN || host.starts_with('-') {
        return false;
    }
    if host.contains(':') {
        return host.parse::<Ipv6Addr>().is_ok();
    }
    host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SshTarget, TargetParseError> {
        s.parse()
    }

    #[test]
    fn parses_user_host_and_optional_port() {
        assert_eq!(
            parse("root@gpu-01.example.net").ok(),
            Some(SshTarget { user: "root".into(), host: "gpu-01.example.net".into(), port: 22 })
        );
        let t = parse("ops@10.0.0.7:2222").ok();
        assert_eq!(t.as_ref().map(|t| t.port), Some(2222));
        assert_eq!(t.map(|t| t.known_hosts_name()), Some("[10.0.0.7]:2222".into()));
    }

    #[test]
    fn parses_ipv6_literals() {
        let t = parse("root@[::1]:2200").ok();
        assert_eq!(t.as_ref().map(|t| t.host.as_str()), Some("::1"));
        assert_eq!(t.as_ref().map(|t| t.port), Some(2200));
        assert_eq!(t.as_ref().map(|t| t.socket_addr_string()), Some("[::1]:2200".into()));
        assert_eq!(t.as_ref().map(|t| t.to_string()), Some("root@[::1]:2200".into()));
        assert_eq!(parse("root@[::1]").ok().map(|t| t.port), Some(22));
        assert_eq!(parse("root@fe80::1").ok().map(|t| t.host), Some("fe80::1".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in ["a@b:1", "root@[::1]:22", "x.y@host.example:65535"] {
            let t = parse(s).ok();
            assert_eq!(t.as_ref().map(|t| t.to_string()), Some(s.to_owned()));
            assert_eq!(t.as_ref().and_then(|t| parse(&t.to_string()).ok()), t);
        }
    }

    #[test]
    fn refuses_malformed_targets_with_typed_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "target_empty"),
            ("   ", "target_empty"),
            ("gpu-01", "target_missing_user"),
            ("@gpu-01", "target_invalid_user"),
            ("bad user@gpu-01", "target_invalid_user"),
            ("-oProxyCommand=x@gpu", "target_invalid_user"),
            ("root@", "target_invalid_host"),
            ("root@-oops", "target_invalid_host"),
            ("root@host/evil", "target_invalid_host"),
            ("root@[::1", "target_malformed_brackets"),
            ("root@[::1]x", "target_malformed_brackets"),
            ("root@[bad host]:22", "target_invalid_host"),
            ("root@1:2:3", "target_invalid_host"),
            ("root@host:0", "target_invalid_port"),
            ("root@host:65536", "target_invalid_port"),
            ("root@host:+22", "target_invalid_port"),
            ("root@host:", "target_invalid_port"),
            ("root@host:ssh", "target_invalid_port"),
        ];
        for (input, code) in cases {
            match parse(input) {
                Ok(t) => panic!("{input:?} parsed as {t:?}, expected {code}"),
                Err(e) => assert_eq!(e.code(), *code, "{input:?}: {e}"),
            }
        }
    }

    #[test]
    fn new_validates_parts() {
        assert!(SshTarget::new("root", "127.0.0.1", 22).is_ok());
        assert_eq!(SshTarget::new("root", "::1", 0).map_err(|e| e.code()), Err("target_invalid_port"));
        assert_eq!(SshTarget::new("", "h", 22).map_err(|e| e.code()), Err("target_invalid_user"));
    }
}
