//! How a rendered configuration is stored in a ConfigMap: small files as text, large ones
//! gzip-compressed under `<name>.gz`. The maps of a large policy are several MB of text,
//! over the 1 MiB a ConfigMap may hold; compressed they are about a tenth of that, which
//! the API server, etcd and every watcher also handle that much faster. Hashes (the
//! manifest's and the content hash) are always over the uncompressed text, so the files the
//! relay installs are byte-identical to `mailtls render`'s.

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Suffix of a compressed file's key (and, once kubelet mounts it, its file name).
pub const GZ_SUFFIX: &str = ".gz";
/// Files larger than this are compressed; smaller ones stay readable in `kubectl get -o yaml`.
pub const COMPRESS_OVER: usize = 32 * 1024;
/// Largest file a reader inflates; a compressed file claiming more is refused rather than
/// filling memory.
pub const UNPACKED_LIMIT: usize = 64 << 20;

/// A configuration as ConfigMap keys: text files (`data`) and compressed ones (`binaryData`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub text: BTreeMap<String, String>,
    pub gzip: BTreeMap<String, Vec<u8>>,
}

impl Packed {
    /// Bytes as the API server counts them against a ConfigMap's limit (keys and values).
    pub fn size(&self) -> usize {
        let text: usize = self.text.iter().map(|(k, v)| k.len() + v.len()).sum();
        let gzip: usize = self.gzip.iter().map(|(k, v)| k.len() + v.len()).sum();
        text + gzip
    }
}

/// Split the files into text and compressed keys.
pub fn pack(files: &BTreeMap<String, String>) -> Packed {
    let mut packed = Packed::default();
    for (name, content) in files {
        if content.len() > COMPRESS_OVER {
            packed
                .gzip
                .insert(format!("{name}{GZ_SUFFIX}"), gzip(content.as_bytes()));
        } else {
            packed.text.insert(name.clone(), content.clone());
        }
    }
    packed
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    // Fast level: the maps are repetitive text, so it compresses nearly as well as the
    // default level at a fraction of the time, and the time is on the edit → relay path.
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Inflate one compressed file, refusing anything over `limit` bytes or not UTF-8.
pub fn gunzip(bytes: &[u8], limit: usize) -> Result<String, String> {
    // The gzip trailer states the inflated size (mod 4 GiB): one allocation of the right
    // size instead of a doubling Vec, whose growth briefly holds two copies. A trailer that
    // lies costs at most `limit`.
    let stated = bytes
        .last_chunk::<4>()
        .map_or(0, |t| u32::from_le_bytes(*t) as usize);
    let mut out = Vec::with_capacity(stated.min(limit));
    GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    if out.len() > limit {
        return Err(format!("inflates to more than {limit} bytes"));
    }
    String::from_utf8(out).map_err(|_| "does not inflate to UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(big: usize) -> BTreeMap<String, String> {
        let line = "example.com secure match=nexthop:dot-nexthop\n";
        BTreeMap::from([
            ("main.cf".to_string(), "relayhost =\n".to_string()),
            ("tls_policy".to_string(), line.repeat(big)),
        ])
    }

    #[test]
    fn small_files_stay_text_and_large_ones_round_trip() {
        let f = files(10_000);
        let packed = pack(&f);
        assert_eq!(packed.text.keys().collect::<Vec<_>>(), ["main.cf"]);
        let gz = &packed.gzip["tls_policy.gz"];
        assert!(gz.len() * 10 < f["tls_policy"].len(), "{} bytes", gz.len());
        assert_eq!(gunzip(gz, UNPACKED_LIMIT).unwrap(), f["tls_policy"]);
        assert_eq!(packed.size(), 7 + 12 + 13 + gz.len());
    }

    #[test]
    fn a_file_at_the_threshold_is_not_compressed() {
        let f = BTreeMap::from([("a".to_string(), "x".repeat(COMPRESS_OVER))]);
        assert!(pack(&f).gzip.is_empty());
    }

    #[test]
    fn gunzip_refuses_bombs_garbage_and_binary() {
        let gz = gzip(&vec![b'a'; 1 << 20]);
        assert!(gunzip(&gz, 1 << 20).is_ok());
        let err = gunzip(&gz, (1 << 20) - 1).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        assert!(gunzip(b"plain text", 100).unwrap_err().contains("gzip"));
        let err = gunzip(&gzip(&[0xff, 0xfe]), 100).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }
}
