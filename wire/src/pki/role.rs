//! Roles as they are written into certificates: one SAN URI `hwledger:<role>:<name>` per
//! certificate, so the role and the device id / person are read from the certificate, never from
//! a request body.

use std::fmt;

use super::error::{PkiError, truncate_for_message};

/// The URI scheme of role SANs.
const SCHEME: &str = "hwledger:";

/// Longest allowed device id / operator / auditor name. Keeps file names, log lines and SANs
/// short; 64 fits any hostname label or UUID.
pub const MAX_NAME_LEN: usize = 64;

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// An agent, which speaks for exactly one device.
    Agent {
        /// The device this agent speaks for.
        device_id: String,
    },
    /// An operator: enrolls, decommissions, dispatches.
    Operator {
        /// The operator's name.
        name: String,
    },
    /// An auditor: reads everything, exports, asks for proofs.
    Auditor {
        /// The auditor's name.
        name: String,
    },
}

impl Role {
    /// An agent role for `device_id`, validated.
    pub fn agent(device_id: &str) -> Result<Role, PkiError> {
        validate_name("device id", device_id)?;
        Ok(Role::Agent { device_id: device_id.to_owned() })
    }

    /// An operator role for `name`, validated.
    pub fn operator(name: &str) -> Result<Role, PkiError> {
        validate_name("operator name", name)?;
        Ok(Role::Operator { name: name.to_owned() })
    }

    /// An auditor role for `name`, validated.
    pub fn auditor(name: &str) -> Result<Role, PkiError> {
        validate_name("auditor name", name)?;
        Ok(Role::Auditor { name: name.to_owned() })
    }

    /// `"agent"`, `"operator"` or `"auditor"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Agent { .. } => "agent",
            Role::Operator { .. } => "operator",
            Role::Auditor { .. } => "auditor",
        }
    }

    /// The device id or person name.
    pub fn name(&self) -> &str {
        match self {
            Role::Agent { device_id } => device_id,
            Role::Operator { name } | Role::Auditor { name } => name,
        }
    }

    /// Re-checks the name; needed for values that did not come through the constructors
    /// (e.g. deserialized ones).
    pub fn validate(&self) -> Result<(), PkiError> {
        let kind = match self {
            Role::Agent { .. } => "device id",
            Role::Operator { .. } => "operator name",
            Role::Auditor { .. } => "auditor name",
        };
        validate_name(kind, self.name())
    }

    /// The SAN URI that carries this role: `hwledger:agent:<device-id>` etc.
    pub fn to_uri(&self) -> String {
        format!("{SCHEME}{}:{}", self.kind(), self.name())
    }

    /// A file-name stem for this role's bundle: `agent-<device-id>` etc. The kind prefix keeps a
    /// device named `ca` from overwriting `ca.crt`.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.kind(), self.name())
    }

    /// Whether `uri` is in the hwledger role namespace at all (then it must parse).
    pub(crate) fn is_role_uri(uri: &str) -> bool {
        uri.get(..SCHEME.len()).is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
    }

    /// Parses a `hwledger:<role>:<name>` URI.
    pub fn from_uri(uri: &str) -> Result<Role, PkiError> {
        let bad = |reason: &'static str| PkiError::BadRoleUri { uri: truncate_for_message(uri, 120), reason };
        let rest = uri.strip_prefix(SCHEME).ok_or(bad("must start with \"hwledger:\""))?;
        let (kind, name) = rest.split_once(':').ok_or(bad("must be hwledger:<role>:<name>"))?;
        match kind {
            "agent" => Role::agent(name),
            "operator" => Role::operator(name),
            "auditor" => Role::auditor(name),
            _ => Err(bad("role must be agent, operator or auditor")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

/// Checks a device id or person name against `[A-Za-z0-9._-]{1,64}`.
pub fn validate_name(kind: &'static str, value: &str) -> Result<(), PkiError> {
    let err = |reason| PkiError::InvalidName { kind, value: truncate_for_message(value, 80), reason };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(err("it is longer than 64 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(err("it contains a character outside the allowed set"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        for role in [Role::agent("gpu-box_01.lan").ok(), Role::operator("alice").ok(), Role::auditor("A.B-c_9").ok()]
            .into_iter()
            .flatten()
        {
            assert_eq!(Role::from_uri(&role.to_uri()).ok(), Some(role));
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(Role::agent("").is_err());
        assert!(Role::agent(&"a".repeat(64)).is_ok());
        assert!(Role::agent(&"a".repeat(65)).is_err());
        for bad in ["a b", "a/b", "a:b", "é", "a\0", "a\n"] {
            assert!(Role::operator(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_uris_are_refused() {
        for bad in [
            "hwledger:",
            "hwledger:agent",
            "hwledger:agent:",
            "hwledger:root:x",
            "hwledger:agent:a:b",
            "https://agent/x",
        ] {
            assert!(Role::from_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_shape() {
        let role = Role::Agent { device_id: "d1".into() };
        let json = serde_json::to_string(&role).unwrap_or_default();
        assert_eq!(json, r#"{"role":"agent","device_id":"d1"}"#);
    }
}
