//! Reading a rendered configuration from the watched directory and checking it against its
//! manifest: every file's SHA-256 and the combined content hash must match, or nothing is
//! applied.

use super::Refusal;
use crate::render::pack::{GZ_SUFFIX, UNPACKED_LIMIT, gunzip};
use crate::render::{
    BOUNCE_FILTER, DANE, MAIN_CF, MANIFEST, MASTER_CF, MTA_STS, MapType, SENDER_ACCESS, TLS_POLICY,
    TRANSPORT, content_hash, sha256_hex,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files a rendered configuration may consist of (besides the manifest). Anything else
/// listed in a manifest is refused: the agent installs nothing it does not understand.
pub const KNOWN_FILES: &[&str] = &[
    MAIN_CF,
    MASTER_CF,
    TLS_POLICY,
    TRANSPORT,
    SENDER_ACCESS,
    BOUNCE_FILTER,
    MTA_STS,
    DANE,
];

/// Known files a configuration may leave out: rendered only when used.
const OPTIONAL_FILES: &[&str] = &[MTA_STS, DANE];

/// The indexed maps built with `postmap`.
pub const MAPS: &[&str] = &[TLS_POLICY, TRANSPORT, SENDER_ACCESS];

/// A verified rendered configuration.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The content hash from the manifest (verified).
    pub hash: String,
    pub map_type: MapType,
    /// Where the render put the maps (`--config-dir`); must equal the agent's `--maps-dir`.
    pub config_dir: String,
    /// File name → content, the manifest included.
    pub files: BTreeMap<String, String>,
}

impl Bundle {
    pub fn file(&self, name: &str) -> &str {
        self.files.get(name).map_or("", String::as_str)
    }
}

/// The total a bundle's compressed files may inflate to. The agent holds the inflated text
/// once while it validates and writes it, next to `postmap` building the maps; the sidecar's
/// memory limit in the chart is 128Mi. 48 MiB is about four times the maps of 100k entries.
pub const TOTAL_UNPACKED_LIMIT: usize = 48 << 20;

/// The directory to read from. In kubelet's layout (`..data -> ..<timestamp>`, every
/// visible name `name -> ..data/name`) that is the versioned directory `..data` points at,
/// so every file comes from the same published version even while kubelet swaps it;
/// otherwise the watched directory itself. No other symlink is followed: a `..data`
/// pointing anywhere but a sibling directory, or a visible name linked elsewhere (say, to
/// /etc/shadow), refuses the whole configuration before anything is read.
pub fn snapshot_dir(watch_dir: &Path) -> Result<PathBuf, String> {
    let data = watch_dir.join("..data");
    let meta = match std::fs::symlink_metadata(&data) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(watch_dir.to_path_buf()),
        Err(e) => return Err(format!("cannot read {}: {e}", data.display())),
    };
    if !meta.file_type().is_symlink() {
        return Err(format!(
            "{} is not a symlink (kubelet's layout has ..data -> ..<version>)",
            data.display()
        ));
    }
    let target =
        std::fs::read_link(&data).map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let version = target
        .to_str()
        .filter(|t| t.starts_with("..") && *t != ".." && *t != "..data" && !t.contains('/'));
    let Some(version) = version else {
        return Err(format!(
            "{} points outside the watched directory: only a sibling ..<version> directory \
             is followed",
            data.display()
        ));
    };
    let dir = watch_dir.join(version);
    let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
    if !is_dir {
        return Err(format!(
            "{} points at {version}, which is not a directory",
            data.display()
        ));
    }
    let entries = std::fs::read_dir(watch_dir)
        .map_err(|e| format!("cannot read {}: {e}", watch_dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", watch_dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!("a name in {} is not UTF-8", watch_dir.display()));
        };
        // kubelet's own entries (`..data`, `..data_tmp` while it swaps, the versions) are
        // never read through; the visible names must be kubelet's links.
        if name.starts_with("..") || !entry.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        let link = std::fs::read_link(entry.path()).unwrap_or_default();
        if link != Path::new("..data").join(name) {
            return Err(format!(
                "{name} in {} is a symlink that is not kubelet's {name} -> ..data/{name}: \
                 refused unread",
                watch_dir.display()
            ));
        }
    }
    Ok(dir)
}

/// Open `path` only if it is a regular file with one link: never through a symlink, never a
/// hard link to a file elsewhere, a FIFO or a device. The file opened must be the one
/// checked (same device and inode), so swapping in a link between check and open fails.
fn open_plain(path: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let refuse = |what: &str| Err(format!("{} is {what}: refused unread", path.display()));
    if meta.file_type().is_symlink() {
        return refuse("a symlink");
    }
    if !meta.file_type().is_file() {
        return refuse("not a regular file");
    }
    if meta.nlink() != 1 {
        return refuse("a hard link");
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return refuse("replaced while being opened");
    }
    Ok(Some(file))
}

fn read_all(path: &Path, file: std::fs::File, cap: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > cap {
        return Err(too_large(path));
    }
    Ok(bytes)
}

fn too_large(path: &Path) -> String {
    format!(
        "{}: the files of a configuration may hold {TOTAL_UNPACKED_LIMIT} bytes together \
         (inflated); this one goes over",
        path.display()
    )
}

/// One file of the configuration: `name` as text, or `name.gz` compressed (how the
/// controller stores large files in the ConfigMap, see [`crate::render::pack`]).
/// `budget` is what the files may still hold together (inflated); it shrinks by this one.
fn read_file(dir: &Path, name: &str, budget: &mut usize) -> Result<String, String> {
    let plain_path = dir.join(name);
    let packed_path = dir.join(format!("{name}{GZ_SUFFIX}"));
    let plain = open_plain(&plain_path)?;
    let packed = open_plain(&packed_path)?;
    let text = match (plain, packed) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "both {name} and {name}{GZ_SUFFIX} are present: which one is meant is unclear"
            ));
        }
        (None, None) => return Err(format!("cannot read {}: not found", plain_path.display())),
        (Some(file), None) => String::from_utf8(read_all(&plain_path, file, *budget)?)
            .map_err(|_| format!("{} is not UTF-8 text", plain_path.display()))?,
        (None, Some(file)) => {
            let bytes = read_all(&packed_path, file, *budget)?;
            gunzip(&bytes, (*budget).min(UNPACKED_LIMIT)).map_err(|e| {
                format!(
                    "{}: {e} (the files of a configuration may hold {TOTAL_UNPACKED_LIMIT} \
                     bytes together, inflated)",
                    packed_path.display()
                )
            })?
        }
    };
    *budget -= text.len();
    Ok(text)
}

/// Whether `watch_dir` holds a configuration at all: no manifest means none was published
/// yet (an optional ConfigMap that does not exist mounts as an empty directory), which is
/// not a refusal.
pub fn present(watch_dir: &Path) -> bool {
    snapshot_dir(watch_dir)
        .map(|dir| std::fs::symlink_metadata(dir.join(MANIFEST)).is_ok())
        .unwrap_or(true)
}

/// The hash the manifest in `watch_dir` names, without verifying anything else; `None`
/// when there is none or it cannot be read.
pub fn manifest_hash(watch_dir: &Path) -> Option<String> {
    let dir = snapshot_dir(watch_dir).ok()?;
    let mut budget = TOTAL_UNPACKED_LIMIT;
    let text = read_file(&dir, MANIFEST, &mut budget).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest.get("hash")?.as_str().map(str::to_string)
}

/// Read and verify the configuration in `watch_dir`. Errors carry the manifest's hash
/// when it could be read, so the refusal can name what it refused.
pub fn read(watch_dir: &Path) -> Result<Bundle, Refusal> {
    let dir = snapshot_dir(watch_dir).map_err(|e| Refusal::new(None, e))?;
    let mut budget = TOTAL_UNPACKED_LIMIT;
    let manifest_text =
        read_file(&dir, MANIFEST, &mut budget).map_err(|e| Refusal::new(None, e))?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text)
        .map_err(|e| Refusal::new(None, format!("{MANIFEST} is not valid JSON: {e}")))?;
    let hash = manifest
        .get("hash")
        .and_then(|h| h.as_str())
        .ok_or_else(|| Refusal::new(None, format!("{MANIFEST} has no \"hash\"")))?
        .to_string();
    let refuse = |reason: String| Refusal::new(Some(hash.clone()), reason);
    let options = manifest
        .get("options")
        .ok_or_else(|| refuse(format!("{MANIFEST} has no \"options\"")))?;
    let map_type = match options.get("mapType").and_then(|v| v.as_str()) {
        Some("lmdb") => MapType::Lmdb,
        Some("cdb") => MapType::Cdb,
        Some("hash") => MapType::Hash,
        other => return Err(refuse(format!("unknown options.mapType {other:?}"))),
    };
    let config_dir = options
        .get("configDir")
        .and_then(|v| v.as_str())
        .ok_or_else(|| refuse(format!("{MANIFEST} has no options.configDir")))?
        .to_string();
    let listed = manifest
        .get("files")
        .and_then(|f| f.as_object())
        .ok_or_else(|| refuse(format!("{MANIFEST} has no \"files\"")))?;

    let mut files = BTreeMap::new();
    let mut digests = BTreeMap::new();
    for (name, want) in listed {
        if !KNOWN_FILES.contains(&name.as_str()) {
            return Err(refuse(format!("unexpected file {name:?} in {MANIFEST}")));
        }
        let want = want
            .as_str()
            .and_then(|w| w.strip_prefix("sha256:"))
            .ok_or_else(|| refuse(format!("{MANIFEST}: files.{name} is not \"sha256:…\"")))?;
        let content = read_file(&dir, name, &mut budget).map_err(refuse)?;
        let got = sha256_hex(&content);
        // The reason names the manifest's digest only: what the file holds (its digest
        // included) is never echoed, whatever it turned out to be.
        if got != want {
            return Err(refuse(format!(
                "{name} does not match the manifest (which says sha256 {want}): \
                 edited by hand or half-written"
            )));
        }
        digests.insert(name.clone(), got);
        files.insert(name.clone(), content);
    }
    for required in KNOWN_FILES {
        if !files.contains_key(*required) && !OPTIONAL_FILES.contains(required) {
            return Err(refuse(format!("{required} is missing from {MANIFEST}")));
        }
    }
    let computed = content_hash(&digests);
    if computed != hash {
        return Err(refuse(
            "the content hash over the files' digests does not match the manifest's".into(),
        ));
    }
    files.insert(MANIFEST.to_string(), manifest_text);
    Ok(Bundle {
        hash,
        map_type,
        config_dir,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Files of a configuration with a manifest that matches them.
    fn files(tls_policy: &str) -> BTreeMap<String, String> {
        let mut files: BTreeMap<String, String> = KNOWN_FILES
            .iter()
            .map(|name| (name.to_string(), format!("# {name}\n")))
            .collect();
        files.insert(TLS_POLICY.into(), tls_policy.into());
        with_manifest(files)
    }

    fn with_manifest(mut files: BTreeMap<String, String>) -> BTreeMap<String, String> {
        files.remove(MANIFEST);
        let digests: BTreeMap<String, String> = files
            .iter()
            .map(|(n, t)| (n.clone(), sha256_hex(t)))
            .collect();
        let manifest = serde_json::json!({
            "hash": content_hash(&digests),
            "options": {"mapType": "lmdb", "configDir": "/etc/postfix/mailtls"},
            "files": digests.iter().map(|(n, d)| (n.clone(), format!("sha256:{d}"))).collect::<BTreeMap<_, _>>(),
        });
        files.insert(MANIFEST.into(), manifest.to_string());
        files
    }

    /// `files` published the way kubelet does: `..v1` with the files, `..data -> ..v1`,
    /// every name `name -> ..data/name`. Files over 32 KiB are compressed, like the
    /// controller stores them.
    fn kubelet(files: &BTreeMap<String, String>) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let packed = crate::render::pack::pack(files);
        let version = tmp.path().join("..v1");
        std::fs::create_dir(&version).expect("version dir");
        for (name, text) in &packed.text {
            std::fs::write(version.join(name), text).expect("write");
        }
        for (name, bytes) in &packed.gzip {
            std::fs::write(version.join(name), bytes).expect("write");
        }
        symlink("..v1", tmp.path().join("..data")).expect("..data");
        for name in packed.text.keys().chain(packed.gzip.keys()) {
            symlink(Path::new("..data").join(name), tmp.path().join(name)).expect("link");
        }
        tmp
    }

    fn refused(dir: &Path) -> String {
        match read(dir) {
            Ok(b) => panic!("accepted {}", b.hash),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn kubelet_layout_and_plain_files_are_read() {
        let f = files("a.example encrypt\n");
        let cm = kubelet(&f);
        let bundle = read(cm.path()).expect("kubelet layout");
        assert_eq!(bundle.file(TLS_POLICY), "a.example encrypt\n");
        let plain = tempfile::tempdir().expect("tempdir");
        for (name, text) in &f {
            std::fs::write(plain.path().join(name), text).expect("write");
        }
        assert_eq!(read(plain.path()).expect("plain").hash, bundle.hash);
    }

    /// A secret outside the watched directory, and a manifest claiming exactly its digest:
    /// reading it through a link would let a refusal echo its first line or its digest.
    #[test]
    fn links_out_of_the_layout_are_refused_unread() {
        let outside = tempfile::tempdir().expect("tempdir");
        let secret_text = "topsecret-line\n";
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, secret_text).expect("secret");
        let mut f = files("a.example encrypt\n");
        f.insert(MAIN_CF.into(), secret_text.into());
        let f = with_manifest(f);
        let leaks = |reason: &str| {
            reason.contains("topsecret") || reason.contains(&sha256_hex(secret_text))
        };

        // A visible name linked elsewhere, next to kubelet's layout.
        let cm = kubelet(&f);
        std::fs::remove_file(cm.path().join(MAIN_CF)).expect("rm");
        symlink(&secret, cm.path().join(MAIN_CF)).expect("link");
        let reason = refused(cm.path());
        assert!(
            reason.contains("not kubelet's") && !leaks(&reason),
            "{reason}"
        );

        // A link inside the versioned directory.
        let cm = kubelet(&f);
        let inside = cm.path().join("..v1").join(MAIN_CF);
        std::fs::remove_file(&inside).expect("rm");
        symlink(&secret, &inside).expect("link");
        let reason = refused(cm.path());
        assert!(
            reason.contains("is a symlink") && !leaks(&reason),
            "{reason}"
        );

        // A plain directory whose file is a link.
        let plain = tempfile::tempdir().expect("tempdir");
        for (name, text) in &f {
            std::fs::write(plain.path().join(name), text).expect("write");
        }
        std::fs::remove_file(plain.path().join(MAIN_CF)).expect("rm");
        symlink(&secret, plain.path().join(MAIN_CF)).expect("link");
        let reason = refused(plain.path());
        assert!(
            reason.contains("is a symlink") && !leaks(&reason),
            "{reason}"
        );

        // A hard link to the secret (same file system).
        std::fs::remove_file(plain.path().join(MAIN_CF)).expect("rm");
        std::fs::hard_link(&secret, plain.path().join(MAIN_CF)).expect("hard link");
        let reason = refused(plain.path());
        assert!(reason.contains("hard link") && !leaks(&reason), "{reason}");
    }

    #[test]
    fn data_pointing_out_of_the_directory_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let f = files("a.example encrypt\n");
        for (name, text) in &f {
            std::fs::write(outside.path().join(name), text).expect("write");
        }
        let elsewhere = format!("../{}", outside.path().display());
        for target in [
            outside.path().to_str().expect("utf-8"),
            &elsewhere,
            "..",
            "..data",
        ] {
            let cm = kubelet(&f);
            std::fs::remove_file(cm.path().join("..data")).expect("rm");
            symlink(target, cm.path().join("..data")).expect("..data");
            let reason = refused(cm.path());
            assert!(
                reason.contains("points outside") || reason.contains("not a directory"),
                "{target}: {reason}"
            );
        }
        // `..data` a link to a link to a directory.
        let cm = kubelet(&f);
        symlink(outside.path(), cm.path().join("..v2")).expect("..v2");
        std::fs::remove_file(cm.path().join("..data")).expect("rm");
        symlink("..v2", cm.path().join("..data")).expect("..data");
        assert!(refused(cm.path()).contains("not a directory"));
    }

    /// A file's digest is never echoed when it does not match: only the manifest's is.
    #[test]
    fn a_mismatch_names_the_manifest_digest_only() {
        let f = files("a.example encrypt\n");
        let cm = kubelet(&f);
        let edited = "a.example may\n";
        std::fs::write(cm.path().join("..v1").join(TLS_POLICY), edited).expect("edit");
        let reason = refused(cm.path());
        assert!(reason.contains("does not match the manifest"), "{reason}");
        assert!(reason.contains(&sha256_hex(&f[TLS_POLICY])), "{reason}");
        assert!(!reason.contains(&sha256_hex(edited)), "{reason}");
    }

    /// Three maps of 20 MiB each: every one under the per-file limit, together over the
    /// total the sidecar's memory allows.
    #[test]
    fn compressed_files_share_one_inflated_total() {
        let rows = |n: usize| "k.example encrypt\n".repeat(n);
        let big = (20 << 20) / 18;
        let mut f = files(&rows(big));
        f.insert(TRANSPORT.into(), rows(big));
        f.insert(SENDER_ACCESS.into(), rows(big));
        let cm = kubelet(&with_manifest(f));
        let reason = refused(cm.path());
        assert!(reason.contains("together"), "{reason}");
        // Under the total: read.
        let mut f = files(&rows(big));
        f.insert(TRANSPORT.into(), rows(big));
        let cm = kubelet(&with_manifest(f));
        assert!(read(cm.path()).is_ok());
    }
}
