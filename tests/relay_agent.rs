//! The relay agent as a long-running sidecar: it follows kubelet's `..data` symlink swaps
//! and plain file edits in the watched directory, applies good configurations to a private
//! Postfix config directory (never /etc/postfix), refuses broken ones while the last good one
//! stays, and reports both on `/status`. Needs Postfix (scripts/install-test-deps.sh).

mod common;
use common::{gateway, list, policy};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn render(input: &str, work: &Path, cm: &Path, version: &str, maps: &Path) {
    render_into(input, work, &cm.join(version), maps);
}

/// A temporary directory with a private Postfix config directory in it (never
/// /etc/postfix): (temp dir, config dir, maps dir).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc");
    common::private_postfix_config(&etc);
    let maps = etc.join("mailtls");
    (tmp, etc, maps)
}

fn first_policy() -> String {
    list("partners", &["partner.test"]) + &policy("p", &["partners"], "")
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string()
}

fn start_agent(watch: &Path, etc: &Path, maps: &Path, addr: &str) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-agent")
            .arg("--watch-dir")
            .arg(watch)
            .arg("--postfix-dir")
            .arg(etc)
            .arg("--maps-dir")
            .arg(maps)
            .args(["--status-addr", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start relay-agent"),
    )
}

fn render_into(input: &str, work: &Path, out_dir: &Path, maps: &Path) {
    let file = work.join("policy.yaml");
    std::fs::write(&file, input).expect("write policy");
    let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("render")
        .arg(&file)
        .arg("--output")
        .arg(out_dir)
        .arg("--config-dir")
        .arg(maps)
        .args(["--postfix-version", "3.7"])
        .output()
        .expect("run mailtls render");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hash_of(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["hash"].as_str().expect("hash").to_string()
}

/// GET a path from the agent: (status line, body).
fn get(addr: &str, path: &str) -> Option<(String, String)> {
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn status(addr: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get(addr, "/status")?.1).ok()
}

fn wait_status(
    addr: &str,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(addr).filter(|s| cond(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last /status: {:?}",
            status(addr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn postconf(etc: &Path, name: &str) -> String {
    let out = Command::new("postconf")
        .arg("-c")
        .arg(etc)
        .args(["-h", name])
        .output()
        .expect("postconf");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn agent_follows_configmap_swaps_and_refuses_broken_edits() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let cm = work.join("configmap");
    std::fs::create_dir_all(&cm).expect("configmap");

    let v1 = first_policy();
    render(&v1, work, &cm, "..v1", &maps);
    common::kubelet_swap(&cm, "..v1");

    let addr = free_addr();
    let _agent = start_agent(&cm, &etc, &maps, &addr);
    let h1 = hash_of(&cm.join("..v1"));
    wait_status(&addr, "v1 applied", |s| s["appliedHash"] == h1.as_str());
    assert_eq!(postconf(&etc, "relayhost"), "");
    let (line, _) = get(&addr, "/healthz").expect("healthz");
    assert!(line.contains("200"), "{line}");

    // kubelet publishes a new version: applied without a restart.
    let v2 = v1 + &gateway("all", "  host: smarthost.test\n  appliesTo: AllMail");
    render(&v2, work, &cm, "..v2", &maps);
    common::kubelet_swap(&cm, "..v2");
    let h2 = hash_of(&cm.join("..v2"));
    let s = wait_status(&addr, "v2 applied", |s| s["appliedHash"] == h2.as_str());
    assert_eq!(s["appliedTotal"], 2);
    assert_eq!(postconf(&etc, "relayhost"), "[smarthost.test]");
    // Re-applying never stacks: one mailtls block in master.cf, the base kept aside.
    let master = std::fs::read_to_string(etc.join("master.cf")).expect("master.cf");
    assert_eq!(master.matches("# BEGIN mailtls").count(), 1);
    assert!(etc.join("main.cf.mailtls-base").exists());

    // A plain edit of a file in place: refused, reported, the last good one stays.
    let tls_policy = cm.join("..v2").join("tls_policy");
    let text = std::fs::read_to_string(&tls_policy).expect("tls_policy");
    std::fs::write(&tls_policy, text + "partner.test none\n").expect("edit");
    let s = wait_status(&addr, "the edit refused", |s| {
        s["lastRefused"]["hash"] == h2.as_str()
    });
    assert_eq!(s["appliedHash"], h2.as_str());
    assert!(s["refusedTotal"].as_u64().is_some_and(|n| n >= 1), "{s}");
    let reason = s["lastRefused"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("does not match the manifest"), "{reason}");
    assert_eq!(postconf(&etc, "relayhost"), "[smarthost.test]");
    assert_eq!(hash_of(&maps), h2);
}

/// Without kubelet: the watched directory holds plain files, rewritten in place by
/// `mailtls render` (each file replaced by rename); the agent applies the new version.
#[test]
fn agent_follows_plain_directory_rewrites() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let plain = work.join("plain");
    let v1 = first_policy();
    render_into(&v1, work, &plain, &maps);
    let addr = free_addr();
    let _agent = start_agent(&plain, &etc, &maps, &addr);
    let h1 = hash_of(&plain);
    wait_status(&addr, "v1 applied", |s| s["appliedHash"] == h1.as_str());

    let v2 = v1 + &gateway("all", "  host: smarthost.test\n  appliesTo: AllMail");
    render_into(&v2, work, &plain, &maps);
    let h2 = hash_of(&plain);
    assert_ne!(h1, h2);
    wait_status(&addr, "v2 applied", |s| s["appliedHash"] == h2.as_str());
    assert_eq!(postconf(&etc, "relayhost"), "[smarthost.test]");
    // Only the installed version is kept beside the maps link.
    let versions = std::fs::read_dir(&etc)
        .expect("etc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".mailtls-maps-")
        })
        .count();
    assert_eq!(versions, 1);
}

/// The layout the controller writes when files are large: `tls_policy.gz` and friends in
/// the ConfigMap's binaryData. The agent inflates them, checks them against the manifest
/// and installs plain maps; a corrupt or ambiguous one is refused and the last good stays.
#[test]
fn agent_applies_compressed_files_and_refuses_bad_ones() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let entries: Vec<String> = (0..3000).map(|i| format!("partner{i}.test")).collect();
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    let input = list("partners", &refs) + &policy("p", &["partners"], "");
    let rendered = work.join("rendered");
    render_into(&input, work, &rendered, &maps);
    let files: std::collections::BTreeMap<String, String> = std::fs::read_dir(&rendered)
        .expect("rendered")
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect();
    let cm = work.join("configmap");
    common::write_packed(&cm.join("..v1"), &files);
    assert!(cm.join("..v1/tls_policy.gz").exists());
    assert!(!cm.join("..v1/tls_policy").exists());
    common::kubelet_swap(&cm, "..v1");

    let addr = free_addr();
    let _agent = start_agent(&cm, &etc, &maps, &addr);
    let h1 = hash_of(&rendered);
    wait_status(&addr, "the compressed configuration applied", |s| {
        s["appliedHash"] == h1.as_str()
    });
    let installed = std::fs::read_to_string(maps.join("tls_policy")).expect("installed map");
    assert_eq!(installed, files["tls_policy"]);
    let out = Command::new("postmap")
        .arg("-q")
        .arg("partner2999.test")
        .arg(format!("lmdb:{}", maps.join("tls_policy").display()))
        .output()
        .expect("postmap");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("encrypt"),
        "{out:?}"
    );

    // A truncated compressed file: refused, the last good configuration stays.
    common::write_packed(&cm.join("..v2"), &files);
    let gz = cm.join("..v2/tls_policy.gz");
    let bytes = std::fs::read(&gz).expect("gz");
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).expect("truncate");
    common::kubelet_swap(&cm, "..v2");
    let s = wait_status(&addr, "the truncated file refused", |s| {
        s["refusedTotal"].as_u64() >= Some(1)
    });
    let reason = s["lastRefused"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("tls_policy.gz"), "{reason}");
    assert_eq!(s["appliedHash"], h1.as_str());

    // Both a text and a compressed copy of one file: which is meant is unclear, refused.
    common::write_packed(&cm.join("..v3"), &files);
    std::fs::write(cm.join("..v3/tls_policy"), &files["tls_policy"]).expect("plain copy");
    common::kubelet_swap(&cm, "..v3");
    let s = wait_status(&addr, "the ambiguous file refused", |s| {
        s["refusedTotal"].as_u64() >= Some(2)
    });
    let reason = s["lastRefused"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("both tls_policy and tls_policy.gz"),
        "{reason}"
    );
    assert_eq!(s["appliedHash"], h1.as_str());
    assert_eq!(hash_of(&maps), h1);
}

fn agent_once(watch: &Path, etc: &Path, maps: &Path, path_env: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailtls"));
    cmd.arg("relay-agent")
        .arg("--watch-dir")
        .arg(watch)
        .arg("--postfix-dir")
        .arg(etc)
        .arg("--maps-dir")
        .arg(maps)
        .arg("--once");
    if let Some(path) = path_env {
        cmd.env("PATH", path);
    }
    let out = cmd.output().expect("run relay-agent");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Rewrite `name` in a rendered directory and fix the manifest to match: the agent must
/// judge the content, not the manifest.
fn rewrite(dir: &Path, name: &str, change: impl FnOnce(String) -> String) {
    use mailtls::render::{content_hash, sha256_hex};
    let text = std::fs::read_to_string(dir.join(name)).expect("file");
    std::fs::write(dir.join(name), change(text)).expect("write");
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).expect("manifest"))
            .expect("json");
    let mut digests = std::collections::BTreeMap::new();
    let names: Vec<String> = manifest["files"]
        .as_object()
        .expect("files")
        .keys()
        .cloned()
        .collect();
    for n in names {
        let digest = sha256_hex(&std::fs::read_to_string(dir.join(&n)).expect("file"));
        manifest["files"][&n] = format!("sha256:{digest}").into();
        digests.insert(n, digest);
    }
    manifest["hash"] = content_hash(&digests).into();
    std::fs::write(&manifest_path, manifest.to_string()).expect("manifest");
}

/// A master.cf without a final newline, the relay's own base or the rendered one, never
/// runs into the next line: every service keeps its last option as written.
#[test]
fn master_cf_without_final_newline_keeps_every_service_whole() {
    let (tmp, etc, maps) = setup();
    let base = std::fs::read_to_string(etc.join("master.cf")).expect("master.cf");
    std::fs::write(etc.join("master.cf"), base.trim_end()).expect("base without newline");
    let rendered = tmp.path().join("rendered");
    render_into(&first_policy(), tmp.path(), &rendered, &maps);
    rewrite(&rendered, "master.cf", |t| t.trim_end().to_string());
    let (ok, out) = agent_once(&rendered, &etc, &maps, None);
    assert!(ok, "{out}");

    let params = Command::new("postconf")
        .arg("-c")
        .arg(&etc)
        .arg("-P")
        .output()
        .expect("postconf -P");
    let params = String::from_utf8_lossy(&params.stdout);
    let block = std::fs::read_to_string(rendered.join("master.cf")).expect("master.cf");
    let service = block
        .lines()
        .rfind(|l| l.starts_with("mailtls-"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a rendered service");
    let (name, value) = block
        .lines()
        .next_back()
        .and_then(|l| l.strip_prefix("  -o "))
        .and_then(|o| o.split_once('='))
        .expect("the last line is an option");
    let last = format!("{service}/unix/{name} = {value}\n");
    assert!(params.contains(&last), "{last} not in:\n{params}");
    let services = Command::new("postconf")
        .arg("-c")
        .arg(&etc)
        .arg("-M")
        .output()
        .expect("postconf -M");
    let services = String::from_utf8_lossy(&services.stdout);
    let last_base = services
        .lines()
        .find(|l| l.starts_with("mailman "))
        .expect("the base's last service");
    assert!(last_base.ends_with("${nexthop} ${user}"), "{last_base}");
    assert!(!services.contains("# END"), "{services}");
}

/// Rendered for Postfix 3.10 (`tls_required_enable = no`), applied on this Postfix: the
/// agent adapts the line to the local release instead of refusing.
#[test]
fn a_configuration_rendered_for_another_release_is_adapted_not_refused() {
    let (tmp, etc, maps) = setup();
    let rendered = tmp.path().join("rendered");
    let file = tmp.path().join("policy.yaml");
    std::fs::write(&file, first_policy()).expect("policy");
    let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("render")
        .arg(&file)
        .arg("--output")
        .arg(&rendered)
        .arg("--config-dir")
        .arg(&maps)
        .args(["--postfix-version", "3.10"])
        .output()
        .expect("render");
    assert!(out.status.success(), "{out:?}");
    let main = std::fs::read_to_string(rendered.join("main.cf")).expect("main.cf");
    assert!(main.contains("tls_required_enable = no"), "{main}");
    let (ok, out) = agent_once(&rendered, &etc, &maps, None);
    assert!(ok, "refused:\n{out}");
    let local = postconf(&etc, "mail_version");
    let minor: u32 = local
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("mail_version");
    let set = Command::new("postconf")
        .arg("-c")
        .arg(&etc)
        .args(["-n", "tls_required_enable"])
        .output()
        .expect("postconf -n");
    let set = String::from_utf8_lossy(&set.stdout).trim().to_string();
    let want = if local.starts_with("3.") && minor < 10 {
        ""
    } else {
        "tls_required_enable = no"
    };
    assert_eq!(set, want, "Postfix {local}");
}

/// A private Postfix that runs (no listener), logging to a file; stopped on drop.
struct Running {
    etc: PathBuf,
}

impl Running {
    fn start(etc: &Path, log: &Path) -> Running {
        let prefix = log.parent().expect("log dir");
        for args in [
            vec![
                "-e".to_string(),
                format!("maillog_file={}", log.display()),
                format!("maillog_file_prefixes={}", prefix.display()),
                "inet_interfaces=loopback-only".into(),
            ],
            vec!["-M#".into(), "smtp/inet".into()],
            vec!["-F".into(), "*/*/chroot = n".into()],
        ] {
            let out = Command::new("postconf")
                .arg("-c")
                .arg(etc)
                .args(&args)
                .output()
                .expect("postconf");
            assert!(out.status.success(), "postconf {args:?}: {out:?}");
        }
        let out = Command::new("postfix")
            .arg("-c")
            .arg(etc)
            .arg("start")
            .output()
            .expect("postfix start");
        assert!(out.status.success(), "postfix start: {out:?}");
        Running {
            etc: etc.to_path_buf(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .output();
    }
}

/// `postfix check` warns through the mail log; while Postfix runs that is the running
/// instance's postlogd. The agent still sees the warning and refuses.
#[test]
fn postfix_check_warnings_refuse_while_postfix_runs() {
    let (tmp, etc, maps) = setup();
    let live_log = tmp.path().join("maillog");
    let rendered = tmp.path().join("rendered");
    render_into(&first_policy(), tmp.path(), &rendered, &maps);
    // A file anyone may write in the config directory: `postfix check` warns about it,
    // whether Postfix is stopped or runs.
    let stray = etc.join("stray");
    std::fs::write(&stray, "").expect("stray");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
    std::fs::set_permissions(&stray, mode).expect("chmod");
    let (ok, out) = agent_once(&rendered, &etc, &maps, None);
    assert!(
        !ok && out.contains("group or other writable"),
        "stopped:\n{out}"
    );
    let _postfix = Running::start(&etc, &live_log);
    let (ok, out) = agent_once(&rendered, &etc, &maps, None);
    assert!(!ok, "applied despite the warning:\n{out}");
    assert!(out.contains("group or other writable"), "{out}");
    assert!(!maps.join("manifest.json").exists());

    std::fs::remove_file(&stray).expect("rm");
    let (ok, out) = agent_once(&rendered, &etc, &maps, None);
    assert!(ok, "{out}");
}

/// A `postfix` in a new `bin` under `work` that runs `on_reload` (shell) for `postfix -c DIR
/// reload` and the real one otherwise (or after `on_reload`, unless it exits); the PATH
/// that puts it first.
fn postfix_wrapper(work: &Path, on_reload: &str) -> String {
    let bin = work.join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let real = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "command -v postfix"])
            .output()
            .expect("command -v")
            .stdout,
    )
    .trim()
    .to_string();
    let wrapper =
        format!("#!/bin/sh\nif [ \"$3\" = reload ]; then\n{on_reload}\nfi\nexec {real} \"$@\"\n");
    std::fs::write(bin.join("postfix"), wrapper).expect("wrapper");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(bin.join("postfix"), mode).expect("chmod");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Removing the gateway every mail goes to: the relayhost's TLS row must still be there when
/// the running Postfix reloads (mail routed by the running main.cf until then), and gone
/// only after. A `postfix` wrapper records the table and the live relayhost at each reload.
#[test]
fn a_gateway_keeps_its_tls_row_until_postfix_has_reloaded() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let with_gateway = first_policy()
        + &gateway(
            "all",
            "  host: smarthost.test\n  appliesTo: AllMail\n  tls:\n    require: true",
        );
    let cm = work.join("configmap");
    render(&with_gateway, work, &cm, "..v1", &maps);
    common::kubelet_swap(&cm, "..v1");
    let _postfix = Running::start(&etc, &work.join("maillog"));
    let (ok, out) = agent_once(&cm, &etc, &maps, None);
    assert!(ok, "{out}");
    let row = |maps: &Path| {
        let out = Command::new("postmap")
            .arg("-q")
            .arg("[smarthost.test]")
            .arg(format!("lmdb:{}", maps.join("tls_policy").display()))
            .output()
            .expect("postmap -q");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(row(&maps), "encrypt protocols=>=TLSv1.2");

    let record = work.join("reloads");
    let path = postfix_wrapper(
        work,
        &format!(
            "  echo \"row=$(postmap -q '[smarthost.test]' lmdb:{maps}/tls_policy) relayhost=$(postconf -c \"$2\" -h relayhost)\" >> {record}",
            maps = maps.display(),
            record = record.display(),
        ),
    );

    render(&first_policy(), work, &cm, "..v2", &maps);
    common::kubelet_swap(&cm, "..v2");
    let (ok, out) = agent_once(&cm, &etc, &maps, Some(&path));
    assert!(ok, "{out}");
    let reloads = std::fs::read_to_string(&record).expect("reloads recorded");
    let reloads: Vec<&str> = reloads.lines().collect();
    // First reload: the new main.cf (no relayhost) with the old row still in the table.
    assert_eq!(
        reloads.first().copied(),
        Some("row=encrypt protocols=>=TLSv1.2 relayhost="),
        "{reloads:?}"
    );
    assert_eq!(
        reloads.last().copied(),
        Some("row= relayhost="),
        "{reloads:?}"
    );
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(row(&maps), "");
    assert_eq!(hash_of(&maps), hash_of(&cm.join("..v2")));
}

/// A configuration that is valid and installed but whose reload fails is not a refusal: the
/// agent says Postfix was not reloaded (the previous configuration runs on), not that the
/// configuration was refused. A `postfix` wrapper fails every reload.
#[test]
fn a_failed_reload_is_reported_as_such_not_as_a_refusal() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let cm = work.join("configmap");
    render(&first_policy(), work, &cm, "..v1", &maps);
    common::kubelet_swap(&cm, "..v1");
    let _postfix = Running::start(&etc, &work.join("maillog"));
    let path = postfix_wrapper(work, "  echo 'reload failed by the test' >&2\n  exit 1");
    let (ok, out) = agent_once(&cm, &etc, &maps, Some(&path));
    assert!(!ok, "a failed reload counts as success:\n{out}");
    assert!(out.contains("Postfix was not reloaded"), "{out}");
    assert!(out.contains("reload failed by the test"), "{out}");
    assert!(!out.contains("configuration refused"), "{out}");
    // Installed all the same: the files are in place for the next reload.
    assert_eq!(hash_of(&maps), hash_of(&cm.join("..v1")));
}

const SKIP_SELF_TEST: &str = "MAILTLS_SKIP_SELF_TEST";

/// A test that skips itself (no root, no IPv6 loopback) passes quietly on a developer's
/// machine and fails under `CI=true`: run this test's own binary, made to skip, both ways.
#[test]
fn a_skipping_test_fails_under_ci() {
    if std::env::var_os(SKIP_SELF_TEST).is_some() {
        common::skip::skip("asked to by the self-test");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new(&exe);
        cmd.args(["a_skipping_test_fails_under_ci", "--exact", "--nocapture"])
            .env(SKIP_SELF_TEST, "1")
            .env_remove("CI");
        if let Some(ci) = ci {
            cmd.env("CI", ci);
        }
        cmd.output().expect("run the test binary")
    };
    let ci = run(Some("true"));
    assert!(!ci.status.success(), "a skip passed under CI=true");
    assert!(
        String::from_utf8_lossy(&ci.stderr).contains("CI=true, and this test cannot run here"),
        "{ci:?}"
    );
    let local = run(None);
    assert!(local.status.success(), "{local:?}");
    assert!(String::from_utf8_lossy(&local.stderr).contains("skipped: asked to"));
}

/// The relay pod's init container never blocks the pod: with no configuration published it
/// seeds the base and succeeds; with a refused one it says so, succeeds, and leaves the
/// base configuration (nothing mandatory, no mailtls maps) with delivery held, on which the
/// pod is not Ready; with a good one it applies it, which releases the hold. The image's own config is never modified.
#[test]
fn relay_init_never_blocks_the_pod_and_applies_what_it_can() {
    let (tmp, image, _) = setup();
    let work = tmp.path();
    let live = work.join("live");
    let maps = live.join("mailtls");
    let cm = work.join("configmap");
    std::fs::create_dir_all(&cm).expect("configmap");
    let image_main = std::fs::read_to_string(image.join("main.cf")).expect("image main.cf");
    let init = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-init")
            .arg("--image-config")
            .arg(&image)
            .arg("--postfix-dir")
            .arg(&live)
            .arg("--maps-dir")
            .arg(&maps)
            .arg("--watch-dir")
            .arg(&cm)
            .args(extra)
            .output()
            .expect("relay-init");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };

    // Nothing published: the base, with the relay's settings.
    let (code, out) = init(&["--client-cidr=10.0.0.0/8", "--hostname=relay.example.com"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("no relay configuration published yet"),
        "{out}"
    );
    assert_eq!(
        postconf(&live, "mynetworks"),
        "127.0.0.0/8 [::1]/128 10.0.0.0/8"
    );
    assert_eq!(postconf(&live, "myhostname"), "relay.example.com");
    assert_eq!(postconf(&live, "smtpd_tls_security_level"), "none");
    assert_eq!(postconf(&live, "defer_transports"), "lmtp relay smtp");
    assert!(!maps.exists());

    // A damaged configuration: refused, said, and the pod still starts on the base.
    render(&first_policy(), work, &cm, "..v1", &maps);
    common::kubelet_swap(&cm, "..v1");
    rewrite(&cm.join("..v1"), "master.cf", |m| {
        m + "evil unix - n n - - pipe\n  flags=F user=nobody argv=/bin/sh -c id\n"
    });
    let (code, out) = init(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration refused"), "{out}");
    assert!(
        !maps.exists(),
        "nothing of the refused configuration installed"
    );
    assert!(!postconf(&live, "smtp_tls_policy_maps").contains("mailtls"));
    assert_eq!(postconf(&live, "defer_transports"), "lmtp relay smtp");
    // Seeding starts from the image every time: the previous run's settings are gone.
    assert_eq!(postconf(&live, "mynetworks"), "127.0.0.0/8 [::1]/128");

    // A good one: applied before Postfix starts.
    render(&first_policy(), work, &cm, "..v2", &maps);
    common::kubelet_swap(&cm, "..v2");
    let (code, out) = init(&["--client-cidr=10.0.0.0/8"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration applied"), "{out}");
    assert_eq!(hash_of(&maps), hash_of(&cm.join("..v2")));
    assert!(postconf(&live, "smtp_tls_policy_maps").contains(&maps.display().to_string()));
    assert_eq!(postconf(&live, "defer_transports"), "");
    assert_eq!(
        postconf(&live, "mynetworks"),
        "127.0.0.0/8 [::1]/128 10.0.0.0/8"
    );
    assert_eq!(
        std::fs::read_to_string(image.join("main.cf")).expect("image main.cf"),
        image_main
    );

    // Bad settings: every problem at once, exit 2, nothing touched.
    let (code, out) = init(&["--client-cidr=10.1.2.3/8", "--hostname=relay"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("host bits set") && out.contains("fully qualified"),
        "{out}"
    );
    assert_eq!(hash_of(&maps), hash_of(&cm.join("..v2")));
}

/// The agent follows Postfix's own log file (written by the real postlogd) through many
/// rotations of its own: every delivery line is counted and echoed exactly once, the file
/// stays near its size limit, and no rotated file is left behind. Local parts never reach
/// `/observed` or `/metrics`.
#[test]
fn the_mail_log_is_counted_once_across_rotations() {
    let (tmp, etc, maps) = setup();
    let work = tmp.path();
    let log = work.join("maillog");
    let _postfix = Running::start(&etc, &log);
    let cm = work.join("cm");
    std::fs::create_dir_all(&cm).expect("cm");
    let addr = free_addr();
    let echo = std::fs::File::create(work.join("echo.log")).expect("echo file");
    let _agent = Kill(
        Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-agent")
            .arg("--watch-dir")
            .arg(&cm)
            .arg("--postfix-dir")
            .arg(&etc)
            .arg("--maps-dir")
            .arg(&maps)
            .args(["--status-addr", &addr])
            .arg("--mail-log")
            .arg(&log)
            .args(["--echo-mail-log", "--mail-log-max-size", "4KiB"])
            .stdout(echo)
            .stderr(Stdio::null())
            .spawn()
            .expect("start relay-agent"),
    );
    // Lines already in the file when the agent opens it are counted, not echoed: write only
    // once it has read Postfix's start-up lines.
    wait_status(&addr, "the agent to read the log", |s| {
        s["observed"]["logLines"].as_u64() > Some(0)
    });
    const N: usize = 300;
    for i in 0..N {
        let out = Command::new("postlog")
            .arg("-c")
            .arg(&etc)
            .args(["-t", "postfix/smtp"])
            .arg(format!(
                "Q{i:05X}: to=<person{i}@d{}.test>, relay=mx.d.test[192.0.2.1]:25, delay=0.1, \
                 delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
                i % 7
            ))
            .output()
            .expect("postlog");
        assert!(out.status.success(), "postlog: {out:?}");
    }
    let counted = |s: &serde_json::Value| s["observed"]["totals"]["plaintext"].as_u64();
    wait_status(&addr, "every line counted", |s| {
        counted(s) == Some(N as u64)
    });
    wait_for_quiet(&work.join("maillog.mailtls-old"));

    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size < 16 * 1024, "the log was not rotated: {size} bytes");
    let echoed = std::fs::read_to_string(work.join("echo.log")).expect("echo");
    for i in 0..N {
        let id = format!("Q{i:05X}: to=");
        assert_eq!(echoed.matches(&id).count(), 1, "{id} echoed not once");
    }
    let (_, observed) = get(&addr, "/observed?hours=1").expect("/observed");
    assert!(!observed.contains("person"), "{observed}");
    let observed: serde_json::Value = serde_json::from_str(&observed).expect("json");
    let per_domain: Vec<u64> = observed["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .map(|d| d["plaintext"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per_domain.len(), 7);
    assert_eq!(per_domain.iter().sum::<u64>(), N as u64);
    let (_, metrics) = get(&addr, "/metrics").expect("/metrics");
    assert!(
        metrics.contains(&format!(
            "mailtls_relay_delivered_total{{tls=\"none\"}} {N}"
        )),
        "{metrics}"
    );
    let (code, _) = get(&addr, "/observed?hours=0").expect("/observed");
    assert!(code.contains("400"), "{code}");
}

/// Wait until `path` does not exist (a rotation still being read).
fn wait_for_quiet(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} left behind", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}
