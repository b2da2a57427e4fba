//! The exact requests a reconcile sends, against a `tower-test` mock API server (in the
//! style of kube-rs controller-rs `ApiServerVerifier`): every request is taken in order,
//! checked, and answered; after the reconcile no request may be left over.

use super::context::Context;
use super::events::Events;
use super::metrics::Metrics;
use super::reconcile::reconcile;
use super::stores::Stores;
use super::{HASH_ANNOTATION, MANAGED_BY_LABEL};
use crate::api::{
    AddressList, Direction, OutboundGateway, RelayConfigRef, TestSummary, TlsCompliance,
};
use crate::engine::conditions::{ConditionType, Conditions, Reason};
use crate::policy::{Inputs, LastValid, evaluate, evaluate_fail_closed};
use crate::render::{RenderOptions, render};
use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "team-a";
const CM_PATH: &str = "/api/v1/namespaces/team-a/configmaps/mailtls-relay";
const STATE_PATH: &str = "/api/v1/namespaces/team-a/configmaps/mailtls-relay-state";

fn meta<K: Resource>(r: &mut K, name: &str, generation: i64, created: &str) {
    let m = r.meta_mut();
    m.name = Some(name.into());
    m.namespace = Some(NS.into());
    m.uid = Some(format!("uid-{name}"));
    m.generation = Some(generation);
    m.resource_version = Some(format!("{generation}0"));
    m.creation_timestamp = created.parse().ok().map(Time);
}

fn address_list(name: &str, entries: &[&str]) -> AddressList {
    let mut l = AddressList::with_entries(name, entries);
    meta(&mut l, name, 1, "2026-01-01T00:00:00Z");
    l
}

fn policy(name: &str, list: &str) -> TlsCompliance {
    let mut p = TlsCompliance::outbound_verified(name, &[list]);
    meta(&mut p, name, 1, "2026-01-01T00:00:00Z");
    p
}

fn all_mail(name: &str, host: &str, created: &str) -> OutboundGateway {
    let mut g = OutboundGateway::all_mail(name, host);
    meta(&mut g, name, 1, created);
    g
}

fn inputs(
    address_lists: Vec<AddressList>,
    policies: Vec<TlsCompliance>,
    gateways: Vec<OutboundGateway>,
) -> Inputs {
    Inputs {
        namespace: NS.into(),
        address_lists,
        policies,
        gateways,
    }
}

fn writer<K>(items: &[K]) -> Writer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut w = Writer::default();
    for item in items {
        w.apply_watcher_event(&watcher::Event::Apply(item.clone()));
    }
    w
}

/// A context over a mock client whose stores hold `inputs`; the writers are returned so the
/// stores stay alive.
fn context(inputs: &Inputs) -> (Arc<Context>, Handle, impl Sized) {
    context_as(inputs, true)
}

fn context_as(inputs: &Inputs, leader: bool) -> (Arc<Context>, Handle, impl Sized) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (lists, policies, gateways) = (
        writer(&inputs.address_lists),
        writer(&inputs.policies),
        writer(&inputs.gateways),
    );
    let stores = Stores::filled(
        lists.as_reader(),
        policies.as_reader(),
        gateways.as_reader(),
    );
    let ctx = Context {
        client: client.clone(),
        stores,
        render: RenderOptions::default(),
        config_map: "mailtls-relay".into(),
        namespaces: vec![],
        metrics: Arc::new(Metrics::default()),
        events: Events::new(client, Some("test".into())),
        leader: tokio::sync::watch::channel(leader).1,
        relays: None,
        states: Default::default(),
        drift: Arc::default(),
        state_drift: Arc::default(),
    };
    (Arc::new(ctx), handle, (lists, policies, gateways))
}

/// Runs one reconcile of `NS` in the background.
fn spawn_reconcile(ctx: &Arc<Context>) -> tokio::task::JoinHandle<Result<(), super::Error>> {
    let ctx = ctx.clone();
    tokio::spawn(async move { reconcile(&ctx, NS).await })
}

/// One request as the test sees it.
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
    reply: mock::SendResponse<Response<Body>>,
}

impl Seen {
    fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        self.reply.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .expect("response"),
        );
    }
}

async fn next(handle: &mut Handle) -> Seen {
    let (request, reply) =
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
            .await
            .expect("the controller sent no further request within 5s")
            .expect("the client is gone");
    let query = request
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    Seen {
        method,
        path,
        query,
        content_type,
        body,
        reply,
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": "NotFound", "code": 404, "message": "not found"})
}

/// The ConfigMap GET, answered with `stored` (or 404).
async fn expect_config_map_get(handle: &mut Handle, stored: Option<Value>) {
    let seen = next(handle).await;
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", CM_PATH));
    match stored {
        None => seen.respond(StatusCode::NOT_FOUND, &not_found()),
        Some(cm) => seen.respond(StatusCode::OK, &cm),
    }
}

/// The state ConfigMap GET (first reconcile of the namespace), answered with `state` in
/// `data` (or 404).
async fn expect_state_get(handle: &mut Handle, state: Option<&LastValid>) {
    let seen = next(handle).await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", STATE_PATH)
    );
    match state {
        None => seen.respond(StatusCode::NOT_FOUND, &not_found()),
        Some(state) => seen.respond(StatusCode::OK, &state_config_map(state)),
    }
}

fn state_config_map(state: &LastValid) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "mailtls-relay-state", "namespace": NS},
           "data": {"last-valid.json": serde_json::to_string(state).expect("json")}})
}

/// The server-side apply of the state ConfigMap; returns the snapshot it carries (as text
/// or compressed) and answers with the body.
async fn expect_state_apply(handle: &mut Handle) -> LastValid {
    use crate::render::pack::{UNPACKED_LIMIT, gunzip};
    let seen = next(handle).await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PATCH", STATE_PATH)
    );
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(
        seen.query,
        BTreeMap::from([
            ("fieldManager".to_string(), "mailtls".to_string()),
            ("force".to_string(), "true".to_string()),
        ])
    );
    let body = seen.body.clone();
    assert_eq!(
        body["metadata"],
        json!({"name": "mailtls-relay-state", "namespace": NS,
               "labels": {MANAGED_BY_LABEL: "mailtls"}})
    );
    let text = match body["data"]["last-valid.json"].as_str() {
        Some(text) => text.to_string(),
        None => {
            let gz = body["binaryData"]["last-valid.json.gz"].clone();
            let bytes: k8s_openapi::ByteString = serde_json::from_value(gz).expect("base64");
            gunzip(&bytes.0, UNPACKED_LIMIT).expect("gzip")
        }
    };
    seen.respond(StatusCode::OK, &body);
    LastValid::from_json(&text).expect("snapshot")
}

/// The snapshot a reconcile of `inputs` from nothing keeps.
fn snapshot(inputs: &Inputs) -> LastValid {
    evaluate_fail_closed(inputs, &LastValid::default()).1
}

/// The ConfigMap as the controller's last apply left it for `inputs`.
fn stored_for(inputs: &Inputs) -> Value {
    let (evaluation, _) = evaluate_fail_closed(inputs, &LastValid::default());
    let config = render(&evaluation.policy, &RenderOptions::default());
    let packed = crate::render::pack::pack(&config.files);
    let mut cm = super::configmap::desired("mailtls-relay", NS, &config.hash, &packed);
    cm["metadata"]["resourceVersion"] = json!("500");
    cm
}

/// A ConfigMap of an older configuration.
fn stale(hash: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "mailtls-relay", "namespace": NS, "resourceVersion": "400",
                        "labels": {MANAGED_BY_LABEL: "mailtls"},
                        "annotations": {HASH_ANNOTATION: hash}},
           "data": {"tls_policy": "# old\n"}})
}

/// A status merge patch of `object`; returns its body and answers with the patched object.
async fn expect_status_patch<K: Resource<DynamicType = ()> + serde::Serialize>(
    handle: &mut Handle,
    object: &K,
) -> Value {
    let seen = next(handle).await;
    let name = object.meta().name.clone().unwrap_or_default();
    let plural = K::plural(&());
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        (
            "PATCH",
            format!("/apis/mailtls.io/v1alpha1/namespaces/{NS}/{plural}/{name}/status").as_str()
        )
    );
    assert_eq!(seen.content_type, "application/merge-patch+json");
    let body = seen.body.clone();
    let mut stored = serde_json::to_value(object).expect("json");
    merge(&mut stored["status"], &body["status"]);
    seen.respond(StatusCode::OK, &stored);
    body
}

/// What the server does with a merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// An events.k8s.io Event; returns its body.
async fn expect_event(handle: &mut Handle) -> Value {
    let seen = next(handle).await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events")
    );
    let body = seen.body.clone();
    seen.respond(StatusCode::CREATED, &body);
    body
}

/// After the reconcile: no request is left (the context and its clients are dropped first).
async fn expect_no_more(handle: &mut Handle) {
    assert!(
        handle.next_request().await.is_none(),
        "the controller sent a request it should not have"
    );
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn expected_hash(inputs: &Inputs) -> String {
    let (evaluation, _) = evaluate_fail_closed(inputs, &LastValid::default());
    render(&evaluation.policy, &RenderOptions::default()).hash
}

#[tokio::test]
async fn first_reconcile_applies_the_config_map_and_writes_every_status() {
    let inputs = inputs(
        vec![address_list(
            "partners",
            &[".partner.example", "alice@example.com"],
        )],
        vec![policy("partners", "partners")],
        vec![],
    );
    let config = render(&evaluate(&inputs).policy, &RenderOptions::default());
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);

    // A namespace seen for the first time: no state yet, so its first valid generations
    // are kept before the relay configuration is written.
    expect_state_get(&mut handle, None).await;
    let kept = expect_state_apply(&mut handle).await;
    assert_eq!(kept, snapshot(&inputs));
    assert_eq!(kept.policies["partners"].generation, 1);
    assert_eq!(
        kept.address_lists["partners"].spec,
        inputs.address_lists[0].spec
    );
    expect_config_map_get(&mut handle, None).await;

    let apply = next(&mut handle).await;
    assert_eq!(
        (apply.method.as_str(), apply.path.as_str()),
        ("PATCH", CM_PATH)
    );
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert_eq!(
        apply.query,
        BTreeMap::from([
            ("fieldManager".to_string(), "mailtls".to_string()),
            ("force".to_string(), "true".to_string()),
        ])
    );
    let data: BTreeMap<String, String> = config.files.clone();
    assert_eq!(
        apply.body,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "mailtls-relay",
                "namespace": NS,
                "labels": {MANAGED_BY_LABEL: "mailtls"},
                "annotations": {HASH_ANNOTATION: config.hash},
            },
            "data": data,
        })
    );
    assert!(data["tls_policy"].contains(".partner.example"));
    let mut stored = apply.body.clone();
    stored["metadata"]["uid"] = json!("uid-cm");
    apply.respond(StatusCode::OK, &stored);

    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "Rendered");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "ConfigMap");
    assert_eq!(event["regarding"]["name"], "mailtls-relay");

    let body = expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    assert_eq!(body["metadata"], json!({"resourceVersion": "10"}));
    let status = &body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        (status["addresses"].clone(), status["domains"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(status["usedBy"], json!(["TlsCompliance/partners"]));
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].clone(), ready["reason"].clone()),
        (json!("True"), json!("Valid"))
    );
    assert_eq!(ready["observedGeneration"], 1);

    let body = expect_status_patch(&mut handle, &inputs.policies[0]).await;
    let status = &body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["relayConfig"],
        json!({"name": "mailtls-relay", "hash": config.hash})
    );
    let types: Vec<(&str, &str)> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("Ready", "True"),
            ("Rendered", "True"),
            // No relay pods in this test: whether it is in force is not known.
            ("Applied", "Unknown"),
            ("Tested", "Unknown"),
            ("Compliant", "Unknown"),
            ("Conflict", "False"),
            ("Stalled", "False"),
        ]
    );

    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// The resources as a previous reconcile left them, with the ConfigMap holding their hash.
fn reconciled(inputs: &Inputs) -> Inputs {
    let relay = RelayConfigRef {
        name: "mailtls-relay".into(),
        hash: expected_hash(inputs),
        ..Default::default()
    };
    let now = Time("2026-02-01T00:00:00Z".parse().expect("time"));
    let (evaluation, _) = evaluate_fail_closed(inputs, &LastValid::default());
    let u = crate::engine::reconcile::namespace_statuses(inputs, &evaluation, &relay, &now);
    Inputs {
        namespace: NS.into(),
        address_lists: u.address_lists,
        policies: u.policies,
        gateways: u.gateways,
    }
}

#[tokio::test]
async fn a_reconciled_namespace_sends_no_write() {
    let before = inputs(
        vec![address_list("partners", &["example.com"])],
        vec![policy("partners", "partners")],
        vec![all_mail(
            "smarthost",
            "relay.example.net",
            "2026-01-01T00:00:00Z",
        )],
    );
    let after = reconciled(&before);
    let (ctx, mut handle, _writers) = context(&after);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, Some(&snapshot(&before))).await;
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_spec_change_patches_only_what_changed_and_keeps_test_results() {
    let before = inputs(
        vec![address_list("partners", &["example.com"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let mut after = reconciled(&before);
    // The test loop reported meanwhile; then the admin switched to Monitor (generation 2).
    let p = &mut after.policies[0];
    let status = p.status.as_mut().expect("status");
    let now = Time("2026-02-02T00:00:00Z".parse().expect("time"));
    Conditions::new(&mut status.conditions, 1, &now).set(
        ConditionType::Tested,
        true,
        Reason::Tested,
        "3 destinations",
    );
    status.last_test = Some(TestSummary {
        time: "2026-02-02T00:00:00Z".into(),
        destinations: 3,
        passed: 3,
        ..Default::default()
    });
    p.spec.enforcement = crate::api::Enforcement::Monitor;
    meta(p, "partners", 2, "2026-01-01T00:00:00Z");
    let policy = p.clone();
    let (ctx, mut handle, _writers) = context(&after);
    let run = spawn_reconcile(&ctx);
    // A valid new generation: kept, and as Monitor renders nothing mandatory, a new hash.
    expect_state_get(&mut handle, Some(&snapshot(&before))).await;
    let kept = expect_state_apply(&mut handle).await;
    assert_eq!(kept.policies["partners"].generation, 2);
    assert_eq!(kept.policies["partners"].spec, policy.spec);
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    let apply = next(&mut handle).await;
    assert_eq!(apply.method, "PATCH");
    let stored = apply.body.clone();
    apply.respond(StatusCode::OK, &stored);
    expect_event(&mut handle).await;
    // The AddressList is unchanged: no patch. The policy's patch has only what moved.
    let body = expect_status_patch(&mut handle, &policy).await;
    let status = body["status"].as_object().expect("status");
    let mut keys: Vec<&str> = status.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "conditions",
            "enforcedGeneration",
            "observedGeneration",
            "relayConfig"
        ]
    );
    assert_eq!(status["enforcedGeneration"], 2);
    assert_eq!(body["metadata"]["resourceVersion"], "20");
    assert_eq!(status["observedGeneration"], 2);
    let rendered = condition(&body["status"], "Rendered");
    assert_eq!(rendered["reason"], "MonitorOnly");
    // The test loop's condition is carried over untouched (conditions are one atomic list).
    let tested = condition(&body["status"], "Tested");
    assert_eq!(
        (
            tested["status"].clone(),
            tested["observedGeneration"].clone()
        ),
        (json!("True"), json!(1))
    );
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn conflicting_gateways_get_a_conflict_condition_and_one_warning_each() {
    let older = all_mail("gw-a", "a.example.net", "2026-01-01T00:00:00Z");
    let newer = all_mail("gw-b", "b.example.net", "2026-01-02T00:00:00Z");
    let inputs = inputs(vec![], vec![], vec![older.clone(), newer.clone()]);
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    // The loser was never valid: the state keeps only the winner, already stored.
    let kept = snapshot(&inputs);
    assert_eq!(kept.gateways.keys().collect::<Vec<_>>(), ["gw-a"]);
    expect_state_get(&mut handle, Some(&kept)).await;
    expect_config_map_get(&mut handle, Some(stored_for(&inputs))).await;

    // Status writes go out together; each one's Event follows its answer.
    let body = expect_status_patch(&mut handle, &older).await;
    let conflict = condition(&body["status"], "Conflict");
    assert_eq!(conflict["status"], "True");
    assert!(
        conflict["message"]
            .as_str()
            .is_some_and(|m| m.contains("OutboundGateway/gw-b") && m.contains("wins")),
        "{conflict}"
    );
    assert_eq!(condition(&body["status"], "Ready")["status"], "True");
    let body = expect_status_patch(&mut handle, &newer).await;
    assert_eq!(condition(&body["status"], "Conflict")["status"], "True");
    let ready = condition(&body["status"], "Ready");
    assert_eq!(
        (ready["status"].clone(), ready["reason"].clone()),
        (json!("False"), json!("ConflictLost"))
    );
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("this resource enforces nothing")),
        "{ready}"
    );
    assert!(body["status"].get("enforcedGeneration").is_none(), "{body}");
    let event = expect_event(&mut handle).await;
    assert_eq!(
        (event["type"].clone(), event["reason"].clone()),
        (json!("Warning"), json!("Conflict"))
    );
    assert_eq!(event["regarding"]["name"], "gw-a");
    // Losing is the same news: one Conflict warning, not a second one for Ready.
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "Conflict");
    assert_eq!(event["regarding"]["name"], "gw-b");

    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_failing_status_write_does_not_stop_the_others() {
    let inputs = inputs(
        vec![
            address_list("a", &["a.example"]),
            address_list("b", &["b.example"]),
        ],
        vec![],
        vec![],
    );
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, Some(&snapshot(&inputs))).await;
    expect_config_map_get(&mut handle, Some(stored_for(&inputs))).await;
    let first = next(&mut handle).await;
    assert!(
        first.path.ends_with("/addresslists/a/status"),
        "{}",
        first.path
    );
    first.respond(
        StatusCode::CONFLICT,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
    );
    expect_status_patch(&mut handle, &inputs.address_lists[1]).await;
    let result = run.await.expect("task");
    assert!(
        matches!(result, Err(super::Error::Status { name, .. }) if name == "a"),
        "the failure is reported so the namespace is retried"
    );
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_namespace_without_resources_gets_no_new_config_map_but_an_old_one_is_emptied() {
    let empty = inputs(vec![], vec![], vec![]);
    let (ctx, mut handle, _writers) = context(&empty);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, None).await;
    expect_config_map_get(&mut handle, None).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;

    // Everything was deleted: deleting may weaken, so the state forgets it all.
    let (ctx, mut handle, _writers) = context(&empty);
    let run = spawn_reconcile(&ctx);
    let old = inputs(vec![address_list("a", &["a.example"])], vec![], vec![]);
    expect_state_get(&mut handle, Some(&snapshot(&old))).await;
    assert_eq!(expect_state_apply(&mut handle).await, LastValid::default());
    expect_config_map_get(&mut handle, Some(stale("sha256:old"))).await;
    let apply = next(&mut handle).await;
    assert_eq!(apply.method, "PATCH");
    assert_eq!(
        apply.body["metadata"]["annotations"][HASH_ANNOTATION],
        json!(expected_hash(&empty))
    );
    let tls_policy = apply.body["data"]["tls_policy"]
        .as_str()
        .unwrap_or_default();
    assert!(
        tls_policy
            .lines()
            .all(|l| l.starts_with('#') || l.is_empty()),
        "{tls_policy}"
    );
    let stored = apply.body.clone();
    apply.respond(StatusCode::OK, &stored);
    expect_event(&mut handle).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[tokio::test]
async fn a_follower_writes_nothing() {
    let inputs = inputs(vec![address_list("a", &["a.example"])], vec![], vec![]);
    let (ctx, mut handle, _writers) = context_as(&inputs, false);
    let run = spawn_reconcile(&ctx);
    // Reading is allowed; the first write (the state) is not.
    expect_state_get(&mut handle, None).await;
    assert!(matches!(
        run.await.expect("task"),
        Err(super::Error::NotLeader)
    ));
    drop(ctx);
    expect_no_more(&mut handle).await;
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    for n in 1..40 {
        let d = super::queue::backoff(n);
        let full = std::time::Duration::from_millis(500)
            .saturating_mul(1 << (n - 1).min(16))
            .min(std::time::Duration::from_secs(300));
        assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
    }
}

#[tokio::test]
async fn a_refused_config_map_is_reported_in_the_statuses_and_retried() {
    let inputs = inputs(
        vec![address_list("partners", &["example.com"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, None).await;
    expect_state_apply(&mut handle).await;
    expect_config_map_get(&mut handle, None).await;
    let apply = next(&mut handle).await;
    assert_eq!(apply.method, "PATCH");
    apply.respond(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "Invalid", "code": 422,
                "message": "Too long: may not be more than 1048576 bytes"}),
    );
    // The list itself is fine.
    let body = expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    assert_eq!(condition(&body["status"], "Ready")["status"], "True");
    let body = expect_status_patch(&mut handle, &inputs.policies[0]).await;
    assert!(body["status"].get("relayConfig").is_none(), "{body}");
    for t in ["Ready", "Rendered"] {
        let c = condition(&body["status"], t);
        assert_eq!(
            (c["status"].clone(), c["reason"].clone()),
            (
                json!("False"),
                json!(Reason::RelayConfigNotWritten.as_str())
            )
        );
        assert!(
            c["message"].as_str().is_some_and(|m| m.contains("1048576")),
            "{c}"
        );
    }
    let event = expect_event(&mut handle).await;
    assert_eq!(
        (event["type"].clone(), event["reason"].clone()),
        (
            json!("Warning"),
            json!(Reason::RelayConfigNotWritten.as_str())
        )
    );
    assert!(matches!(
        run.await.expect("task"),
        Err(super::Error::ConfigMap { .. })
    ));
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// A tester that records when each plan started (tokio time), takes `.1` to finish and
/// reports nothing.
#[derive(Clone, Default)]
struct Recorder(
    Arc<std::sync::Mutex<Vec<(tokio::time::Instant, String)>>>,
    std::time::Duration,
);

impl crate::engine::Tester for Recorder {
    fn test(
        &self,
        items: Vec<(crate::probe::Target, crate::probe::Expected)>,
    ) -> impl std::future::Future<Output = Vec<crate::probe::DestinationReport>> + Send {
        let (seen, takes) = (self.0.clone(), self.1);
        async move {
            if let Ok(mut s) = seen.lock() {
                for (target, _) in &items {
                    s.push((tokio::time::Instant::now(), target.display()));
                }
            }
            tokio::time::sleep(takes).await;
            Vec::new()
        }
    }
}

/// Answer every request (the status patches, Events) with a plain 200.
fn answer_everything(mut handle: Handle, body: Value) {
    tokio::spawn(async move {
        while let Some((_, reply)) = handle.next_request().await {
            let bytes = serde_json::to_vec(&body).expect("json");
            reply.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(bytes))
                    .expect("response"),
            );
        }
    });
}

/// In paused tokio time: a resource last tested 30 minutes ago with a 1h interval is tested
/// again after the rest of the interval plus its jitter (within one tick), not before; one
/// with a new test-now value is tested at once.
#[tokio::test(start_paused = true)]
async fn periodic_tests_follow_interval_jitter_and_test_now() {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use std::time::Duration;
    let last = |ago: i64, trigger: Option<&str>| {
        Some(crate::api::TlsComplianceStatus {
            last_test: Some(TestSummary {
                time: Timestamp::now()
                    .checked_sub(SignedDuration::from_mins(ago))
                    .expect("time")
                    .to_string(),
                trigger: trigger.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let mut interval = policy("interval", "l");
    interval.spec.test.interval = "1h".into();
    interval.status = last(30, None);
    let mut asked = policy("asked", "m");
    asked.status = last(1, Some("old"));
    asked.meta_mut().annotations = Some(
        [(
            crate::api::TEST_NOW_ANNOTATION.to_string(),
            "new".to_string(),
        )]
        .into(),
    );
    let inputs = inputs(
        vec![
            address_list("l", &["interval.example"]),
            address_list("m", &["asked.example"]),
        ],
        vec![interval.clone(), asked],
        vec![],
    );
    let (ctx, handle, _stores) = context(&inputs);
    answer_everything(handle, serde_json::to_value(&interval).expect("json"));
    let recorder = Recorder::default();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let start = tokio::time::Instant::now();
    let task = tokio::spawn(super::periodic::run(ctx, recorder.clone(), shutdown));

    let first = |dest: &str| {
        recorder
            .0
            .lock()
            .ok()
            .and_then(|s| s.iter().find(|(_, d)| d == dest).map(|(t, _)| *t - start))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        first("asked.example"),
        Some(Duration::ZERO),
        "a new test-now value is tested at the first tick"
    );
    let jitter = crate::engine::plan::jitter(Duration::from_secs(3600), "uid-interval");
    assert!(jitter < Duration::from_secs(360));
    let due = Duration::from_secs(30 * 60) + jitter;
    tokio::time::sleep(due - Duration::from_secs(16)).await;
    assert_eq!(
        first("interval.example"),
        None,
        "not before the interval and jitter have passed"
    );
    tokio::time::sleep(Duration::from_secs(32)).await;
    let at = first("interval.example").expect("tested after the interval");
    assert!(
        at >= due && at <= due + super::periodic::TICK,
        "tested at {at:?}, due {due:?}"
    );
    let _ = stop.send(true);
    let _ = task.await;
}

/// At most `RESOURCES_AT_ONCE` resources are tested at a time (each holds its reports until
/// done); the others start at the first tick after a slot frees up.
#[tokio::test(start_paused = true)]
async fn periodic_tests_run_a_bounded_number_of_resources_at_once() {
    use super::periodic::TICK;
    use crate::engine::schedule::RESOURCES_AT_ONCE;
    use std::time::Duration;
    let n = RESOURCES_AT_ONCE + 4;
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let lists = names
        .iter()
        .map(|p| address_list(p, &[&format!("{p}.example")]))
        .collect();
    let policies = names.iter().map(|p| policy(p, p)).collect();
    let inputs = inputs(lists, policies, vec![]);
    let (ctx, handle, _stores) = context(&inputs);
    answer_everything(handle, json!({}));
    let takes = Duration::from_secs(60);
    let recorder = Recorder(Default::default(), takes);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let start = tokio::time::Instant::now();
    let task = tokio::spawn(super::periodic::run(ctx, recorder.clone(), shutdown));
    // Distinct resources started by then (the mock API server keeps no status, so a
    // finished resource is due again and may be started twice).
    let started = |by: Duration| {
        recorder
            .0
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(t, _)| *t - start <= by)
                    .map(|(_, d)| d.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(started(Duration::from_secs(1)), RESOURCES_AT_ONCE);
    tokio::time::sleep(takes + TICK).await;
    assert_eq!(started(takes + TICK + Duration::from_secs(1)), n);
    let _ = stop.send(true);
    let _ = task.await;
}

/// Entries whose maps are large (and, with `random`, compress badly).
fn many_entries(n: usize, random: bool) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            if random {
                // xorshift: enough entropy that deflate cannot shrink it much.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}{i}.example")
            } else {
                format!("partner{i}.example")
            }
        })
        .collect()
}

/// Files over the threshold go into `binaryData` as `<name>.gz`, gzip of the exact text;
/// the small ones stay in `data`.
#[tokio::test]
async fn a_large_configuration_is_applied_with_its_maps_compressed() {
    use crate::render::pack::{COMPRESS_OVER, UNPACKED_LIMIT, gunzip};
    let entries = many_entries(3000, false);
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    let inputs = inputs(
        vec![address_list("partners", &refs)],
        vec![policy("partners", "partners")],
        vec![],
    );
    let config = render(&evaluate(&inputs).policy, &RenderOptions::default());
    assert!(config.files["tls_policy"].len() > COMPRESS_OVER);
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, None).await;
    // The state is as large as the list, so it is compressed too.
    assert_eq!(expect_state_apply(&mut handle).await, snapshot(&inputs));
    expect_config_map_get(&mut handle, None).await;
    let apply = next(&mut handle).await;
    assert_eq!(
        (apply.method.as_str(), apply.path.as_str()),
        ("PATCH", CM_PATH)
    );
    let small: BTreeMap<String, String> = config
        .files
        .iter()
        .filter(|(_, text)| text.len() <= COMPRESS_OVER)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(small.contains_key("main.cf") && !small.contains_key("tls_policy"));
    assert_eq!(apply.body["data"], json!(small));
    let binary = apply.body["binaryData"]
        .as_object()
        .expect("binaryData")
        .clone();
    let large: Vec<String> = config
        .files
        .keys()
        .filter(|name| !small.contains_key(*name))
        .map(|name| format!("{name}.gz"))
        .collect();
    assert_eq!(binary.keys().cloned().collect::<Vec<_>>(), large);
    for (key, value) in &binary {
        let bytes: k8s_openapi::ByteString = serde_json::from_value(value.clone()).expect("base64");
        let name = key.trim_end_matches(".gz");
        assert_eq!(
            gunzip(&bytes.0, UNPACKED_LIMIT).expect("gzip"),
            config.files[name]
        );
    }
    assert_eq!(
        apply.body["metadata"]["annotations"][HASH_ANNOTATION],
        json!(config.hash)
    );
    let stored = apply.body.clone();
    apply.respond(StatusCode::OK, &stored);
    assert_eq!(expect_event(&mut handle).await["reason"], "Rendered");
    expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    expect_status_patch(&mut handle, &inputs.policies[0]).await;
    run.await.expect("task").expect("reconcile");
}

/// A configuration that would not fit a ConfigMap even compressed is never sent; every
/// policy says why, and the reconcile fails (so it is retried with backoff).
#[tokio::test]
async fn a_configuration_over_the_limit_is_not_sent() {
    let entries = many_entries(60_000, true);
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    let mut p = policy("partners", "partners");
    p.spec.direction = Direction::Both;
    let inputs = inputs(vec![address_list("partners", &refs)], vec![p], vec![]);
    let config = render(&evaluate(&inputs).policy, &RenderOptions::default());
    let packed = crate::render::pack::pack(&config.files);
    assert!(
        packed.size() > super::configmap::CONFIGMAP_LIMIT,
        "{}",
        packed.size()
    );
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, None).await;
    expect_state_apply(&mut handle).await;
    expect_config_map_get(&mut handle, None).await;
    // No apply: the next request is the list's status.
    let body = expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    assert_eq!(condition(&body["status"], "Ready")["status"], "True");
    let body = expect_status_patch(&mut handle, &inputs.policies[0]).await;
    let ready = condition(&body["status"], "Ready");
    assert_eq!(
        ready["reason"],
        json!(Reason::RelayConfigNotWritten.as_str())
    );
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&packed.size().to_string()) && message.contains("1048576"),
        "{message}"
    );
    answer_everything(handle, json!({}));
    assert!(matches!(
        run.await.expect("task"),
        Err(super::Error::TooLarge { .. })
    ));
}

/// After a restart, a policy whose current generation is invalid: the state read back keeps
/// generation 1 in force, so neither the state nor the relay ConfigMap is written, and the
/// status names the field and the generation still enforced.
#[tokio::test]
async fn a_restart_after_a_bad_edit_keeps_the_last_valid_generation() {
    let before = inputs(
        vec![address_list("partners", &["example.com"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let mut after = reconciled(&before);
    let p = &mut after.policies[0];
    p.spec.test.interval = "30s".into();
    meta(p, "partners", 2, "2026-01-01T00:00:00Z");
    let policy = p.clone();
    // What the engine alone would make of it: the policy's TLS gone from the relay.
    assert_ne!(
        render(&evaluate(&after).policy, &RenderOptions::default()).hash,
        expected_hash(&before)
    );
    let (ctx, mut handle, _writers) = context(&after);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, Some(&snapshot(&before))).await;
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    let body = expect_status_patch(&mut handle, &policy).await;
    let status = &body["status"];
    assert_eq!(status["observedGeneration"], 2);
    // Unchanged (so not in the patch): generation 1 was and is in force.
    let enforced = policy.status.as_ref().and_then(|s| s.enforced_generation);
    assert_eq!(enforced, Some(1));
    assert!(status.get("enforcedGeneration").is_none(), "{status}");
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].clone(), ready["reason"].clone()),
        (json!("False"), json!("InvalidSpec"))
    );
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("spec.test.interval: ")
            && message.ends_with("; generation 1 is still enforced"),
        "{message}"
    );
    assert_eq!(condition(status, "Rendered")["status"], "True");
    let event = expect_event(&mut handle).await;
    assert_eq!(event["type"], "Warning");
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// A hand edit that kept the hash (or recomputed it) is found by its content and restored:
/// keys someone else added are removed by a merge patch (an apply only removes what it
/// owned), the files are applied again, and a Warning Event says it was repaired. Nothing
/// else changed, so no status is written and no Rendered Event is sent.
#[tokio::test]
async fn a_hand_edited_config_map_is_restored_with_a_repaired_event() {
    let before = inputs(
        vec![address_list("partners", &["partner.example"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let after = reconciled(&before);
    let mut edited = stored_for(&before);
    let original = edited["data"].clone();
    edited["data"]["tls_policy"] = json!("partner.example may\n");
    edited["data"]["extra.cf"] = json!("smtp_tls_security_level = none\n");
    edited["metadata"]["managedFields"] = json!([
        {"manager": "mailtls", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {"f:main.cf": {}}}},
        {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {"f:tls_policy": {}, "f:extra.cf": {}}}},
    ]);
    let (ctx, mut handle, _writers) = context(&after);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, Some(&snapshot(&before))).await;
    expect_config_map_get(&mut handle, Some(edited.clone())).await;

    let remove = next(&mut handle).await;
    assert_eq!(
        (
            remove.method.as_str(),
            remove.path.as_str(),
            remove.content_type.as_str()
        ),
        ("PATCH", CM_PATH, "application/merge-patch+json")
    );
    assert_eq!(remove.body, json!({"data": {"extra.cf": null}}));
    assert_eq!(
        remove.query.get("fieldManager").map(String::as_str),
        Some("mailtls")
    );
    remove.respond(StatusCode::OK, &edited);

    let apply = next(&mut handle).await;
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert_eq!(apply.body["data"], original);
    let stored = apply.body.clone();
    apply.respond(StatusCode::OK, &stored);

    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "RelayConfigRepaired");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "ConfigMap");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("kubectl-edit"), "{note}");
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// A state ConfigMap that cannot be read stops the namespace before any write: taking it
/// as empty would drop every generation it keeps in force.
#[tokio::test]
async fn an_unreadable_state_writes_nothing() {
    let inputs = inputs(vec![address_list("a", &["a.example"])], vec![], vec![]);
    for data in [
        json!({"last-valid.json": "{\"version\": 1, \"policies\": ["}),
        json!({}),
    ] {
        let (ctx, mut handle, _writers) = context(&inputs);
        let run = spawn_reconcile(&ctx);
        let seen = next(&mut handle).await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("GET", STATE_PATH)
        );
        seen.respond(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "mailtls-relay-state", "namespace": NS},
                    "data": data}),
        );
        let err = run.await.expect("task").expect_err("an unreadable state");
        assert!(matches!(err, super::Error::State { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("team-a/mailtls-relay-state"), "{message}");
        drop(ctx);
        expect_no_more(&mut handle).await;
    }
}

/// The state is read once per namespace; later reconciles use the cached copy and write it
/// only when it changes.
#[tokio::test]
async fn the_state_is_read_once_and_written_only_when_it_changes() {
    let inputs = inputs(vec![address_list("a", &["a.example"])], vec![], vec![]);
    let (ctx, mut handle, _writers) = context(&inputs);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, None).await;
    expect_state_apply(&mut handle).await;
    expect_config_map_get(&mut handle, Some(stored_for(&inputs))).await;
    expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    run.await.expect("task").expect("reconcile");
    // Second reconcile: no state GET, no state write.
    let run = spawn_reconcile(&ctx);
    expect_config_map_get(&mut handle, Some(stored_for(&inputs))).await;
    expect_status_patch(&mut handle, &inputs.address_lists[0]).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// Content the apply would not change is left alone, even when other managers own other
/// fields of the ConfigMap (a label someone added is not drift).
#[tokio::test]
async fn a_config_map_with_the_rendered_content_is_not_written() {
    let before = inputs(
        vec![],
        vec![],
        vec![all_mail("gw", "relay.example.net", "2026-01-01T00:00:00Z")],
    );
    let after = reconciled(&before);
    let mut cm = stored_for(&before);
    cm["metadata"]["labels"]["team"] = json!("mail");
    cm["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-label", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
    ]);
    let (ctx, mut handle, _writers) = context(&after);
    let run = spawn_reconcile(&ctx);
    expect_state_get(&mut handle, Some(&snapshot(&before))).await;
    expect_config_map_get(&mut handle, Some(cm)).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// The state ConfigMap exactly as the controller writes `state` (label and data).
fn stored_state(state: &LastValid) -> Value {
    let json = serde_json::to_string(state).expect("json");
    let mut cm = super::state::desired("mailtls-relay-state", NS, super::state::packed(json));
    cm["metadata"]["resourceVersion"] = json!("600");
    cm
}

/// The state GET a flagged namespace's reconcile makes before deciding to repair.
async fn expect_state_check(handle: &mut Handle, stored: Option<Value>) {
    let seen = next(handle).await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", STATE_PATH)
    );
    match stored {
        None => seen.respond(StatusCode::NOT_FOUND, &not_found()),
        Some(cm) => seen.respond(StatusCode::OK, &cm),
    }
}

/// A namespace already reconciled once: the state is cached, nothing is written.
async fn reconcile_once(ctx: &Arc<Context>, handle: &mut Handle, before: &Inputs) {
    let run = spawn_reconcile(ctx);
    expect_state_get(handle, Some(&snapshot(before))).await;
    expect_config_map_get(handle, Some(stored_for(before))).await;
    run.await.expect("task").expect("reconcile");
}

/// The state ConfigMap deleted while running: the next reconcile of its namespace writes
/// it again from the cache (nothing else would: the snapshot did not change) and says so
/// on the ConfigMap. A failed write keeps the namespace flagged, so the retry repairs it.
#[tokio::test]
async fn a_deleted_state_is_written_again_from_the_cache_with_an_event() {
    // Only a list: a failed write then changes no status (it marks policies and gateways).
    let before = inputs(
        vec![address_list("partners", &["partner.example"])],
        vec![],
        vec![],
    );
    let after = reconciled(&before);
    let (ctx, mut handle, _writers) = context(&after);
    reconcile_once(&ctx, &mut handle, &before).await;
    ctx.state_drift.mark_deleted(NS);

    // The write is refused once: the flag survives the error.
    let run = spawn_reconcile(&ctx);
    expect_state_check(&mut handle, None).await;
    let refused = next(&mut handle).await;
    assert_eq!(
        (refused.method.as_str(), refused.path.as_str()),
        ("PATCH", STATE_PATH)
    );
    refused.respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "InternalError", "code": 500, "message": "etcd is away"}),
    );
    let err = run.await.expect("task").expect_err("the refused write");
    assert!(matches!(err, super::Error::ConfigMap { .. }), "{err}");

    let run = spawn_reconcile(&ctx);
    expect_state_check(&mut handle, None).await;
    assert_eq!(expect_state_apply(&mut handle).await, snapshot(&before));
    let event = expect_event(&mut handle).await;
    assert_eq!(
        (&event["reason"], &event["type"]),
        (&json!("StateRepaired"), &json!("Warning"))
    );
    assert_eq!(event["regarding"]["name"], "mailtls-relay-state");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("it had been deleted"), "{note}");
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    run.await.expect("task").expect("reconcile");

    // Repaired: the next reconcile reads nothing more.
    let run = spawn_reconcile(&ctx);
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// A hand edit of the state (here one that forgets every generation, and adds a key) is
/// found by comparing with what the controller would write, undone (the extra key by a
/// merge patch), and the Event names who edited it. The controller's own write coming
/// back on the watch costs one read and no write.
#[tokio::test]
async fn a_hand_edited_state_is_restored_and_our_own_write_is_not_rewritten() {
    let before = inputs(
        vec![address_list("partners", &["partner.example"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let after = reconciled(&before);
    let (ctx, mut handle, _writers) = context(&after);
    reconcile_once(&ctx, &mut handle, &before).await;

    let mut edited = stored_state(&LastValid::default());
    edited["data"]["note"] = json!("cleaned up");
    edited["metadata"]["managedFields"] = json!([
        {"manager": "mailtls", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}}}},
        {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {"f:last-valid.json": {}, "f:note": {}}}},
    ]);
    ctx.state_drift.mark_changed(NS);
    let run = spawn_reconcile(&ctx);
    expect_state_check(&mut handle, Some(edited.clone())).await;
    let remove = next(&mut handle).await;
    assert_eq!(
        (
            remove.method.as_str(),
            remove.path.as_str(),
            remove.content_type.as_str()
        ),
        ("PATCH", STATE_PATH, "application/merge-patch+json")
    );
    assert_eq!(remove.body, json!({"data": {"note": null}}));
    remove.respond(StatusCode::OK, &edited);
    assert_eq!(expect_state_apply(&mut handle).await, snapshot(&before));
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "StateRepaired");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("edited by kubectl-edit"), "{note}");
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    run.await.expect("task").expect("reconcile");

    // Our own write seen as someone else's (it raced the resource version): read, equal,
    // nothing written, no Event.
    ctx.state_drift.mark_changed(NS);
    let run = spawn_reconcile(&ctx);
    expect_state_check(&mut handle, Some(stored_state(&snapshot(&before)))).await;
    expect_config_map_get(&mut handle, Some(stored_for(&before))).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    expect_no_more(&mut handle).await;
}

/// After a restart the ConfigMap is the only source of truth: a flag raised before the
/// first read is dropped (there is no cache to repair from), so the read is all there is.
#[tokio::test]
async fn a_flag_before_the_first_read_only_reads() {
    let before = inputs(
        vec![address_list("partners", &["partner.example"])],
        vec![policy("partners", "partners")],
        vec![],
    );
    let after = reconciled(&before);
    let (ctx, mut handle, _writers) = context(&after);
    ctx.state_drift.mark_changed(NS);
    reconcile_once(&ctx, &mut handle, &before).await;
    drop(ctx);
    expect_no_more(&mut handle).await;
}
