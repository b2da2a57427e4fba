//! The Argo CD health check documented in the README (deploy/argocd/health.lua), run by a
//! real Lua 5.4 interpreter (Argo CD runs gopher-lua, a Lua 5.1 dialect; the script uses
//! nothing that differs) on statuses the engine itself writes.

mod common;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mailtls::api::{RelayConfigRef, TlsCompliance};
use mailtls::engine::reconcile::namespace_statuses;
use mailtls::policy::evaluate;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// (hs.status, hs.message) of the health check for `obj`.
fn health(obj: &Value) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/health.lua");
    let driver = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua(obj),
        script.display().to_string()
    );
    let out = Command::new("lua5.4")
        .args(["-e", &driver])
        .output()
        .expect("lua5.4 (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// The `partners` policy as the engine leaves it with `relay` and the given spec.
fn policy_with(yaml: &str, relay: RelayConfigRef) -> Value {
    let inputs = common::inputs(yaml);
    let evaluation = evaluate(&inputs);
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let updated = namespace_statuses(&inputs, &evaluation, &relay, &now);
    let p: &TlsCompliance = updated
        .policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("partners"))
        .expect("partners");
    serde_json::to_value(p).expect("json")
}

fn relay(applied: Option<u32>, total: Option<u32>, refused: Option<u32>) -> RelayConfigRef {
    RelayConfigRef {
        name: "mailtls-relay".into(),
        hash: "sha256:abcdef0123456789".into(),
        applied_pods: applied,
        total_pods: total,
        refused_pods: refused,
        refusal: refused.map(|_| "main.cf does not match the manifest".into()),
    }
}

fn valid() -> String {
    [
        common::list("partners", &["partner.example"]),
        common::policy("partners", &["partners"], "  requireCASigned: true"),
    ]
    .concat()
    .replace(
        "metadata:\n  name: partners",
        "metadata:\n  name: partners\n  generation: 2",
    )
}

#[test]
fn health_follows_the_engines_conditions() {
    let (status, message) = health(&policy_with(&valid(), relay(Some(2), Some(2), None)));
    assert_eq!(status, "Healthy", "{message}");
    assert!(message.contains("all 2 relay pods"), "{message}");

    // No relay reports (e.g. an external relay): rendered is as far as can be seen.
    let (status, _) = health(&policy_with(&valid(), relay(None, None, None)));
    assert_eq!(status, "Healthy");

    let (status, message) = health(&policy_with(&valid(), relay(Some(1), Some(2), None)));
    assert_eq!(
        (status.as_str(), message.as_str()),
        (
            "Progressing",
            "1 of 2 relay pods run configuration abcdef012345"
        )
    );

    let (status, message) = health(&policy_with(&valid(), relay(Some(1), Some(2), Some(1))));
    assert_eq!(status, "Degraded");
    assert!(
        message.starts_with("Refused: ") && message.contains("does not match the manifest"),
        "{message}"
    );

    // A missing list: not Ready (Degraded) but not stalled.
    let missing = common::policy("partners", &["nowhere"], "").replace(
        "metadata:\n  name: partners",
        "metadata:\n  name: partners\n  generation: 2",
    );
    let (status, message) = health(&policy_with(&missing, relay(Some(2), Some(2), None)));
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("MissingReference: "), "{message}");

    // A newer generation than the status describes: not looked at yet.
    let mut newer = policy_with(&valid(), relay(Some(2), Some(2), None));
    newer["metadata"]["generation"] = Value::from(3);
    assert_eq!(health(&newer).0, "Progressing");
    // No status at all.
    newer["status"] = Value::Null;
    assert_eq!(health(&newer).0, "Progressing");
}
