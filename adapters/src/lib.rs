//! hwledger's adapters: they turn the outside world (GPU tools, SSH hosts, rental clouds, Tailscale) into
//! typed values that the binary turns into commands. Adapters never write ledger state directly.

pub mod agent;
pub mod cloud;
pub mod fleet;
pub mod gpu;
pub mod ssh;
pub mod tailscale;
