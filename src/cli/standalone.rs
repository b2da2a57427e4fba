//! `mailtls standalone`: the engine over a directory ([`Directory`]) in place of the API
//! server. A previous status there is read back, so condition transition times survive and
//! only real changes rewrite a file; a changed spec counts as a new generation. A resource
//! whose current file cannot be used keeps what its last valid generation contributed,
//! across runs.

use super::directory::Directory;
use super::load::load;
use super::output::RenderFlags;
use super::probe_flags::ProbeFlags;
use super::render::warn_conflicts;
use super::{EXIT_INVALID, EXIT_USAGE};
use crate::engine::conditions::{ConditionType, Status, find};
use crate::engine::kind::namespace_plans;
use crate::engine::schedule::{RESOURCES_AT_ONCE, run_due_once, start_due};
use crate::engine::{self, Scheduler};
use crate::policy::{Inputs, ResourceId};
use crate::probe::Prober;
use crate::render::RenderOptions;
use clap::Args;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
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
    /// The mail log of the relay these policies drive (Postfix's maillog_file, or syslog's
    /// mail log; repeat for rotated files, oldest first): what it did with real mail in the
    /// last 24 hours goes into each policy's and gateway's status.observed, as relay pods
    /// report it in a cluster. Read again on every pass.
    #[arg(long, value_name = "FILE")]
    mail_log: Vec<PathBuf>,
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
    let backend = Arc::new(Directory::new(&args.out, args.mail_log));
    let result = if args.watch {
        runtime.block_on(watch(&args.dir, backend, &opts, prober))
    } else {
        runtime.block_on(once(&args.dir, backend, &opts, prober))
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
    backend: Arc<Directory>,
    opts: &RenderOptions,
    prober: Option<Prober>,
) -> Result<(), String> {
    let reconciled = reconcile_dir(&backend, dir, opts).await;
    if let Some(prober) = prober {
        let scheduler = Arc::new(Scheduler::new(RESOURCES_AT_ONCE));
        let namespaces = &reconciled.namespaces;
        let now = scheduler.now();
        let plans: Vec<_> = namespaces
            .iter()
            .flat_map(|inputs| namespace_plans(inputs, now))
            .collect();
        let n: usize = plans.iter().map(|p| p.destinations.len()).sum();
        eprintln!(
            "testing TLS of {n} destinations for {} resources",
            plans.len()
        );
        run_due_once(&backend, &prober, &scheduler, namespaces).await;
    }
    reconciled.result()
}

/// Reconcile on every change under `dir` (a short quiet period turns an editor's several
/// writes into one pass) and, with tests on, every 30 seconds to start the tests that fall
/// due, in the background, so a slow test never delays a reconcile.
async fn watch(
    dir: &Path,
    backend: Arc<Directory>,
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
    let scheduler = Arc::new(Scheduler::new(RESOURCES_AT_ONCE));
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        let reconciled = reconcile_dir(&backend, dir, opts).await;
        if let Err(e) = reconciled.result() {
            tracing::error!("{e}");
        }
        if let Some(prober) = &prober {
            let namespaces = reconciled.namespaces;
            start_due(&backend, prober, &scheduler, namespaces, &BTreeSet::new());
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

/// What one pass over `--dir` did.
pub struct Reconciled {
    /// The namespaces reconciled, with their statuses as before the pass.
    pub namespaces: Vec<Inputs>,
    /// What went wrong, per namespace or for the whole pass.
    pub errors: Vec<String>,
}

impl Reconciled {
    pub fn result(&self) -> Result<(), String> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors.join("\n"))
        }
    }
}

/// One reconcile of every namespace found in `dir` (and of namespaces that were in `out`
/// before but have no resources now: their configuration is emptied). A namespace that
/// fails is reported; the others are still reconciled.
pub async fn reconcile_dir(backend: &Directory, dir: &Path, opts: &RenderOptions) -> Reconciled {
    let (loaded, errors) = load(&[dir.to_path_buf()], "default");
    if !errors.is_empty() {
        // A document that cannot be read would otherwise count as deleted, and deleting may
        // weaken what the relay enforces: a typo must not. So nothing changes until it reads.
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Reconciled {
            namespaces: Vec::new(),
            errors: vec![format!(
                "{}\n{} error(s) in {}: nothing was changed; the configuration and statuses written before stay in force",
                list.join("\n"),
                errors.len(),
                dir.display()
            )],
        };
    }
    let mut namespaces: BTreeSet<String> = loaded.namespaces.keys().cloned().collect();
    namespaces.extend(backend.known_namespaces());
    let _guard = backend.lock.lock().await;
    let mut rows = Vec::new();
    let mut done = Reconciled {
        namespaces: Vec::new(),
        errors: Vec::new(),
    };
    if let Err(e) = backend.read_mail_logs() {
        done.errors
            .push(format!("{e}: status.observed is left out"));
    }
    for ns in namespaces {
        let mut inputs = loaded
            .namespaces
            .get(&ns)
            .cloned()
            .unwrap_or_else(|| Inputs {
                namespace: ns.clone(),
                ..Default::default()
            });
        backend.read_previous(&mut inputs);
        match engine::reconcile(backend, &inputs, opts).await {
            Ok(outcome) => {
                warn_conflicts(&loaded, &outcome.evaluation);
                backend.remove_deleted(&inputs);
                let u = &outcome.updated;
                rows.extend(u.address_lists.iter().map(|r| row(&ns, r)));
                rows.extend(u.policies.iter().map(|r| row(&ns, r)));
                rows.extend(u.gateways.iter().map(|r| row(&ns, r)));
                if let Some(e) = outcome.error {
                    done.errors.push(format!("namespace {ns}: {e}"));
                }
                done.namespaces.push(inputs);
            }
            Err(e) => done.errors.push(format!("namespace {ns}: {e}")),
        }
    }
    print_summary(&rows);
    done
}

struct Row {
    namespace: String,
    id: ResourceId,
    ready: String,
    reason: String,
}

fn row<K: engine::Managed>(namespace: &str, r: &K) -> Row {
    let ready = find(r.conditions(), ConditionType::Ready);
    Row {
        namespace: namespace.to_string(),
        id: ResourceId::new(K::KIND, r.name_any()),
        ready: ready.map_or(Status::Unknown.as_str().into(), |c| c.status.clone()),
        reason: ready.map_or(String::new(), |c| {
            if c.status == Status::True.as_str() {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            }
        }),
    }
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
