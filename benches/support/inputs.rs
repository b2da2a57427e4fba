//! The input of the render benches: ten AddressLists sharing `total` entries (addresses,
//! domains and subdomain wildcards), ten policies over two lists each (mixed
//! Outbound/Both, CA-signed/host name, TLS 1.2/1.3, Bounce/Defer, one Monitor), and one
//! `Recipients` gateway. `bulk`: the lists as `spec.bulk` text instead of `spec.entries`.

use mailtls::api::{
    AddressList, AddressListSpec, Direction, Enforcement, LocalRef, OnFailure, OutboundGateway,
    OutboundGatewaySpec, TestSpec, TlsCompliance, TlsComplianceSpec, TlsVersion,
};
use mailtls::policy::Inputs;

const LISTS: usize = 10;

pub fn inputs(total: usize, bulk: bool) -> Inputs {
    let per = total / LISTS;
    let address_lists = (0..LISTS)
        .map(|l| {
            let entries: Vec<String> = (0..per)
                .map(|i| match i % 3 {
                    0 => format!("user{i}@dom{}.example", i % 5000),
                    1 => format!("dom{i}-{l}.example"),
                    _ => format!(".sub{i}-{l}.example"),
                })
                .collect();
            let spec = if bulk {
                AddressListSpec {
                    entries: Default::default(),
                    bulk: Some(entries.join("\n") + "\n"),
                }
            } else {
                AddressListSpec {
                    entries: entries.into(),
                    bulk: None,
                }
            };
            AddressList::new(&format!("list-{l}"), spec)
        })
        .collect();
    let policies = (0..LISTS)
        .map(|p| {
            TlsCompliance::new(
                &format!("policy-{p}"),
                TlsComplianceSpec {
                    direction: [Direction::Outbound, Direction::Both][p % 2],
                    scope: Default::default(),
                    mechanisms: Vec::new(),
                    address_lists: vec![
                        LocalRef {
                            name: format!("list-{p}"),
                        },
                        LocalRef {
                            name: format!("list-{}", (p + 1) % LISTS),
                        },
                    ],
                    require_ca_signed: p % 2 == 0,
                    validate_hostname: p % 4 == 0,
                    min_tls_version: [TlsVersion::V1_2, TlsVersion::V1_3][p % 2],
                    on_failure: [OnFailure::Bounce, OnFailure::Defer][p % 3 % 2],
                    enforcement: if p == 7 {
                        Enforcement::Monitor
                    } else {
                        Enforcement::Enforce
                    },
                    test: TestSpec::default(),
                },
            )
        })
        .collect();
    let mut route: OutboundGatewaySpec = serde_json::from_value(serde_json::json!({
        "host": "archive.example.net", "port": 2525, "appliesTo": "Recipients",
        "addressLists": [{"name": "list-3"}]
    }))
    .expect("gateway spec");
    route.tls.require = true;
    Inputs {
        namespace: "default".into(),
        address_lists,
        policies,
        gateways: vec![OutboundGateway::new("route", route)],
    }
}
