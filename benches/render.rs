//! Render benchmark: address lists totalling 10k and 100k entries through the whole pure
//! core (normalise, merge, route, render). Run: `cargo bench --bench render`.
//! Each size runs in its own child process so its peak RSS (VmHWM) is its own.

#[path = "support/inputs.rs"]
mod generated;
mod support;
use mailtls::policy::evaluate;
use mailtls::render::{RenderOptions, render};
use std::time::{Duration, Instant};
use support::vm_hwm_kib;

fn child(total: usize) {
    let baseline = vm_hwm_kib();
    let inputs = generated::inputs(total, false);
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
