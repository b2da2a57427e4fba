//! The chart's relay pod, run for real: the relay and operator images built from this
//! binary (scripts/test-images.sh, deploy/docker/*.local.Dockerfile), the relay manifests
//! from `helm template charts/mailtls`, played with podman. Shows, with the image's own
//! Postfix: mail from a client outside the pod is relayed to a TLS receiver by policy; a
//! client outside `relay.clientCIDRs` is refused (554 5.7.1); a listed inbound sender gets
//! 550 in plaintext and is accepted over STARTTLS with the Secret's certificate; a new
//! ConfigMap is in force for the next message; mail deferred by policy (a receiver without
//! STARTTLS where TLS is required) survives the pod's replacement on the queue volume and is
//! delivered, once, when the receiver is fixed. The policy is rendered by the operator
//! image (`mailtls render` with the flags the chart gives the operator).
//!
//! Runs inside a private network namespace: the test re-executes itself through
//! `scripts/test-images.sh run --netns` (podman's cgroup set-up, DESIGN.md §7), and the pod
//! is played with `--network host`, which in there is that namespace (`kube play --network
//! ns:PATH` is refused by podman 4.3): clients, receivers, DNS and the relay only ever talk
//! on its addresses. The receivers listen on port 2525, as the pod's Postfix has port 25 of
//! every address.
//!
//! What podman 4.3 cannot run as a cluster would, and what the test does instead (every
//! change is to the played copy, never to the chart):
//! * No StatefulSet in `kube play`: its pod template becomes a Pod named like the
//!   StatefulSet's first pod, its `volumeClaimTemplates` PersistentVolumeClaims (podman makes
//!   each a named volume, which outlives the pod, like a PVC).
//! * `subPath` on such a volume is ignored (both of the chart's queue mounts got the whole
//!   volume): each (claim, subPath) mount becomes a hostPath mount of that directory inside
//!   the claim's volume, which is what kubelet mounts.
//! * Init containers get the pod's restart policy and are re-run until `kube play` fails
//!   (podman #15631): the Pod gets `restartPolicy: OnFailure`.
//! * A secret volume without `optional` crashes `kube play` (podman #16636): `optional:
//!   false` is written out. The Secret is a podman secret holding the Secret's YAML, whose
//!   `data` podman writes out without base64-decoding it (`stringData` it ignores): the
//!   test's Secret carries the PEM text itself in `data`.
//! * `containerPort`s are refused with host networking, probes become systemd timers (there
//!   is no systemd) and `preStop` hooks are not run: ports and probes are left out; the test
//!   runs the chart's readiness probes itself, and the `preStop` command with `podman exec`
//!   before stopping the pod.
//! * No kubelet refreshes a mounted ConfigMap: the test writes the new version into the
//!   ConfigMap's podman volume the way kubelet does (`..data` swapped in one rename).
//! * `emptyDir` volumes become volumes named after the pod's volume name: they get the pod's
//!   name in front so two pods never share one.
//! * `dnsPolicy: None` with a `dnsConfig` cannot go with host networking: they are left out,
//!   and the test writes the namespace's resolv.conf as kubelet would from the chart's
//!   `dnsConfig` (the pod's own validating resolver, `relay.dnssec`, with `trust-ad`). That
//!   resolver forwards to the test's DNS server, so mail through the gateway shows Postfix
//!   resolves through it.
//!
//! Needs root, podman and debootstrap (scripts/install-test-deps.sh), helm
//! (scripts/test-cluster.sh build), and deb.debian.org once to make the base image. Skipped
//! where podman cannot run, except under CI=true.

mod common;

use common::mail::{
    Certs, Netns, Pem, Store, arrived, der, dnsmasq, http_get, must, offered_certificate, send, sh,
    start_sink_on, tls_config, wait_for,
};
use common::{gateway, list, policy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const INSIDE: &str = "MAILTLS_RELAY_POD_NETNS";
const TEST_NAME: &str = "relay_pod_from_the_chart_on_podman";
const DNS: &str = "127.0.0.53";
/// The pod's address for clients (the pod shares the namespace, so all of them are its own).
const RELAY: &str = "10.99.0.1";
const CLIENT: &str = "10.99.0.2";
const OUTSIDER: &str = "10.99.0.3";
/// The organisation's own mail server (relay.inbound.nextHop).
const CORP_MX: (&str, &str) = ("corp-mx", "10.99.0.50");
/// The AllMail gateway: verified TLS required.
const GATEWAY: (&str, &str) = ("gateway", "10.99.0.60");
/// The receivers' port: Postfix in the pod listens on port 25 of every address here.
const SINK_PORT: u16 = 2525;
const HOSTNAME: &str = "relay.corp.test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn images_script() -> PathBuf {
    root().join("scripts/test-images.sh")
}

/// The images scripts/test-images.sh builds: (relay, operator).
fn images() -> (String, String) {
    let out = must(Command::new(images_script()).arg("images"));
    let mut lines = out.lines().map(str::to_string);
    let relay = lines.next().expect("relay image name");
    let operator = lines.next().expect("operator image name");
    (relay, operator)
}

/// The local Dockerfiles build what the published ones do: the same Postfix step, entry
/// point and user, only the base and where the binary comes from differ.
#[test]
fn local_dockerfiles_match_the_published_ones() {
    let read = |name: &str| {
        std::fs::read_to_string(root().join("deploy/docker").join(name)).expect("Dockerfile")
    };
    // Instructions (continuation lines joined), comments left out.
    let instructions = |text: &str| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut continued = false;
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if continued {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            } else if !line.trim().is_empty() {
                out.push(line.to_string());
            }
            continued = line.ends_with('\\');
        }
        out
    };
    let keep = |text: &str, skip: &[&str]| -> Vec<String> {
        instructions(text)
            .into_iter()
            .filter(|i| !skip.iter().any(|s| i.starts_with(s)))
            .collect()
    };
    // The published ones: the final stage only, without its FROM and COPY --from.
    let final_stage = |text: &str| -> String {
        let at = text.rfind("\nFROM ").expect("a final stage");
        text[at..].to_string()
    };
    for (published, local) in [
        ("relay.Dockerfile", "relay.local.Dockerfile"),
        ("operator.Dockerfile", "operator.local.Dockerfile"),
    ] {
        assert_eq!(
            keep(&final_stage(&read(published)), &["FROM", "COPY"]),
            keep(&read(local), &["FROM", "COPY", "ARG"]),
            "{local} no longer builds what {published} does"
        );
    }
}

#[test]
fn relay_pod_from_the_chart_on_podman() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    if sh(Command::new("id").arg("-u")).1.trim() != "0" {
        common::skip::skip("the relay pod test needs root (podman, network namespaces)");
        return;
    }
    let (ok, out) = sh(Command::new(images_script()).arg("check"));
    if !ok {
        common::skip::skip(out.trim());
        return;
    }
    if common::helm().is_none() {
        common::skip::skip(
            "the relay pod test needs helm: scripts/test-cluster.sh build (or MAILTLS_HELM)",
        );
        return;
    }
    let build = Command::new(images_script())
        .arg("build")
        .arg(env!("CARGO_BIN_EXE_mailtls"))
        .status()
        .expect("run scripts/test-images.sh build");
    if build.code() == Some(3) {
        common::skip::skip("podman cannot build the images here (see above)");
        return;
    }
    assert!(build.success(), "scripts/test-images.sh build failed");
    let ns = Netns::create(
        &format!("mailtls-pod-{}", std::process::id()),
        &[DNS, RELAY, CLIENT, OUTSIDER, CORP_MX.1, GATEWAY.1],
        DNS,
    );
    let status = Command::new(images_script())
        .args(["run", "--netns", &ns.name, "--"])
        .arg(std::env::current_exe().expect("test binary path"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, &ns.name)
        .status()
        .expect("run the test inside the namespace");
    assert!(status.success(), "the run inside {} failed", ns.name);
}

fn podman() -> Command {
    Command::new("podman")
}

/// The YAML documents of a stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_norway::to_string(d).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the chart's output"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The claims of a StatefulSet's first pod: (template name, claim name, PVC document).
fn claims(sts: &Value, pod: &str) -> Vec<(String, String, Value)> {
    let templates = sts["spec"]["volumeClaimTemplates"].as_array();
    templates
        .into_iter()
        .flatten()
        .map(|t| {
            let name = t["metadata"]["name"].as_str().expect("claim template name");
            let claim = format!("{name}-{pod}");
            let pvc = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "labels": t["metadata"]["labels"]},
                "spec": t["spec"],
            });
            (name.to_string(), claim, pvc)
        })
        .collect()
}

/// The StatefulSet's pod template as a Pod podman 4.3 runs (see the module doc for each
/// change). `claim_dirs`: claim template name → the directory of the claim's volume.
fn pod_for_podman(sts: &Value, pod: &str, claim_dirs: &BTreeMap<String, String>) -> Value {
    let mut spec = sts["spec"]["template"]["spec"].clone();
    spec["restartPolicy"] = json!("OnFailure");
    if let Some(s) = spec.as_object_mut() {
        s.remove("dnsPolicy");
        s.remove("dnsConfig");
    }
    let mut renamed = BTreeMap::new();
    let mut volumes = Vec::new();
    for mut v in spec["volumes"].as_array().cloned().unwrap_or_default() {
        let name = v["name"].as_str().expect("volume name").to_string();
        if v.get("emptyDir").is_some() {
            let unique = format!("{pod}-{name}");
            v["name"] = json!(unique);
            renamed.insert(name, unique);
        }
        if v.get("secret").is_some() && v["secret"].get("optional").is_none() {
            v["secret"]["optional"] = json!(false);
        }
        volumes.push(v);
    }
    let mut sub_volumes = BTreeMap::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let c = c.as_object_mut().expect("container");
            for field in ["ports", "livenessProbe", "readinessProbe", "startupProbe"] {
                c.remove(field);
            }
            for m in c
                .get_mut("volumeMounts")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let name = m["name"].as_str().expect("mount name").to_string();
                if let Some(unique) = renamed.get(&name) {
                    m["name"] = json!(unique);
                } else if let Some(dir) = claim_dirs.get(&name) {
                    let sub = m
                        .as_object_mut()
                        .and_then(|o| o.remove("subPath"))
                        .and_then(|s| s.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let volume = format!("{name}-{}", if sub.is_empty() { "root" } else { &sub });
                    let path = if sub.is_empty() {
                        dir.clone()
                    } else {
                        format!("{dir}/{sub}")
                    };
                    sub_volumes.insert(
                        volume.clone(),
                        json!({
                            "name": volume,
                            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                        }),
                    );
                    m["name"] = json!(volume);
                }
            }
        }
    }
    volumes.extend(sub_volumes.into_values());
    spec["volumes"] = json!(volumes);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "labels": sts["spec"]["template"]["metadata"]["labels"]},
        "spec": spec,
    })
}

/// Everything of one run: names, the chart's output, the podman objects (removed on drop).
struct Relay {
    dir: PathBuf,
    operator_image: String,
    pod: String,
    claims: Vec<(String, String, Value)>,
    pod_doc: Value,
    /// The chart's ConfigMap of the pod's validating resolver.
    resolver_config: Value,
    config_map: String,
    secret: String,
    /// `mailtls render` flags from the chart's operator Deployment.
    render_flags: Vec<String>,
    /// The readiness probes from the chart.
    readiness: Vec<Probe>,
    pre_stop: Vec<String>,
    /// The files of the ConfigMap as published last.
    published: BTreeMap<String, String>,
    version: u32,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", sh(podman().args(["ps", "--all", "--pod"])).1);
            for c in ["postfix", "relay-agent"] {
                let name = format!("{}-{c}", self.pod);
                let (_, logs) = sh(podman().args(["logs", "--tail", "60", &name]));
                eprintln!("---- podman logs {name}\n{logs}");
            }
        }
        let _ = podman()
            .args(["pod", "rm", "--force", "--time", "0", &self.pod])
            .output();
        let mut volumes = vec![self.config_map.clone(), self.secret.clone()];
        volumes.extend(self.claims.iter().map(|(_, claim, _)| claim.clone()));
        let _ = podman()
            .args(["volume", "rm", "--force"])
            .args(&volumes)
            .output();
        let _ = podman().args(["secret", "rm", &self.secret]).output();
    }
}

impl Relay {
    fn new(dir: &Path, certs: &Certs, cert: &Pem) -> Relay {
        let (relay_image, operator_image) = images();
        let (repository, tag) = relay_image.rsplit_once(':').expect("image:tag");
        let release = format!("mailtls-{}", std::process::id());
        let config_map = format!("{release}-config");
        let secret = format!("{release}-relay-tls");
        let sets = [
            "relay.enabled=true".to_string(),
            format!("relay.image.repository={repository}"),
            format!("relay.image.tag={tag}"),
            "relay.image.pullPolicy=Never".into(),
            // No API server here: the agent reads the mounted ConfigMap only.
            "relay.watchConfigMap=false".into(),
            format!("relay.clientCIDRs={{{CLIENT}/32}}"),
            format!("relay.hostname={HOSTNAME}"),
            format!("relay.tls.secretName={secret}"),
            "relay.inbound.domains={corp.test}".into(),
            format!("relay.inbound.nextHop={}:{SINK_PORT}", CORP_MX.1),
            format!("configMapName={config_map}"),
            // The test CA, as cert-manager puts it into the Secret.
            "render.caFile=/etc/mailtls/tls/ca.crt".into(),
            // The validating resolver beside Postfix, asking the test's DNS server; `.test`
            // is not in the root zone, so it is declared unsigned.
            "relay.dnssec.enabled=true".into(),
            format!("relay.dnssec.clusterDns={DNS}"),
            "relay.dnssec.extraConfig={local-zone: \"test.\" nodefault,domain-insecure: \"test\"}"
                .into(),
        ];
        let mut helm = Command::new(common::helm().expect("helm"));
        helm.args([
            "template",
            &release,
            "charts/mailtls",
            "--namespace",
            "default",
        ])
        .current_dir(root());
        for s in &sets {
            helm.args(["--set", s]);
        }
        let docs = documents(&must(&mut helm));
        let sts = find(&docs, "StatefulSet");
        let pod = format!("{}-0", sts["metadata"]["name"].as_str().expect("name"));
        let spec = &sts["spec"]["template"]["spec"];
        let resolver_config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] != config_map.as_str())
            .expect("the resolver's ConfigMap")
            .clone();
        let nameservers = strings(&spec["dnsConfig"]["nameservers"]);
        assert_eq!(nameservers, ["127.0.0.1"], "{}", spec["dnsConfig"]);
        assert!(
            spec["dnsConfig"]["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x["name"] == "trust-ad")),
            "{}",
            spec["dnsConfig"]
        );
        // What kubelet writes into every container of the pod (only ever the namespace's
        // own file, bind-mounted over /etc/resolv.conf for this run).
        let current = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        assert!(
            current.contains(&format!("nameserver {DNS}")),
            "/etc/resolv.conf is not the test namespace's: {current}"
        );
        std::fs::write(
            "/etc/resolv.conf",
            "nameserver 127.0.0.1\noptions ndots:5 trust-ad\n",
        )
        .expect("the namespace's resolv.conf");

        let operator = find(&docs, "Deployment");
        let render_flags = strings(&operator["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .filter(|a| {
                [
                    "--config-dir=",
                    "--map-type=",
                    "--postfix-version=",
                    "--ca-file=",
                ]
                .iter()
                .any(|f| a.starts_with(f))
            })
            .collect::<Vec<_>>();
        assert_eq!(render_flags.len(), 4, "{render_flags:?}");

        let readiness = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Probe::readiness)
            .collect::<Vec<_>>();
        assert_eq!(readiness.len(), 2, "{readiness:?}");
        let pre_stop =
            strings(&container(spec, "postfix")["lifecycle"]["preStop"]["exec"]["command"]);
        assert!(!pre_stop.is_empty(), "no preStop hook on postfix");

        // The Secret, as a podman secret holding the Secret's YAML (what kube play reads).
        let secret_doc = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "type": "kubernetes.io/tls",
            // podman 4.3 writes `data` into the volume as it is, without base64-decoding
            // it (and ignores stringData): the PEM text itself.
            "data": {
                "tls.crt": cert.cert,
                "tls.key": cert.key,
                "ca.crt": certs.ca,
            },
        });
        let secret_file = dir.join("secret.yaml");
        std::fs::write(&secret_file, to_yaml(&[secret_doc])).expect("secret file");
        let claims = claims(sts, &pod);
        let mut relay = Relay {
            dir: dir.to_path_buf(),
            operator_image,
            pod,
            claims,
            pod_doc: Value::Null,
            resolver_config,
            config_map,
            secret,
            render_flags,
            readiness,
            pre_stop,
            published: BTreeMap::new(),
            version: 0,
        };
        must(
            podman()
                .args(["secret", "create", &relay.secret])
                .arg(&secret_file),
        );

        // The claims: named volumes; the Pod mounts directories inside them.
        let pvcs: Vec<Value> = relay.claims.iter().map(|(_, _, d)| d.clone()).collect();
        let pvc_file = dir.join("claims.yaml");
        std::fs::write(&pvc_file, to_yaml(&pvcs)).expect("claims file");
        must(podman().args(["kube", "play"]).arg(&pvc_file));
        let claim_dirs = relay
            .claims
            .iter()
            .map(|(name, claim, _)| (name.clone(), volume_dir(claim)))
            .collect();
        relay.pod_doc = pod_for_podman(sts, &relay.pod, &claim_dirs);
        relay
    }

    /// `mailtls render` in the operator image (as its non-root user), with the chart's
    /// operator flags; the files and the content hash.
    fn render(&mut self, yaml: &str) -> (BTreeMap<String, String>, String) {
        self.version += 1;
        let work = self.dir.join("render");
        std::fs::create_dir_all(&work).expect("render dir");
        must(Command::new("chmod").arg("1777").arg(&work));
        let input = format!("policy-{}.yaml", self.version);
        std::fs::write(work.join(&input), yaml).expect("policy");
        let out = format!("v{}", self.version);
        must(
            podman()
                .args(["run", "--rm", "--network", "none", "-v"])
                .arg(format!("{}:/work", work.display()))
                .arg(&self.operator_image)
                .args(["render", &format!("/work/{input}"), "--output"])
                .arg(format!("/work/{out}"))
                .args(&self.render_flags),
        );
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(work.join(&out)).expect("rendered files") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{name} is not text for a ConfigMap's data: {e}"));
            files.insert(name, text);
        }
        let manifest: Value = serde_json::from_str(&files["manifest.json"]).expect("manifest.json");
        let hash = manifest["hash"].as_str().expect("hash").to_string();
        (files, hash)
    }

    fn config_map_doc(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.config_map},
            "data": self.published,
        })
    }

    /// `podman kube play` of the ConfigMap (as published last) and the Pod.
    fn play(&self) {
        let file = self.dir.join("pod.yaml");
        std::fs::write(
            &file,
            to_yaml(&[
                self.config_map_doc(),
                self.resolver_config.clone(),
                self.pod_doc.clone(),
            ]),
        )
        .expect("pod file");
        let (ok, out) = sh(podman()
            .args(["kube", "play", "--network", "host"])
            .arg(&file));
        assert!(ok, "podman kube play failed:\n{out}");
    }

    /// Until every container is ready (the chart's readiness probes) and the agent has
    /// applied `hash`.
    fn wait_applied(&self, hash: &str) {
        wait_for(
            180,
            &format!("the relay pod to be ready with {hash}"),
            || {
                self.readiness
                    .iter()
                    .all(|probe| probe.passes(hash))
                    .then_some(())
            },
        );
    }

    /// A new version of the ConfigMap, as kubelet updates a mounted one: the files in a
    /// new `..<version>` directory, `..data` swapped to it in one rename, the visible names
    /// links through `..data` (podman wrote them as plain files).
    fn publish(&mut self, files: BTreeMap<String, String>) {
        let dir = PathBuf::from(volume_dir(&self.config_map));
        let version = format!("..v{}", self.version);
        std::fs::create_dir_all(dir.join(&version)).expect("version dir");
        for (name, text) in &files {
            std::fs::write(dir.join(&version).join(name), text).expect("ConfigMap key");
        }
        common::kubelet_swap(&dir, &version);
        for name in self.published.keys().chain(files.keys()) {
            let path = dir.join(name);
            let plain = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            if !plain {
                continue;
            }
            if files.contains_key(name) {
                let tmp = dir.join(format!("..{name}.link"));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Path::new("..data").join(name), &tmp).expect("link");
                std::fs::rename(&tmp, &path).expect("replace a plain file by its link");
            } else {
                std::fs::remove_file(&path).expect("remove a key");
            }
        }
        self.published = files;
    }

    fn exec(&self, container: &str, cmd: &[String]) -> (bool, String) {
        sh(podman()
            .args(["exec", &format!("{}-{container}", self.pod)])
            .args(cmd))
    }

    fn queue(&self) -> String {
        self.exec("postfix", &["postqueue".into(), "-j".into()]).1
    }
}

/// A readiness probe of the chart, run by the test (podman 4.3 does not).
#[derive(Debug)]
enum Probe {
    Tcp(u16),
    /// path, port
    Http(String, u16),
}

impl Probe {
    fn readiness(container: &Value) -> Option<Probe> {
        let probe = container.get("readinessProbe")?;
        // A port by name or number.
        let port = |p: &Value| {
            p.as_u64()
                .or_else(|| {
                    container["ports"]
                        .as_array()?
                        .iter()
                        .find(|cp| cp["name"] == *p)?["containerPort"]
                        .as_u64()
                })
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("probe port {p}"))
        };
        if let Some(tcp) = probe.get("tcpSocket") {
            return Some(Probe::Tcp(port(&tcp["port"])));
        }
        let http = probe.get("httpGet").expect("a tcpSocket or httpGet probe");
        let path = http["path"].as_str().expect("path").to_string();
        Some(Probe::Http(path, port(&http["port"])))
    }

    /// Whether the probe passes; an HTTP one (the agent's /readyz) with `hash` applied.
    fn passes(&self, hash: &str) -> bool {
        match self {
            Probe::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
            Probe::Http(path, port) => {
                http_get(&format!("127.0.0.1:{port}"), path).is_some_and(|(code, body)| {
                    let body: Value = serde_json::from_str(&body).unwrap_or_default();
                    code == 200 && body["applied"] == hash
                })
            }
        }
    }
}

/// The directory of a podman volume.
fn volume_dir(volume: &str) -> String {
    must(podman().args(["volume", "inspect", "--format", "{{.Mountpoint}}", volume]))
        .trim()
        .to_string()
}

fn count(store: &Store, subject: &str) -> usize {
    let needle = format!("Subject: {subject}");
    store
        .lock()
        .map(|s| s.iter().filter(|m| m.data.contains(&needle)).count())
        .unwrap_or_default()
}

/// Version 1 lists partner.test as an inbound TLS sender, version 2 newpartner.test too,
/// and honours MTA-STS for every destination: Postfix's smtp processes then ask the agent's
/// policy server (through the chart's shared socket) before each delivery, the gateway's
/// included, so a message delivered under version 2 proves they reach it.
fn policies(version: u32) -> String {
    let partners: &[&str] = if version == 1 {
        &["partner.test"]
    } else {
        &["partner.test", "newpartner.test"]
    };
    [
        list("partners", partners),
        policy("inbound-partners", &["partners"], "")
            .replace("direction: Outbound", "direction: Inbound"),
        gateway(
            "all-mail",
            &format!(
                "  host: gateway.test\n  port: {SINK_PORT}\n  appliesTo: AllMail\n  tls:\n    require: true\n    requireCASigned: true\n    validateHostname: true"
            ),
        ),
    ]
    .concat()
        + if version == 1 {
            ""
        } else {
            "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published\nspec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts]\n---\n"
        }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    must(Command::new("chmod").arg("755").arg(dir));
    let certs = Certs::new();
    let _dns = dnsmasq(DNS, &[("gateway.test", GATEWAY.1)], &[]);
    let store: Store = Arc::default();
    let corp_rt = runtime();
    start_sink_on(&corp_rt, CORP_MX, SINK_PORT, None, &store);
    let gateway_tls = tls_config(&certs.ca_signed("gateway.test"));
    let gateway_rt = runtime();
    start_sink_on(
        &gateway_rt,
        GATEWAY,
        SINK_PORT,
        Some(gateway_tls.clone()),
        &store,
    );

    let cert = certs.ca_signed(HOSTNAME);
    let mut relay = Relay::new(dir, &certs, &cert);
    let (files, v1) = relay.render(&policies(1));
    relay.published = files;
    relay.play();
    relay.wait_applied(&v1);

    // 2. A client outside relay.clientCIDRs may not relay: 554, not a 4xx that would make
    // it retry for days.
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@corp.test",
        "x@elsewhere.test",
        "outsider",
        false,
    );
    assert!(!ok && out.contains("554 5.7.1"), "outsider relayed:\n{out}");
    assert!(out.contains(&format!("220 {HOSTNAME} ESMTP")), "{out}");

    // 1. A client inside them may, and the policy sends it through the gateway over
    // verified TLS.
    let (ok, out) = send(
        RELAY,
        CLIENT,
        "a@corp.test",
        "x@elsewhere.test",
        "relayed",
        false,
    );
    assert!(ok, "allowed client refused:\n{out}");
    assert!(arrived(&store, GATEWAY.0, "relayed"), "not over TLS");
    // The agent read it from Postfix's log file on the pod's mail-log volume.
    let agent = relay
        .readiness
        .iter()
        .find_map(|p| match p {
            Probe::Http(_, port) => Some(format!("127.0.0.1:{port}")),
            Probe::Tcp(_) => None,
        })
        .expect("the agent's port");
    wait_for(30, "the agent to count the relayed message", || {
        let (_, body) = http_get(&agent, "/observed")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["domains"]
            .as_array()?
            .iter()
            .any(|d| d["domain"] == "elsewhere.test" && d["tls"]["Verified"] == 1)
            .then_some(())
    });

    // 3. Inbound: a listed sender only over TLS (550 in plaintext), with the Secret's
    // certificate; the message goes on to the organisation's server.
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@partner.test",
        "boss@corp.test",
        "partner-plain",
        false,
    );
    assert!(
        !ok && out.contains("550"),
        "listed sender accepted in plaintext:\n{out}"
    );
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@partner.test",
        "boss@corp.test",
        "partner-tls",
        true,
    );
    assert!(ok, "listed sender refused over STARTTLS:\n{out}");
    arrived(&store, CORP_MX.0, "partner-tls");
    assert_eq!(
        offered_certificate(RELAY, HOSTNAME),
        der(&cert),
        "the relay does not offer the Secret's certificate"
    );

    // 5. A new ConfigMap is in force for the next message: newpartner.test may send in
    // plaintext under version 1, not under version 2.
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@newpartner.test",
        "boss@corp.test",
        "new-v1",
        false,
    );
    assert!(ok, "unlisted sender refused:\n{out}");
    arrived(&store, CORP_MX.0, "new-v1");
    let (files, v2) = relay.render(&policies(2));
    assert!(
        files["main.cf"].contains("socketmap:unix:/run/mailtls-sts/mta-sts.sock:mailtls"),
        "version 2 does not ask the policy server"
    );
    relay.publish(files);
    relay.wait_applied(&v2);
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@newpartner.test",
        "boss@corp.test",
        "new-v2",
        false,
    );
    assert!(
        !ok && out.contains("550"),
        "the new ConfigMap is not in force:\n{out}"
    );

    // 4. The gateway loses STARTTLS: the policy defers the next message.
    drop(gateway_rt);
    let plain_rt = runtime();
    start_sink_on(&plain_rt, GATEWAY, SINK_PORT, None, &store);
    let (ok, out) = send(
        RELAY,
        CLIENT,
        "a@corp.test",
        "y@elsewhere.test",
        "kept",
        false,
    );
    assert!(ok, "{out}");
    let queued = wait_for(60, "the message to be deferred", || {
        let q = relay.queue();
        q.contains("\"queue_name\": \"deferred\"").then_some(q)
    });
    let id = serde_json::from_str::<Value>(queued.lines().next().unwrap_or_default())
        .ok()
        .and_then(|m| m["queue_id"].as_str().map(str::to_string))
        .expect("queue id");
    assert_eq!(count(&store, "kept"), 0, "delivered without TLS");
    // The agent's /metrics counts it, and names the configuration in force.
    wait_for(30, "the deferred message on the agent's /metrics", || {
        let (_, body) = http_get(&agent, "/metrics")?;
        (body.contains("mailtls_relay_queue_messages{queue=\"deferred\"} 1")
            && body.contains(&format!(
                "mailtls_relay_configuration_info{{hash=\"{v2}\"}} 1"
            )))
        .then_some(())
    });

    // The pod goes: its preStop hook, then its containers stop and it is removed. A new
    // pod is played over the same claim.
    let (ok, out) = relay.exec("postfix", &relay.pre_stop);
    assert!(ok, "preStop failed:\n{out}");
    assert!(out.contains("deferred=1"), "{out}");
    must(podman().args(["pod", "stop", "--time", "60", &relay.pod]));
    must(podman().args(["pod", "rm", &relay.pod]));
    relay.play();
    relay.wait_applied(&v2);
    let queue = relay.queue();
    assert!(
        queue.contains(&id) && queue.contains("\"queue_name\": \"deferred\""),
        "the deferred message is gone after the restart:\n{queue}"
    );

    // The gateway is fixed; the kept message is delivered over TLS, once.
    drop(plain_rt);
    let fixed_rt = runtime();
    start_sink_on(&fixed_rt, GATEWAY, SINK_PORT, Some(gateway_tls), &store);
    let (ok, out) = relay.exec("postfix", &["postqueue".into(), "-f".into()]);
    assert!(ok, "{out}");
    assert!(arrived(&store, GATEWAY.0, "kept"), "not over TLS");
    wait_for(60, "the queue to be empty", || {
        relay.queue().trim().is_empty().then_some(())
    });
    assert_eq!(count(&store, "kept"), 1, "delivered more than once");
}
