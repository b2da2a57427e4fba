//! Tests against a real Kubernetes API server (etcd + kube-apiserver built from source).
//!
//! Run them with `scripts/test-cluster.sh -- cargo test --test cluster -- --ignored`: the
//! script starts a private API server, sets `MAILTLS_TEST_KUBECONFIG` and stops the server
//! afterwards. An ignored run without that variable fails instead of passing silently.
//!
//! Every test works in a namespace of its own, created at the start and deleted at the end
//! (without a controller-manager a deleted namespace stays `Terminating`; the whole server is
//! thrown away after the run). Waits are on conditions with a timeout (a watch where the
//! server offers one, a bounded poll for discovery and the RBAC cache), never fixed sleeps.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use mailtls::api::{
    AddressList, AddressListSpec, AppliesTo, Direction, Enforcement, GatewayTls, Mechanism,
    OnFailure, OutboundGateway, OutboundGatewaySpec, Scope, TestSpec, TlsCompliance,
    TlsComplianceSpec, TlsVersion,
};
use serde_json::{Value, json};

mod common;

use common::cluster::*;

// ---- CRDs ------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn crds_apply_cleanly_and_become_established() {
    let client = client().await;
    let first = install_crds(&client).await;
    let names: BTreeSet<String> = first.iter().map(|c| c.name_any()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "addresslists.mailtls.io".to_string(),
            "outboundgateways.mailtls.io".to_string(),
            "tlscompliances.mailtls.io".to_string(),
        ])
    );

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &first {
        let name = crd.name_any();
        let stored = api.get(&name).await.expect("reading the CRD back");
        let status = stored.status.clone().unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        for wanted in ["NamesAccepted", "Established"] {
            let c = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .unwrap_or_else(|| panic!("{name}: no {wanted} condition: {conditions:?}"));
            assert_eq!(c.status, "True", "{name}: {wanted} is {c:?}");
        }
        // A structural schema with no problems: the server reports none.
        assert!(
            !conditions
                .iter()
                .any(|c| c.type_ == "NonStructuralSchema" && c.status == "True"),
            "{name}: {conditions:?}"
        );
        let versions = &stored.spec.versions;
        assert_eq!(versions.len(), 1, "{name}");
        assert_eq!(versions[0].name, "v1alpha1");
        assert!(versions[0].served && versions[0].storage, "{name}");
        assert!(
            versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: no status subresource"
        );
        let accepted = status.accepted_names.expect("acceptedNames");
        assert_eq!(
            accepted.categories,
            Some(vec!["mailtls".to_string()]),
            "{name}"
        );
        assert_eq!(stored.spec.scope, "Namespaced", "{name}");
    }

    // Applying the same CRDs again changes nothing.
    let second = install_crds(&client).await;
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            a.metadata.generation,
            b.metadata.generation,
            "re-applying {} bumped its generation",
            a.name_any()
        );
    }
}

// ---- valid resources -------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn valid_resources_are_accepted() {
    in_namespace("valid", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let gateways: Api<OutboundGateway> = Api::namespaced(client.clone(), &ns);

        let partners = AddressList::new(
            "partners",
            AddressListSpec {
                entries: [
                    "alice@example.com",
                    "example.org",
                    ".bank.example",
                    "xn--bcher-kva.example",
                    "Bob.Smith+tag@Example.NET.",
                ]
                .into_iter()
                .collect(),
                bulk: Some(
                    "carol@example.com, dave@example.com\nsupplier.example\tlogistics.example"
                        .into(),
                ),
            },
        );
        let stored = apply(&lists, &partners).await;
        assert_eq!(stored.spec, partners.spec);
        apply(
            &lists,
            &AddressList::new(
                "finance",
                AddressListSpec {
                    entries: ["payments.example"].into_iter().collect(),
                    bulk: None,
                },
            ),
        )
        .await;

        // Outbound, CA-signed and host name checked, bounce on failure.
        let outbound = TlsComplianceSpec {
            direction: Direction::Outbound,
            scope: Default::default(),
            mechanisms: Vec::new(),
            address_lists: refs(&["partners"]),
            require_ca_signed: true,
            validate_hostname: true,
            min_tls_version: TlsVersion::V1_2,
            on_failure: OnFailure::Bounce,
            enforcement: Enforcement::Enforce,
            test: TestSpec::default(),
        };
        // Both directions, TLS 1.3, defer instead of bounce, tested every 90 minutes.
        let both = TlsComplianceSpec {
            direction: Direction::Both,
            scope: Default::default(),
            mechanisms: Vec::new(),
            address_lists: refs(&["finance", "partners"]),
            validate_hostname: false,
            min_tls_version: TlsVersion::V1_3,
            on_failure: OnFailure::Defer,
            test: TestSpec {
                enabled: true,
                interval: "1h30m".into(),
            },
            ..outbound.clone()
        };
        // A dry run: Monitor, any TLS, tests switched off.
        let monitor = TlsComplianceSpec {
            require_ca_signed: false,
            validate_hostname: false,
            enforcement: Enforcement::Monitor,
            test: TestSpec {
                enabled: false,
                interval: "24h".into(),
            },
            ..outbound.clone()
        };
        // The namespace's default: every destination honours MTA-STS.
        let published = TlsComplianceSpec {
            direction: Direction::Outbound,
            scope: Scope::Unlisted,
            address_lists: vec![],
            mechanisms: vec![Mechanism::MtaSts],
            require_ca_signed: false,
            validate_hostname: false,
            min_tls_version: TlsVersion::V1_2,
            on_failure: OnFailure::Bounce,
            enforcement: Enforcement::Enforce,
            test: TestSpec::default(),
        };
        for (name, spec) in [
            ("partners-outbound", outbound),
            ("finance-both", both),
            ("partners-dry-run", monitor),
            ("published-policies", published),
        ] {
            let stored = apply(&policies, &TlsCompliance::new(name, spec.clone())).await;
            assert_eq!(stored.spec, spec, "{name}");
        }

        // The organisation's gateway: all mail via the relay's MX, verified TLS.
        let all_mail = OutboundGatewaySpec {
            host: "relay.example.net".into(),
            port: 25,
            mx_lookup: true,
            tls: GatewayTls {
                require: true,
                require_ca_signed: true,
                validate_hostname: true,
                min_tls_version: TlsVersion::V1_2,
            },
            applies_to: AppliesTo::AllMail,
            address_lists: vec![],
            test: TestSpec::default(),
        };
        // A change of route for some recipients, to an IP literal on the submission port.
        let recipients = OutboundGatewaySpec {
            host: "192.0.2.25".into(),
            port: 587,
            mx_lookup: false,
            tls: GatewayTls {
                require: true,
                ..GatewayTls::default()
            },
            applies_to: AppliesTo::Recipients,
            address_lists: refs(&["finance"]),
            ..all_mail.clone()
        };
        // The alternate secure route.
        let secure_route = OutboundGatewaySpec {
            host: "secure-gw.example.net".into(),
            port: 465,
            mx_lookup: false,
            tls: GatewayTls {
                validate_hostname: false,
                min_tls_version: TlsVersion::V1_3,
                ..all_mail.tls.clone()
            },
            applies_to: AppliesTo::SecureTransportRequired,
            test: TestSpec {
                enabled: true,
                interval: "30m".into(),
            },
            ..all_mail.clone()
        };
        for (name, spec) in [
            ("smarthost", all_mail),
            ("finance-route", recipients),
            ("secure-route", secure_route),
        ] {
            let stored = apply(&gateways, &OutboundGateway::new(name, spec.clone())).await;
            assert_eq!(stored.spec, spec, "{name}");
        }

        let all = policies.list(&ListParams::default()).await.unwrap();
        assert_eq!(all.items.len(), 4);
        let all = gateways.list(&ListParams::default()).await.unwrap();
        assert_eq!(all.items.len(), 3);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn server_fills_in_the_documented_defaults() {
    in_namespace("defaults", |client, ns| async move {
        let pp = PatchParams::apply(MANAGER);
        let policy = manifest::<TlsCompliance>(
            "minimal",
            json!({"direction": "Outbound", "addressLists": [{"name": "partners"}]}),
        );
        dynamic_api::<TlsCompliance>(&client, &ns)
            .patch("minimal", &pp, &Patch::Apply(&policy))
            .await
            .expect("minimal TlsCompliance");
        let stored = Api::<TlsCompliance>::namespaced(client.clone(), &ns)
            .get("minimal")
            .await
            .expect("typed read of the minimal TlsCompliance");
        assert_eq!(
            stored.spec,
            TlsComplianceSpec {
                direction: Direction::Outbound,
                scope: Default::default(),
                mechanisms: Vec::new(),
                address_lists: refs(&["partners"]),
                require_ca_signed: false,
                validate_hostname: false,
                min_tls_version: TlsVersion::V1_2,
                on_failure: OnFailure::Bounce,
                enforcement: Enforcement::Enforce,
                test: TestSpec {
                    enabled: true,
                    interval: "6h".into(),
                },
            }
        );
        let raw = dynamic_api::<TlsCompliance>(&client, &ns)
            .get("minimal")
            .await
            .unwrap();
        assert_eq!(raw.data["spec"]["minTlsVersion"], json!("1.2"));
        assert_eq!(raw.data["spec"]["enforcement"], json!("Enforce"));

        let gateway = manifest::<OutboundGateway>("minimal", json!({"host": "relay.example.net"}));
        dynamic_api::<OutboundGateway>(&client, &ns)
            .patch("minimal", &pp, &Patch::Apply(&gateway))
            .await
            .expect("minimal OutboundGateway");
        let stored = Api::<OutboundGateway>::namespaced(client.clone(), &ns)
            .get("minimal")
            .await
            .expect("typed read of the minimal OutboundGateway");
        assert_eq!(stored.spec.port, 25);
        assert!(!stored.spec.mx_lookup);
        assert_eq!(stored.spec.applies_to, AppliesTo::AllMail);
        assert_eq!(stored.spec.tls, GatewayTls::default());

        let list = manifest::<AddressList>("empty", json!({}));
        dynamic_api::<AddressList>(&client, &ns)
            .patch("empty", &pp, &Patch::Apply(&list))
            .await
            .expect("empty AddressList");
    })
    .await;
}

// ---- invalid resources -----------------------------------------------------------------------

/// One object the server must refuse, and the text its answer must contain.
struct Invalid {
    what: &'static str,
    resource: ApiResource,
    spec: Value,
    expect: &'static [&'static str],
}

fn invalid<K: Resource<DynamicType = ()>>(
    what: &'static str,
    spec: Value,
    expect: &'static [&'static str],
) -> Invalid {
    Invalid {
        what,
        resource: ApiResource::erase::<K>(&()),
        spec,
        expect,
    }
}

fn invalid_cases() -> Vec<Invalid> {
    let lists = || json!([{"name": "partners"}]);
    vec![
        // enums
        invalid::<TlsCompliance>(
            "unknown direction",
            json!({"direction": "Sideways", "addressLists": lists()}),
            &[
                "spec.direction: Unsupported value: \"Sideways\"",
                "supported values: \"Inbound\", \"Outbound\", \"Both\"",
            ],
        ),
        invalid::<TlsCompliance>(
            "unknown TLS version",
            json!({"direction": "Outbound", "addressLists": lists(), "minTlsVersion": "1.4"}),
            &["spec.minTlsVersion: Unsupported value: \"1.4\""],
        ),
        invalid::<TlsCompliance>(
            "unknown enforcement",
            json!({"direction": "Outbound", "addressLists": lists(), "enforcement": "enforce"}),
            &["spec.enforcement: Unsupported value: \"enforce\""],
        ),
        invalid::<OutboundGateway>(
            "unknown appliesTo",
            json!({"host": "relay.example.net", "appliesTo": "Everything"}),
            &["spec.appliesTo: Unsupported value: \"Everything\""],
        ),
        // CEL rules
        invalid::<TlsCompliance>(
            "validateHostname without requireCASigned",
            json!({"direction": "Outbound", "addressLists": lists(), "validateHostname": true}),
            &[
                "spec.validateHostname",
                "validateHostname requires requireCASigned: a host name is only checked on a CA-signed certificate",
            ],
        ),
        invalid::<TlsCompliance>(
            "an outbound option on an Inbound policy",
            json!({"direction": "Inbound", "addressLists": lists(), "minTlsVersion": "1.3"}),
            &["spec.direction", "apply to outbound mail only"],
        ),
        invalid::<OutboundGateway>(
            "appliesTo Recipients without addressLists",
            json!({"host": "relay.example.net", "appliesTo": "Recipients"}),
            &[
                "spec.addressLists",
                "appliesTo: Recipients needs at least one entry in addressLists",
            ],
        ),
        invalid::<OutboundGateway>(
            "addressLists with appliesTo AllMail",
            json!({"host": "relay.example.net", "appliesTo": "AllMail", "addressLists": lists()}),
            &[
                "spec.addressLists",
                "addressLists is only used with appliesTo: Recipients",
            ],
        ),
        invalid::<OutboundGateway>(
            "addressLists with the default appliesTo",
            json!({"host": "relay.example.net", "addressLists": lists()}),
            &["addressLists is only used with appliesTo: Recipients"],
        ),
        invalid::<OutboundGateway>(
            "gateway requireCASigned without require",
            json!({"host": "relay.example.net", "tls": {"requireCASigned": true}}),
            &["spec.tls", "requireCASigned requires require: true"],
        ),
        invalid::<OutboundGateway>(
            "gateway validateHostname without requireCASigned",
            json!({"host": "relay.example.net", "tls": {"require": true, "validateHostname": true}}),
            &[
                "spec.tls",
                "validateHostname requires requireCASigned: true",
            ],
        ),
        // types
        invalid::<OutboundGateway>(
            "port as a word",
            json!({"host": "relay.example.net", "port": "abc"}),
            &[
                "spec.port: Invalid value: \"string\": spec.port in body must be of type integer: \"string\"",
            ],
        ),
        invalid::<TlsCompliance>(
            "boolean as a string",
            json!({"direction": "Outbound", "addressLists": lists(), "requireCASigned": "yes"}),
            &["spec.requireCASigned in body must be of type boolean: \"string\""],
        ),
        invalid::<AddressList>(
            "entries as one string",
            json!({"entries": "alice@example.com"}),
            &["spec.entries in body must be of type array: \"string\""],
        ),
        // ranges and lengths
        invalid::<OutboundGateway>(
            "port above 65535",
            json!({"host": "relay.example.net", "port": 70000}),
            &[
                "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
            ],
        ),
        invalid::<OutboundGateway>(
            "port 0",
            json!({"host": "relay.example.net", "port": 0}),
            &[
                "spec.port: Invalid value: 0: spec.port in body should be greater than or equal to 1",
            ],
        ),
        invalid::<TlsCompliance>(
            "no address lists",
            json!({"direction": "Outbound", "addressLists": []}),
            &[
                "spec.addressLists",
                "a Listed policy needs at least one AddressList",
            ],
        ),
        invalid::<TlsCompliance>(
            "addressLists missing",
            json!({"direction": "Outbound"}),
            &[
                "spec.addressLists",
                "a Listed policy needs at least one AddressList",
            ],
        ),
        invalid::<TlsCompliance>(
            "an Unlisted policy with address lists",
            json!({"direction": "Outbound", "scope": "Unlisted", "addressLists": lists()}),
            &[
                "spec.addressLists",
                "an Unlisted policy covers every destination no policy lists and takes none",
            ],
        ),
        invalid::<TlsCompliance>(
            "an Unlisted policy requiring more than what destinations publish",
            json!({"direction": "Outbound", "scope": "Unlisted", "requireCASigned": true, "mechanisms": ["MtaSts"]}),
            &[
                "spec.scope",
                "an Unlisted policy is Outbound and sets only mechanisms",
            ],
        ),
        invalid::<TlsCompliance>(
            "an Unlisted Both policy",
            json!({"direction": "Both", "scope": "Unlisted"}),
            &["spec.scope", "an Unlisted policy is Outbound"],
        ),
        invalid::<TlsCompliance>(
            "mechanisms on an Inbound policy",
            json!({"direction": "Inbound", "addressLists": lists(), "mechanisms": ["MtaSts"]}),
            &["spec.direction", "apply to outbound mail only"],
        ),
        invalid::<TlsCompliance>(
            "an unknown mechanism",
            json!({"direction": "Outbound", "addressLists": lists(), "mechanisms": ["Smoke"]}),
            &["spec.mechanisms[0]: Unsupported value: \"Smoke\""],
        ),
        invalid::<TlsCompliance>(
            "a mechanism twice",
            json!({"direction": "Outbound", "addressLists": lists(), "mechanisms": ["MtaSts", "MtaSts"]}),
            &["spec.mechanisms"],
        ),
        // patterns: data must never become Postfix configuration
        invalid::<AddressList>(
            "entry with a space",
            json!({"entries": ["alice@example.com", "bad entry.example"]}),
            &[
                "spec.entries[1]: Invalid value: \"bad entry.example\": spec.entries[1] in body should match",
            ],
        ),
        invalid::<AddressList>(
            "entry with a newline",
            json!({"entries": ["example.com\nrelayhost = evil.example"]}),
            &["spec.entries[0]", "in body should match"],
        ),
        invalid::<AddressList>(
            "entry with =",
            json!({"entries": ["smtp_tls_security_level=none"]}),
            &[
                "spec.entries[0]: Invalid value: \"smtp_tls_security_level=none\"",
                "in body should match",
            ],
        ),
        invalid::<AddressList>(
            "entry with a leading -",
            json!({"entries": ["-o"]}),
            &[
                "spec.entries[0]: Invalid value: \"-o\"",
                "in body should match",
            ],
        ),
        invalid::<AddressList>(
            "empty entry",
            json!({"entries": [""]}),
            &["spec.entries[0]", "should be at least 1 chars long"],
        ),
        invalid::<OutboundGateway>(
            "host with a space",
            json!({"host": "relay example.net"}),
            &["spec.host: Invalid value: \"relay example.net\": spec.host in body should match"],
        ),
        invalid::<OutboundGateway>(
            "host with a port",
            json!({"host": "relay.example.net:25"}),
            &["spec.host", "in body should match"],
        ),
        invalid::<TlsCompliance>(
            "test interval not a duration",
            json!({"direction": "Outbound", "addressLists": lists(), "test": {"interval": "soon"}}),
            &[
                "spec.test.interval: Invalid value: \"soon\"",
                "in body should match",
            ],
        ),
        invalid::<TlsCompliance>(
            "address list reference without a name",
            json!({"direction": "Outbound", "addressLists": [{"name": ""}]}),
            &[
                "spec.addressLists[0].name",
                "should be at least 1 chars long",
            ],
        ),
        // Parity with the engine: the same rules, the engine's words where CEL allows.
        invalid::<TlsCompliance>(
            "test interval under a minute",
            json!({"direction": "Outbound", "addressLists": lists(), "test": {"interval": "30s"}}),
            &["spec.test.interval", "interval 30s is shorter than 1m"],
        ),
        invalid::<OutboundGateway>(
            "test interval over 30 days",
            json!({"host": "relay.example.net", "test": {"interval": "721h"}}),
            &[
                "spec.test.interval",
                "interval 721h is longer than 30 days (720h)",
            ],
        ),
        invalid::<OutboundGateway>(
            "validateHostname on an IP address",
            json!({"host": "192.0.2.1", "tls": {"require": true, "requireCASigned": true, "validateHostname": true}}),
            &[
                "spec.tls.validateHostname",
                "an IP address has no host name to validate",
            ],
        ),
        invalid::<OutboundGateway>(
            "host that is no IPv4 address",
            json!({"host": "999.1.1.1"}),
            &["spec.host", "not a valid IPv4 address"],
        ),
        invalid::<OutboundGateway>(
            "host name with a numeric top label",
            json!({"host": "gw.123"}),
            &["spec.host", "looks like an IP address, not a domain"],
        ),
        invalid::<OutboundGateway>(
            "port written into the host",
            json!({"host": "cafe.babe:25"}),
            &[
                "spec.host",
                "not a valid IPv6 address; write a port in spec.port",
            ],
        ),
        invalid::<AddressList>(
            "entry with an empty word before @",
            json!({"entries": ["ok@x.example", "a..b@x.example"]}),
            &["spec.entries[1]", "should match"],
        ),
        invalid::<AddressList>(
            "entry with a 64-character label",
            json!({"entries": [format!("{}.example", "a".repeat(64))]}),
            &["spec.entries[0]", "should match"],
        ),
        invalid::<AddressList>(
            "bulk with one bad item",
            json!({"bulk": "ok.example, bad..example\nother.example"}),
            &["spec.bulk", "should match"],
        ),
        invalid::<AddressList>(
            "more than 100000 entries and bulk items together",
            json!({"entries": vec!["x.example"; 60_001], "bulk": "y.example ".repeat(40_000)}),
            &["at most 100000 entries per AddressList (entries and bulk items together)"],
        ),
    ]
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn invalid_resources_are_rejected_by_the_server() {
    in_namespace("invalid", |client, ns| async move {
        let mut failures = Vec::new();
        for (i, case) in invalid_cases().into_iter().enumerate() {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &case.resource);
            let name = format!("invalid-{i}");
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": case.resource.api_version,
                "kind": case.resource.kind,
                "metadata": {"name": name},
                "spec": case.spec,
            }))
            .unwrap();
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => failures.push(format!(
                    "{} ({}): accepted, expected a rejection with {:?}",
                    case.what, case.resource.kind, case.expect
                )),
                Err(kube::Error::Api(status)) => {
                    eprintln!("{} ({}): {}", case.what, case.resource.kind, status.message);
                    let missing: Vec<_> = case
                        .expect
                        .iter()
                        .filter(|text| !status.message.contains(*text))
                        .collect();
                    if status.code != 422 || status.reason != "Invalid" || !missing.is_empty() {
                        failures.push(format!(
                            "{} ({}): got {} {}: {:?}; missing {:?}",
                            case.what,
                            case.resource.kind,
                            status.code,
                            status.reason,
                            status.message,
                            missing
                        ));
                    }
                }
                Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
            }
        }
        assert!(
            failures.is_empty(),
            "{} case(s) not rejected as expected:\n{}",
            failures.len(),
            failures.join("\n")
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn misspelt_fields_are_not_dropped_silently() {
    in_namespace("strict", |client, ns| async move {
        // `requireCaSigned` instead of `requireCASigned`: pruning would silently drop it.
        let api = dynamic_api::<TlsCompliance>(&client, &ns);
        let object = manifest::<TlsCompliance>(
            "typo",
            json!({"direction": "Outbound", "addressLists": [{"name": "a"}], "requireCaSigned": true}),
        );
        // `kubectl apply --server-side`
        let err = api
            .patch("typo", &PatchParams::apply(MANAGER), &Patch::Apply(&object))
            .await
            .expect_err("server-side apply of a misspelt field must fail");
        match err {
            kube::Error::Api(status) => assert!(
                status
                    .message
                    .contains(".spec.requireCaSigned: field not declared in schema"),
                "{status:?}"
            ),
            e => panic!("unexpected error {e}"),
        }
        // `kubectl create` / client-side `kubectl apply` (fieldValidation=Strict)
        let mut request = kube::core::Request::new(api.resource_url())
            .create(
                &PostParams::default(),
                serde_json::to_vec(&object).unwrap(),
            )
            .expect("building the create request");
        let uri = format!("{}?fieldValidation=Strict", request.uri().path());
        *request.uri_mut() = uri.parse().unwrap();
        let err = client
            .request::<Value>(request)
            .await
            .expect_err("a strict create of a misspelt field must fail");
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 400, "{status:?}");
                assert!(
                    status
                        .message
                        .contains("unknown field \"spec.requireCaSigned\""),
                    "{status:?}"
                );
            }
            e => panic!("unexpected error {e}"),
        }
        // Without strict validation the server prunes the unknown field: nothing else in
        // the object is lost, and the typo is visibly absent.
        let stored = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(object).unwrap(),
            )
            .await
            .expect("a lenient create prunes the unknown field");
        assert_eq!(stored.data["spec"].get("requireCaSigned"), None);
        assert_eq!(stored.data["spec"]["requireCASigned"], json!(false));
    })
    .await;
}

// ---- discovery, short names, printer columns -------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn discovery_finds_kinds_short_names_and_category() {
    in_namespace("discovery", |client, _ns| async move {
        // kube's discovery: the group, its kinds, scope, verbs and the status subresource.
        let group = kube::discovery::oneshot::group(&client, "mailtls.io")
            .await
            .expect("discovering mailtls.io");
        assert_eq!(group.preferred_version(), Some("v1alpha1"));
        let mut kinds = Vec::new();
        for (resource, caps) in group.recommended_resources() {
            kinds.push(resource.kind.clone());
            assert_eq!(
                caps.scope,
                kube::discovery::Scope::Namespaced,
                "{}",
                resource.kind
            );
            for verb in ["create", "get", "list", "watch", "patch", "delete"] {
                assert!(
                    caps.supports_operation(verb),
                    "{} lacks {verb}",
                    resource.kind
                );
            }
            assert!(
                caps.subresources.iter().any(|(r, _)| r.plural == "status"),
                "{} has no status subresource",
                resource.kind
            );
        }
        kinds.sort();
        assert_eq!(kinds, KINDS);

        // Short names and categories, as `kubectl get tlsc` and `kubectl get mailtls` see them.
        let resources = client
            .list_api_group_resources("mailtls.io/v1alpha1")
            .await
            .expect("listing mailtls.io/v1alpha1");
        let short = |plural: &str| {
            resources
                .resources
                .iter()
                .find(|r| r.name == plural)
                .unwrap_or_else(|| panic!("no resource {plural}"))
                .short_names
                .clone()
                .unwrap_or_default()
        };
        assert_eq!(short("tlscompliances"), ["tlsc"]);
        assert_eq!(short("addresslists"), ["al"]);
        assert_eq!(short("outboundgateways"), ["ogw"]);
        let in_category: BTreeSet<_> = resources
            .resources
            .iter()
            .filter(|r| r.categories.iter().flatten().any(|c| c == "mailtls"))
            .map(|r| r.kind.as_str())
            .collect();
        assert_eq!(in_category, BTreeSet::from(KINDS));

        // The aggregated discovery document (what current kubectl reads) says the same.
        let aggregated = client
            .list_api_groups_aggregated()
            .await
            .expect("aggregated discovery");
        let group = aggregated
            .items
            .iter()
            .find(|g| g.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("mailtls.io"))
            .expect("mailtls.io in aggregated discovery");
        let version = group
            .versions
            .iter()
            .find(|v| v.version.as_deref() == Some("v1alpha1"))
            .expect("v1alpha1");
        let mut seen = Vec::new();
        for r in &version.resources {
            seen.push((
                r.resource.clone().unwrap_or_default(),
                r.short_names.clone(),
                r.categories.clone(),
            ));
        }
        seen.sort();
        let mailtls = vec!["mailtls".to_string()];
        assert_eq!(
            seen,
            vec![
                ("addresslists".into(), vec!["al".into()], mailtls.clone()),
                (
                    "outboundgateways".into(),
                    vec!["ogw".into()],
                    mailtls.clone()
                ),
                (
                    "tlscompliances".into(),
                    vec!["tlsc".into()],
                    mailtls.clone()
                ),
            ]
        );
    })
    .await;
}

/// GETs `url` as a `meta.k8s.io/v1` Table (what `kubectl get` asks for).
async fn get_table(client: &Client, url: &str) -> Value {
    let mut request = kube::core::Request::new(url)
        .list(&ListParams::default())
        .expect("building the list request");
    request.headers_mut().insert(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io"
            .parse()
            .unwrap(),
    );
    let table: Value = client.request(request).await.expect("table list");
    assert_eq!(table["kind"], "Table", "{table:#}");
    table
}

fn column_names(table: &Value) -> Vec<String> {
    table["columnDefinitions"]
        .as_array()
        .expect("columnDefinitions")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The cells of the row for object `name`, all but the last (Age) as strings.
fn row(table: &Value, name: &str) -> Vec<String> {
    let row = table["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["cells"][0] == name)
        .unwrap_or_else(|| panic!("no row {name} in {table:#}"));
    let cells = row["cells"].as_array().expect("cells");
    cells[..cells.len() - 1]
        .iter()
        .map(|c| match c {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect()
}

fn condition(type_: &str, status: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": "Test",
        "message": format!("{type_} set by the cluster test"),
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": generation,
    })
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn printer_columns_show_in_table_form() {
    in_namespace("columns", |client, ns| async move {
        let pp = PatchParams::apply(MANAGER);
        // TlsCompliance: spec columns, defaulted Enforcement, status columns via the
        // status subresource.
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        dynamic_api::<TlsCompliance>(&client, &ns)
            .patch(
                "partners",
                &pp,
                &Patch::Apply(manifest::<TlsCompliance>(
                    "partners",
                    json!({"direction": "Outbound", "addressLists": [{"name": "partners"}]}),
                )),
            )
            .await
            .unwrap();
        let created = policies.get("partners").await.unwrap();
        let generation = created.metadata.generation.unwrap_or(1);
        policies
            .patch_status(
                "partners",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": generation,
                    "conditions": [
                        condition("Ready", "True", generation),
                        condition("Compliant", "False", generation),
                        condition("Applied", "True", generation),
                    ],
                }})),
            )
            .await
            .expect("status subresource patch");
        let with_status = policies.get("partners").await.unwrap();
        assert_eq!(
            with_status.metadata.generation, created.metadata.generation,
            "a status patch must not bump the generation"
        );
        let table = get_table(&client, policies.resource_url()).await;
        assert_eq!(
            column_names(&table),
            [
                "Name",
                "Direction",
                "Enforcement",
                "Ready",
                "Compliant",
                "Applied",
                "Reason",
                "Message",
                "Age"
            ]
        );
        assert_eq!(
            row(&table, "partners"),
            [
                "partners",
                "Outbound",
                "Enforce",
                "True",
                "False",
                "True",
                "Test",
                "Ready set by the cluster test"
            ]
        );
        let age = &table["columnDefinitions"][8];
        assert_eq!(table["columnDefinitions"][6]["priority"], 1, "{table:#}");
        assert_eq!(age["type"], "date", "{age}");

        // Resolved through the short name, as `kubectl get tlsc` does.
        let resources = client
            .list_api_group_resources("mailtls.io/v1alpha1")
            .await
            .unwrap();
        let tlsc = resources
            .resources
            .iter()
            .find(|r| r.short_names.iter().flatten().any(|s| s == "tlsc"))
            .expect("short name tlsc");
        let table = get_table(
            &client,
            &format!("/apis/mailtls.io/v1alpha1/namespaces/{ns}/{}", tlsc.name),
        )
        .await;
        assert_eq!(table["rows"].as_array().map(Vec::len), Some(1));

        // OutboundGateway
        let gateways: Api<OutboundGateway> = Api::namespaced(client.clone(), &ns);
        dynamic_api::<OutboundGateway>(&client, &ns)
            .patch(
                "smarthost",
                &pp,
                &Patch::Apply(manifest::<OutboundGateway>(
                    "smarthost",
                    json!({"host": "relay.example.net", "port": 587, "appliesTo": "SecureTransportRequired"}),
                )),
            )
            .await
            .unwrap();
        let table = get_table(&client, gateways.resource_url()).await;
        assert_eq!(
            column_names(&table),
            [
                "Name",
                "Host",
                "Port",
                "Applies To",
                "Ready",
                "Compliant",
                "Applied",
                "Reason",
                "Message",
                "Age"
            ]
        );
        assert_eq!(
            row(&table, "smarthost"),
            [
                "smarthost",
                "relay.example.net",
                "587",
                "SecureTransportRequired",
                "",
                "",
                "",
                "",
                ""
            ]
        );

        // AddressList: counts come from status
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        dynamic_api::<AddressList>(&client, &ns)
            .patch(
                "partners",
                &pp,
                &Patch::Apply(manifest::<AddressList>(
                    "partners",
                    json!({"entries": ["alice@example.com", "example.org", "example.net"]}),
                )),
            )
            .await
            .unwrap();
        lists
            .patch_status(
                "partners",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": 1,
                    "conditions": [condition("Ready", "True", 1), condition("Applied", "Unknown", 1)],
                    "addresses": 1, "domains": 2, "duplicates": 0, "invalidCount": 0,
                }})),
            )
            .await
            .expect("AddressList status patch");
        let table = get_table(&client, lists.resource_url()).await;
        assert_eq!(
            column_names(&table),
            [
                "Name",
                "Addresses",
                "Domains",
                "Invalid",
                "Ready",
                "Applied",
                "Reason",
                "Message",
                "Age"
            ]
        );
        assert_eq!(
            row(&table, "partners"),
            [
                "partners",
                "1",
                "2",
                "0",
                "True",
                "Unknown",
                "Test",
                "Ready set by the cluster test"
            ]
        );
    })
    .await;
}

// ---- RBAC ------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn rbac_is_enforced_for_the_custom_resources() {
    in_namespace("rbac", |admin, ns| async move {
        // A service account's identity (impersonated by the admin) with no permissions yet.
        let user = format!("system:serviceaccount:{ns}:policy-reader");
        let mut config = config().await;
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ]);
        let reader = Client::try_from(config).expect("impersonating client");
        let as_reader: Api<TlsCompliance> = Api::namespaced(reader, &ns);
        match as_reader.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 403, "{status:?}");
                assert!(
                    status.message.contains(&format!(
                        "User \"{user}\" cannot list resource \"tlscompliances\" in API group \"mailtls.io\""
                    )),
                    "{status:?}"
                );
            }
            other => panic!("expected 403 Forbidden without a RoleBinding, got {other:?}"),
        }

        let pp = PatchParams::apply(MANAGER);
        let roles: Api<DynamicObject> = Api::namespaced_with(
            admin.clone(),
            &ns,
            &ApiResource::erase::<k8s_openapi::api::rbac::v1::Role>(&()),
        );
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "mailtls-reader"},
            "rules": [{
                "apiGroups": ["mailtls.io"],
                "resources": ["tlscompliances", "addresslists", "outboundgateways"],
                "verbs": ["get", "list", "watch"],
            }],
        });
        roles
            .patch("mailtls-reader", &pp, &Patch::Apply(&role))
            .await
            .expect("creating the Role");
        let bindings: Api<DynamicObject> = Api::namespaced_with(
            admin.clone(),
            &ns,
            &ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&()),
        );
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "mailtls-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mailtls-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "policy-reader", "namespace": ns}],
        });
        bindings
            .patch("mailtls-reader", &pp, &Patch::Apply(&binding))
            .await
            .expect("creating the RoleBinding");

        // RBAC takes effect through the authorizer's informer cache: poll (bounded) until the
        // binding is seen, rather than sleeping a fixed time.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match as_reader.list(&ListParams::default()).await {
                Ok(list) => {
                    assert!(list.items.is_empty());
                    break;
                }
                Err(kube::Error::Api(status))
                    if status.code == 403 && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("list after the RoleBinding: {e}"),
            }
        }
        // Reading is allowed now, writing still is not.
        let policy: TlsCompliance = serde_json::from_value(manifest::<TlsCompliance>(
            "partners",
            json!({"direction": "Outbound", "addressLists": [{"name": "partners"}]}),
        ))
        .unwrap();
        match as_reader.create(&PostParams::default(), &policy).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("expected 403 Forbidden for create, got {other:?}"),
        }
    })
    .await;
}

// ---- mailtls explain --cluster -------------------------------------------------------------

/// `mailtls explain --cluster` reads the live resources through the kubeconfig, explains
/// them as it does files, and names a resource whose status says it is not Ready.
#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn explain_reads_the_live_resources() {
    in_namespace("explain", |client, ns| async move {
        for doc in [
            json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "partners"},
                "spec": {"entries": [".partner.example"]}}),
            json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "TlsCompliance", "metadata": {"name": "partners"},
                "spec": {"direction": "Outbound", "addressLists": [{"name": "partners"}], "requireCASigned": true, "minTlsVersion": "1.3"}}),
            json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "TlsCompliance", "metadata": {"name": "published"},
                "spec": {"direction": "Outbound", "scope": "Unlisted", "mechanisms": ["MtaSts"]}}),
        ] {
            apply_doc(&client, &ns, &doc).await;
        }
        // A status saying Ready=False, as the controller writes one.
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
            "message": "spec.x: broken", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        policies
            .patch_status("published", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("status");
        let kubeconfig = std::env::var_os("MAILTLS_TEST_KUBECONFIG").expect("kubeconfig");
        let ns2 = ns.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
                .args(["explain", "--cluster", "-n", &ns2, "bob@sales.partner.example"])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .expect("mailtls")
        })
        .await
        .expect("explain");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains(&format!("(namespace {ns})")), "{stdout}");
        assert!(stdout.contains(".partner.example") && stdout.contains("used by TlsCompliance/partners"), "{stdout}");
        assert!(stdout.contains("Effective: mandatory TLS with a CA-signed certificate, TLS 1.3 or newer"), "{stdout}");
        assert!(stdout.contains("TlsCompliance/published (Unlisted): honours MTA-STS"), "{stdout}");
        assert!(stderr.contains("TlsCompliance/published is not Ready (spec.x: broken)"), "{stderr}");
        // A path and --cluster together is a usage error.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(["explain", "--cluster", "examples", "a@b.example"])
            .output()
            .expect("mailtls");
        assert_eq!(o.status.code(), Some(2));
    })
    .await;
}

// ---- examples/ -------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn examples_are_accepted() {
    // Fails without a server, like every test here, even before examples/ exists.
    install_crds(&client().await).await;
    let Some(docs) = yaml_documents("examples") else {
        eprintln!("no examples/ directory: nothing to apply");
        return;
    };
    in_namespace("examples", |client, ns| async move {
        let discovery = kube::Discovery::new(client.clone())
            .run()
            .await
            .expect("discovery");
        let mut applied = 0;
        for (file, mut doc) in docs {
            let tm: kube::core::TypeMeta = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{file}: no apiVersion/kind: {e}"));
            let (resource, caps) = discovery
                .resolve_typemeta(&tm)
                .unwrap_or_else(|| panic!("{file}: the server has no {tm:?}"));
            assert_eq!(
                caps.scope,
                kube::discovery::Scope::Namespaced,
                "{file}: examples are namespaced"
            );
            if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without metadata.name"))
                .to_string();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).validation_strict(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("{file}: the server rejected {} {name}: {e}", tm.kind));
            applied += 1;
        }
        eprintln!("applied {applied} example objects");
    })
    .await;
}

// ---- server-side apply and the status subresource --------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test cluster -- --ignored"]
async fn server_side_apply_conflicts_and_status_subresource() {
    in_namespace("ssa", |client, ns| async move {
        let api = dynamic_api::<TlsCompliance>(&client, &ns);
        let typed: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let with_version = |version: &str| {
            manifest::<TlsCompliance>(
                "partners",
                json!({"direction": "Outbound", "addressLists": [{"name": "partners"}],
                       "minTlsVersion": version}),
            )
        };
        // A GitOps tool owns the spec ...
        let first = api
            .patch(
                "partners",
                &PatchParams::apply("gitops"),
                &Patch::Apply(with_version("1.2")),
            )
            .await
            .expect("first apply");
        // ... so another manager changing a field it owns gets a conflict naming the owner,
        match api
            .patch(
                "partners",
                &PatchParams::apply("someone-else"),
                &Patch::Apply(with_version("1.3")),
            )
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 409, "{status:?}");
                assert!(
                    status.message.contains("conflict with \"gitops\"")
                        && status.message.contains(".spec.minTlsVersion"),
                    "{status:?}"
                );
            }
            other => panic!("expected a 409 apply conflict, got {other:?}"),
        }
        // ... unless it forces, which takes the field over and bumps the generation once.
        let forced = api
            .patch(
                "partners",
                &PatchParams::apply("someone-else").force(),
                &Patch::Apply(with_version("1.3")),
            )
            .await
            .expect("forced apply");
        assert_eq!(forced.data["spec"]["minTlsVersion"], json!("1.3"));
        assert_eq!(
            forced.metadata.generation,
            first.metadata.generation.map(|g| g + 1)
        );
        let generation = forced.metadata.generation.unwrap_or_default();

        // Status goes through /status only: a spec change sent there is ignored ...
        typed
            .patch_status(
                "partners",
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "spec": {"minTlsVersion": "1.0"},
                    "status": {"observedGeneration": generation,
                               "conditions": [condition("Ready", "True", generation)]},
                })),
            )
            .await
            .expect("status patch");
        let after_status = typed.get("partners").await.unwrap();
        assert_eq!(after_status.spec.min_tls_version, TlsVersion::V1_3);
        assert_eq!(after_status.metadata.generation, Some(generation));
        let status = after_status.status.clone().expect("status was written");
        assert_eq!(status.observed_generation, Some(generation));
        assert_eq!(status.conditions.len(), 1);

        // ... and a status sent to the main resource is ignored too.
        typed
            .patch(
                "partners",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": 99, "conditions": []}})),
            )
            .await
            .expect("main resource patch");
        let after_main = typed.get("partners").await.unwrap();
        assert_eq!(after_main.status, after_status.status);
        assert_eq!(after_main.metadata.generation, Some(generation));
    })
    .await;
}
