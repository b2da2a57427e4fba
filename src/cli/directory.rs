//! The directory backend of the engine (`mailtls standalone`). Layout of `--out`, per
//! namespace: `relay/` holds the rendered files (rewritten only when the content hash
//! changes), `resources/<kind>-<name>.yaml` each resource with its status, and
//! `last-valid.json` the last valid generation of each resource.

use super::output::write_files;
use crate::api::RelayConfigRef;
use crate::engine::{Backend, Managed};
use crate::policy::{Inputs, Kind, LastValid, ResourceId};
use crate::render::{MANIFEST, RelayConfig};
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of a namespace's snapshot of last valid generations.
pub const LAST_VALID_FILE: &str = "last-valid.json";

/// An error of the directory backend: what could not be read or written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirError(pub String);

/// `--out`; `lock` serialises the writers of resource files (a reconcile pass holds it, a
/// finished test takes it for its one file).
pub struct Directory {
    out: PathBuf,
    pub lock: tokio::sync::Mutex<()>,
    /// The relay's mail logs (`--mail-log`), read again on each pass.
    mail_logs: Vec<PathBuf>,
    /// What they said on the last pass: the relay's one "pod".
    observed: std::sync::Mutex<Option<Arc<crate::observe::PodsObserved>>>,
}

/// The window of `status.observed`, as the controller asks relay pods for it.
const OBSERVED_HOURS: i64 = 24;

impl Directory {
    /// `out`, whose statuses also say what the relay writing `mail_logs` did (if any).
    pub fn new(out: &Path, mail_logs: Vec<PathBuf>) -> Directory {
        Directory {
            out: out.to_path_buf(),
            lock: tokio::sync::Mutex::new(()),
            mail_logs,
            observed: std::sync::Mutex::new(None),
        }
    }

    /// Read the mail logs again (the last [`OBSERVED_HOURS`] hours of them). One that cannot
    /// be read leaves `status.observed` out, rather than counting too little.
    pub fn read_mail_logs(&self) -> Result<(), String> {
        if self.mail_logs.is_empty() {
            return Ok(());
        }
        let now = crate::observe::follow::now();
        let mut seen = crate::observe::Observed::default();
        let mut result = Ok(());
        for log in &self.mail_logs {
            if let Err(e) = crate::observe::follow::read_all(log, &mut seen, now) {
                result = Err(format!("--mail-log {}: {e}", log.display()));
                break;
            }
        }
        let pods = result.is_ok().then(|| {
            let mut pods = crate::observe::PodsObserved {
                hours: OBSERVED_HOURS,
                ..Default::default()
            };
            pods.add_pod(seen.window(now, OBSERVED_HOURS));
            Arc::new(pods)
        });
        if let Ok(mut o) = self.observed.lock() {
            *o = pods;
        }
        result
    }

    fn namespace(&self, namespace: &str) -> PathBuf {
        self.out.join(namespace)
    }

    fn resources(&self, namespace: &str) -> PathBuf {
        self.namespace(namespace).join("resources")
    }

    /// Namespaces that have a relay configuration from an earlier run.
    pub fn known_namespaces(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.out) {
            for entry in entries.flatten() {
                if entry.path().join("relay").join(MANIFEST).exists() {
                    out.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    /// Bring back the status written last time, so transition times and test results
    /// persist, and number generations as the API server would: a changed spec is the next.
    pub fn read_previous(&self, inputs: &mut Inputs) {
        fn each<K: Managed>(dir: &Path, inputs: &mut Inputs) {
            for r in K::of_mut(inputs) {
                let prev: Option<K> = read_resource(dir, K::KIND, &r.name_any());
                if r.meta().generation.is_none() {
                    r.meta_mut().generation = Some(prev.as_ref().map_or(1, |p| {
                        p.meta().generation.unwrap_or(1) + i64::from(!p.same_spec(r))
                    }));
                }
                *r.status_mut() = prev.and_then(|mut p| p.status_mut().take());
            }
        }
        let dir = self.resources(&inputs.namespace);
        each::<crate::api::AddressList>(&dir, inputs);
        each::<crate::api::TlsCompliance>(&dir, inputs);
        each::<crate::api::OutboundGateway>(&dir, inputs);
    }

    /// Remove the files of resources no longer in `inputs`.
    pub fn remove_deleted(&self, inputs: &Inputs) {
        let dir = self.resources(&inputs.namespace);
        let mut keep = BTreeSet::new();
        let mut add = |kind: Kind, names: Vec<String>| {
            keep.extend(names.iter().map(|n| resource_file(&dir, kind, n)));
        };
        add(Kind::AddressList, names(&inputs.address_lists));
        add(Kind::TlsCompliance, names(&inputs.policies));
        add(Kind::OutboundGateway, names(&inputs.gateways));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !keep.contains(&path) && path.extension().is_some_and(|e| e == "yaml") {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().filter_map(|r| r.meta().name.clone()).collect()
}

/// `kind-name.yaml` inside a namespace's resources directory.
pub fn resource_file(dir: &Path, kind: Kind, name: &str) -> PathBuf {
    dir.join(format!("{}-{name}.yaml", kind.to_string().to_lowercase()))
}

fn read_resource<K: Managed>(dir: &Path, kind: Kind, name: &str) -> Option<K> {
    let text = std::fs::read_to_string(resource_file(dir, kind, name)).ok()?;
    serde_norway::from_str(&text).ok()
}

/// Write a resource with its status, unless the file already says the same.
fn write_resource<K: Managed>(dir: &Path, r: &K) -> Result<(), DirError> {
    let id = ResourceId::new(K::KIND, r.name_any());
    let text =
        serde_norway::to_string(r).map_err(|e| DirError(format!("cannot serialise {id}: {e}")))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| DirError(format!("cannot create {}: {e}", dir.display())))?;
    let path = resource_file(dir, id.kind, &id.name);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    replace(&path, &text, "yaml.tmp")
}

/// Replace a file atomically, so a crash leaves the old one or the new one.
fn replace(path: &Path, text: &str, tmp_extension: &str) -> Result<(), DirError> {
    let tmp = path.with_extension(tmp_extension);
    std::fs::write(&tmp, text)
        .map_err(|e| DirError(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| DirError(format!("cannot replace {}: {e}", path.display())))
}

impl Backend for Directory {
    type Error = DirError;

    fn aborts(_: &DirError) -> bool {
        false
    }

    async fn last_valid(&self, namespace: &str) -> Result<Arc<LastValid>, DirError> {
        let path = self.namespace(namespace).join(LAST_VALID_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(DirError(format!("cannot read {}: {e}", path.display()))),
        };
        LastValid::from_json(&text).map(Arc::new).map_err(|e| {
            DirError(format!(
                "{}: {e}; nothing was written for this namespace. Restore the file, or delete \
                 it to start over (resources that are invalid now then enforce nothing)",
                path.display()
            ))
        })
    }

    async fn store_last_valid(
        &self,
        namespace: &str,
        last: &LastValid,
        next: &LastValid,
    ) -> Result<(), DirError> {
        if next == last {
            return Ok(());
        }
        let dir = self.namespace(namespace);
        let path = dir.join(LAST_VALID_FILE);
        let text = next
            .to_json()
            .map_err(|e| DirError(format!("cannot serialise {}: {e}", path.display())))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| DirError(format!("cannot create {}: {e}", dir.display())))?;
        replace(&path, &(text + "\n"), "json.tmp")
    }

    async fn write_config(
        &self,
        namespace: &str,
        config: &RelayConfig,
        _inputs: &Inputs,
    ) -> Result<(), DirError> {
        let dir = self.namespace(namespace).join("relay");
        let old_hash = std::fs::read_to_string(dir.join(MANIFEST))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("hash").and_then(|h| h.as_str()).map(str::to_string));
        if old_hash.as_deref() == Some(config.hash.as_str()) {
            return Ok(());
        }
        write_files(&dir, config.files.clone(), Some(MANIFEST)).map_err(DirError)?;
        tracing::info!(namespace, hash = %config.hash, "relay configuration written");
        Ok(())
    }

    fn observed(&self, _namespace: &str) -> Option<Arc<crate::observe::PodsObserved>> {
        self.observed.lock().ok()?.clone()
    }

    fn relay_ref(&self, namespace: &str, hash: &str) -> RelayConfigRef {
        RelayConfigRef {
            name: self
                .namespace(namespace)
                .join("relay")
                .display()
                .to_string(),
            hash: hash.to_string(),
            ..Default::default()
        }
    }

    async fn write_status<K: Managed>(
        &self,
        namespace: &str,
        _old: &K,
        new: &K,
    ) -> Result<(), DirError> {
        write_resource(&self.resources(namespace), new)
    }

    async fn update_status<K: Managed>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K) + Send,
    ) -> Result<(), DirError> {
        let _guard = self.lock.lock().await;
        let dir = self.resources(namespace);
        // Deleted meanwhile: left deleted.
        let Some(mut r) = read_resource::<K>(&dir, K::KIND, name) else {
            return Ok(());
        };
        change(&mut r);
        write_resource(&dir, &r)
    }
}
