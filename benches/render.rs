//! Render benchmark: address lists totalling 10k and 100k entries through the whole pure
//! core (normalise, merge, route, render). Run: `cargo bench --bench render`.
//! Each size runs in its own child process so its peak RSS (VmHWM) is its own.

mod support;
use mailtls::api::{
    AddressList, AddressListSpec, Direction, Enforcement, LocalRef, OnFailure, OutboundGateway,
    OutboundGatewaySpec, TestSpec, TlsCompliance, TlsComplianceSpec, TlsVersion,
};
use mailtls::policy::{Inputs, evaluate};
use mailtls::render::{RenderOptions, render};
use std::time::{Duration, Instant};
use support::vm_hwm_kib;

fn inputs(total: usize) -> Inputs {
    let lists = 10;
    let per = total / lists;
    let mut address_lists = Vec::new();
    for l in 0..lists {
        let entries = (0..per)
            .map(|i| match i % 3 {
                0 => format!("user{i}@dom{}.example", i % 5000),
                1 => format!("dom{i}-{l}.example"),
                _ => format!(".sub{i}-{l}.example"),
            })
            .collect();
        address_lists.push(AddressList::new(
            &format!("list-{l}"),
            AddressListSpec {
                entries,
                bulk: None,
            },
        ));
    }
    let policies = (0..lists)
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
                            name: format!("list-{}", (p + 1) % lists),
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
        "host": "archive.example.net", "port": 2525, "appliesTo": "Recipients", "addressLists": [{"name": "list-3"}]
    }))
    .expect("gateway spec");
    route.tls.require = true;
    let gateways = vec![OutboundGateway::new("route", route)];
    Inputs {
        namespace: "bench".into(),
        address_lists,
        policies,
        gateways,
    }
}

fn child(total: usize) {
    let baseline = vm_hwm_kib();
    let inputs = inputs(total);
    let opts = RenderOptions::default();
    let mut times: Vec<Duration> = Vec::new();
    let mut bytes = 0;
    let mut phases = Vec::new();
    let runs = if total > 50_000 { 7 } else { 25 };
    for _ in 0..runs {
        let start = Instant::now();
        let e = evaluate(&inputs);
        let evaluated = start.elapsed();
        let config = render(&e.policy, &opts);
        times.push(start.elapsed());
        phases.push((evaluated, start.elapsed() - evaluated));
        drop(e);
        bytes = config.files.values().map(String::len).sum::<usize>();
        std::hint::black_box(config);
    }
    times.sort();
    if std::env::var_os("MAILTLS_BENCH_PHASES").is_some() {
        eprintln!(
            "{total}: evaluate/render ms {:?}",
            phases
                .iter()
                .map(|(a, b)| (a.as_millis(), b.as_millis()))
                .collect::<Vec<_>>()
        );
    }
    let median = times[times.len() / 2];
    println!(
        "{total}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}",
        median.as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0,
        bytes,
        vm_hwm_kib().saturating_sub(baseline)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let total = args
            .get(pos + 1)
            .and_then(|s| s.parse().ok())
            .expect("--child N");
        child(total);
        return;
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` probes bench binaries; nothing to test here.
    }
    println!("entries\tmedian_ms\tmin_ms\tmax_ms\toutput_bytes\tpeak_rss_growth_kib");
    let exe = std::env::current_exe().expect("own path");
    let mut medians = Vec::new();
    for total in [10_000usize, 100_000] {
        let out = std::process::Command::new(&exe)
            .args(["--child", &total.to_string()])
            .output()
            .expect("child");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("{line}");
        medians.push(
            line.split('\t')
                .nth(1)
                .and_then(|m| m.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
    }
    println!("scaling 100k/10k: {:.2}x", medians[1] / medians[0]);
}
