//! Writing rendered files: each one replaced atomically (temp file + rename), files a
//! previous render wrote and this one does not are removed, nothing else is touched.

use crate::render::{MANIFEST, PostfixVersion, RenderOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// Write `files` into `dir`. `previous_manifest` names the manifest whose listed files may be
/// removed when they are no longer rendered.
pub fn write_files(
    dir: &Path,
    files: BTreeMap<String, String>,
    previous_manifest: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let stale: Vec<String> = previous_manifest
        .and_then(|m| std::fs::read_to_string(dir.join(m)).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v.get("files")
                .and_then(|f| f.as_object())
                .map(|o| o.keys().cloned().collect())
        })
        .unwrap_or_default();
    for (name, content) in &files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    }
    for name in stale {
        if !files.contains_key(&name) && !name.contains('/') && name != MANIFEST {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(())
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
