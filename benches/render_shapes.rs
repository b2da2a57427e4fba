//! `mailtls render` end to end (process start → files written) on the input shapes a user
//! may write, at 10k and 100k entries; beside it the controller's reconcile of the same
//! resources in-process (fail-closed evaluation, render, ConfigMap packing: everything a
//! reconcile computes before its API call; the API round trips are in `benches/controller.rs`).
//!
//! Run: `cargo bench --bench render_shapes` (`-- --runs N`, `-- --keep DIR` to keep the
//! generated input for profiling). The input is generated, never checked in: ten AddressLists
//! sharing the entries, ten policies over two lists each (half `Both`), one `Recipients`
//! gateway. Every shape of one size must render the same configuration hash; the bench
//! fails otherwise.

#[path = "support/inputs.rs"]
mod generated;
use generated::inputs;
use mailtls::policy::{Inputs, LastValid, evaluate_fail_closed};
use mailtls::render::pack::pack;
use mailtls::render::{RenderOptions, render};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every resource as a JSON value with apiVersion and kind.
fn documents(inputs: &Inputs) -> Vec<serde_json::Value> {
    fn doc<K: Serialize>(r: &K) -> serde_json::Value {
        let mut v = serde_json::to_value(r).expect("serialize");
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        v
    }
    let mut docs: Vec<_> = inputs.address_lists.iter().map(doc).collect();
    docs.extend(inputs.policies.iter().map(doc));
    docs.extend(inputs.gateways.iter().map(doc));
    docs
}

fn yaml(doc: &serde_json::Value) -> String {
    serde_norway::to_string(doc).expect("yaml")
}

/// The shapes: name, whether lists use `bulk`, and how to write the documents into `dir`.
type Writer = fn(&[serde_json::Value], &Path);
const SHAPES: &[(&str, bool, Writer)] = &[
    ("one file, block YAML, entries", false, one_block),
    ("one file, block YAML, bulk", true, one_block),
    ("one file, JSON-style YAML", false, one_flow),
    ("one file, JSON (kind: List)", false, one_json),
    ("21 files, block YAML, entries", false, files_block),
    ("21 files, JSON", false, files_json),
];

fn one_block(docs: &[serde_json::Value], dir: &Path) {
    let text: Vec<String> = docs.iter().map(yaml).collect();
    std::fs::write(dir.join("all.yaml"), text.join("---\n")).expect("write");
}

/// One document per line, as `json.dumps` or `jq -c` writes them.
fn one_flow(docs: &[serde_json::Value], dir: &Path) {
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(dir.join("all.yaml"), text.join("\n---\n") + "\n").expect("write");
}

/// As `kubectl get -o json` writes a list.
fn one_json(docs: &[serde_json::Value], dir: &Path) {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let text = serde_json::to_string_pretty(&list).expect("json");
    std::fs::write(dir.join("all.json"), text).expect("write");
}

fn files_block(docs: &[serde_json::Value], dir: &Path) {
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:02}.yaml")), yaml(d)).expect("write");
    }
}

fn files_json(docs: &[serde_json::Value], dir: &Path) {
    for (i, d) in docs.iter().enumerate() {
        let text = serde_json::to_string_pretty(d).expect("json");
        std::fs::write(dir.join(format!("{i:02}.json")), text).expect("write");
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

/// One run of `mailtls render`: wall time, peak RSS (KiB) and the configuration hash.
fn run_render(input: &Path, out: &Path) -> (Duration, u64, String) {
    let _ = std::fs::remove_dir_all(out);
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("render")
        .arg(input)
        .arg("--output")
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mailtls");
    let pid = child.id();
    // Read the output first so a full pipe cannot stall the child.
    let output = child.wait_with_output_rusage();
    let elapsed = start.elapsed();
    let (output, max_rss) = output;
    assert!(
        output.status.success(),
        "render of {} failed (pid {pid}): {}",
        input.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let hash = stdout
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_default()
        .to_string();
    (elapsed, max_rss, hash)
}

trait WaitRusage {
    fn wait_with_output_rusage(self) -> (std::process::Output, u64);
}

impl WaitRusage for std::process::Child {
    /// Like `wait_with_output`, and the child's own peak RSS (KiB) from wait4.
    fn wait_with_output_rusage(mut self) -> (std::process::Output, u64) {
        use std::io::Read;
        use std::os::unix::process::ExitStatusExt;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let err_pipe = self.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = err_pipe {
                let _ = e.read_to_end(&mut buf);
            }
            buf
        });
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        stderr.extend(err_reader.join().unwrap_or_default());
        let mut status = 0;
        // SAFETY: plain wait4 on our own child with valid out-pointers; `self` is not
        // waited on afterwards.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(self.id() as i32, &mut status, 0, &mut usage) };
        assert!(pid > 0, "wait4 failed");
        (
            std::process::Output {
                status: std::process::ExitStatus::from_raw(status),
                stdout,
                stderr,
            },
            usage.ru_maxrss as u64,
        )
    }
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// The controller's reconcile of the same resources, in-process: ms per run.
fn reconcile_ms(inputs: &Inputs, runs: usize) -> Spread {
    let opts = RenderOptions::default();
    let last = LastValid::default();
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let (evaluation, next) = evaluate_fail_closed(inputs, &last);
            let config = render(&evaluation.policy, &opts);
            let packed = pack(&config.files);
            std::hint::black_box((next, packed));
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    spread(times)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` probes bench binaries; nothing to test here.
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let runs: usize = flag("--runs").and_then(|r| r.parse().ok()).unwrap_or(7);
    let keep = flag("--keep").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());

    // The fixed base: the same command on one small resource.
    let base_dir = root.join("base");
    std::fs::create_dir_all(&base_dir).expect("mkdir");
    one_block(&documents(&inputs(10, false))[..1], &base_dir);
    let base_rss = (0..3)
        .map(|_| run_render(&base_dir, &root.join("out")).1)
        .max()
        .unwrap_or(0);
    println!("base: render of one small resource peaks at {base_rss} KiB RSS");
    println!(
        "shape\tentries\tinput_kib\tmedian_ms\tmin_ms\tmax_ms\tpeak_rss_kib\t(rss-base)/input"
    );
    let mut medians: Vec<(&str, usize, f64)> = Vec::new();
    for total in [10_000usize, 100_000] {
        let mut hash = None;
        for (name, bulk, write) in SHAPES {
            let dir = root.join(format!(
                "{total}-{}",
                name.replace([',', ' ', ':', '(', ')'], "")
            ));
            std::fs::create_dir_all(&dir).expect("mkdir");
            write(&documents(&inputs(total, *bulk)), &dir);
            let size = dir_size(&dir);
            let out = root.join("out");
            let (_, _, h) = run_render(&dir, &out); // warm the page cache
            match &hash {
                None => hash = Some(h),
                Some(first) => assert_eq!(first, &h, "{name}: another configuration"),
            }
            let (mut times, mut rss) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let (t, r, _) = run_render(&dir, &out);
                times.push(t.as_secs_f64() * 1000.0);
                rss.push(r as f64);
            }
            let t = spread(times);
            let peak = spread(rss).max;
            println!(
                "{name}\t{total}\t{}\t{:.0}\t{:.0}\t{:.0}\t{peak:.0}\t{:.2}",
                size / 1024,
                t.median,
                t.min,
                t.max,
                (peak - base_rss as f64) * 1024.0 / size as f64
            );
            medians.push((name, total, t.median));
        }
        let r = reconcile_ms(&inputs(total, false), runs);
        println!(
            "controller reconcile (in-process)\t{total}\t-\t{:.0}\t{:.0}\t{:.0}\t-\t-",
            r.median, r.min, r.max
        );
    }
    for (name, _, _) in SHAPES {
        let at = |n: usize| {
            medians
                .iter()
                .find(|(s, t, _)| s == name && *t == n)
                .map_or(f64::NAN, |m| m.2)
        };
        println!("{name}: 100k/10k = {:.1}", at(100_000) / at(10_000));
    }
}
