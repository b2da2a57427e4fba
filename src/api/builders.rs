//! Short constructors for the common shapes of each kind, shared by the tests, the benches
//! and anyone building resources in code. Fields not named take the CRD's defaults.

use super::{
    AddressList, AddressListSpec, AppliesTo, Direction, GatewayTls, LocalRef, OutboundGateway,
    OutboundGatewaySpec, TestSpec, TlsCompliance, TlsComplianceSpec,
};

impl AddressList {
    /// A list of `entries` (as `spec.entries`).
    pub fn with_entries(name: &str, entries: &[&str]) -> AddressList {
        AddressList::new(
            name,
            AddressListSpec {
                entries: entries.iter().collect(),
                bulk: None,
            },
        )
    }
}

impl TlsCompliance {
    /// Outbound mail to the entries of `lists` needs TLS with a CA-signed certificate that
    /// matches the host name; everything else as the CRD defaults it.
    pub fn outbound_verified(name: &str, lists: &[&str]) -> TlsCompliance {
        TlsCompliance::new(
            name,
            TlsComplianceSpec {
                direction: Direction::Outbound,
                scope: Default::default(),
                mechanisms: Vec::new(),
                address_lists: lists
                    .iter()
                    .map(|l| LocalRef {
                        name: l.to_string(),
                    })
                    .collect(),
                require_ca_signed: true,
                validate_hostname: true,
                min_tls_version: Default::default(),
                on_failure: Default::default(),
                enforcement: Default::default(),
                test: TestSpec::default(),
            },
        )
    }
}

impl OutboundGateway {
    /// All mail goes through `host` on port 25, without an MX lookup.
    pub fn all_mail(name: &str, host: &str) -> OutboundGateway {
        OutboundGateway::new(
            name,
            OutboundGatewaySpec {
                host: host.into(),
                port: 25,
                mx_lookup: false,
                tls: GatewayTls::default(),
                applies_to: AppliesTo::AllMail,
                address_lists: vec![],
                test: TestSpec::default(),
            },
        )
    }
}
