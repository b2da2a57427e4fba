// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Characters an entry may never contain, and no leading `-` (it would read as an option).
/// Everything else is normalised and checked by the policy engine.
pub(crate) const ENTRY_PATTERN: &str = r"^[^-\x00-\x20\x7f,;={}][^\x00-\x20\x7f,;={}]*$";

/// A named list of email addresses and domains, reusable by several policies.
///
/// `alice@example.com` is one address, `example.com` the domain itself and `.example.com`
/// every subdomain of it. Entries are lowercased, internationalised domains are turned
/// into punycode, and duplicates are dropped and counted.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "mailtls.io",
    version = "v1alpha1",
    kind = "AddressList",
    namespaced,
    status = "AddressListStatus",
    shortname = "al",
    category = "mailtls",
    doc = "A named list of email addresses and domains, reusable by several mailtls policies.",
    printcolumn(name = "Addresses", type_ = "integer", json_path = ".status.addresses"),
    printcolumn(name = "Domains", type_ = "integer", json_path = ".status.domains"),
    printcolumn(
        name = "Invalid",
        type_ = "integer",
        json_path = ".status.invalidCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AddressListSpec {
    /// Addresses (`alice@example.com`), domains (`example.com`) or every subdomain
    /// (`.example.com`).
    #[serde(default)]
    #[schemars(length(max = 100000), inner(length(min = 1, max = 320), regex(pattern = ENTRY_PATTERN)))]
    pub entries: Vec<String>,
    /// Pasted text with more entries, separated by spaces, commas, semicolons or newlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000000))]
    pub bulk: Option<String>,
}

/// One entry that was not accepted, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct InvalidEntry {
    /// The entry as written (control characters escaped, cut at 100 characters).
    pub entry: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What the controller found in an AddressList.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressListStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation whose spec is in force: this one, an earlier valid one when this one
    /// cannot be used, or unset when none was ever valid (the resource enforces nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    /// `Ready`: the list was read and its valid entries are usable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Valid individual addresses.
    pub addresses: u64,
    /// Valid domains, including `.domain` entries.
    pub domains: u64,
    /// Entries dropped because they repeated an earlier one.
    pub duplicates: u64,
    /// Entries rejected.
    pub invalid_count: u64,
    /// The first rejected entries with reasons (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidEntry>,
    /// Policies that reference this list (`TlsCompliance/partners`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}
