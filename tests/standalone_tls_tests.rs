//! The TLS tests inside the reconcile loop (`mailtls standalone --tests`): results land in
//! status (Tested/Compliant, counts, failures first), Monitor says what would fail, gateways
//! are tested, the interval and the test-now annotation decide when, and one slow host
//! never delays another resource's results. All servers are on loopback.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::fixtures::*;

struct World {
    dns: std::net::SocketAddr,
    port: u16,
    gateway: Ipv4Addr,
    ca_file: PathBuf,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mailtls standalone test CA");
    let zone = Zone::default();
    let (listeners, port) = bind_group(6).await;
    let mut listeners = listeners.into_iter();
    let servers = [
        (
            "good.test",
            Smtp::Good(server_config(&ca.leaf(&["mx.good.test"]), false)),
        ),
        ("plain.test", Smtp::NoStarttls),
        ("drip.test", Smtp::Drip),
        (
            "other.test",
            Smtp::Good(server_config(&ca.leaf(&["mx.other.test"]), false)),
        ),
        (
            "expiring.test",
            Smtp::Good(server_config(
                &ca.leaf_between(&["mx.expiring.test"], -60, 10),
                false,
            )),
        ),
    ];
    for (domain, behaviour) in servers {
        let (ip, l) = listeners.next().expect("listener");
        zone.mx(domain, 10, &format!("mx.{domain}"));
        zone.a(&format!("mx.{domain}"), ip);
        spawn_smtp(l, behaviour);
    }
    let (gateway, l) = listeners.next().expect("listener");
    spawn_smtp(l, Smtp::Good(server_config(&ca.leaf(&["gw.test"]), false)));
    let dns = spawn_dns(zone).await;
    let ca_file = ca.write_pem(dir.path());
    World {
        dns,
        port,
        gateway,
        ca_file,
        dir,
    }
}

impl World {
    fn input(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn write_policies(&self, test_now: Option<&str>) {
        let annotation = test_now
            .map(|v| format!("  annotations:\n    mailtls.io/test-now: \"{v}\"\n"))
            .unwrap_or_default();
        let yaml = format!(
            r#"apiVersion: mailtls.io/v1alpha1
kind: AddressList
metadata: {{name: fast}}
spec:
  entries: [good.test, user@plain.test, .wild.test]
---
apiVersion: mailtls.io/v1alpha1
kind: AddressList
metadata: {{name: slow}}
spec:
  entries: [drip.test]
---
apiVersion: mailtls.io/v1alpha1
kind: AddressList
metadata: {{name: legacy}}
spec:
  entries: [plain.test, other.test]
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata:
  name: fast
{annotation}spec:
  direction: Outbound
  addressLists: [{{name: fast}}]
  requireCASigned: true
  validateHostname: true
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata: {{name: slow}}
spec:
  direction: Outbound
  addressLists: [{{name: slow}}]
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata: {{name: legacy}}
spec:
  direction: Outbound
  addressLists: [{{name: legacy}}]
  enforcement: Monitor
---
apiVersion: mailtls.io/v1alpha1
kind: AddressList
metadata: {{name: soon}}
spec:
  entries: [expiring.test]
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata: {{name: soon}}
spec:
  direction: Outbound
  addressLists: [{{name: soon}}]
  requireCASigned: true
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata: {{name: inbound}}
spec:
  direction: Inbound
  addressLists: [{{name: legacy}}]
---
apiVersion: mailtls.io/v1alpha1
kind: AddressList
metadata: {{name: routed}}
spec:
  entries: [routed.test, .wild-routed.test]
---
apiVersion: mailtls.io/v1alpha1
kind: TlsCompliance
metadata: {{name: routed}}
spec:
  direction: Outbound
  addressLists: [{{name: routed}}]
  requireCASigned: true
---
apiVersion: mailtls.io/v1alpha1
kind: OutboundGateway
metadata: {{name: gw}}
spec:
  host: "{gw}"
  port: {port}
  appliesTo: Recipients
  addressLists: [{{name: routed}}]
  tls: {{require: true, requireCASigned: true}}
"#,
            gw = self.gateway,
            port = self.port,
        );
        std::fs::create_dir_all(self.input()).expect("mkdir");
        std::fs::write(self.input().join("policies.yaml"), yaml).expect("write");
    }

    fn args(&self, timeout: &str) -> Vec<String> {
        [
            "standalone",
            "--postfix-version",
            "3.7",
            "--tests",
            "--resolver",
            &self.dns.to_string(),
            "--test-smtp-port",
            &self.port.to_string(),
            "--test-ca-file",
            &self.ca_file.display().to_string(),
            "--test-timeout",
            timeout,
            "--dir",
            &self.input().display().to_string(),
            "--out",
            &self.out().display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn resource(&self, file: &str) -> serde_json::Value {
        read(&self.out().join("default/resources").join(file))
            .unwrap_or_else(|| panic!("{file} not written"))
    }
}

fn read(path: &Path) -> Option<serde_json::Value> {
    serde_norway::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn condition(r: &serde_json::Value, t: &str) -> (String, String, String) {
    let c = r["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

async fn standalone(args: &[String]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(args)
        .output()
        .await
        .expect("run mailtls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_write_results_into_status_and_follow_interval_and_test_now() {
    let w = world().await;
    w.write_policies(None);
    let out = standalone(&w.args("2s")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fast = w.resource("tlscompliance-fast.yaml");
    let last = &fast["status"]["lastTest"];
    assert_eq!(
        (
            last["destinations"].as_u64(),
            last["passed"].as_u64(),
            last["failed"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{last}"
    );
    assert_eq!(
        last["untestable"], 1,
        "the .wild.test wildcard names no host"
    );
    let results = fast["status"]["results"].as_array().expect("results");
    assert_eq!(results[0]["destination"], "plain.test", "failures first");
    assert_eq!(results[0]["outcome"], "starttls-not-supported");
    assert_eq!(results[1]["outcome"], "pass");
    assert_eq!(condition(&fast, "Tested").0, "True");
    let (status, reason, message) = condition(&fast, "Compliant");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NotCompliant"),
        "{message}"
    );
    assert!(message.contains("1 of 2 destinations fail"), "{message}");

    let legacy = w.resource("tlscompliance-legacy.yaml");
    let (status, reason, message) = condition(&legacy, "Compliant");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WouldFail"),
        "{message}"
    );
    assert!(message.contains("would fail once enforced"), "{message}");

    let slow = w.resource("tlscompliance-slow.yaml");
    assert_eq!(
        slow["status"]["results"][0]["outcome"], "timeout",
        "{}",
        slow["status"]
    );

    let gw = w.resource("outboundgateway-gw.yaml");
    assert_eq!(gw["status"]["lastTest"]["passed"], 1, "{}", gw["status"]);
    assert_eq!(condition(&gw, "Compliant").0, "True");

    // Mail to the routed destinations goes through the gateway, so that is the hop tested
    // (routed.test has no DNS at all), wildcard included; `explain` names the same hop.
    let routed = w.resource("tlscompliance-routed.yaml");
    let last = &routed["status"]["lastTest"];
    assert_eq!(
        (last["destinations"].as_u64(), last["passed"].as_u64()),
        (Some(2), Some(2)),
        "{}",
        routed["status"]
    );
    assert!(last["untestable"].is_null(), "{last}");
    let via = format!("[{}]:{} (OutboundGateway/gw)", w.gateway, w.port);
    let results = routed["status"]["results"].as_array().expect("results");
    let tested: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["destination"].as_str().unwrap_or_default(),
                r["via"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        tested,
        [
            (".wild-routed.test", via.as_str()),
            ("routed.test", via.as_str())
        ]
    );
    assert!(
        w.resource("tlscompliance-fast.yaml")["status"]["results"][0]["via"].is_null(),
        "direct destinations are tested on their own MX hosts"
    );
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("explain")
        .arg(w.input())
        .arg("someone@routed.test")
        .output()
        .expect("explain");
    let explain = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.contains(&format!("Tested on: {via}, requiring TLS with a CA-signed")),
        "{explain}"
    );

    let soon = w.resource("tlscompliance-soon.yaml");
    let (status, reason, message) = condition(&soon, "Compliant");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PassedWithWarnings"),
        "{message} {}",
        soon["status"]
    );
    assert!(message.contains("expiring.test ("), "{message}");
    assert_eq!(soon["status"]["lastTest"]["warnings"], 1);

    let inbound = w.resource("tlscompliance-inbound.yaml");
    assert_eq!(condition(&inbound, "Tested").1, "InboundOnly");
    assert!(inbound["status"]["lastTest"].is_null());

    // Not due again before the interval: a second pass tests nothing.
    let before = std::fs::read_to_string(w.out().join("default/resources/tlscompliance-fast.yaml"))
        .expect("read");
    let out = standalone(&w.args("2s")).await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("testing TLS of 0 destinations for 0 resources")
    );
    assert_eq!(
        before,
        std::fs::read_to_string(w.out().join("default/resources/tlscompliance-fast.yaml"))
            .expect("read")
    );

    // A new test-now value asks for one test of that resource only, once.
    w.write_policies(Some("2026-11-23T12:00"));
    let out = standalone(&w.args("2s")).await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("testing TLS of 2 destinations for 1 resources"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.resource("tlscompliance-fast.yaml")["status"]["lastTest"]["trigger"],
        "2026-11-23T12:00"
    );
    let out = standalone(&w.args("2s")).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("testing TLS of 0 destinations"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_host_never_delays_other_results_in_watch_mode() {
    let w = world().await;
    w.write_policies(None);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(w.args("20s"))
        .arg("--watch")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let fast = w.out().join("default/resources/tlscompliance-fast.yaml");
    let slow = w.out().join("default/resources/tlscompliance-slow.yaml");
    let deadline = Instant::now() + Duration::from_secs(15);
    let tested = |p: &Path| read(p).is_some_and(|r| !r["status"]["lastTest"].is_null());
    while !tested(&fast) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fast_done = tested(&fast);
    let slow_done = tested(&slow);
    let _ = child.kill().await;
    assert!(
        fast_done,
        "the fast resource's results should be written within seconds"
    );
    assert!(
        !slow_done,
        "the drip-fed host (20s step timeout) cannot have finished yet"
    );
}
