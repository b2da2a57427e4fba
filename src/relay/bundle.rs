//! Reading a rendered configuration from the watched directory and checking it against its
//! manifest: every file's SHA-256 and the combined content hash must match, or nothing is
//! applied.

use super::Refusal;
use crate::render::pack::{GZ_SUFFIX, UNPACKED_LIMIT, gunzip};
use crate::render::{
    BOUNCE_FILTER, MAIN_CF, MANIFEST, MASTER_CF, MapType, SENDER_ACCESS, TLS_POLICY, TRANSPORT,
    content_hash, sha256_hex,
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
];

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

/// The directory to read from: the target of kubelet's `..data` symlink when there is one,
/// so every file comes from the same published version even while kubelet swaps it.
pub fn snapshot_dir(watch_dir: &Path) -> PathBuf {
    let data = watch_dir.join("..data");
    match std::fs::canonicalize(&data) {
        Ok(target) if target.is_dir() => target,
        _ => watch_dir.to_path_buf(),
    }
}

/// One file of the configuration: `name` as text, or `name.gz` compressed (how the
/// controller stores large files in the ConfigMap, see [`crate::render::pack`]).
fn read_file(dir: &Path, name: &str) -> Result<String, String> {
    let plain = dir.join(name);
    let packed = dir.join(format!("{name}{GZ_SUFFIX}"));
    if !packed.exists() {
        return std::fs::read_to_string(&plain)
            .map_err(|e| format!("cannot read {}: {e}", plain.display()));
    }
    if plain.exists() {
        return Err(format!(
            "both {name} and {name}{GZ_SUFFIX} are present: which one is meant is unclear"
        ));
    }
    let bytes =
        std::fs::read(&packed).map_err(|e| format!("cannot read {}: {e}", packed.display()))?;
    gunzip(&bytes, UNPACKED_LIMIT).map_err(|e| format!("{}: {e}", packed.display()))
}

/// Read and verify the configuration in `watch_dir`. Errors carry the manifest's hash
/// when it could be read, so the refusal can name what it refused.
pub fn read(watch_dir: &Path) -> Result<Bundle, Refusal> {
    let dir = snapshot_dir(watch_dir);
    let manifest_text = read_file(&dir, MANIFEST).map_err(|e| Refusal::new(None, e))?;
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
        let content = read_file(&dir, name).map_err(refuse)?;
        let got = sha256_hex(&content);
        if got != want {
            return Err(refuse(format!(
                "{name} does not match the manifest (sha256 {got}, manifest says {want}): \
                 edited by hand or half-written"
            )));
        }
        digests.insert(name.clone(), got);
        files.insert(name.clone(), content);
    }
    for required in KNOWN_FILES {
        if !files.contains_key(*required) {
            return Err(refuse(format!("{required} is missing from {MANIFEST}")));
        }
    }
    let computed = content_hash(&digests);
    if computed != hash {
        return Err(refuse(format!(
            "content hash {computed} does not match the manifest's"
        )));
    }
    files.insert(MANIFEST.to_string(), manifest_text);
    Ok(Bundle {
        hash,
        map_type,
        config_dir,
        files,
    })
}
