//! hwledger-projections: the read models of hwledger, derived from the event log and rebuildable by replay.
//!
//! Four projections implement [`Projection`]: [`Registry`] (devices), [`Snapshots`] (GPU telemetry, bounded
//! history), [`Cost`] (jobs and what they cost) and [`Dashboard`] (the operator's view). The [`Projector`] keeps
//! them up to date with the log — catching up from their persisted checkpoints on open, then following the
//! ledger's live tail — rebuilds them when their code version changes or on command, and serves reads.
//! [`as_of`] computes them at any earlier seq or time without touching the live ones.
//!
//! Projections never read the clock: time comes from `recorded_at` and event fields, and the reader's "now"
//! (for staleness, windows) is a parameter of the read, so a projection's state and digest depend only on the
//! events applied.

mod checkpoint_file;
pub mod cost;
pub mod dashboard;
pub mod projection;
pub mod projector;
pub mod registry;
pub mod snapshots;

pub use cost::{Cost, CostReport, GroupBy, JobView};
pub use dashboard::{Dashboard, DashboardView};
pub use projection::{Digest, Projection, StateDecodeError};
pub use projector::{
    AsOf, PastProjections, ProjectionError, ProjectionName, ProjectionStatus, Projections, Projector, ProjectorOptions,
    WaitTimeout, as_of,
};
pub use registry::{DeviceStatus, DeviceView, Registry};
pub use snapshots::{DeviceTelemetry, Snapshots};
