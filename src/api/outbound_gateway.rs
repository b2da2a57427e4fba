// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use super::{DestinationResult, LocalRef, ObservedMail, TestSpec, TestSummary, TlsVersion};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS name (optionally with a trailing dot), an IPv4 address or an IPv6 address; the
/// CEL rules on `host` tell real IP addresses and names from look-alikes.
pub(crate) const HOST_PATTERN: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$";

/// A host that outbound mail is routed through.
///
/// `AllMail` is the organisation's outbound gateway, `SecureTransportRequired` the alternate
/// secure route for mail a TlsCompliance requires to go out over TLS, and `Recipients` a
/// per-recipient change of route.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mailtls.io",
    version = "v1alpha1",
    kind = "OutboundGateway",
    namespaced,
    status = "OutboundGatewayStatus",
    shortname = "ogw",
    category = "mailtls",
    doc = "A host that outbound mail is routed through.",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
    printcolumn(name = "Applies To", type_ = "string", json_path = ".spec.appliesTo"),
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
    validation = Rule::new("self.spec.appliesTo != 'Recipients' || (has(self.spec.addressLists) && size(self.spec.addressLists) > 0)")
        .message("appliesTo: Recipients needs at least one entry in addressLists")
        .field_path(".spec.addressLists"),
    validation = Rule::new("self.spec.appliesTo == 'Recipients' || !has(self.spec.addressLists) || size(self.spec.addressLists) == 0")
        .message("addressLists is only used with appliesTo: Recipients")
        .field_path(".spec.addressLists"),
    validation = Rule::new("!has(self.spec.tls) || !has(self.spec.tls.validateHostname) || !self.spec.tls.validateHostname || !isIP(self.spec.host)")
        .message("an IP address has no host name to validate; use a DNS name or turn validateHostname off")
        .field_path(".spec.tls.validateHostname")
)]
#[serde(rename_all = "camelCase")]
pub struct OutboundGatewaySpec {
    /// DNS name or IP address of the gateway.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = HOST_PATTERN),
        extend("x-kubernetes-validations" = [
            {
                "rule": "!self.contains(':') || isIP(self)",
                "message": "not a valid IPv6 address; write a port in spec.port, not in the host"
            },
            {
                "rule": "!self.matches('^[0-9.]+$') || isIP(self)",
                "message": "not a valid IPv4 address"
            },
            {
                "rule": "self.matches('^[0-9.]+$') || !self.matches('(^|[.])[0-9]+[.]?$')",
                "message": "not a valid host name: looks like an IP address, not a domain"
            }
        ])
    )]
    pub host: String,
    /// SMTP port of the gateway.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// `false`: connect to the host itself; `true`: deliver to the host's MX records.
    #[serde(default)]
    pub mx_lookup: bool,
    /// TLS for the hop to the gateway.
    #[serde(default)]
    pub tls: GatewayTls,
    /// Which mail goes through this gateway.
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// With `appliesTo: Recipients`: the recipients whose mail is routed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub address_lists: Vec<LocalRef>,
    /// Periodic TLS tests of the gateway itself.
    #[serde(default)]
    pub test: TestSpec,
}

fn default_port() -> u16 {
    25
}

/// TLS requirements for the hop to a gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.requireCASigned || self.require", "message": "requireCASigned requires require: true"},
    {"rule": "!self.validateHostname || self.requireCASigned", "message": "validateHostname requires requireCASigned: true"}
]))]
pub struct GatewayTls {
    /// The hop must use TLS.
    #[serde(default)]
    pub require: bool,
    /// The gateway's certificate must chain to a trusted CA (needs require).
    #[serde(default, rename = "requireCASigned")]
    pub require_ca_signed: bool,
    /// The certificate must match the gateway host name (needs requireCASigned).
    #[serde(default)]
    pub validate_hostname: bool,
    /// Lowest TLS version allowed on the hop.
    #[serde(default)]
    pub min_tls_version: TlsVersion,
}

/// Which outbound mail a gateway carries.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum AppliesTo {
    /// All outbound mail not routed otherwise (`relayhost`).
    #[default]
    AllMail,
    /// Mail that a TlsCompliance requires to go out over TLS (the alternate secure route).
    SecureTransportRequired,
    /// Mail to the recipients in `addressLists` (change of route).
    Recipients,
}

/// What the controller found for an OutboundGateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundGatewayStatus {
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
    /// Policies whose mail is routed through this gateway (`TlsCompliance/partners`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// The last TLS test of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<TestSummary>,
    /// Result of the last test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<DestinationResult>,
    /// What the relay pods did with real mail for these destinations, from their mail logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedMail>,
}
