//! Writing rendered files: each one replaced atomically (temp file + rename), files a
//! previous render wrote and this one does not are removed, nothing else is touched.

use crate::render::{MANIFEST, Output, PostfixVersion, RenderOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Write `files` into `dir`. `previous_manifest` names the manifest whose listed files may be
/// removed when they are no longer rendered.
pub fn write_files(
    dir: &Path,
    files: BTreeMap<String, String>,
    previous_manifest: Option<&str>,
) -> Result<(), String> {
    let mut out = DirOutput::new(dir, previous_manifest)?;
    for (name, content) in &files {
        out.open(name)
            .and_then(|()| out.append(content))
            .and_then(|()| out.close())
            .map_err(|e| e.to_string())?;
    }
    out.finish();
    Ok(())
}

/// Rendered files written into a directory as they are made: each to a hidden temporary
/// file, renamed over the old one when complete.
pub struct DirOutput {
    dir: PathBuf,
    /// Files the previous manifest lists: removed at the end unless written again.
    stale: Vec<String>,
    written: BTreeSet<String>,
    /// The file being written: its name, its temporary path, and the writer.
    open: Option<(String, PathBuf, BufWriter<File>)>,
}

impl DirOutput {
    pub fn new(dir: &Path, previous_manifest: Option<&str>) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let stale = previous_manifest
            .and_then(|m| std::fs::read_to_string(dir.join(m)).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| {
                v.get("files")
                    .and_then(|f| f.as_object())
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default();
        Ok(DirOutput {
            dir: dir.to_path_buf(),
            stale,
            written: BTreeSet::new(),
            open: None,
        })
    }

    /// Remove the files the previous render wrote and this one did not (never the manifest,
    /// nor anything outside the directory).
    pub fn finish(self) {
        for name in &self.stale {
            if !self.written.contains(name) && !name.contains('/') && name != MANIFEST {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }
}

impl Output for DirOutput {
    fn open(&mut self, name: &str) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| context("cannot write", &tmp, e))?;
        self.open = Some((
            name.to_string(),
            tmp,
            BufWriter::with_capacity(1 << 16, file),
        ));
        Ok(())
    }

    fn append(&mut self, text: &str) -> io::Result<()> {
        let Some((_, tmp, file)) = &mut self.open else {
            return Ok(());
        };
        file.write_all(text.as_bytes())
            .map_err(|e| context("cannot write", tmp, e))
    }

    fn close(&mut self) -> io::Result<()> {
        let Some((name, tmp, file)) = self.open.take() else {
            return Ok(());
        };
        file.into_inner()
            .map_err(|e| e.into_error())
            .map_err(|e| context("cannot write", &tmp, e))?;
        let path = self.dir.join(&name);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(context("cannot replace", &path, e));
        }
        self.written.insert(name);
        Ok(())
    }
}

impl Drop for DirOutput {
    /// A file left half written (the render failed) leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some((_, tmp, _)) = self.open.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn context(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// `auto`: ask the local Postfix (`postconf -h mail_version`), else assume the newest.
pub fn postfix_version(arg: &str) -> Result<PostfixVersion, String> {
    if arg != "auto" {
        return arg.parse();
    }
    Ok(local_postfix_version())
}

/// The local Postfix's release, else the newest.
fn local_postfix_version() -> PostfixVersion {
    std::process::Command::new("postconf")
        .args(["-h", "mail_version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(PostfixVersion::LATEST)
}

/// The options shared by `render` and `standalone`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderFlags {
    /// Directory on the relay where the map files will live.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix/mailtls")]
    pub config_dir: String,
    /// Postfix map type the relay builds the maps as.
    #[arg(long, value_enum, default_value = "lmdb")]
    pub map_type: crate::render::MapType,
    /// CA bundle on the relay for private CAs (sets smtp_tls_CAfile).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<String>,
    /// Postfix release of the relay (e.g. 3.7); `auto` asks the local postconf, else assumes
    /// the newest (which adds `tls_required_enable = no`).
    #[arg(long, value_name = "VERSION", default_value = "auto")]
    pub postfix_version: String,
    /// Unix socket of the relay agent's MTA-STS policy server (`relay-agent --mta-sts-listen
    /// unix:PATH`), used when a TlsCompliance honours MTA-STS.
    #[arg(long, value_name = "PATH", default_value = crate::render::DEFAULT_MTA_STS_SOCKET)]
    pub mta_sts_socket: String,
}

impl RenderFlags {
    /// The options, or the usage-error exit code after saying why.
    pub fn options_or_exit(&self) -> Result<RenderOptions, std::process::ExitCode> {
        self.options().map_err(|e| {
            eprintln!("error: {e}");
            std::process::ExitCode::from(super::EXIT_USAGE)
        })
    }

    /// [`options_or_exit`](Self::options_or_exit), with `--postfix-version auto` asked of
    /// the local Postfix on another thread (a process start, 10 ms) while the caller reads
    /// its input; the returned function waits for the answer.
    pub fn options_soon(
        &self,
    ) -> Result<impl FnOnce() -> RenderOptions + use<>, std::process::ExitCode> {
        let ask = self.postfix_version == "auto";
        let mut flags = self.clone();
        if ask {
            flags.postfix_version = PostfixVersion::LATEST.to_string();
        }
        let opts = flags.options_or_exit()?;
        let asking = ask.then(|| std::thread::spawn(local_postfix_version));
        Ok(move || match asking {
            Some(answer) => RenderOptions {
                postfix_version: answer.join().unwrap_or(PostfixVersion::LATEST),
                ..opts
            },
            None => opts,
        })
    }

    pub fn options(&self) -> Result<RenderOptions, String> {
        let opts = RenderOptions {
            config_dir: self.config_dir.clone(),
            map_type: self.map_type,
            ca_file: self.ca_file.clone(),
            postfix_version: postfix_version(&self.postfix_version)?,
            mta_sts_socket: self.mta_sts_socket.clone(),
        };
        opts.validate()?;
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{RenderOptions, render, render_to};

    /// A namespace whose tables are larger than one piece of a file on its way out.
    fn large_policy() -> crate::policy::EffectivePolicy {
        let entries: Vec<String> = (0..4000).map(|i| format!("dom{i}.example")).collect();
        let text = format!(
            "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata: {{name: l}}\n\
             spec: {{entries: [{}]}}\n---\n\
             apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {{name: p}}\n\
             spec: {{direction: Both, mechanisms: [MtaSts], addressLists: [{{name: l}}]}}\n",
            entries.join(", ")
        );
        let (loaded, errors) = super::super::load::load_str("l.yaml", &text, "default");
        assert!(errors.is_empty(), "{errors:?}");
        crate::policy::evaluate(&loaded.namespaces["default"]).policy
    }

    /// Files written as they are rendered are byte for byte the files kept in memory, with
    /// the same hash, and no temporary file is left behind.
    #[test]
    fn files_written_as_rendered_are_the_files_rendered_in_memory() {
        let policy = large_policy();
        let opts = RenderOptions::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = DirOutput::new(dir.path(), Some(MANIFEST)).expect("dir");
        let written = render_to(&policy, &opts, &mut out).expect("written");
        out.finish();
        let kept = render(&policy, &opts);
        assert_eq!(written.hash, kept.hash);
        assert!(kept.files[crate::render::TLS_POLICY].len() > 64 * 1024);
        let mut on_disk = BTreeMap::new();
        for entry in std::fs::read_dir(dir.path()).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            on_disk.insert(name, std::fs::read_to_string(&path).expect("read"));
        }
        assert_eq!(on_disk, kept.files);
        assert_eq!(written.tls_policy, 4000);
        assert_eq!(written.sender_access, 4000);
    }

    /// A new render replaces every file and removes the ones the previous manifest listed
    /// that are no longer rendered; files it never wrote stay.
    #[test]
    fn files_no_longer_rendered_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = |names: &[&str]| -> BTreeMap<String, String> {
            let listed: BTreeMap<&str, &str> = names.iter().map(|n| (*n, "sha256:x")).collect();
            let mut files: BTreeMap<String, String> = names
                .iter()
                .map(|n| (n.to_string(), format!("{n} text\n")))
                .collect();
            files.insert(
                MANIFEST.into(),
                serde_json::json!({ "files": listed }).to_string(),
            );
            files
        };
        std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
        write_files(dir.path(), files(&["a", "b"]), Some(MANIFEST)).expect("first");
        write_files(dir.path(), files(&["a"]), Some(MANIFEST)).expect("second");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", MANIFEST, "notes.txt"]);
    }

    /// A file that cannot be replaced stops the writing with its path in the message.
    #[test]
    fn a_file_that_cannot_be_replaced_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A non-empty directory where a table goes: no rename can replace it.
        let blocked = dir.path().join(crate::render::TLS_POLICY);
        std::fs::create_dir_all(blocked.join("inside")).expect("mkdir");
        let mut out = DirOutput::new(dir.path(), Some(MANIFEST)).expect("dir");
        let e = render_to(&large_policy(), &RenderOptions::default(), &mut out)
            .expect_err("cannot replace a directory");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot replace {}:", blocked.display())),
            "{e}"
        );
        assert!(
            !dir.path().join(MANIFEST).exists(),
            "no manifest for a partial render"
        );
        drop(out);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
