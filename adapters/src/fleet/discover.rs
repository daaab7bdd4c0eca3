//! Tailscale discovery: which peers of the tailnet are not in the fleet yet, and the bootstrap-token
//! command that lets one of them enroll.
//!
//! A peer counts as enrolled when some device (decommissioned ones included: a decommissioned id
//! cannot come back) has the peer's device id, has the peer's host name or MagicDNS name as its
//! hostname, or is an SSH device whose target host is one of the peer's Tailscale addresses or its
//! MagicDNS name. A peer's device id is its host name made into an id (see
//! [`super::device_id_from_name`]), else the first label of its MagicDNS name.

use hwledger_engine::event::{DeviceKind, UnixMillis};
use hwledger_engine::{Command, Submission};
use serde::Serialize;

use super::{KnownDevice, device_id_from_name, submission};
use crate::tailscale::{TailscalePeer, TailscaleStatus};

/// A peer and what the registry says about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    /// The peer as Tailscale reports it.
    pub peer: TailscalePeer,
    /// The device id it would enroll as (`None` if its names make no valid id).
    pub device_id: Option<String>,
    /// The device it already is, if any.
    pub enrolled_as: Option<String>,
}

fn strip_dot(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The device id a peer would enroll as.
pub fn peer_device_id(peer: &TailscalePeer) -> Option<String> {
    peer.host_name
        .as_deref()
        .and_then(device_id_from_name)
        .or_else(|| peer.dns_name.as_deref().and_then(|d| d.split('.').next()).and_then(device_id_from_name))
}

fn ssh_host(kind: &DeviceKind) -> Option<String> {
    let DeviceKind::Ssh { target } = kind else { return None };
    target.parse::<crate::ssh::SshTarget>().ok().map(|t| t.host.to_ascii_lowercase())
}

fn is_peer(device: &KnownDevice, peer: &TailscalePeer, device_id: Option<&str>) -> bool {
    let names: Vec<String> = peer.host_name.iter().chain(peer.dns_name.iter()).map(|n| strip_dot(n)).collect();
    if device_id.is_some_and(|id| id.eq_ignore_ascii_case(&device.device_id)) {
        return true;
    }
    if device.hostname.as_deref().is_some_and(|h| names.contains(&strip_dot(h))) {
        return true;
    }
    match ssh_host(&device.kind) {
        Some(host) => names.contains(&strip_dot(&host)) || peer.addresses.iter().any(|a| a.eq_ignore_ascii_case(&host)),
        None => false,
    }
}

/// Every peer (not the local node) with its enrollment status, in Tailscale's order.
pub fn peers(status: &TailscaleStatus, devices: &[KnownDevice]) -> Vec<PeerStatus> {
    status
        .peers
        .iter()
        .map(|peer| {
            let device_id = peer_device_id(peer);
            let enrolled_as =
                devices.iter().find(|d| is_peer(d, peer, device_id.as_deref())).map(|d| d.device_id.clone());
            PeerStatus { peer: peer.clone(), device_id, enrolled_as }
        })
        .collect()
}

/// The peer an operator named: by node id, host name, MagicDNS name (with or without the trailing
/// dot, or just its first label), device id or Tailscale address; case-insensitive.
pub fn find<'a>(peers: &'a [PeerStatus], wanted: &str) -> Option<&'a PeerStatus> {
    let w = strip_dot(wanted.trim());
    peers.iter().find(|p| {
        let dns = p.peer.dns_name.as_deref().map(strip_dot);
        p.peer.id.eq_ignore_ascii_case(&w)
            || p.peer.host_name.as_deref().is_some_and(|h| strip_dot(h) == w)
            || dns.as_deref() == Some(w.as_str())
            || dns.as_deref().and_then(|d| d.split('.').next()) == Some(w.as_str())
            || p.device_id.as_deref() == Some(w.as_str())
            || p.peer.addresses.iter().any(|a| a.eq_ignore_ascii_case(&w))
    })
}

/// `create_bootstrap_token` for `device_id`. The id carries a prefix of the token's hash, which is
/// random: each token is its own fact.
pub fn token_submission(device_id: &str, token_hash: [u8; 32], expires_at: UnixMillis) -> Submission {
    let prefix = hex::encode(token_hash.get(..8).unwrap_or_default());
    submission(
        format!("token/{device_id}/{prefix}"),
        Command::CreateBootstrapToken { token_hash, device_id: device_id.to_owned(), expires_at },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(host: &str, dns: &str, addr: &str) -> TailscalePeer {
        TailscalePeer {
            id: format!("n{host}"),
            host_name: Some(host.into()),
            dns_name: Some(dns.into()),
            addresses: vec![addr.into()],
            endpoints: vec![],
            online: Some(true),
            os: Some("linux".into()),
            last_seen: None,
        }
    }

    fn device(id: &str, kind: DeviceKind, hostname: Option<&str>) -> KnownDevice {
        KnownDevice {
            device_id: id.into(),
            kind,
            hostname: hostname.map(str::to_owned),
            gpus: vec![],
            host_key: None,
            micro_usd_per_hour: None,
            decommissioned: false,
            last_seen: None,
        }
    }

    #[test]
    fn peers_match_by_id_hostname_or_ssh_target() {
        let status = TailscaleStatus {
            version: None,
            backend_state: Some("Running".into()),
            magic_dns_suffix: None,
            self_node: None,
            peers: vec![
                peer("iStoreOS", "istoreos.ts.net.", "100.1.1.1"),
                peer("Lab Box", "lab-box.ts.net.", "100.2.2.2"),
                peer("gpu3", "gpu3.ts.net.", "100.3.3.3"),
                peer("fresh", "fresh.ts.net.", "100.4.4.4"),
            ],
        };
        let devices = vec![
            device("istoreos", DeviceKind::Local, None),
            device("box-a", DeviceKind::Local, Some("LAB-BOX.ts.net")),
            device("box-b", DeviceKind::Ssh { target: "root@100.3.3.3:22".into() }, None),
        ];
        let got = peers(&status, &devices);
        let enrolled: Vec<Option<&str>> = got.iter().map(|p| p.enrolled_as.as_deref()).collect();
        assert_eq!(enrolled, [Some("istoreos"), Some("box-a"), Some("box-b"), None]);
        assert_eq!(got[1].device_id.as_deref(), Some("lab-box"));
        assert_eq!(find(&got, "FRESH.ts.net.").map(|p| p.peer.id.as_str()), Some("nfresh"));
        assert_eq!(find(&got, "fresh").map(|p| p.peer.id.as_str()), Some("nfresh"));
        assert_eq!(find(&got, "100.4.4.4").map(|p| p.peer.id.as_str()), Some("nfresh"));
        assert!(find(&got, "nobody").is_none());
        let sub = token_submission("fresh", [7; 32], 10);
        assert_eq!(sub.command_id, "token/fresh/0707070707070707");
    }
}
