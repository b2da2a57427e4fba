//! The engine: the only copy of the reconcile pipeline and of the TLS-test scheduling,
//! shared by the cluster (`controller`) and `mailtls standalone` (a directory), each of which
//! implements [`Backend`].
//!
//! * [`kind`]: what the engine needs of each managed kind ([`Managed`]).
//! * [`conditions`]: condition types, reasons, and the one place a condition is set.
//! * [`statuses`]: findings → status (pure); [`plan`]: due tests and their results (pure);
//!   [`observed`]: what the relay pods did with real mail, per resource (pure).
//! * [`reconcile`]: evaluate → render → write the relay configuration → write statuses.
//! * [`schedule`]: which tests run when, bounded and fair, results into status.

pub mod backend;
pub mod conditions;
pub mod kind;
pub mod observed;
pub mod plan;
pub mod reconcile;
pub mod schedule;
pub mod statuses;

pub use backend::Backend;
pub use kind::Managed;
pub use reconcile::{Outcome, reconcile};
pub use schedule::{Scheduler, Tester};
