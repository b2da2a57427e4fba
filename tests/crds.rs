//! The checked-in CRDs are exactly what the code generates, and they are valid
//! apiextensions.k8s.io/v1 CustomResourceDefinitions with the promised names and rules.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::path::Path;

#[test]
fn checked_in_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = mailtls::api::crds_yaml().expect("serialise");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = generated.iter().map(|(f, _)| f.clone()).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "crds/ holds other files than the code generates"
    );
    for (file, text) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&file)).expect("read");
        assert!(
            on_disk == text,
            "crds/{file} is out of date: run `cargo run -- crds --output crds`"
        );
    }
}

#[test]
fn crds_command_output_deserialises_as_v1_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("crds")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let crds: Vec<CustomResourceDefinition> = text
        .split("\n---\n")
        .filter(|d| d.contains("kind: CustomResourceDefinition"))
        .map(|d| serde_norway::from_str(d).expect("a v1 CRD"))
        .collect();
    assert_eq!(crds.len(), 3);
    for crd in &crds {
        let spec = &crd.spec;
        assert_eq!(spec.group, "mailtls.io");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(
            spec.names.categories.as_deref(),
            Some(&["mailtls".to_string()][..])
        );
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{columns:?}"
        );
    }
    let by_kind = |k: &str| crds.iter().find(|c| c.spec.names.kind == k).expect(k);
    let tlsc = by_kind("TlsCompliance");
    assert_eq!(
        tlsc.spec.names.short_names.as_deref(),
        Some(&["tlsc".to_string()][..])
    );
    let cols: Vec<&str> = tlsc.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
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
    // Reason and message of Ready only at `-o wide`, for every kind; gateways say whether
    // they are compliant.
    for crd in &crds {
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten();
        let wide: Vec<&str> = cols
            .filter(|c| c.priority == Some(1))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(wide, ["Reason", "Message"], "{}", crd.spec.names.kind);
    }
    assert!(
        by_kind("OutboundGateway").spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .any(|c| c.name == "Compliant" && c.priority.is_none())
    );
    assert_eq!(
        by_kind("AddressList").spec.names.short_names.as_deref(),
        Some(&["al".to_string()][..])
    );
    assert_eq!(
        by_kind("OutboundGateway").spec.names.short_names.as_deref(),
        Some(&["ogw".to_string()][..])
    );
    let json = serde_json::to_string(tlsc).expect("json");
    assert!(
        json.contains("!self.spec.validateHostname || self.spec.requireCASigned"),
        "CEL rule"
    );
    assert!(
        json.contains("\"requireCASigned\""),
        "field spelt as documented"
    );
    let ogw = serde_json::to_string(by_kind("OutboundGateway")).expect("json");
    assert!(
        ogw.contains("self.spec.appliesTo != 'Recipients' || (has(self.spec.addressLists)"),
        "CEL rule"
    );
    assert!(
        ogw.contains("!self.requireCASigned || self.require"),
        "CEL rule on tls"
    );
}

#[test]
fn chart_and_deploy_carry_the_same_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut concatenated = String::new();
    for (file, text) in mailtls::api::crds_yaml().expect("serialise") {
        let chart = std::fs::read_to_string(root.join("charts/mailtls/crds").join(&file))
            .expect("chart CRD");
        assert!(
            chart == text,
            "charts/mailtls/crds/{file} differs from crds/{file}: copy it over"
        );
        concatenated.push_str(&text);
    }
    let deploy =
        std::fs::read_to_string(root.join("deploy/00-crds.yaml")).expect("deploy/00-crds.yaml");
    assert!(
        deploy.ends_with(&concatenated),
        "deploy/00-crds.yaml is out of date: run scripts/gen-deploy.sh"
    );
}
