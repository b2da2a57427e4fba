//! MTA-STS (RFC 8461) enforced by the relay: a policy server Postfix asks through its
//! socketmap protocol (as postfix-mta-sts-resolver does), run inside the relay agent.
//! [`socketmap`], [`cache`], [`dane_cache`] and [`scope`] are pure; [`server`] does DNS and
//! HTTPS.

pub mod cache;
pub mod dane_cache;
pub mod scope;
pub mod server;
pub mod socketmap;
