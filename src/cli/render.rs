use super::EXIT_INVALID;
use super::load::{LoadError, Loaded, Locator, load};
use super::output::{DirOutput, RenderFlags};
use crate::policy::{Evaluation, Inputs, evaluate, evaluate_dropping_entries};
use crate::render::{MANIFEST, render_to};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    after_help = "Every error is reported at once, with file, line, resource and field; on any \
error nothing is written and the exit code is 1.\n\nExample:\n  mailtls render examples/ --output out/relay"
)]
pub struct RenderArgs {
    /// YAML or JSON files, or directories of them (multi-document files and `kind: List` work).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Directory to write main.cf, master.cf, the map sources and manifest.json into.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
    /// Namespace to render; resources without one belong to it (default: `default`). Needed
    /// when the input spans several namespaces.
    #[arg(long, short, value_name = "NS")]
    namespace: Option<String>,
    #[command(flatten)]
    flags: RenderFlags,
}

pub fn run(args: RenderArgs) -> ExitCode {
    let opts = match args.flags.options_soon() {
        Ok(o) => o,
        Err(code) => return code,
    };
    let Ok(Evaluated {
        loaded,
        mut errors,
        inputs,
        evaluation,
    }) = load_and_evaluate(&args.paths, args.namespace.as_deref(), Entries::Drop)
    else {
        return ExitCode::from(EXIT_INVALID);
    };
    errors.extend(finding_errors(&loaded, &evaluation));
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s); nothing was written", errors.len());
        return ExitCode::from(EXIT_INVALID);
    }
    warn_conflicts(&loaded, &evaluation);
    if inputs.address_lists.is_empty() && inputs.policies.is_empty() && inputs.gateways.is_empty() {
        eprintln!(
            "warning: no mailtls resources in namespace {}; rendering an empty configuration",
            inputs.namespace
        );
    }
    // Written as rendered: the tables of a large namespace are never held whole.
    let written = DirOutput::new(&args.output, Some(MANIFEST)).and_then(|mut out| {
        let rendered =
            render_to(&evaluation.policy, &opts(), &mut out).map_err(|e| e.to_string())?;
        out.finish();
        Ok(rendered)
    });
    let rendered = match written {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    println!(
        "rendered namespace {} into {} ({})",
        inputs.namespace,
        args.output.display(),
        rendered.hash
    );
    println!(
        "tls_policy: {} entries, transport: {} entries, sender_access: {} entries, master.cf services: {}",
        rendered.tls_policy, rendered.transport, rendered.sender_access, rendered.services
    );
    // The process ends here: freeing a hundred thousand entries one by one would only delay
    // the exit (15 ms at 100k entries).
    std::mem::forget((inputs, evaluation, loaded));
    ExitCode::SUCCESS
}

/// Files read and one namespace evaluated.
pub(crate) struct Evaluated {
    pub loaded: Loaded,
    /// Problems reading the files (spec findings are in `evaluation`).
    pub errors: Vec<LoadError>,
    pub inputs: Inputs,
    pub evaluation: Evaluation,
}

/// Whether the caller still needs the lists' entries once the namespace is evaluated.
pub(crate) enum Entries {
    Keep,
    /// Freed before the merge (see [`evaluate_dropping_entries`]).
    Drop,
}

/// Read `paths` and evaluate the namespace asked for (or the only one); says on stderr why
/// not when the namespace is ambiguous.
pub(crate) fn load_and_evaluate(
    paths: &[PathBuf],
    namespace: Option<&str>,
    entries: Entries,
) -> Result<Evaluated, ()> {
    let (mut loaded, errors) = load(paths, namespace.unwrap_or("default"));
    let mut inputs = pick_namespace(&mut loaded, namespace).map_err(|e| eprintln!("error: {e}"))?;
    let evaluation = match entries {
        Entries::Keep => evaluate(&inputs),
        Entries::Drop => evaluate_dropping_entries(&mut inputs),
    };
    Ok(Evaluated {
        loaded,
        errors,
        inputs,
        evaluation,
    })
}

/// The namespace to work on: the one asked for, or the only one in the input, taken out of
/// `loaded` (a copy of a hundred thousand entries would cost time and memory).
fn pick_namespace(loaded: &mut Loaded, wanted: Option<&str>) -> Result<Inputs, String> {
    if let Some(ns) = wanted {
        return Ok(loaded.namespaces.remove(ns).unwrap_or_else(|| Inputs {
            namespace: ns.into(),
            ..Default::default()
        }));
    }
    match loaded.namespaces.len() {
        0 => Ok(Inputs {
            namespace: "default".into(),
            ..Default::default()
        }),
        1 => Ok(loaded
            .namespaces
            .pop_first()
            .map(|(_, inputs)| inputs)
            .unwrap_or_default()),
        _ => Err(format!(
            "the input has resources in namespaces {}; choose one with --namespace",
            loaded
                .namespaces
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Spec errors and invalid entries, tied back to the files they came from.
pub(crate) fn finding_errors(loaded: &Loaded, evaluation: &Evaluation) -> Vec<LoadError> {
    let ns = &evaluation.policy.namespace;
    let mut locator = Locator::new(loaded);
    let mut errors: Vec<LoadError> = evaluation
        .findings
        .problems()
        .map(|(id, p)| LoadError {
            source: locator.locate(ns, id, &p.field),
            resource: Some(id.to_string()),
            field: Some(p.field.clone()),
            message: p.message.clone(),
        })
        .collect();
    for (id, f) in &evaluation.findings.resources {
        if let Some(stats) = &f.list {
            let unlisted = stats
                .invalid_total
                .saturating_sub(stats.invalid.len() as u64);
            if unlisted > 0 {
                errors.push(LoadError {
                    source: loaded.source(ns, id).cloned(),
                    resource: Some(id.to_string()),
                    field: None,
                    message: format!("and {unlisted} more invalid entries"),
                });
            }
        }
    }
    errors
}

/// Conflicts are resolved (the oldest wins) but the admin should know.
pub(crate) fn warn_conflicts(loaded: &Loaded, evaluation: &Evaluation) {
    let mut seen = std::collections::BTreeSet::new();
    for f in evaluation.findings.resources.values() {
        for c in &f.conflicts {
            if seen.insert(c.clone()) {
                let involved: Vec<String> = c
                    .involved
                    .iter()
                    .map(|id| match loaded.source(&evaluation.policy.namespace, id) {
                        Some(s) => format!("{id} ({s})"),
                        None => id.to_string(),
                    })
                    .collect();
                eprintln!(
                    "warning: conflict over {}: {}; {} wins (oldest, then by name)",
                    c.subject,
                    involved.join(", "),
                    c.winner
                );
            }
        }
    }
}
