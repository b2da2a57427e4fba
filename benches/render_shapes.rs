//! `mailtls render` end to end (process start → files written) on the input shapes a user
//! may write, at 10k and 100k entries; beside it the controller's reconcile of the same
//! resources in-process (fail-closed evaluation, render, ConfigMap packing: everything a
//! reconcile computes before its API call; the API round trips are in `benches/controller.rs`).
//!
//! Run: `cargo bench --bench render_shapes` (`-- --runs N`, `-- --keep DIR` to keep the
//! generated input for profiling). The input is generated, never checked in: ten AddressLists
//! sharing the entries, ten policies over two lists each (half `Both`), one `Recipients`
//! gateway. Every shape of one size must render the same configuration hash; the bench
//! fails otherwise. The last shape puts every entry in one list, under the same policies.

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
/// Every shape but the last writes the same configuration.
type Writer = fn(&[serde_json::Value], &Path);
const SHAPES: &[(&str, bool, Writer)] = &[
    ("one file, block YAML, entries", false, one_block),
    ("one file, block YAML, bulk", true, one_block),
    ("one file, JSON-style YAML", false, one_flow),
    ("one file, JSON (kind: List)", false, one_json),
    ("21 files, block YAML, entries", false, files_block),
    ("21 files, JSON", false, files_json),
    (ONE_LIST, false, one_list_block),
];
const ONE_LIST: &str = "one file, one list, block YAML";

/// Every entry in one AddressList, one block-YAML document: the YAML parser holds all the
/// events of a document at once, so this is where it would cost most. The policies and
/// the gateway all name that list: a configuration of its own.
fn one_list_block(docs: &[serde_json::Value], dir: &Path) {
    let mut entries = Vec::new();
    let mut list = None;
    let mut others = Vec::new();
    for d in docs {
        if d["kind"] == "AddressList" {
            entries.extend(d["spec"]["entries"].as_array().cloned().unwrap_or_default());
            list.get_or_insert_with(|| d.clone());
        } else {
            let mut d = d.clone();
            d["spec"]["addressLists"] = serde_json::json!([{"name": "list-0"}]);
            others.push(d);
        }
    }
    let mut list = list.expect("an AddressList");
    list["spec"]["entries"] = entries.into();
    let all: Vec<_> = std::iter::once(list).chain(others).collect();
    one_block(&all, dir);
}

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

const SIZES: [usize; 2] = [10_000, 100_000];

fn shape_dir(root: &Path, total: usize, name: &str) -> PathBuf {
    root.join(format!(
        "{total}-{}",
        name.replace([',', ' ', ':', '(', ')'], "")
    ))
}

/// Write every shape of one size under `root` (run as a child of the bench, see `main`).
fn write_shapes(root: &Path, total: usize) {
    for (name, bulk, write) in SHAPES {
        let dir = shape_dir(root, total, name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write(&documents(&inputs(total, *bulk)), &dir);
    }
}

/// This process's own peak RSS (KiB).
fn own_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
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
    // A child started from this process inherits its peak RSS into what wait4 reports (it
    // starts as a view of this process's memory), so this process never holds an input:
    // a child of its own writes them.
    if let (Some(root), Some(total)) = (flag("--write"), flag("--total")) {
        write_shapes(Path::new(&root), total.parse().expect("--total"));
        return;
    }
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
        "shape\tentries\tinput_kib\tmedian_ms\tmin_ms\tmax_ms\tpeak_rss_kib\t(rss-base)/input\tgrowth"
    );
    println!("(growth: the peak's growth from 10k to 100k over the input's, both in bytes)");
    let mut medians: Vec<(&str, usize, f64)> = Vec::new();
    // Per shape at the smaller size: peak RSS (KiB) and input size (bytes).
    let mut smaller: Vec<(&str, f64, u64)> = Vec::new();
    for total in SIZES {
        let written = Command::new(std::env::current_exe().expect("own path"))
            .arg("--write")
            .arg(&root)
            .arg("--total")
            .arg(total.to_string())
            .status()
            .expect("write the inputs");
        assert!(written.success(), "writing the inputs failed");
        let mut hash = None;
        for (name, _, _) in SHAPES {
            let dir = shape_dir(&root, total, name);
            let size = dir_size(&dir);
            let out = root.join("out");
            let (_, _, h) = run_render(&dir, &out); // warm the page cache
            match &hash {
                _ if *name == ONE_LIST => {}
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
            let growth = match smaller.iter().find(|(s, _, _)| s == name) {
                Some((_, peak0, size0)) => {
                    format!("{:.2}", (peak - peak0) * 1024.0 / (size - size0) as f64)
                }
                None => {
                    smaller.push((name, peak, size));
                    "-".into()
                }
            };
            println!(
                "{name}\t{total}\t{}\t{:.0}\t{:.0}\t{:.0}\t{peak:.0}\t{:.2}\t{growth}",
                size / 1024,
                t.median,
                t.min,
                t.max,
                (peak - base_rss as f64) * 1024.0 / size as f64
            );
            medians.push((name, total, t.median));
        }
    }
    let own = own_peak_kib();
    assert!(
        own < base_rss,
        "the bench itself peaked at {own} KiB, above the base: every RSS above would include it"
    );
    println!("(the bench process itself peaked at {own} KiB, under every RSS above)");
    // In this process, so only after every render is measured.
    for total in SIZES {
        let r = reconcile_ms(&inputs(total, false), runs);
        println!(
            "controller reconcile (in-process)\t{total}\t-\t{:.0}\t{:.0}\t{:.0}\t-\t-\t-",
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
