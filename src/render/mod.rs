//! Rendering (pure): an [`EffectivePolicy`](crate::policy::EffectivePolicy) becomes the files of
//! a Postfix relay configuration, byte-identical for identical input.

mod options;
pub mod pack;
mod postfix;

pub use options::{DEFAULT_MTA_STS_SOCKET, MapType, PostfixVersion, RenderOptions};
pub use postfix::{
    BOUNCE_FILTER, DANE, MAIN_CF, MASTER_CF, MTA_STS, MTA_STS_MAP_NAME, OWNED_PARAMS,
    REQUIRE_TLS_CLASS, SENDER_ACCESS, SERVICE_PREFIX, TLS_POLICY, TRANSPORT, mta_sts_map, render,
    render_to, service_scope,
};

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;

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

/// Where rendered files go as they are made: into memory ([`render`]), or straight to disk
/// (`mailtls render`, through [`render_to`]) so that a large table is never held whole.
pub trait Output {
    /// Start the file `name`; its text follows in pieces until [`Output::close`].
    fn open(&mut self, name: &str) -> io::Result<()>;
    fn append(&mut self, text: &str) -> io::Result<()>;
    fn close(&mut self) -> io::Result<()>;
}

/// Files kept in memory: name → text.
#[derive(Default)]
pub struct InMemory {
    pub files: BTreeMap<String, String>,
    open: Option<(String, String)>,
}

impl Output for InMemory {
    fn open(&mut self, name: &str) -> io::Result<()> {
        self.open = Some((name.to_string(), String::new()));
        Ok(())
    }

    fn append(&mut self, text: &str) -> io::Result<()> {
        if let Some((_, content)) = &mut self.open {
            content.push_str(text);
        }
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some((name, content)) = self.open.take() {
            self.files.insert(name, content);
        }
        Ok(())
    }
}

/// What [`render_to`] wrote: the configuration hash and the rows of each table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub hash: String,
    pub tls_policy: usize,
    pub transport: usize,
    pub sender_access: usize,
    /// master.cf services.
    pub services: usize,
}

/// The configuration hash: SHA-256 over `name NUL sha256(content) LF` for every file in name
/// order (given as name → hex digest), so each file is hashed once and moving bytes between
/// files still changes it.
pub fn content_hash(file_hashes: &BTreeMap<String, String>) -> String {
    let mut sha = Sha256::new();
    for (name, digest) in file_hashes {
        sha.update(name.as_bytes());
        sha.update([0]);
        sha.update(digest.as_bytes());
        sha.update([b'\n']);
    }
    format!("sha256:{}", hex(&sha.finalize()))
}

/// Lowercase hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| {
            [
                DIGITS[usize::from(b >> 4)] as char,
                DIGITS[usize::from(b & 15)] as char,
            ]
        })
        .collect()
}
