//! Loopback fixtures for the probe tests: a DNS server, SMTP servers with rcgen
//! certificates and deliberately broken behaviours, and an HTTPS MTA-STS policy server.
//! Everything listens on 127.0.0.0/8 only.
#![allow(dead_code)]

pub mod fixtures;
