//! Controller benchmark against a real API server: time from applying an AddressList edit to
//! the ConfigMap holding the new hash (100 edits, 10 policies over one 10k-entry list), the
//! controller's idle RSS, and API writes per edit.
//!
//! Run: `scripts/test-cluster.sh -- cargo bench --bench controller`. The controller is the
//! real `mailtls run` binary in a child process (so its RSS is its own), watching one fresh
//! namespace.

#[path = "../tests/common/cluster.rs"]
mod cluster;

use cluster::{MANAGER, client, install_crds};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use mailtls::api::{
    AddressList, AddressListSpec, Direction, LocalRef, OnFailure, TestSpec, TlsCompliance,
    TlsComplianceSpec, TlsVersion,
};
use mailtls::controller::HASH_ANNOTATION;
use mailtls::policy::{Inputs, evaluate};
use mailtls::render::{PostfixVersion, RenderOptions, render};
use std::time::{Duration, Instant};

const ENTRIES: usize = 10_000;
const POLICIES: usize = 10;
const EDITS: usize = 100;

fn big_list(edit: usize) -> AddressList {
    let mut entries: Vec<String> = (0..ENTRIES)
        .map(|i| match i % 3 {
            0 => format!("user{i}@dom{}.example", i % 1000),
            1 => format!("dom{i}.example"),
            _ => format!(".sub{i}.example"),
        })
        .collect();
    entries[0] = format!("edit{edit}.example");
    AddressList::new(
        "big",
        AddressListSpec {
            entries,
            bulk: None,
        },
    )
}

fn policy(p: usize) -> TlsCompliance {
    TlsCompliance::new(
        &format!("policy-{p}"),
        TlsComplianceSpec {
            // Outbound only: with `Both` the 10k entries also fill sender_access and the
            // configuration outgrows a ConfigMap's 1 MiB (see BENCHMARKS.md).
            direction: Direction::Outbound,
            address_lists: vec![LocalRef { name: "big".into() }],
            require_ca_signed: p.is_multiple_of(2),
            validate_hostname: p.is_multiple_of(4),
            min_tls_version: [TlsVersion::V1_2, TlsVersion::V1_3][p % 2],
            on_failure: [OnFailure::Bounce, OnFailure::Defer][p % 3 % 2],
            enforcement: Default::default(),
            test: TestSpec::default(),
        },
    )
}

fn options() -> RenderOptions {
    RenderOptions {
        postfix_version: PostfixVersion::LATEST,
        ..Default::default()
    }
}

fn hash(ns: &str, list: &AddressList, policies: &[TlsCompliance]) -> String {
    let inputs = Inputs {
        namespace: ns.into(),
        address_lists: vec![list.clone()],
        policies: policies.to_vec(),
        gateways: vec![],
    };
    render(&evaluate(&inputs).policy, &options()).hash
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    if std::env::var_os("MAILTLS_TEST_KUBECONFIG").is_none() {
        // Skipped rather than failed, so a plain `cargo bench` still runs the other benches.
        eprintln!(
            "controller bench skipped: it needs a real API server; run `scripts/test-cluster.sh -- cargo bench --bench controller`"
        );
        return;
    }
    let client = client().await;
    install_crds(&client).await;
    let ns = format!("mailtls-bench-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the namespace");

    let pp = PatchParams::apply(MANAGER).force();
    let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
    let policies_api: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
    let policies: Vec<TlsCompliance> = (0..POLICIES).map(policy).collect();
    for p in &policies {
        policies_api
            .patch(
                &p.metadata.name.clone().unwrap_or_default(),
                &pp,
                &Patch::Apply(p),
            )
            .await
            .expect("policy");
    }
    let first = big_list(0);
    lists
        .patch("big", &pp, &Patch::Apply(&first))
        .await
        .expect("list");

    let kubeconfig = std::env::var_os("MAILTLS_TEST_KUBECONFIG").unwrap_or_default();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["run", "--namespace", &ns, "--postfix-version", "3.10"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("starting mailtls run");
    let pid = child.id();
    // Stop the controller however this process ends (a panic included).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(child);

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let stream = watcher::watch_object(cms, "mailtls-relay");
    futures::pin_mut!(stream);
    let mut wait_for = async |want: &str| loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
        match next {
            Ok(Some(Ok(Some(cm)))) => {
                let h = cm
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH_ANNOTATION));
                if h.map(String::as_str) == Some(want) {
                    return;
                }
            }
            Ok(Some(Ok(None))) => {}
            Ok(Some(Err(e))) => eprintln!("watch: {e}"),
            Ok(None) | Err(_) => panic!("the ConfigMap never reached {want}"),
        }
    };
    let started = Instant::now();
    eprintln!("waiting for the first render");
    wait_for(&hash(&ns, &first, &policies)).await;
    let initial = started.elapsed();
    // Let the status writes of the first pass settle before measuring idle memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid);

    let mut times = Vec::with_capacity(EDITS);
    for edit in 1..=EDITS {
        let list = big_list(edit);
        let want = hash(&ns, &list, &policies);
        let t = Instant::now();
        lists
            .patch("big", &pp, &Patch::Apply(&list))
            .await
            .expect("edit");
        wait_for(&want).await;
        times.push(t.elapsed());
        if edit % 10 == 0 {
            eprintln!("{edit} edits, last {:?}", t.elapsed());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics");
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    drop(guard);

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "controller bench: {POLICIES} policies over one {ENTRIES}-entry AddressList, {EDITS} edits"
    );
    println!(
        "first render after start (list + sync + reconcile): {:.0} ms",
        ms(initial)
    );
    println!(
        "edit -> ConfigMap at new hash: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.9)),
        ms(percentile(&times, 0.99)),
        ms(times[times.len() - 1])
    );
    println!(
        "controller RSS: idle after first pass {} KiB, after {EDITS} edits {} KiB",
        idle, after
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("mailtls_api_writes_total")
            || l.starts_with("mailtls_reconciles_total")
            || l.starts_with("mailtls_reconcile_duration_seconds_sum")
            || l.starts_with("mailtls_reconcile_duration_seconds_count")
    }) {
        println!("{line}");
    }
}
