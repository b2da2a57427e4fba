//! mailtls: secure mail transport (TLS) policy as Kubernetes resources, rendered into
//! Postfix configuration and tested with real TLS connections.
//!
//! Pure core: [`api`] (resource types), [`policy`] (resolve, merge, conflicts) and
//! [`render`] (EffectivePolicy → Postfix files) do no I/O. The edges (`cli`, network
//! probes, the controller and the relay agent) live beside them.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod policy;
pub mod probe;
pub mod relay;
pub mod render;
pub mod status;
