//! The command line on files: render, standalone (with --watch), explain, --help.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mailtls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(args)
        .output()
        .expect("run mailtls")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

fn yaml_value(path: &Path) -> serde_json::Value {
    serde_norway::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml")
}

fn condition<'a>(resource: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    resource["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_}"))
}

#[test]
fn standalone_renders_examples_and_writes_ready_statuses() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = mailtls(&[
        "standalone",
        "--dir",
        EXAMPLES,
        "--out",
        out.path().to_str().expect("utf-8"),
        "--postfix-version",
        "3.7",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ns = out.path().join("default");
    for f in [
        "main.cf",
        "master.cf",
        "tls_policy",
        "transport",
        "sender_access",
        "tls_bounce.pcre",
        "manifest.json",
    ] {
        assert!(ns.join("relay").join(f).exists(), "{f}");
    }
    let resources: Vec<_> = std::fs::read_dir(ns.join("resources"))
        .expect("resources")
        .collect();
    assert_eq!(resources.len(), 11);
    let partners = yaml_value(&ns.join("resources/tlscompliance-partners.yaml"));
    assert_eq!(partners["status"]["observedGeneration"], 1);
    let ready = condition(&partners, "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["observedGeneration"], 1);
    assert_eq!(condition(&partners, "Rendered")["reason"], "Rendered");
    assert_eq!(condition(&partners, "Tested")["status"], "Unknown");
    assert_eq!(partners["status"]["matched"]["addresses"], 4);
    assert!(
        partners["status"]["relayConfig"]["hash"]
            .as_str()
            .expect("hash")
            .starts_with("sha256:")
    );
    let monitor = yaml_value(&ns.join("resources/tlscompliance-legacy-partners.yaml"));
    assert_eq!(condition(&monitor, "Rendered")["reason"], "MonitorOnly");
    let list = yaml_value(&ns.join("resources/addresslist-partners.yaml"));
    assert_eq!(list["status"]["addresses"], 4);
    assert_eq!(list["status"]["domains"], 4);
    assert_eq!(list["status"]["duplicates"], 1);
    assert_eq!(list["status"]["usedBy"][0], "TlsCompliance/partners");
    let gw = yaml_value(&ns.join("resources/outboundgateway-secure-relay.yaml"));
    assert_eq!(condition(&gw, "Ready")["status"], "True");
    assert_eq!(condition(&gw, "Conflict")["status"], "False");
    assert!(
        gw["status"]["usedBy"]
            .as_array()
            .expect("usedBy")
            .iter()
            .any(|v| v == "TlsCompliance/banks")
    );
    assert!(text(&o).contains("TlsCompliance/partners"));
}

#[test]
fn standalone_is_stable_reports_problems_and_empties_deleted_namespaces() {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let file = input.path().join("p.yaml");
    std::fs::write(
        &file,
        list("l", &["partner.example", "bad entry"]) + &policy("p", &["l", "ghost"], ""),
    )
    .expect("write");
    let args = [
        "standalone",
        "--dir",
        input.path().to_str().expect("utf-8"),
        "--out",
        out.path().to_str().expect("utf-8"),
        "--postfix-version",
        "3.7",
    ];
    assert!(mailtls(&args).status.success());
    let res = out.path().join("default/resources");
    let l = yaml_value(&res.join("addresslist-l.yaml"));
    assert_eq!(condition(&l, "Ready")["status"], "False");
    assert_eq!(condition(&l, "Ready")["reason"], "InvalidEntries");
    assert_eq!(l["status"]["invalid"][0]["entry"], "bad entry");
    let p = yaml_value(&res.join("tlscompliance-p.yaml"));
    assert_eq!(condition(&p, "Ready")["reason"], "MissingReference");
    assert!(
        condition(&p, "Ready")["message"]
            .as_str()
            .expect("msg")
            .contains("'ghost' does not exist")
    );
    // Never valid (missing list, invalid entry): fail closed, nothing is enforced.
    assert_eq!(condition(&p, "Rendered")["status"], "False");
    for (r, kind) in [(&p, "policy"), (&l, "list")] {
        let message = condition(r, "Ready")["message"].as_str().expect("msg");
        assert!(
            message.ends_with("no earlier generation was valid: this resource enforces nothing"),
            "{kind}: {message}"
        );
    }

    // A second run with the same input rewrites nothing and keeps transition times.
    let stamp = |f: &Path| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let before = (
        stamp(&res.join("tlscompliance-p.yaml")),
        stamp(&out.path().join("default/relay/transport")),
    );
    std::thread::sleep(Duration::from_millis(20));
    assert!(mailtls(&args).status.success());
    assert_eq!(
        before,
        (
            stamp(&res.join("tlscompliance-p.yaml")),
            stamp(&out.path().join("default/relay/transport"))
        )
    );

    // Fixing both flips Ready and Rendered (a new generation) and moves only their
    // transition times.
    std::fs::write(
        &file,
        list("l", &["partner.example"]) + &policy("p", &["l"], ""),
    )
    .expect("write");
    assert!(mailtls(&args).status.success());
    let fixed = yaml_value(&res.join("tlscompliance-p.yaml"));
    assert_eq!(condition(&fixed, "Ready")["status"], "True");
    assert_eq!(condition(&fixed, "Rendered")["status"], "True");
    assert_eq!(fixed["status"]["observedGeneration"], 2);
    assert_eq!(fixed["status"]["enforcedGeneration"], 2);
    assert_eq!(
        condition(&fixed, "Conflict")["lastTransitionTime"],
        condition(&p, "Conflict")["lastTransitionTime"]
    );

    // Deleting everything empties the configuration and the statuses.
    std::fs::remove_file(&file).expect("rm");
    assert!(mailtls(&args).status.success());
    assert_eq!(std::fs::read_dir(&res).expect("dir").count(), 0);
    let transport =
        std::fs::read_to_string(out.path().join("default/relay/transport")).expect("transport");
    assert!(transport.lines().all(|l| l.starts_with('#')), "{transport}");
}

#[test]
fn standalone_watch_rerenders_on_change() {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("p.yaml"),
        list("l", &["one.example"]) + &policy("p", &["l"], ""),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["standalone", "--watch", "--postfix-version", "3.7", "--dir"])
        .arg(input.path())
        .arg("--out")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let policy_file = out.path().join("default/relay/tls_policy");
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&policy_file).is_ok_and(|t| t.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let first = wait_for("one.example encrypt");
    std::fs::write(
        input.path().join("p.yaml"),
        list("l", &["two.example"]) + &policy("p", &["l"], ""),
    )
    .expect("write");
    let second = wait_for("two.example encrypt");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first, "first render");
    assert!(second, "re-render after the edit");
}

/// `mailtls render DIR --output DIR/out`: its output, and where it would write.
fn render_into_out(dir: &Path) -> (Output, std::path::PathBuf) {
    let out = dir.join("out");
    let o = mailtls(&[
        "render",
        dir.to_str().expect("utf-8"),
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    (o, out)
}

#[test]
fn render_reports_every_error_with_file_line_resource_and_field() {
    // Lines are the fields' own, and every wrong field of a document is reported.
    let input = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("a.yaml"),
        list("l", &["ok.example"]) + &policy("p", &["l"], "  requireCaSigned: true"),
    )
    .expect("write");
    std::fs::write(
        input.path().join("b.yaml"),
        "apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: g\nspec:\n  host: gw.example.net\n  port: 99999\n  mxLookup: maybe\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n---\nkind: [unclosed\n",
    )
    .expect("write");
    let (o, out) = render_into_out(input.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("a.yaml:17: TlsCompliance/p: spec.requireCaSigned: unknown field"),
        "{t}"
    );
    assert!(
        t.contains("b.yaml:7: OutboundGateway/g: spec.port: invalid value: integer `99999`"),
        "{t}"
    );
    assert!(t.contains("b.yaml:8: OutboundGateway/g: spec.mxLookup: invalid type: string \"maybe\", expected a boolean"), "{t}");
    assert!(t.contains("b.yaml:16: not valid YAML"), "{t}");
    assert!(t.contains("4 error(s); nothing was written"), "{t}");
    assert!(!out.exists());
}

#[test]
fn invalid_entries_are_reported_on_their_own_lines() {
    let input = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("c.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  \
         entries:\n  - ok.example\n  # a comment\n  - bad..example\n  - x@y@z.example\n  \
         bulk: |\n    fine.example\n    also..bad\n",
    )
    .expect("write");
    // Items of a `kind: List` are reported at the list's line.
    std::fs::write(
        input.path().join("d.json"),
        r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "j"},
   "spec": {"entries": ["ok.example",
     "bad..example"]}}]}
"#,
    )
    .expect("write");
    let (o, out) = render_into_out(input.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    for line in [
        "c.yaml:14: AddressList/l: spec.entries[1]: 'bad..example'",
        "c.yaml:15: AddressList/l: spec.entries[2]: 'x@y@z.example'",
        "c.yaml:16: AddressList/l: spec.bulk (item 2): 'also..bad'",
        "d.json:1: AddressList/j: spec.entries[1]: 'bad..example'",
    ] {
        assert!(t.contains(line), "{line}\n{t}");
    }
    assert!(!out.exists());
}

#[test]
fn an_unquoted_version_is_explained() {
    let input = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("a.yaml"),
        list("l", &["ok.example"]) + &policy("p", &["l"], "  minTlsVersion: 1.2"),
    )
    .expect("write");
    let (o, _) = render_into_out(input.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("spec.minTlsVersion: invalid type: the number `1.2`, expected one of the allowed strings: put the value in quotes"),
        "{t}"
    );
    assert!(!t.contains("Value::Tagged"), "{t}");
}

#[test]
fn render_needs_a_namespace_choice_for_mixed_input() {
    let input = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("a.yaml"),
        list("l", &["a.example"]).replace("  name: l\n", "  name: l\n  namespace: one\n")
            + &list("m", &["b.example"]).replace("  name: m\n", "  name: m\n  namespace: two\n"),
    )
    .expect("write");
    let out = input.path().join("out");
    let dir = input.path().to_str().expect("utf-8");
    let o = mailtls(&["render", dir, "--output", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("namespaces one, two; choose one with --namespace"),
        "{}",
        text(&o)
    );
    let o = mailtls(&[
        "render",
        dir,
        "--output",
        out.to_str().expect("utf-8"),
        "--namespace",
        "two",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read_to_string(out.join("manifest.json"))
            .expect("manifest")
            .contains("\"namespace\": \"two\"")
    );
}

#[test]
fn render_rejects_unsafe_options_as_usage_errors() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = mailtls(&[
        "render",
        EXAMPLES,
        "--output",
        out.path().to_str().expect("utf-8"),
        "--config-dir",
        "/etc/postfix/x y",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("--config-dir may not contain"),
        "{}",
        text(&o)
    );
    let o = mailtls(&["render", EXAMPLES, "--output", "x", "--map-type", "btree"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The binary's allocator gives freed memory back at once, as set for its build in
/// `.cargo/config.toml`: a render of 100k entries peaks about 4 MB lower for it
/// (BENCHMARKS.md). Without the setting, the build would quietly lose that.
#[cfg(feature = "jemalloc")]
#[test]
#[cfg(feature = "jemalloc")]
fn the_allocator_gives_freed_memory_back_at_once() {
    let o = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run mailtls");
    assert!(o.status.success(), "{}", text(&o));
    let stats = String::from_utf8_lossy(&o.stderr);
    assert!(
        stats.contains("opt.dirty_decay_ms: 0 ") && stats.contains("opt.muzzy_decay_ms: 0 "),
        "{stats}"
    );
}

#[test]
fn a_reader_that_went_away_ends_the_command_quietly() {
    // The pipe's reader is closed before mailtls starts, so its first write fails.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("crds")
        .stdout(writer)
        .output()
        .expect("run mailtls");
    assert_eq!(o.status.code(), Some(141), "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));
}

#[test]
fn explain_says_which_policies_apply_the_next_hop_and_why() {
    let o = mailtls(&[
        "explain",
        EXAMPLES,
        "bob@sales.partner.example",
        "--postfix-version",
        "3.7",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(".partner.example") && t.contains("AddressList/partners"),
        "{t}"
    );
    assert!(t.contains("used by TlsCompliance/partners"), "{t}");
    assert!(t.contains("Effective: mandatory TLS with a CA-signed certificate matching the host name, TLS 1.2 or newer"), "{t}");
    assert!(
        t.contains("Next hop:  [tls-relay.example.net]:587 via OutboundGateway/secure-relay"),
        "{t}"
    );
    assert!(
        t.contains(
            "transport: .partner.example mailtls-verify-tls12-bounce:[tls-relay.example.net]:587"
        ),
        "{t}"
    );

    let o = mailtls(&["explain", EXAMPLES, "someone@unlisted.example"]);
    let t = text(&o);
    assert!(
        t.contains("(none)")
            && t.contains("opportunistic")
            && t.contains("OutboundGateway/smarthost"),
        "{t}"
    );

    let o = mailtls(&["explain", EXAMPLES, "chair@board.example", "--inbound"]);
    assert!(text(&o).contains("rejected with 550"), "{}", text(&o));
    // A subdomain of a listed domain: Postfix's access table matches it, and so does explain.
    let o = mailtls(&[
        "explain",
        EXAMPLES,
        "clerk@minutes.board.example",
        "--inbound",
    ]);
    let t = text(&o);
    assert!(
        t.contains("rejected with 550")
            && t.contains("board.example")
            && t.contains("in AddressList/board-members"),
        "{t}"
    );
    let o = mailtls(&["explain", EXAMPLES, "not an address"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A change of route names the entry that decides it: the key itself, or the less specific
/// entry covering a key that a policy made.
#[test]
fn explain_names_the_entry_that_decides_a_change_of_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("all.yaml"),
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: archived\n\
         spec:\n  entries: [archive.example, .archive.example]\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: vault\n\
         spec:\n  entries: [vault.archive.example]\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: archive\n\
         spec:\n  host: archive.example.net\n  port: 2525\n  appliesTo: Recipients\n\
         \x20 addressLists:\n    - name: archived\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: vault\n\
         spec:\n  direction: Outbound\n  addressLists:\n    - name: vault\n  requireCASigned: true\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf-8");
    let via = "[archive.example.net]:2525 via OutboundGateway/archive (change of route for";
    let t = text(&mailtls(&["explain", d, "someone@archive.example"]));
    assert!(t.contains(&format!("{via} archive.example, ")), "{t}");
    let t = text(&mailtls(&["explain", d, "clerk@vault.archive.example"]));
    assert!(
        t.contains("the most specific key is vault.archive.example")
            && t.contains(&format!("{via} .archive.example, ")),
        "{t}"
    );
}

/// With the namespace's default honouring MTA-STS, explain says which mechanism decides,
/// for a listed and an unlisted recipient, and where it does not apply (a gateway).
#[test]
fn explain_names_mta_sts_where_it_decides() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["address-lists.yaml", "tls-compliance.yaml", "gateways.yaml"] {
        std::fs::copy(format!("{EXAMPLES}/{f}"), dir.path().join(f)).expect("copy");
    }
    std::fs::write(
        dir.path().join("published.yaml"),
        "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published\n\
         spec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts]\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf-8");
    // Through the AllMail gateway: MTA-STS is honoured but not the one deciding.
    let t = text(&mailtls(&["explain", d, "someone@unlisted.example"]));
    assert!(
        t.contains("TlsCompliance/published (Unlisted): honours MTA-STS"),
        "{t}"
    );
    assert!(
        t.contains("does not apply here: the mail goes to a gateway"),
        "{t}"
    );
    // Without gateways, straight to the MX hosts: MTA-STS decides where published.
    std::fs::remove_file(dir.path().join("gateways.yaml")).expect("rm");
    let t = text(&mailtls(&["explain", d, "someone@unlisted.example"]));
    assert!(
        t.contains(
            "Published: MTA-STS decides when unlisted.example publishes an `enforce` policy"
        ) && t.contains("otherwise opportunistic TLS applies"),
        "{t}"
    );
    let t = text(&mailtls(&["explain", d, "bob@sales.partner.example"]));
    assert!(
        t.contains("verified TLS 1.2 or newer")
            && t.contains("otherwise the listed requirement above applies"),
        "{t}"
    );
    assert!(
        t.contains("main.cf: smtp_tls_policy_maps = socketmap:unix:"),
        "{t}"
    );
    assert!(
        t.contains("mta_sts: .partner.example protocols=>=TLSv1.2"),
        "{t}"
    );

    // DANE too: it is tried first, for listed and unlisted destinations alike.
    std::fs::write(
        dir.path().join("published.yaml"),
        "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published\n\
         spec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts, Dane]\n",
    )
    .expect("write");
    let t = text(&mailtls(&["explain", d, "someone@unlisted.example"]));
    assert!(
        t.contains("honours DANE, then MTA-STS")
            && t.contains("Published: DANE decides first when the MX hosts of unlisted.example")
            && t.contains("Otherwise MTA-STS decides when unlisted.example"),
        "{t}"
    );
    let t = text(&mailtls(&["explain", d, "bob@sales.partner.example"]));
    assert!(
        t.contains("dane: .partner.example protocols=>=TLSv1.2")
            && t.contains("mta_sts: .partner.example protocols=>=TLSv1.2"),
        "{t}"
    );
}

#[test]
fn help_explains_every_subcommand() {
    let o = mailtls(&["--help"]);
    let t = text(&o);
    for cmd in ["render", "standalone", "explain", "crds"] {
        assert!(t.contains(cmd), "{t}");
    }
    let o = mailtls(&["render", "--help"]);
    assert!(
        text(&o).contains("--config-dir") && text(&o).contains("file, line, resource and field"),
        "{}",
        text(&o)
    );
}

/// `mailtls run` refuses bad settings before it talks to any cluster, with exit code 2.
#[test]
fn run_refuses_bad_settings_with_a_clear_message() {
    for (args, says) in [
        (
            vec!["run", "--relay-poll-interval", "50ms"],
            "--relay-poll-interval must be at least 100ms",
        ),
        (
            vec!["run", "--leader-election"],
            "--leader-election needs --lease-namespace",
        ),
        (
            vec!["run", "--test-allow-cidr", "10.1.2.3/8"],
            "did you mean 10.0.0.0/8",
        ),
        (
            vec!["run", "--test-deny-cidr", "internal.example"],
            "is not an address range",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(&args)
            .env_remove("POD_NAMESPACE")
            .output()
            .expect("run mailtls");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
}

/// Every file of a directory by name.
fn files_of(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect()
}

#[test]
fn standalone_keeps_the_last_valid_generation_across_runs() {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    for f in ["address-lists.yaml", "gateways.yaml", "tls-compliance.yaml"] {
        std::fs::copy(Path::new(EXAMPLES).join(f), input.path().join(f)).expect("copy");
    }
    let args = [
        "standalone",
        "--dir",
        input.path().to_str().expect("utf-8"),
        "--out",
        out.path().to_str().expect("utf-8"),
        "--postfix-version",
        "3.7",
    ];
    let o = mailtls(&args);
    assert!(o.status.success(), "{}", text(&o));
    let relay = out.path().join("default/relay");
    let res = out.path().join("default/resources");
    let snapshot = out.path().join("default/last-valid.json");
    let before = files_of(&relay);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&snapshot).expect("snapshot")).expect("json");
    assert_eq!(kept["version"], 1);
    assert_eq!(kept["policies"]["partners"]["generation"], 1);

    // The edit the engine refuses (under 1m), on a policy and on the AllMail gateway.
    let edit = |file: &str, from: &str, to: &str| {
        let path = input.path().join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    };
    edit("tls-compliance.yaml", "interval: 6h", "interval: 30s");
    edit(
        "gateways.yaml",
        "appliesTo: AllMail\n",
        "appliesTo: AllMail\n  test:\n    interval: 30s\n",
    );
    // Two new processes: the second starts from what the first left on disk.
    for run in 0..2 {
        let o = mailtls(&args);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(files_of(&relay), before, "run {run}");
        let partners = yaml_value(&res.join("tlscompliance-partners.yaml"));
        let ready = condition(&partners, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&"False".into(), &"InvalidSpec".into())
        );
        let message = ready["message"].as_str().expect("message");
        assert!(message.starts_with("spec.test.interval: "), "{message}");
        assert!(
            message.ends_with("; generation 1 is still enforced"),
            "{message}"
        );
        assert_eq!(partners["status"]["observedGeneration"], 2);
        assert_eq!(partners["status"]["enforcedGeneration"], 1);
        assert_eq!(partners["status"]["matched"]["addresses"], 4);
        let gw = yaml_value(&res.join("outboundgateway-smarthost.yaml"));
        let ready = condition(&gw, "Ready")["message"]
            .as_str()
            .expect("message");
        assert!(ready.ends_with("generation 1 is still enforced"), "{ready}");
        assert_eq!(gw["status"]["enforcedGeneration"], 1);
        assert!(text(&o).contains("generation 1 is still enforced"));
    }
    let transport = &before["transport"];
    assert_eq!(transport.matches("mailtls-verify-tls12-bounce").count(), 8);
    assert!(before["main.cf"].contains("relayhost = smarthost.example.net"));

    // A snapshot that cannot be read stops the run with the reason; nothing is rewritten.
    std::fs::write(&snapshot, "{\"version\": 1, \"policies\": [").expect("write");
    let o = mailtls(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("last-valid.json: not valid JSON"),
        "{}",
        text(&o)
    );
    assert_eq!(files_of(&relay), before);
    std::fs::write(&snapshot, serde_json::to_string(&kept).expect("json")).expect("write");

    // Fixing the edit makes the new generation the one in force.
    edit("tls-compliance.yaml", "interval: 30s", "interval: 2h");
    let o = mailtls(&args);
    assert!(o.status.success(), "{}", text(&o));
    let partners = yaml_value(&res.join("tlscompliance-partners.yaml"));
    assert_eq!(condition(&partners, "Ready")["status"], "True");
    assert_eq!(partners["status"]["observedGeneration"], 3);
    assert_eq!(partners["status"]["enforcedGeneration"], 3);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&snapshot).expect("snapshot")).expect("json");
    assert_eq!(
        kept["policies"]["partners"]["spec"]["test"]["interval"],
        "2h"
    );
}

/// A document that cannot be read (here a misspelt enum value) is not a deletion: standalone
/// changes nothing, says why, and exits 1, so the policy in it stays enforced.
#[test]
fn standalone_changes_nothing_while_a_document_cannot_be_read() {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    for f in ["address-lists.yaml", "gateways.yaml", "tls-compliance.yaml"] {
        std::fs::copy(Path::new(EXAMPLES).join(f), input.path().join(f)).expect("copy");
    }
    let args = [
        "standalone",
        "--dir",
        input.path().to_str().expect("utf-8"),
        "--out",
        out.path().to_str().expect("utf-8"),
        "--postfix-version",
        "3.7",
    ];
    let o = mailtls(&args);
    assert!(o.status.success(), "{}", text(&o));
    let relay = files_of(&out.path().join("default/relay"));
    let resources = files_of(&out.path().join("default/resources"));

    let path = input.path().join("tls-compliance.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read");
    assert!(yaml.contains("direction: Outbound"));
    std::fs::write(
        &path,
        yaml.replacen("direction: Outbound", "direction: Outbund", 1),
    )
    .expect("write");
    let o = mailtls(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("Outbund"), "{said}");
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(files_of(&out.path().join("default/relay")), relay);
    assert_eq!(files_of(&out.path().join("default/resources")), resources);
}

/// A namespace whose relay files cannot be written is reported (its policies say so in their
/// statuses, and the exit code is 1), and every other namespace is still reconciled.
#[test]
fn standalone_continues_other_namespaces_when_one_cannot_be_written() {
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let policy = |ns: &str| {
        format!(
            "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata: {{name: partners, namespace: {ns}}}\nspec:\n  entries: [example.com]\n---\napiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {{name: partners, namespace: {ns}}}\nspec:\n  direction: Outbound\n  addressLists: [{{name: partners}}]\n"
        )
    };
    for ns in ["alpha", "beta"] {
        std::fs::write(input.path().join(format!("{ns}.yaml")), policy(ns)).expect("write");
    }
    // `alpha/relay` is a file where the directory of relay files belongs.
    std::fs::create_dir_all(out.path().join("alpha")).expect("mkdir");
    std::fs::write(out.path().join("alpha/relay"), "in the way").expect("write");
    let o = mailtls(&[
        "standalone",
        "--dir",
        input.path().to_str().expect("utf-8"),
        "--out",
        out.path().to_str().expect("utf-8"),
        "--postfix-version",
        "3.7",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("namespace alpha"), "{}", text(&o));
    let beta = files_of(&out.path().join("beta/relay"));
    assert!(beta.contains_key("transport"), "{beta:?}");
    let ready = |ns: &str| {
        let p = yaml_value(
            &out.path()
                .join(format!("{ns}/resources/tlscompliance-partners.yaml")),
        );
        let c = condition(&p, "Ready");
        (c["status"].clone(), c["reason"].clone())
    };
    assert_eq!(
        ready("beta"),
        (serde_json::json!("True"), serde_json::json!("Rendered"))
    );
    assert_eq!(
        ready("alpha"),
        (
            serde_json::json!("False"),
            serde_json::json!("RelayConfigNotWritten")
        )
    );
}

/// `mailtls report tls-rpt --output-dir` writes the gzip'd report under the name RFC 8460
/// section 5.3 gives it; a bad day or domain is a usage error, a missing log exit 1.
#[test]
fn tls_rpt_report_file_is_named_and_gzipped_as_the_rfc_says() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("maillog");
    std::fs::write(
        &log,
        "2026-11-30T10:00:00+00:00 relay postfix/smtp[1]: Q1: to=<u@b.test>, relay=mx.b.test[192.0.2.2]:25, dsn=5.7.5, status=bounced (Server certificate not trusted)\n",
    )
    .expect("log");
    let out_dir = dir.path().join("reports");
    let args = |day: &str, domain: &str| {
        vec![
            "report".to_string(),
            "tls-rpt".into(),
            log.display().to_string(),
            "--domain".into(),
            domain.into(),
            "--day".into(),
            day.into(),
            "--organization".into(),
            "Example".into(),
            "--contact".into(),
            "tls@corp.example".into(),
            "--output-dir".into(),
            out_dir.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        mailtls(&refs)
    };
    let out = run(args("2026-11-30", "B.test"));
    assert!(out.status.success(), "{out:?}");
    let name = "corp.example!b.test!1795996800!1796083199.json.gz";
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        out_dir.join(name).display().to_string()
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(out_dir.join(name)).expect("report"))
        .read_to_string(&mut json)
        .expect("gunzip");
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(
        report["policies"][0]["summary"]["total-failure-session-count"],
        1
    );
    assert_eq!(run(args("2026-13-01", "b.test")).status.code(), Some(2));
    assert_eq!(
        run(args("2026-11-30", "not a domain")).status.code(),
        Some(2)
    );
    let missing = mailtls(&[
        "report",
        "tls-rpt",
        "/nonexistent/log",
        "--domain",
        "b.test",
        "--organization",
        "x",
        "--contact",
        "y",
    ]);
    assert_eq!(missing.status.code(), Some(1));
}
