use super::output::RenderFlags;
use super::render::{Entries, Evaluated, finding_errors, load_and_evaluate};
use super::{EXIT_INVALID, EXIT_USAGE};
use crate::api::{AppliesTo, OnFailure};
use crate::engine::plan::routed_test;
use crate::policy::{
    Delivery, EffectivePolicy, Entry, Kind, Mechanisms, Requirement, ResourceId, Route,
    list_entries, parse_entry,
};
use crate::render::render;
use clap::Args;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  mailtls explain examples/ bob@partner.example\n  mailtls explain examples/ alice@bank.example --inbound\n  mailtls explain --cluster -n mail bob@partner.example   (the live resources, through the kubeconfig)"
)]
pub struct ExplainArgs {
    /// Files or directories of policy YAML, then the address (or domain) to explain; with
    /// --cluster the address alone.
    #[arg(required = true, num_args = 1.., value_names = ["PATH", "ADDRESS"])]
    args: Vec<String>,
    /// Read the resources from the cluster (kubeconfig or in-cluster credentials; the
    /// namespace from --namespace or the kubeconfig's context) instead of files.
    #[arg(long)]
    cluster: bool,
    /// Explain mail *from* this sender (inbound) instead of mail to this recipient.
    #[arg(long)]
    inbound: bool,
    /// Namespace to look in (needed when the input spans several).
    #[arg(long, short, value_name = "NS")]
    namespace: Option<String>,
    #[command(flatten)]
    flags: RenderFlags,
}

pub fn run(args: ExplainArgs) -> ExitCode {
    let Some((address, paths)) = args.args.split_last() else {
        return ExitCode::from(EXIT_USAGE);
    };
    let target = match parse_entry(address) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "error: '{}' is not an address or domain: {e}",
                crate::policy::entry::display_raw(address)
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = match args.flags.options_or_exit() {
        Ok(o) => o,
        Err(code) => return code,
    };
    let evaluated = match (args.cluster, paths.is_empty()) {
        (true, true) => from_cluster(args.namespace.as_deref()),
        (true, false) => {
            eprintln!("error: with --cluster give the address only, no PATH");
            return ExitCode::from(EXIT_USAGE);
        }
        (false, true) => {
            eprintln!(
                "error: give the policy files or directories, then the address (or --cluster)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (false, false) => {
            let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
            load_and_evaluate(&paths, args.namespace.as_deref(), Entries::Keep)
        }
    };
    let Ok(Evaluated {
        loaded,
        errors,
        inputs,
        evaluation,
    }) = evaluated
    else {
        return ExitCode::from(EXIT_INVALID);
    };
    for e in errors.iter().chain(&finding_errors(&loaded, &evaluation)) {
        eprintln!("warning: {e} (left out of the explanation)");
    }
    // Inbound keys match as Postfix's access table does, outbound ones as its TLS policy
    // and transport tables do.
    let chain = if args.inbound {
        target.access_chain()
    } else {
        target.lookup_chain()
    };
    let mut out = String::new();
    let direction = if args.inbound {
        "from sender"
    } else {
        "to recipient"
    };
    out.push_str(&format!(
        "Mail {direction} {target} (namespace {})\n\nMatching entries:\n",
        inputs.namespace
    ));
    let mut any = false;
    for list in &inputs.address_lists {
        let entries: BTreeSet<Entry> = list_entries(list).into_iter().collect();
        for e in chain.iter().filter(|e| entries.contains::<Entry>(e)) {
            any = true;
            out.push_str(&format!("  {e:<30} in AddressList/{}\n", list.name_any()));
            for p in inputs.policies.iter().filter(|p| {
                p.spec
                    .address_lists
                    .iter()
                    .any(|r| r.name == list.name_any())
            }) {
                let dir_ok = if args.inbound {
                    p.spec.direction.inbound()
                } else {
                    p.spec.direction.outbound()
                };
                let broken = evaluation
                    .findings
                    .get(&ResourceId::new(Kind::TlsCompliance, p.name_any()))
                    .is_some_and(|f| !f.rendered);
                let what = if !dir_ok {
                    format!("({:?} only: does not apply)", p.spec.direction)
                } else if broken {
                    "(invalid: not in effect)".to_string()
                } else if args.inbound {
                    format!("{:?}: TLS required from these senders", p.spec.enforcement)
                } else {
                    let r = Requirement::new(
                        p.spec.require_ca_signed,
                        p.spec.validate_hostname,
                        p.spec.min_tls_version,
                    );
                    let published = Mechanisms::from_api(&p.spec.mechanisms);
                    format!(
                        "{:?}: {r}; on failure {}{}",
                        p.spec.enforcement,
                        on_failure(p.spec.on_failure),
                        if published.is_empty() {
                            String::new()
                        } else {
                            format!("; honours {published}")
                        }
                    )
                };
                out.push_str(&format!(
                    "  {:<30}   used by TlsCompliance/{} {what}\n",
                    "",
                    p.name_any()
                ));
            }
            if !args.inbound {
                for g in inputs.gateways.iter().filter(|g| {
                    g.spec.applies_to == AppliesTo::Recipients
                        && g.spec
                            .address_lists
                            .iter()
                            .any(|r| r.name == list.name_any())
                }) {
                    out.push_str(&format!(
                        "  {:<30}   routed by OutboundGateway/{} to {}\n",
                        "",
                        g.name_any(),
                        g.spec.host
                    ));
                }
            }
        }
    }
    if !any {
        out.push_str("  (none)\n");
    }
    if !args.inbound && !evaluation.policy.unlisted_policies.is_empty() {
        out.push_str(&format!(
            "  {:<30}   {} (Unlisted): honours {}\n",
            "every destination",
            names(&evaluation.policy.unlisted_policies),
            evaluation.policy.unlisted
        ));
    }
    out.push('\n');
    if args.inbound {
        explain_inbound(&evaluation.policy, &target, &mut out);
    } else {
        let config = render(&evaluation.policy, &opts);
        explain_outbound(&evaluation.policy, &target, &config.files, &mut out);
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// The namespace's resources as the API server has them now. Their current specs are
/// explained; one whose status says it is not Ready is named, as the controller keeps its
/// last valid generation in force instead.
fn from_cluster(namespace: Option<&str>) -> Result<Evaluated, ()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the async runtime: {e}"))?;
    crate::probe::tls::install_crypto_provider();
    let inputs = runtime
        .block_on(cluster_inputs(namespace))
        .map_err(|e| eprintln!("error: {e}"))?;
    let not_ready = not_ready(&inputs.address_lists)
        .chain(not_ready(&inputs.policies))
        .chain(not_ready(&inputs.gateways));
    for (kind, name, message) in not_ready {
        eprintln!(
            "warning: {kind}/{name} is not Ready ({message}): the relay enforces its last valid \
             generation, which this explanation of the current spec may not match"
        );
    }
    let evaluation = crate::policy::evaluate(&inputs);
    Ok(Evaluated {
        loaded: Default::default(),
        errors: Vec::new(),
        inputs,
        evaluation,
    })
}

async fn cluster_inputs(namespace: Option<&str>) -> Result<crate::policy::Inputs, String> {
    use kube::api::{Api, ListParams};
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster (kubeconfig or in-cluster): {e}"))?;
    let namespace =
        namespace.map_or_else(|| client.default_namespace().to_string(), str::to_string);
    async fn list<K: crate::engine::Managed>(
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Vec<K>, String> {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| format!("cannot list {}s in namespace {namespace}: {e}", K::KIND))
    }
    Ok(crate::policy::Inputs {
        address_lists: list(&client, &namespace).await?,
        policies: list(&client, &namespace).await?,
        gateways: list(&client, &namespace).await?,
        namespace,
    })
}

/// (kind, name, message) of resources whose Ready condition is False.
fn not_ready<K: crate::engine::Managed>(
    resources: &[K],
) -> impl Iterator<Item = (crate::policy::Kind, String, String)> + '_ {
    resources.iter().filter_map(|r| {
        let ready = r.conditions().iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then(|| (K::KIND, r.name_any(), ready.message.clone()))
    })
}

fn on_failure(f: OnFailure) -> &'static str {
    match f {
        OnFailure::Bounce => "bounce after one attempt (5.7.x)",
        OnFailure::Defer => "defer and retry",
    }
}

fn explain_inbound(policy: &EffectivePolicy, target: &Entry, out: &mut String) {
    match policy.inbound_for(target) {
        Some((key, rule)) if rule.enforced => out.push_str(&format!(
            "Effective: TLS required. A plaintext session from this sender is rejected with 550\n\
             (key {key} in sender_access; a domain there also covers its subdomains).\nWhy: {}\n",
            names(&rule.policies)
        )),
        Some((_, rule)) => out.push_str(&format!(
            "Effective: nothing enforced. Monitor only ({}): plaintext would be rejected once enforced.\n",
            names(&rule.policies)
        )),
        None => out.push_str("Effective: no inbound TLS policy applies; plaintext is accepted.\n"),
    }
}

fn explain_outbound(
    policy: &EffectivePolicy,
    target: &Entry,
    files: &std::collections::BTreeMap<String, String>,
    out: &mut String,
) {
    let delivery = policy.delivery(target);
    let found = delivery.key.zip(delivery.rule);
    let route = &delivery.route;
    let enforced = delivery.rule.and_then(|r| r.enforced);
    let monitored = delivery.rule.and_then(|r| r.monitored);
    match enforced {
        Some(e) => out.push_str(&format!(
            "Effective: mandatory {}; on failure {}\n",
            e.requirement,
            on_failure(e.on_failure)
        )),
        None => out.push_str("Effective: opportunistic TLS (nothing mandatory)\n"),
    }
    if let Some(m) = monitored {
        out.push_str(&format!(
            "Monitor:   would require {m}; the periodic test reports whether it would fail\n"
        ));
    }
    out.push_str(&published(policy, &delivery, target));
    if let Some((key, rule)) = found {
        let n = rule.policies.len();
        if n > 0 {
            out.push_str(&format!(
                "Why:       the most specific key is {key}; it merges {n} polic{} covering it ({}), strictest wins\n",
                if n == 1 { "y" } else { "ies" },
                names(&rule.policies)
            ));
        }
    }
    let hop = delivery.hop;
    let next = match (route, hop) {
        (Route::Direct, _) | (_, None) => {
            format!("the MX hosts of {} (direct delivery)", target.domain())
        }
        (Route::Relayhost(g), Some(h)) => format!(
            "{} via OutboundGateway/{g} (AllMail: the organisation's outbound gateway)",
            h.nexthop()
        ),
        (Route::SecureRoute(g), Some(h)) => {
            format!(
                "{} via OutboundGateway/{g} (alternate secure route: TLS-required mail goes there)",
                h.nexthop()
            )
        }
        (Route::Recipients { gateway, entry }, Some(h)) => {
            // No entry: the key found decides its own route.
            let entry = match (entry, delivery.key) {
                (Some(e), _) => format!(" for {e}"),
                (None, Some(key)) => format!(" for {key}"),
                (None, None) => String::new(),
            };
            format!(
                "{} via OutboundGateway/{gateway} (change of route{entry}, the most specific route entry)",
                h.nexthop()
            )
        }
    };
    out.push_str(&format!("Next hop:  {next}\n"));
    if let Some(h) = hop {
        let tls = h.tls.map_or("opportunistic".to_string(), |r| r.to_string());
        out.push_str(&format!("Gateway hop TLS (its own setting): {tls}\n"));
    }
    // The same function plans the periodic tests, so both name the same hop.
    match routed_test(policy, target, None) {
        Some(test) => out.push_str(&format!(
            "Tested on: {}, requiring {}\n",
            test.via.unwrap_or_else(|| test.target.display()),
            delivery
                .required
                .map_or("nothing (opportunistic)".to_string(), |r| r.to_string())
        )),
        None => out.push_str("Tested on: nothing (a wildcard delivered directly names no host)\n"),
    }
    out.push_str("\nPostfix sees:\n");
    let mut shown = false;
    if let Some(maps) = files.get("main.cf").and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("smtp_tls_policy_maps = socketmap:"))
    }) {
        out.push_str(&format!("  main.cf: {maps}\n"));
    }
    if let Some((key, _)) = found {
        for table in ["transport", "tls_policy", "dane", "mta_sts"] {
            let prefix = format!("{key} ");
            if let Some(line) = files
                .get(table)
                .and_then(|t| t.lines().find(|l| l.starts_with(&prefix)))
            {
                out.push_str(&format!("  {table}: {line}\n"));
                shown = true;
            }
        }
    }
    if !shown {
        let relay = policy
            .relayhost
            .as_ref()
            .and_then(|g| policy.gateways.get(g))
            .map(|h| h.nexthop())
            .unwrap_or_default();
        out.push_str(&format!("  no table entry; main.cf relayhost = {relay}\n"));
    }
}

/// Which published policy decides for this recipient, if any is honoured.
fn published(policy: &EffectivePolicy, delivery: &Delivery, target: &Entry) -> String {
    let honoured = match delivery.rule.and_then(|r| r.enforced) {
        Some(e) => e.mechanisms,
        None => policy.unlisted,
    };
    if honoured.is_empty() {
        return String::new();
    }
    let domain = target.domain();
    if delivery.hop.is_some() {
        return format!(
            "Published: {honoured} is honoured, but does not apply here: the mail goes to a \
             gateway, not to the MX hosts of {domain}\n"
        );
    }
    let (version, otherwise) = match delivery.required {
        Some(r) => (r.min_tls, "the listed requirement above"),
        None => (Default::default(), "opportunistic TLS"),
    };
    let mut out = String::new();
    if honoured.dane {
        out.push_str(&format!(
            "Published: DANE decides first when the MX hosts of {domain} have DNSSEC-authenticated \
             TLSA records (usage 2 or 3): TLS {version} or newer whose certificate those records \
             match, nothing else.\n"
        ));
    }
    if honoured.mta_sts {
        let then = if honoured.dane {
            "Otherwise MTA-STS"
        } else {
            "MTA-STS"
        };
        out.push_str(&format!(
            "Published: {then} decides when {domain} publishes an `enforce` policy: verified TLS \
             {version} or newer to the MX hosts it names, nothing else (the relay agent asks at \
             delivery).\n"
        ));
    }
    out.push_str(&format!("Published: otherwise {otherwise} applies.\n"));
    out
}

fn names(policies: &[std::sync::Arc<str>]) -> String {
    policies
        .iter()
        .map(|p| format!("TlsCompliance/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}
