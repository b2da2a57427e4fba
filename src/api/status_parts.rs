//! Status pieces shared by TlsCompliance and OutboundGateway.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many entries of the referenced address lists a policy matched.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchedCounts {
    /// Individual addresses (`alice@example.com`).
    pub addresses: u64,
    /// Domains, including `.domain` subdomain entries.
    pub domains: u64,
}

/// Where a policy landed: the relay configuration and how far it has propagated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayConfigRef {
    /// Name of the ConfigMap (or output directory) holding the rendered files.
    pub name: String,
    /// SHA-256 content hash of the rendered files.
    pub hash: String,
    /// Relay pods that report this hash as applied (unset when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_pods: Option<u32>,
    /// Relay pods known to the controller (unset when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pods: Option<u32>,
    /// Relay pods that refused this hash; they keep their last good configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_pods: Option<u32>,
    /// Why the first of them refused it (the relay agent's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// Summary of the last TLS test run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSummary {
    /// When the test finished (RFC 3339).
    pub time: String,
    /// Destinations tested.
    pub destinations: u32,
    /// Destinations that met the policy.
    pub passed: u32,
    /// Destinations that did not (in Monitor mode: that would not have).
    pub failed: u32,
    /// Destinations that passed with a warning (e.g. certificate expiring soon).
    pub warnings: u32,
    /// The `mailtls.io/test-now` annotation value this test answered, if it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Destinations that could not be tested (`.example.com` wildcards name no host).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub untestable: u32,
    /// Count of results by outcome (`pass`, `starttls-not-supported`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_outcome: BTreeMap<String, u32>,
}

/// The test result for one destination (a domain, address domain or gateway host).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationResult {
    /// The destination as tested (`example.com`, `[gw.example.net]:587`).
    pub destination: String,
    /// The next hop tested for it when its mail goes through a gateway
    /// (`[gw.example.net]:587 (OutboundGateway/gw)`); absent: its own MX hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The host actually connected to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `pass` or an RFC 8460 result type / DNS or connection error.
    pub outcome: String,
    /// Whether the destination met the policy.
    pub passed: bool,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Negotiated TLS version, if a handshake completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// Days until the leaf certificate expires, if one was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What the relay pods did with real mail for a resource's destinations (or through a
/// gateway), read from their mail logs by the relay agents: message counts over the window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedMail {
    /// The window counted, up to the last poll (`24h`).
    pub window: String,
    /// Relay pods whose counts are included.
    pub relay_pods: u32,
    /// Delivered over TLS with the server's certificate verified: chain and host name.
    #[serde(default)]
    pub verified: u32,
    /// Delivered over TLS with a certificate chaining to a trusted CA (name not checked).
    #[serde(default)]
    pub trusted: u32,
    /// Delivered over TLS with an unchecked or untrusted certificate, or none.
    #[serde(default)]
    pub untrusted: u32,
    /// Delivered without TLS.
    #[serde(default)]
    pub plaintext: u32,
    /// Bounced because a TLS requirement was not met.
    #[serde(default)]
    pub tls_bounced: u32,
    /// Delivery attempts deferred because a TLS requirement was not met.
    #[serde(default)]
    pub tls_deferred: u32,
    /// Monitor policies: delivered messages that would have bounced or been deferred under
    /// Enforce: every plaintext one, and those whose certificate did not chain to a trusted CA
    /// when the policy asks for that. A lower bound: the host name match is logged only
    /// where it is enforced, so the TLS tests decide that part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_fail: Option<u32>,
    /// The most recent TLS failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tls_failure: Option<ObservedFailure>,
}

/// One real message that failed a TLS requirement (no local part is ever kept).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedFailure {
    /// RFC 3339.
    pub time: String,
    /// The recipient domain.
    pub domain: String,
    /// The next hop tried (`host[address]:port`).
    pub hop: String,
    /// Postfix's reason.
    pub reason: String,
    /// Bounced (true) or deferred for another attempt.
    pub bounced: bool,
}
