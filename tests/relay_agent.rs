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
