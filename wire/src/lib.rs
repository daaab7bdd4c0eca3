//! hwledger's front door: the fleet PKI, the mTLS transport, the HTTP API and its typed client.

pub mod api;
pub mod client;
pub mod client_tls;
pub mod pki;
pub mod server;
pub mod tls;
pub mod transport;
