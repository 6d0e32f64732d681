//! Herald's storage interface: the [`Store`] trait, the records it reads and writes, its error
//! type, and (behind the `conformance` feature) the suite of tests every backend must pass.
//!
//! Methods are units of work: each runs in its own transaction inside the backend, so a caller
//! can never leave the database half-changed. Reads that belong to a tenant take a [`Scope`],
//! which makes it impossible to fetch another organization's data by forgetting a `WHERE`.
//! Time is always passed in, never read from the clock here, so tests control it exactly.

mod accounts;
mod audience;
mod automation;
mod broadcasts;
mod campaigns;
mod contacts;
mod credits;
mod error;
mod inbound;
mod model;
mod opt_outs;
mod plan;
pub mod rate;
pub mod segment;
mod store;
mod templates;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use accounts::*;
pub use audience::*;
pub use automation::*;
pub use broadcasts::*;
pub use campaigns::*;
pub use contacts::*;
pub use credits::*;
pub use error::StoreError;
pub use inbound::InboundMessage;
pub use model::*;
pub use opt_outs::{
    ErasedKeys, KeywordSettings, OPTED_OUT, OptOut, OptOutAction, OptOutEvent, erased_key,
    suppressed_on_arrival, suppression_on_arrival,
};
pub use plan::{Batch, Change, NewEvent, QueueState, plan_change};
pub use store::Store;
pub use templates::*;
