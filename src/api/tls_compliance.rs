// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use super::{
    DestinationResult, LocalRef, MatchedCounts, ObservedMail, RelayConfigRef, TestSummary,
    TlsVersion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mail to and/or from the listed addresses and domains must use TLS.
///
/// Outbound matches recipients, inbound matches envelope senders.
/// CEL: the certificate and version settings concern servers the relay sends to, so an
/// Inbound policy may not set them (`minTlsVersion` only at its default, which the API
/// server fills in).
const INBOUND_RULE: &str = "self.spec.direction != 'Inbound' || (!self.spec.requireCASigned && !self.spec.validateHostname && self.spec.minTlsVersion == '1.2' && (!has(self.spec.mechanisms) || size(self.spec.mechanisms) == 0))";
/// What [`INBOUND_RULE`] says when broken; the engine says the same.
pub const INBOUND_MESSAGE: &str = "requireCASigned, validateHostname, minTlsVersion and mechanisms apply to outbound mail only; an Inbound policy requires TLS from its senders, nothing more (use direction: Both to set them for mail to these addresses)";
/// CEL: a `Listed` policy names its lists; an `Unlisted` one covers what no list names.
/// `scope` may be absent (objects stored before it existed), hence `has()`.
const LISTS_RULE: &str = "has(self.spec.scope) && self.spec.scope == 'Unlisted' ? (!has(self.spec.addressLists) || size(self.spec.addressLists) == 0) : (has(self.spec.addressLists) && size(self.spec.addressLists) > 0)";
/// What [`LISTS_RULE`] says when broken; the engine says the same.
pub const LISTS_MESSAGE: &str = "a Listed policy needs at least one AddressList; an Unlisted policy covers every destination no policy lists and takes none";
/// CEL: the namespace's default for unlisted destinations sets which published policies
/// are honoured, nothing else: requiring TLS of every destination is not what it is for.
const UNLISTED_RULE: &str = "!has(self.spec.scope) || self.spec.scope != 'Unlisted' || (self.spec.direction == 'Outbound' && !self.spec.requireCASigned && !self.spec.validateHostname && self.spec.minTlsVersion == '1.2')";
/// What [`UNLISTED_RULE`] says when broken; the engine says the same.
pub const UNLISTED_MESSAGE: &str = "an Unlisted policy is Outbound and sets only mechanisms (and enforcement): it says which policies that destinations publish are honoured, and requires nothing of the others";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mailtls.io",
    version = "v1alpha1",
    kind = "TlsCompliance",
    namespaced,
    status = "TlsComplianceStatus",
    shortname = "tlsc",
    category = "mailtls",
    doc = "Mail to and/or from the listed addresses and domains must use TLS.",
    printcolumn(name = "Direction", type_ = "string", json_path = ".spec.direction"),
    printcolumn(name = "Enforcement", type_ = "string", json_path = ".spec.enforcement"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Compliant",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Compliant\")].status"
    ),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Applied\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = "1",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = "1",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!self.spec.validateHostname || self.spec.requireCASigned")
        .message("validateHostname requires requireCASigned: a host name is only checked on a CA-signed certificate")
        .field_path(".spec.validateHostname"),
    validation = Rule::new(INBOUND_RULE)
        .message(INBOUND_MESSAGE)
        .field_path(".spec.direction"),
    validation = Rule::new(LISTS_RULE)
        .message(LISTS_MESSAGE)
        .field_path(".spec.addressLists"),
    validation = Rule::new(UNLISTED_RULE)
        .message(UNLISTED_MESSAGE)
        .field_path(".spec.scope")
)]
#[serde(rename_all = "camelCase")]
pub struct TlsComplianceSpec {
    /// `Outbound` (recipients), `Inbound` (senders) or `Both`.
    pub direction: Direction,
    /// `Listed` (default): the entries of `addressLists`. `Unlisted`: every outbound
    /// destination no TlsCompliance lists, i.e. the namespace's default; it sets only
    /// `mechanisms`, which then also apply to the listed destinations (listing never weakens).
    #[serde(default, skip_serializing_if = "Scope::is_listed")]
    pub scope: Scope,
    /// The address lists whose entries this policy applies to (`Listed` only).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub address_lists: Vec<LocalRef>,
    /// Outbound: the policies destinations publish that the relay enforces, on top of the
    /// options here (strictest wins). `MtaSts`: a domain whose MTA-STS policy (RFC 8461) is
    /// `enforce` gets mail only over verified TLS to the MX hosts its policy names. `Dane`:
    /// a domain whose MX hosts have DNSSEC-signed TLSA records (RFC 7672) gets mail only
    /// over TLS those records authenticate; DANE is tried first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub mechanisms: Vec<Mechanism>,
    /// Outbound: the server certificate must chain to a trusted CA.
    #[serde(default, rename = "requireCASigned")]
    pub require_ca_signed: bool,
    /// Outbound: the certificate must also match the server's host name (needs requireCASigned).
    #[serde(default)]
    pub validate_hostname: bool,
    /// Outbound: lowest TLS version allowed.
    #[serde(default)]
    pub min_tls_version: TlsVersion,
    /// Outbound: what happens to mail that cannot go out over TLS.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `Enforce` renders mandatory TLS; `Monitor` only tests and reports what would fail.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Periodic TLS tests of the outbound destinations.
    #[serde(default)]
    pub test: TestSpec,
}

impl TlsComplianceSpec {
    /// The options set here that concern only mail to the listed addresses (the servers
    /// the relay sends to), by field name: refused on `Inbound`, a warning on `Both`.
    pub fn outbound_only_fields(&self) -> Vec<&'static str> {
        [
            ("requireCASigned", self.require_ca_signed),
            ("validateHostname", self.validate_hostname),
            (
                "minTlsVersion",
                self.min_tls_version != TlsVersion::default(),
            ),
            ("mechanisms", !self.mechanisms.is_empty()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
    }
}

/// Which mail a TlsCompliance applies to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Direction {
    /// Mail from the listed senders.
    Inbound,
    /// Mail to the listed recipients.
    Outbound,
    /// Both.
    Both,
}

impl Direction {
    pub fn outbound(self) -> bool {
        matches!(self, Direction::Outbound | Direction::Both)
    }
    pub fn inbound(self) -> bool {
        matches!(self, Direction::Inbound | Direction::Both)
    }
}

/// Which destinations a TlsCompliance covers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Scope {
    /// The entries of its address lists.
    #[default]
    Listed,
    /// Every outbound destination no TlsCompliance lists: the namespace's default.
    Unlisted,
}

impl Scope {
    fn is_listed(&self) -> bool {
        *self == Scope::Listed
    }
}

/// A policy a destination publishes that the relay can enforce.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Mechanism {
    /// MTA-STS (RFC 8461): the `_mta-sts` TXT record and the policy at
    /// `https://mta-sts.<domain>/.well-known/mta-sts.txt`. Failures under an `enforce`
    /// policy of an unlisted destination keep the mail queued (RFC 8461 §5); a listed one's
    /// `onFailure` applies.
    MtaSts,
    /// DANE (RFC 7672): TLSA records of the MX hosts, authenticated by DNSSEC through the
    /// relay's validating resolver. An unlisted destination gets Postfix's `dane` level; a
    /// listed one `dane-only` whenever such records exist, else its own requirement.
    Dane,
}

/// What happens to outbound mail that cannot be sent over TLS as required.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum OnFailure {
    /// Keep it queued and retry.
    Defer,
    /// Return it to the sender after one attempt (like the hosted services).
    #[default]
    Bounce,
}

/// Whether a policy is in force or a dry run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Enforcement {
    /// Render mandatory TLS.
    #[default]
    Enforce,
    /// Render nothing mandatory; test and report what would fail.
    Monitor,
}

/// Periodic TLS connection tests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSpec {
    /// Run tests at all.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// Time between tests, e.g. `6h`, `30m`, `1h30m` (at least 1m).
    #[serde(default = "default_interval")]
    #[schemars(
        regex(pattern = r"^([0-9]+(h|m|s))+$"),
        length(max = 32),
        extend("x-kubernetes-validations" = [
            {
                "rule": "!self.matches('^([0-9]+(h|m|s))+$') || duration(self) >= duration('1m')",
                "messageExpression": "'interval ' + self + ' is shorter than 1m'"
            },
            {
                "rule": "!self.matches('^([0-9]+(h|m|s))+$') || duration(self) <= duration('720h')",
                "messageExpression": "'interval ' + self + ' is longer than 30 days (720h)'"
            }
        ])
    )]
    pub interval: String,
}

fn default_interval() -> String {
    "6h".to_string()
}

impl Default for TestSpec {
    fn default() -> Self {
        TestSpec {
            enabled: true,
            interval: default_interval(),
        }
    }
}

/// What the controller found for a TlsCompliance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsComplianceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation whose spec is in force: this one, an earlier valid one when this one
    /// cannot be used, or unset when none was ever valid (the resource enforces nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    /// `Ready`, `Rendered`, `Tested`, `Compliant`, `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Entries of the referenced lists this policy matched.
    #[serde(default)]
    pub matched: MatchedCounts,
    /// The relay configuration this policy landed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_config: Option<RelayConfigRef>,
    /// The last TLS test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<TestSummary>,
    /// Per-destination results of the last test, failures first (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<DestinationResult>,
    /// What the relay pods did with real mail for these destinations, from their mail logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedMail>,
}
