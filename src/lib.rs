//! mailtls: secure mail transport (TLS) policy as Kubernetes resources, rendered into
//! Postfix configuration and tested with real TLS connections.
//!
//! Pure core: [`api`] (resource types), [`policy`] (resolve, merge, conflicts) and
//! [`render`] (EffectivePolicy → Postfix files) do no I/O. [`engine`] holds the one copy of
//! the reconcile pipeline and the TLS-test scheduling over a backend: the cluster
//! ([`controller`]) or a directory (`mailtls standalone` in [`cli`]). The edges (network
//! [`probe`]s, the controller, the [`relay`] agent) live beside them. [`observe`] reads
//! what the relay did with real mail from its log.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod observe;
pub mod parallel;
pub mod policy;
pub mod probe;
pub mod relay;
pub mod render;
pub mod sts;
