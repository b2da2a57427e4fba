//! The relay's ConfigMap read through the API (edge): kubelet refreshes a mounted ConfigMap
//! only after its sync period (a minute or more), so the agent also watches its one
//! ConfigMap by name (a Role limited by `resourceNames` allows nothing else) and keeps a
//! local copy in kubelet's layout, which the agent applies like the mounted volume. The
//! mounted volume stays the fallback: without the API (no token, API server down) kubelet's
//! copy still arrives, later.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::path::{Path, PathBuf};

/// Watch `namespace/name` and keep `dir` a copy of its keys until the process ends. A
/// deleted ConfigMap leaves the copy as it was: the last configuration stays in force.
pub async fn mirror(client: Client, namespace: String, name: String, dir: PathBuf) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    tracing::info!(%namespace, %name, dir = %dir.display(), "watching the relay ConfigMap through the API");
    while let Some(event) = stream.next().await {
        match event {
            Ok(cm) if cm.metadata.name.as_deref() == Some(name.as_str()) => {
                if let Err(e) = write_copy(&dir, &cm) {
                    tracing::error!(
                        "cannot copy ConfigMap {namespace}/{name} into {}: {e}",
                        dir.display()
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "watching ConfigMap {namespace}/{name}: {e}; the mounted copy is the fallback"
            ),
        }
    }
}

/// A key kubelet would also accept as a file name.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Publish the ConfigMap's keys into `dir` as kubelet does (AtomicWriter): a new
/// `..<version>` directory, `..data` swapped to it by one rename, each key a link through
/// `..data`; older versions and links of keys that went away are removed afterwards.
/// Readers never see a mix of two versions.
pub fn write_copy(dir: &Path, cm: &ConfigMap) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let version = format!(
        "..{}-{}",
        cm.metadata
            .resource_version
            .as_deref()
            .unwrap_or("0")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let target = dir.join(&version);
    std::fs::create_dir(&target).map_err(|e| io("cannot create", &target, e))?;
    let mut keys = Vec::new();
    let text = cm.data.iter().flatten().map(|(k, v)| (k, v.as_bytes()));
    let binary = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()));
    for (key, bytes) in text.chain(binary) {
        if !valid_key(key) {
            tracing::warn!("ConfigMap key {key:?} skipped: not a file name");
            continue;
        }
        let path = target.join(key);
        std::fs::write(&path, bytes).map_err(|e| io("cannot write", &path, e))?;
        keys.push(key.clone());
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(|e| io("cannot link", &tmp, e))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(|e| io("cannot swap", &tmp, e))?;
    for key in &keys {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)
                .map_err(|e| io("cannot link", &link, e))?;
        }
    }
    // Cleanup: stale links, then old versions.
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io("cannot read", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let stale_link = !name.starts_with("..") && !keys.contains(&name);
        let old_version = name.starts_with("..")
            && name != version
            && name != "..data"
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if stale_link {
            let _ = std::fs::remove_file(&path);
        } else if old_version {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn cm(rv: &str, data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some(rv.into());
        cm.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        cm.binary_data = Some(
            binary
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        cm
    }

    #[test]
    fn copies_as_kubelet_does_and_the_bundle_reader_follows() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write_copy(
            dir,
            &cm(
                "7",
                &[("main.cf", "a = 1\n"), ("transport", "t\n")],
                &[("tls_policy.gz", b"\x1f\x8b")],
            ),
        )
        .expect("first copy");
        let snapshot = super::super::bundle::snapshot_dir(dir).expect("kubelet layout");
        assert_eq!(
            std::fs::read_to_string(snapshot.join("main.cf")).expect("main.cf"),
            "a = 1\n"
        );
        assert_eq!(
            std::fs::read(dir.join("tls_policy.gz")).expect("binary key"),
            b"\x1f\x8b"
        );

        // The next version: a key goes, one changes; the old version directory goes too.
        write_copy(dir, &cm("8", &[("main.cf", "a = 2\n")], &[])).expect("second copy");
        assert_eq!(
            std::fs::read_to_string(dir.join("main.cf")).expect("main.cf"),
            "a = 2\n"
        );
        assert!(
            std::fs::symlink_metadata(dir.join("transport")).is_err(),
            "stale link kept"
        );
        let versions: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert!(versions[0].starts_with("..8-"), "{versions:?}");
    }

    #[test]
    fn keys_that_are_not_file_names_are_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_copy(
            tmp.path(),
            &cm(
                "1",
                &[("../evil", "x"), ("..data", "x"), ("ok.cf", "y")],
                &[],
            ),
        )
        .expect("copy");
        let snapshot = super::super::bundle::snapshot_dir(tmp.path()).expect("layout");
        let names: Vec<String> = std::fs::read_dir(&snapshot)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ok.cf"]);
        assert!(!tmp.path().parent().expect("parent").join("evil").exists());
    }
}
