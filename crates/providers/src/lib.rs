//! Provider adapters: the [`Provider`] trait that turns an outbound message into a provider call,
//! the [`ReportSink`] through which providers hand back status reports, the built-in
//! [`simulator`], and the [`twilio`] and [`sns`] adapters.
//!
//! Adapters know nothing of the database. Reports — whether a real provider's callback or the
//! simulator's — all enter Herald through a [`ReportSink`], so the simulator exercises exactly the
//! path that real callbacks take.

mod provider;
pub mod simulator;
pub mod sns;
pub mod twilio;

pub use provider::*;

#[cfg(feature = "test-support")]
pub mod test_support;
