//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod dnssec;
pub mod mail;
pub mod skip;

use mailtls::cli::load::load_str;
use mailtls::policy::{Evaluation, Inputs, evaluate};
use mailtls::render::{PostfixVersion, RelayConfig, RenderOptions, render};

/// Read YAML resources (namespace `default`), failing the test on any load error.
pub fn inputs(yaml: &str) -> Inputs {
    let (loaded, errors) = load_str("test.yaml", yaml, "default");
    assert!(
        errors.is_empty(),
        "load errors: {:?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    loaded
        .namespaces
        .get("default")
        .cloned()
        .unwrap_or_else(|| Inputs {
            namespace: "default".into(),
            ..Default::default()
        })
}

pub fn eval(yaml: &str) -> Evaluation {
    evaluate(&inputs(yaml))
}

pub fn options_37() -> RenderOptions {
    RenderOptions {
        postfix_version: PostfixVersion { major: 3, minor: 7 },
        ..Default::default()
    }
}

pub fn render_yaml(yaml: &str) -> RelayConfig {
    render(&eval(yaml).policy, &options_37())
}

/// The value of `key` in a rendered table (`None` if absent).
pub fn lookup(config: &RelayConfig, table: &str, key: &str) -> Option<String> {
    let text = config
        .files
        .get(table)
        .unwrap_or_else(|| panic!("no file {table}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
}

/// The value of a main.cf parameter.
pub fn main_cf(config: &RelayConfig, name: &str) -> Option<String> {
    config.files["main.cf"]
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = ")).map(str::to_string))
}

/// The `-o` options of a master.cf service, as `name=value` strings.
pub fn service_options(config: &RelayConfig, service: &str) -> Vec<String> {
    let master = &config.files["master.cf"];
    let mut lines = master
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{service} ")));
    assert!(
        lines.next().is_some(),
        "service {service} not in master.cf:\n{master}"
    );
    lines
        .take_while(|l| l.starts_with("  -o "))
        .map(|l| l.trim_start_matches("  -o ").to_string())
        .collect()
}

pub fn list(name: &str, entries: &[&str]) -> String {
    let items: Vec<String> = entries.iter().map(|e| format!("    - \"{e}\"")).collect();
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: {name}\nspec:\n  entries:\n{}\n---\n",
        items.join("\n")
    )
}

pub fn policy(name: &str, lists: &[&str], extra: &str) -> String {
    let refs: Vec<String> = lists.iter().map(|l| format!("    - name: {l}")).collect();
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: {name}\nspec:\n  direction: Outbound\n  addressLists:\n{}\n{extra}\n---\n",
        refs.join("\n")
    )
}

pub fn gateway(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: {name}\nspec:\n{spec}\n---\n"
    )
}

/// Publish `..<version>` (already written inside `cm`) the way kubelet updates a ConfigMap
/// volume: `..data` swapped by one rename, the visible names links through `..data`.
pub fn kubelet_swap(cm: &std::path::Path, version: &str) {
    let tmp = cm.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("link ..data_tmp");
    std::fs::rename(&tmp, cm.join("..data")).expect("swap ..data");
    // Like kubelet: links of keys the new version no longer has go.
    for entry in std::fs::read_dir(cm).expect("configmap dir").flatten() {
        let path = entry.path();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !entry.file_name().to_string_lossy().starts_with("..") && !path.exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
    for entry in std::fs::read_dir(cm.join(version))
        .expect("version dir")
        .flatten()
    {
        let name = entry.file_name();
        let link = cm.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(std::path::Path::new("..data").join(&name), &link)
                .expect("file link");
        }
    }
}

/// Write the keys of a ConfigMap holding `files` as the controller stores them (large files
/// compressed, see `mailtls::render::pack`) into `dir`, as kubelet would.
pub fn write_packed(dir: &std::path::Path, files: &std::collections::BTreeMap<String, String>) {
    let packed = mailtls::render::pack::pack(files);
    std::fs::create_dir_all(dir).expect("version dir");
    for (name, text) in &packed.text {
        std::fs::write(dir.join(name), text).expect("write key");
    }
    for (name, bytes) in &packed.gzip {
        std::fs::write(dir.join(name), bytes).expect("write key");
    }
}

/// A private Postfix config directory at `dir` (never /etc/postfix): Debian's main.cf and
/// master.cf copied in, with a queue and data directory of its own beside it (`dir` with
/// `-spool` and `-data` appended). Sharing /var/spool/postfix made concurrent tests race:
/// `postfix check` creates missing queue directories with a plain `mkdir` (post-install
/// create-missing), so two instances checking at once on a fresh machine both saw a
/// directory missing, one `mkdir` failed, and `postfix check` died with "unable to create
/// missing queue directories".
pub fn private_postfix_config(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("config dir");
    for f in ["main.cf", "master.cf"] {
        std::fs::copy(std::path::Path::new("/etc/postfix").join(f), dir.join(f))
            .expect("Debian's Postfix config in /etc/postfix (scripts/install-test-deps.sh)");
    }
    let beside = |suffix: &str| {
        let mut name = dir.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    // The queue directory must exist and be root's; `postfix check` makes what is inside it
    // and the data directory.
    let queue = beside("-spool");
    std::fs::create_dir_all(&queue).expect("queue directory");
    let out = std::process::Command::new("postconf")
        .arg("-c")
        .arg(dir)
        .arg("-e")
        .arg(format!("queue_directory={}", queue.display()))
        .arg(format!("data_directory={}", beside("-data").display()))
        .output()
        .expect("postconf (scripts/install-test-deps.sh)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "postconf -e: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// helm, as `scripts/test-cluster.sh build` made it (or `MAILTLS_HELM`); `None` when not built.
pub fn helm() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("MAILTLS_HELM") {
        return Some(path.into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, dir) =
        mail::sh(std::process::Command::new(root.join("scripts/test-cluster.sh")).arg("bin-dir"));
    let helm = std::path::PathBuf::from(dir.trim()).join("helm");
    (ok && helm.is_file()).then_some(helm)
}

/// The `mechanisms` of the chart's default policy (`<release>-published-policies`) among
/// the documents `helm template` rendered.
pub fn default_policy_mechanisms(docs: &[serde_json::Value]) -> &serde_json::Value {
    &docs
        .iter()
        .find(|d| d["kind"] == "TlsCompliance")
        .expect("the chart's default policy")["spec"]["mechanisms"]
}
