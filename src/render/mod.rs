//! Rendering (pure): an [`EffectivePolicy`](crate::policy::EffectivePolicy) becomes the files of
//! a Postfix relay configuration, byte-identical for identical input.

mod options;
mod postfix;

pub use options::{MapType, PostfixVersion, RenderOptions};
pub use postfix::render;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Name of the manifest file inside a rendered configuration.
pub const MANIFEST: &str = "manifest.json";

/// A rendered relay configuration: file name → content, and the content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Every file, `manifest.json` included.
    pub files: BTreeMap<String, String>,
    /// SHA-256 over every file except the manifest (which carries it).
    pub hash: String,
}

/// SHA-256 over the files in name order, each framed by its name and length so that moving
/// bytes between files changes the hash.
pub fn content_hash<'a>(files: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut sha = Sha256::new();
    for (name, content) in files {
        sha.update(name.as_bytes());
        sha.update([0]);
        sha.update(content.len().to_string().as_bytes());
        sha.update([0]);
        sha.update(content.as_bytes());
    }
    let digest = sha.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}
