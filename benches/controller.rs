//! Controller benchmark against a real API server.
//!
//! * Edit latency: time from applying an AddressList edit to the ConfigMap holding the new
//!   hash, 100 edits per case, in a namespace with 10 policies over one 10k-entry list. The
//!   list is written as `entries` (10k array items) or as `bulk` (one string), and edits
//!   come back to back (the next as soon as the ConfigMap moved, while the statuses of the
//!   last one are still being written) or paced (0.5 s after the previous one landed).
//!   The list apply alone, before the controller runs, is measured too: it is the floor.
//! * API writes per edit, from the controller's `/metrics`.
//! * Controller RSS: idle, after the edits, and with 1,000 more policies (100 namespaces of
//!   10 policies and a 100-entry list each), with the time until all 100 are rendered.
//!
//! Run: `scripts/test-cluster.sh -- cargo bench --bench controller`. The controller is the
//! real `mailtls run --no-tests` binary in a child process (so its RSS is its own), watching
//! all namespaces of the private API server. `MAILTLS_BENCH_LOG=mailtls=debug` shows its logs
//! (each reconcile's phases), `MAILTLS_BENCH_TRACE=1` every edit's times.

#[path = "../tests/common/cluster.rs"]
mod cluster;

use cluster::{MANAGER, client, install_crds};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use mailtls::api::{AddressList, AddressListSpec, OnFailure, TlsCompliance, TlsVersion};
use mailtls::controller::HASH_ANNOTATION;
use mailtls::policy::{Inputs, evaluate};
use mailtls::render::{PostfixVersion, RenderOptions, render};
use std::time::{Duration, Instant};

const ENTRIES: usize = 10_000;
const POLICIES: usize = 10;
const EDITS: usize = 100;
const BASELINE_EDITS: usize = 30;
const PACE: Duration = Duration::from_millis(500);
const SCALE_NAMESPACES: usize = 100;
const SCALE_ENTRIES: usize = 100;

#[derive(Clone, Copy)]
enum Form {
    Entries,
    Bulk,
}

fn entries(n: usize, edit: usize) -> Vec<String> {
    let mut entries: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!("user{i}@dom{}.example", i % 1000),
            1 => format!("dom{i}.example"),
            _ => format!(".sub{i}.example"),
        })
        .collect();
    entries[0] = format!("edit{edit}.example");
    entries
}

fn list(name: &str, n: usize, edit: usize, form: Form) -> AddressList {
    let entries = entries(n, edit);
    let spec = match form {
        Form::Entries => AddressListSpec {
            entries: entries.into(),
            bulk: None,
        },
        Form::Bulk => AddressListSpec {
            entries: Default::default(),
            bulk: Some(entries.join("\n")),
        },
    };
    AddressList::new(name, spec)
}

fn policy(p: usize, list: &str) -> TlsCompliance {
    let mut policy = TlsCompliance::outbound_verified(&format!("policy-{p}"), &[list]);
    // Outbound only: with `Both` the 10k entries also fill sender_access (still fits,
    // compressed; see BENCHMARKS.md).
    let spec = &mut policy.spec;
    spec.require_ca_signed = p.is_multiple_of(2);
    spec.validate_hostname = p.is_multiple_of(4);
    spec.min_tls_version = [TlsVersion::V1_2, TlsVersion::V1_3][p % 2];
    spec.on_failure = [OnFailure::Bounce, OnFailure::Defer][p % 3 % 2];
    policy
}

fn hash(ns: &str, list: &AddressList, policies: &[TlsCompliance]) -> String {
    let inputs = Inputs {
        namespace: ns.into(),
        address_lists: vec![list.clone()],
        policies: policies.to_vec(),
        gateways: vec![],
    };
    let options = RenderOptions {
        postfix_version: PostfixVersion::LATEST,
        ..Default::default()
    };
    render(&evaluate(&inputs).policy, &options).hash
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.9)),
        ms(percentile(times, 0.99)),
        ms(times[times.len() - 1])
    )
}

/// Sum of a counter family in the controller's `/metrics`.
fn metric(port: u16, family: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with(family))
        .filter(|l| l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn create_namespace(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the namespace");
}

async fn apply<K>(client: &Client, ns: &str, object: &K) -> Duration
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .expect("apply");
    t.elapsed()
}

/// Follows one ConfigMap and waits for hashes on it.
struct Follow {
    stream: futures::stream::BoxStream<'static, Result<Option<ConfigMap>, watcher::Error>>,
}

impl Follow {
    fn new(client: &Client, ns: &str) -> Self {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        Follow {
            stream: watcher::watch_object(cms, "mailtls-relay").boxed(),
        }
    }

    async fn until(&mut self, want: &str) {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), self.stream.next()).await;
            match next {
                Ok(Some(Ok(Some(cm)))) => {
                    if cm.annotations().get(HASH_ANNOTATION).map(String::as_str) == Some(want) {
                        return;
                    }
                }
                Ok(Some(Ok(None))) => {}
                Ok(Some(Err(e))) => eprintln!("watch: {e}"),
                Ok(None) | Err(_) => panic!("the ConfigMap never reached {want}"),
            }
        }
    }
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
    let trace = std::env::var_os("MAILTLS_BENCH_TRACE").is_some();
    let client = client().await;
    install_crds(&client).await;
    let ns = format!("mailtls-bench-{}", std::process::id());
    create_namespace(&client, &ns).await;
    let policies: Vec<TlsCompliance> = (0..POLICIES).map(|p| policy(p, "big")).collect();
    for p in &policies {
        apply(&client, &ns, p).await;
    }

    // The API server alone, before the controller starts: the floor under every edit below.
    let mut baseline = Vec::new();
    for form in [Form::Entries, Form::Bulk] {
        let mut times: Vec<Duration> = Vec::with_capacity(BASELINE_EDITS);
        for edit in 0..BASELINE_EDITS {
            times.push(apply(&client, &ns, &list("big", ENTRIES, 1_000_000 + edit, form)).await);
        }
        baseline.push(summary(&mut times));
    }
    let first = list("big", ENTRIES, 0, Form::Entries);
    apply(&client, &ns, &first).await;

    let kubeconfig = std::env::var_os("MAILTLS_TEST_KUBECONFIG").unwrap_or_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        // No TLS tests: they would resolve the bench's `.example` names through the
        // machine's resolver, and this measures reconciliation.
        .args(["run", "--no-tests", "--postfix-version", "3.10"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("MAILTLS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
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

    let mut follow = Follow::new(&client, &ns);
    let started = Instant::now();
    eprintln!("waiting for the first render");
    follow.until(&hash(&ns, &first, &policies)).await;
    let initial = started.elapsed();
    // Let the status writes of the first pass settle before measuring idle memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid);

    let mut results = Vec::new();
    let mut edit = 0;
    for (form, pace) in [
        (Form::Entries, None),
        (Form::Entries, Some(PACE)),
        (Form::Bulk, None),
        (Form::Bulk, Some(PACE)),
    ] {
        let writes_before = metric(port, "mailtls_api_writes_total");
        let mut times = Vec::with_capacity(EDITS);
        for _ in 0..EDITS {
            edit += 1;
            let next = list("big", ENTRIES, edit, form);
            let want = hash(&ns, &next, &policies);
            let t = Instant::now();
            let patched = apply(&client, &ns, &next).await;
            follow.until(&want).await;
            times.push(t.elapsed());
            if trace {
                eprintln!(
                    "edit {edit}: apply {patched:?}, ConfigMap {:?}",
                    t.elapsed()
                );
            }
            if let Some(pace) = pace {
                tokio::time::sleep(pace).await;
            }
        }
        // The last edit's statuses land after its ConfigMap: let them, then count writes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes = metric(port, "mailtls_api_writes_total") - writes_before;
        let label = format!(
            "{}, {}",
            match form {
                Form::Entries => "entries",
                Form::Bulk => "bulk",
            },
            match pace {
                None => "back to back".to_string(),
                Some(p) => format!("{} ms apart", p.as_millis()),
            }
        );
        eprintln!("{label}: done");
        results.push((label, summary(&mut times), writes / EDITS as f64));
    }
    let after_edits = rss_kib(pid);

    // 1,000 more policies: 100 namespaces of 10 policies over a 100-entry list each.
    let t = Instant::now();
    let mut follows = Vec::new();
    for n in 0..SCALE_NAMESPACES {
        let scale_ns = format!("{ns}-scale-{n}");
        create_namespace(&client, &scale_ns).await;
        let small = list("small", SCALE_ENTRIES, n, Form::Entries);
        apply(&client, &scale_ns, &small).await;
        let ps: Vec<TlsCompliance> = (0..POLICIES).map(|p| policy(p, "small")).collect();
        for p in &ps {
            apply(&client, &scale_ns, p).await;
        }
        follows.push((
            Follow::new(&client, &scale_ns),
            hash(&scale_ns, &small, &ps),
        ));
    }
    let created = t.elapsed();
    for (follow, want) in &mut follows {
        follow.until(want).await;
    }
    let rendered = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scaled = rss_kib(pid);
    let reconciles = metric(port, "mailtls_reconciles_total");
    let seconds = metric(port, "mailtls_reconcile_duration_seconds_sum");
    drop(guard);

    println!(
        "controller bench: {POLICIES} policies over one {ENTRIES}-entry AddressList, {EDITS} edits per case"
    );
    println!("list apply alone (no controller running, {BASELINE_EDITS} applies):");
    println!("  entries: {}", baseline[0]);
    println!("  bulk:    {}", baseline[1]);
    println!(
        "first render after start (list + sync + reconcile): {:.0} ms",
        ms(initial)
    );
    println!("edit -> ConfigMap at the new hash:");
    for (label, times, writes) in &results {
        println!("  {label}: {times}; {writes:.1} API writes per edit");
    }
    println!(
        "{} policies in {SCALE_NAMESPACES} more namespaces: created in {:.1} s, all rendered {:.1} s after the first create",
        SCALE_NAMESPACES * POLICIES,
        created.as_secs_f64(),
        rendered.as_secs_f64()
    );
    println!(
        "controller RSS: idle after first pass {idle} KiB, after the edits {after_edits} KiB, with {} more policies {scaled} KiB",
        SCALE_NAMESPACES * POLICIES
    );
    println!(
        "reconciles: {reconciles:.0}, {:.1} ms mean",
        seconds * 1000.0 / reconciles.max(1.0)
    );
}
