//! `mailtls standalone`: the reconcile loop with a directory in place of the API server.
//!
//! Layout of `--out`: `<namespace>/relay/` holds the rendered files (rewritten only when the
//! content hash changes) and `<namespace>/resources/<kind>-<name>.yaml` each resource with
//! its status. A previous status there is read back, so condition transition times survive
//! and only real changes rewrite a file; a changed spec counts as a new generation.
//! `<namespace>/last-valid.json` holds the last valid generation of each resource
//! ([`LastValid`]): a resource whose current file cannot be used keeps what that
//! generation contributed, across runs.

use super::load::load;
use super::output::{RenderFlags, write_files};
use super::render::warn_conflicts;
use super::tests_loop::{ProbeFlags, Running, due_plans, run_plans};
use super::{EXIT_INVALID, EXIT_USAGE};
use crate::api::RelayConfigRef;
use crate::policy::{Evaluation, Inputs, Kind, LastValid, ResourceId, evaluate_fail_closed};
use crate::probe::Prober;
use crate::render::{MANIFEST, RenderOptions, render};
use crate::status::{self, Reconciled};
use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  mailtls standalone --dir examples --out out\n  mailtls standalone --dir policies --out /var/lib/mailtls --watch"
)]
pub struct StandaloneArgs {
    /// Directory of policy YAML (read recursively).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Directory for the rendered relay files and the resources with status.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Keep running and reconcile again whenever a file under --dir changes (with --tests
    /// also every 30s, to start the TLS tests that fall due).
    #[arg(long)]
    watch: bool,
    /// Run the TLS tests: once for every resource due now, or with --watch on each
    /// resource's spec.test.interval and whenever its mailtls.io/test-now annotation changes.
    #[arg(long)]
    tests: bool,
    #[command(flatten)]
    probe: ProbeFlags,
    #[command(flatten)]
    flags: RenderFlags,
}

pub fn run(args: StandaloneArgs) -> ExitCode {
    let opts = match args.flags.options_or_exit() {
        Ok(o) => o,
        Err(code) => return code,
    };
    if let Err(e) = check_dirs(&args.dir, &args.out) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let prober = match args.tests.then(|| args.probe.prober()).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = if args.watch {
        runtime.block_on(watch(&args.dir, &args.out, &opts, prober))
    } else {
        runtime.block_on(once(&args.dir, &args.out, &opts, prober))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `--out` inside `--dir` would feed the output back in as input.
fn check_dirs(dir: &Path, out: &Path) -> Result<(), String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("--dir {}: {e}", dir.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("--out {}: {e}", out.display()))?;
    let out = out
        .canonicalize()
        .map_err(|e| format!("--out {}: {e}", out.display()))?;
    if out.starts_with(&dir) {
        return Err(format!(
            "--out {} is inside --dir {}: choose a directory outside it",
            out.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// One reconcile, then the tests due now (if on), waiting for them.
async fn once(
    dir: &Path,
    out: &Path,
    opts: &RenderOptions,
    prober: Option<Prober>,
) -> Result<(), String> {
    let namespaces = reconcile_dir(dir, out, opts)?;
    if let Some(prober) = prober {
        let running = Running::default();
        let plans = due_plans(&namespaces, &running);
        let n: usize = plans.iter().map(|(_, p)| p.items.len()).sum();
        eprintln!(
            "testing TLS of {n} destinations for {} resources",
            plans.len()
        );
        run_plans(prober, plans, out.to_path_buf(), Arc::default(), running).await;
    }
    Ok(())
}

/// Reconcile on every change under `dir` (a short quiet period turns an editor's several
/// writes into one pass) and, with tests on, every 30 seconds to start the tests that fall
/// due, in the background, so a slow test never delays a reconcile.
async fn watch(
    dir: &Path,
    out: &Path,
    opts: &RenderOptions,
    prober: Option<Prober>,
) -> Result<(), String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching for changes");
    let lock: Arc<Mutex<()>> = Arc::default();
    let running = Running::default();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        let namespaces = {
            let _guard = lock.lock();
            reconcile_dir(dir, out, opts)
        };
        match (namespaces, &prober) {
            (Ok(namespaces), Some(prober)) => {
                let plans = due_plans(&namespaces, &running);
                if !plans.is_empty() {
                    tokio::spawn(run_plans(
                        prober.clone(),
                        plans,
                        out.to_path_buf(),
                        lock.clone(),
                        running.clone(),
                    ));
                }
            }
            (Ok(_), None) => {}
            (Err(e), _) => tracing::error!("{e}"),
        }
        tokio::select! {
            event = rx.recv() => {
                match event {
                    None => return Ok(()),
                    Some(Err(e)) => tracing::warn!("watch error: {e}"),
                    Some(Ok(_)) => {}
                }
                while tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_ok_and(|e| e.is_some()) {}
            }
            _ = tick.tick(), if prober.is_some() => {}
        }
    }
}

/// One reconcile of every namespace found in `dir` (and of namespaces that were in `out`
/// before but have no resources now: their configuration is emptied).
pub fn reconcile_dir(dir: &Path, out: &Path, opts: &RenderOptions) -> Result<Vec<Inputs>, String> {
    let (loaded, errors) = load(&[dir.to_path_buf()], "default");
    if !errors.is_empty() {
        // A document that cannot be read would otherwise count as deleted, and deleting may
        // weaken what the relay enforces: a typo must not. So nothing changes until it reads.
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{}\n{} error(s) in {}: nothing was changed; the configuration and statuses written before stay in force",
            list.join("\n"),
            errors.len(),
            dir.display()
        ));
    }
    let mut namespaces: BTreeSet<String> = loaded.namespaces.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            if entry.path().join("relay").join(MANIFEST).exists() {
                namespaces.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut rows = Vec::new();
    let mut reconciled = Vec::new();
    // Namespaces left untouched because their snapshot cannot be read.
    let mut failed = Vec::new();
    for ns in namespaces {
        let mut inputs = loaded
            .namespaces
            .get(&ns)
            .cloned()
            .unwrap_or_else(|| Inputs {
                namespace: ns.clone(),
                ..Default::default()
            });
        let ns_out = out.join(&ns);
        read_previous_status(&ns_out, &mut inputs);
        let last = match read_last_valid(&ns_out) {
            Ok(last) => last,
            Err(e) => {
                failed.push(e);
                continue;
            }
        };
        let (evaluation, next) = evaluate_fail_closed(&inputs, &last);
        if next != last {
            write_last_valid(&ns_out, &next)?;
        }
        warn_conflicts(&loaded, &evaluation);
        let relay_dir = ns_out.join("relay");
        let config = render(&evaluation.policy, opts);
        let old_hash = std::fs::read_to_string(relay_dir.join(MANIFEST))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("hash").and_then(|h| h.as_str()).map(str::to_string));
        if old_hash.as_deref() != Some(config.hash.as_str()) {
            write_files(&relay_dir, config.files.clone(), Some(MANIFEST))?;
            tracing::info!(namespace = %ns, hash = %config.hash, "relay configuration written");
        }
        let relay = RelayConfigRef {
            name: relay_dir.display().to_string(),
            hash: config.hash.clone(),
            ..Default::default()
        };
        rows.extend(write_statuses(
            &ns_out.join("resources"),
            &inputs,
            &evaluation,
            &relay,
            &now,
        )?);
        reconciled.push(inputs);
    }
    print_summary(&rows);
    if failed.is_empty() {
        Ok(reconciled)
    } else {
        Err(failed.join("\n"))
    }
}

/// `kind-name.yaml` inside a namespace's resources directory.
pub(super) fn resource_file(dir: &Path, kind: Kind, name: &str) -> PathBuf {
    dir.join(format!("{}-{name}.yaml", kind.to_string().to_lowercase()))
}

/// File name of a namespace's snapshot of last valid generations.
pub const LAST_VALID_FILE: &str = "last-valid.json";

/// The snapshot of a namespace; none yet is an empty one. A file that cannot be read is an
/// error, never taken as empty: that would drop every generation it keeps in force.
fn read_last_valid(ns_out: &Path) -> Result<LastValid, String> {
    let path = ns_out.join(LAST_VALID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LastValid::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    LastValid::from_json(&text).map_err(|e| {
        format!(
            "{}: {e}; nothing was written for this namespace. Restore the file, or delete it \
             to start over (resources that are invalid now then enforce nothing)",
            path.display()
        )
    })
}

/// Replace the snapshot atomically, so a crash leaves the old one or the new one.
fn write_last_valid(ns_out: &Path, last: &LastValid) -> Result<(), String> {
    let path = ns_out.join(LAST_VALID_FILE);
    let text = last
        .to_json()
        .map_err(|e| format!("cannot serialise {}: {e}", path.display()))?;
    std::fs::create_dir_all(ns_out)
        .map_err(|e| format!("cannot create {}: {e}", ns_out.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// Bring back the status written last time, so transition times and test results persist,
/// and number generations as the API server would: a changed spec is the next one.
fn read_previous_status(ns_out: &Path, inputs: &mut Inputs) {
    fn previous<K: kube::Resource + DeserializeOwned>(dir: &Path, kind: Kind, r: &K) -> Option<K> {
        let text =
            std::fs::read_to_string(resource_file(dir, kind, &r.meta().name.clone()?)).ok()?;
        serde_norway::from_str(&text).ok()
    }
    macro_rules! each {
        ($items:expr, $kind:expr) => {
            for r in &mut $items {
                let prev = previous(&ns_out.join("resources"), $kind, r);
                if r.metadata.generation.is_none() {
                    r.metadata.generation = Some(prev.as_ref().map_or(1, |p| {
                        p.metadata.generation.unwrap_or(1) + i64::from(p.spec != r.spec)
                    }));
                }
                r.status = prev.and_then(|p| p.status);
            }
        };
    }
    each!(inputs.address_lists, Kind::AddressList);
    each!(inputs.policies, Kind::TlsCompliance);
    each!(inputs.gateways, Kind::OutboundGateway);
}

struct Row {
    namespace: String,
    id: ResourceId,
    ready: String,
    reason: String,
}

fn write_statuses(
    dir: &Path,
    inputs: &Inputs,
    evaluation: &Evaluation,
    relay: &RelayConfigRef,
    now: &Time,
) -> Result<Vec<Row>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut w = StatusWriter {
        dir,
        inputs,
        evaluation,
        relay,
        now,
        keep: BTreeSet::new(),
        rows: Vec::new(),
    };
    w.write(&inputs.address_lists)?;
    w.write(&inputs.policies)?;
    w.write(&inputs.gateways)?;
    // Resources deleted from --dir lose their status file too.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if !w.keep.contains(&entry.path())
                && entry.path().extension().is_some_and(|e| e == "yaml")
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(w.rows)
}

/// Writes the statuses of one namespace, remembering which files it wrote.
struct StatusWriter<'a> {
    dir: &'a Path,
    inputs: &'a Inputs,
    evaluation: &'a Evaluation,
    relay: &'a RelayConfigRef,
    now: &'a Time,
    keep: BTreeSet<PathBuf>,
    rows: Vec<Row>,
}

impl StatusWriter<'_> {
    /// Compute and write the status of every resource of one kind.
    fn write<K: Reconciled + Serialize>(&mut self, resources: &[K]) -> Result<(), String> {
        let empty = Default::default();
        for r in resources {
            let id = ResourceId::new(K::KIND, r.name_any());
            let findings = self.evaluation.findings.get(&id).unwrap_or(&empty);
            let updated = r.with_status(findings, Some(self.relay), self.now);
            write_resource(self.dir, &id, &updated, &mut self.keep)?;
            self.rows
                .push(row(&self.inputs.namespace, id, updated.conditions()));
        }
        Ok(())
    }
}

fn row(namespace: &str, id: ResourceId, conditions: &[crate::api::Condition]) -> Row {
    let ready = conditions.iter().find(|c| c.type_ == status::READY);
    Row {
        namespace: namespace.to_string(),
        id,
        ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
        reason: ready.map_or(String::new(), |c| {
            if c.status == "True" {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            }
        }),
    }
}

/// Write a resource with its status, unless the file already says the same (timestamps
/// aside).
pub(super) fn write_resource<K: Serialize + kube::Resource>(
    dir: &Path,
    id: &ResourceId,
    r: &K,
    keep: &mut BTreeSet<PathBuf>,
) -> Result<(), String> {
    let text = serde_norway::to_string(r).map_err(|e| format!("cannot serialise {id}: {e}"))?;
    let path = resource_file(dir, id.kind, &id.name);
    keep.insert(path.clone());
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old == text {
        return Ok(());
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

fn print_summary(rows: &[Row]) {
    println!(
        "{:<16} {:<32} {:<7} REASON",
        "NAMESPACE", "RESOURCE", "READY"
    );
    for r in rows {
        println!(
            "{:<16} {:<32} {:<7} {}",
            r.namespace,
            r.id.to_string(),
            r.ready,
            r.reason
        );
    }
}
