// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Entries, syntax};
use schemars::{Schema, SchemaGenerator, json_schema};

/// Most entries one AddressList may hold, `entries` and `bulk` items together.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// Longest `spec.bulk` text.
pub const MAX_BULK_CHARS: usize = 1_000_000;

/// CEL: entries and bulk items together within [`MAX_LIST_ENTRIES`]. Bulk items are counted
/// as the engine splits them (white space, `,` and `;`); one regex pass over at most 1 MB.
const LIST_SIZE_RULE: &str = r"(has(self.spec.entries) ? size(self.spec.entries) : 0) + (has(self.spec.bulk) ? size(self.spec.bulk.findAll('[^\\t\\n\\x0B\\f\\r\\x{85}\\p{Z},;]+')) : 0) <= 100000";
/// The engine says the same (`policy::lists`).
pub const LIST_SIZE_MESSAGE: &str =
    "at most 100000 entries per AddressList (entries and bulk items together)";

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
    validation = Rule::new(LIST_SIZE_RULE).message(LIST_SIZE_MESSAGE)
    .field_path(".spec.entries"),
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
    #[schemars(schema_with = "entries_schema")]
    pub entries: Entries,
    /// Pasted text with more entries, separated by spaces, commas, semicolons or newlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bulk_schema")]
    pub bulk: Option<String>,
}

/// Every entry is checked by pattern (no CEL cost, whatever the list's size): the syntax,
/// the top label and the lengths, as the engine checks them.
fn entries_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Addresses (`alice@example.com`), domains (`example.com`) or every subdomain\n(`.example.com`).",
        "type": "array",
        "default": [],
        "maxItems": MAX_LIST_ENTRIES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 320,
            "pattern": syntax::entry_pattern(),
            "allOf": [
                {"pattern": syntax::top_label_pattern()},
                {"pattern": syntax::LENGTHS_PATTERN},
            ],
        },
    })
}

/// The bulk text: items separated as the engine splits them, each with an entry's syntax.
fn bulk_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Pasted text with more entries, separated by spaces, commas, semicolons or newlines.",
        "type": "string",
        "nullable": true,
        "maxLength": MAX_BULK_CHARS,
        "pattern": syntax::bulk_pattern(),
    })
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
