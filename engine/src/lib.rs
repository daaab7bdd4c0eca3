//! hwledger-engine: the event-sourced core of hwledger.
//!
//! Commands come in with a [`Context`]; [`decide`] turns them into events or a [`Rejection`]; the
//! [`Ledger`] appends accepted events durably to a SHA-256 hash chain and an RFC 6962 Merkle tree in sled
//! (through [`store`], the only module that names sled) and hands back [`Receipt`]s. [`state::apply`] folds
//! events into the decision state; [`replay`] reads the log back; [`verify`] checks a data directory or an
//! export offline; [`checkpoint`] and [`note`] sign and open C2SP checkpoints.
//!
//! The engine knows nothing of HTTP, SSH or price feeds, and never reads the clock: time enters through
//! [`Context`].

pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod command;
pub mod decide;
pub mod event;
pub mod export;
pub mod ledger;
pub mod merkle;
pub mod note;
pub mod replay;
pub mod state;
pub mod store;
pub mod tiles;
pub mod verify;

// Test support, also used by other crates' tests (small; kept always compiled for simplicity).
pub mod testing;

pub use command::{Command, Context, Submission};
pub use decide::{Rejection, decide};
pub use event::{Actor, Event, EventRecord};
pub use ledger::{Head, Ledger, LedgerOptions, Outcome, Receipt, SubmitError};
