//! Render options: where the relay keeps the maps, which map type, which Postfix.

use std::fmt;
use std::str::FromStr;

/// Postfix indexed map type the maps are built as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MapType {
    Cdb,
    #[default]
    Lmdb,
    Hash,
}

impl MapType {
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::Cdb => "cdb",
            MapType::Lmdb => "lmdb",
            MapType::Hash => "hash",
        }
    }
}

/// A Postfix release, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PostfixVersion {
    pub major: u32,
    pub minor: u32,
}

impl PostfixVersion {
    /// The newest release line the renderer knows about; used when nothing else is known.
    pub const LATEST: PostfixVersion = PostfixVersion {
        major: 3,
        minor: 10,
    };

    /// Postfix 3.10 honours a `TLS-Required: no` header unless `tls_required_enable = no`.
    pub fn has_tls_required_header(self) -> bool {
        self >= PostfixVersion {
            major: 3,
            minor: 10,
        }
    }
}

impl FromStr for PostfixVersion {
    type Err = String;
    /// Accepts `3.7`, `3.7.11` or `3.10-20250101`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a Postfix version like 3.7 or 3.10.1");
        let mut parts = s.trim().split(['.', '-']);
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(PostfixVersion { major, minor })
    }
}

impl fmt::Display for PostfixVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How to render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Directory on the relay where the map files live (absolute).
    pub config_dir: String,
    pub map_type: MapType,
    /// CA bundle for private CAs (`smtp_tls_CAfile`).
    pub ca_file: Option<String>,
    /// The Postfix release the relay runs.
    pub postfix_version: PostfixVersion,
    /// The relay agent's MTA-STS policy server (its `--mta-sts-listen unix:PATH`), named in
    /// the configuration only when a policy honours MTA-STS.
    pub mta_sts_socket: String,
}

/// Where the chart's relay agent serves MTA-STS policies to Postfix.
pub const DEFAULT_MTA_STS_SOCKET: &str = "/run/mailtls-sts/mta-sts.sock";

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            config_dir: "/etc/postfix/mailtls".into(),
            map_type: MapType::Lmdb,
            ca_file: None,
            postfix_version: PostfixVersion::LATEST,
            mta_sts_socket: DEFAULT_MTA_STS_SOCKET.into(),
        }
    }
}

impl RenderOptions {
    /// Paths end up in main.cf and master.cf, so they get the same scrutiny as data.
    pub fn validate(&self) -> Result<(), String> {
        check_path("--config-dir", &self.config_dir)?;
        if let Some(ca) = &self.ca_file {
            check_path("--ca-file", ca)?;
        }
        check_path("--mta-sts-socket", &self.mta_sts_socket)?;
        Ok(())
    }
}

fn check_path(option: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{option} must be an absolute path on the relay, got '{path}'"
        ));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(format!("{option} must not end with '/'"));
    }
    let bad = path.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ',' | '=' | '{' | '}' | '$' | ':' | '#' | '"' | '\'')
    });
    match bad {
        Some(c) => Err(format!(
            "{option} may not contain {:?}: it would change the Postfix configuration's meaning",
            c
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{PostfixVersion, check_path};

    #[test]
    fn a_trailing_slash_is_refused_except_for_the_root() {
        assert_eq!(check_path("--config-dir", "/"), Ok(()));
        assert_eq!(check_path("--config-dir", "/etc/postfix/mailtls"), Ok(()));
        let e = check_path("--config-dir", "/etc/postfix/").expect_err("trailing slash");
        assert!(e.contains("must not end with '/'"), "{e}");
        assert!(check_path("--ca-file", "etc/ca.pem").is_err());
    }

    #[test]
    fn versions_read_and_print_as_major_dot_minor() {
        for (text, shown) in [("3.7", "3.7"), ("3.7.11", "3.7"), ("3.10-20250101", "3.10")] {
            let v: PostfixVersion = text.parse().expect("version");
            assert_eq!(v.to_string(), shown);
        }
        assert!("3".parse::<PostfixVersion>().is_err());
        assert!(PostfixVersion::LATEST.has_tls_required_header());
        assert!(
            !"3.9"
                .parse::<PostfixVersion>()
                .expect("3.9")
                .has_tls_required_header()
        );
    }
}
