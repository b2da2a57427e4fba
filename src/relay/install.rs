//! Installing a verified configuration: a staging copy of the whole Postfix config
//! directory, `postconf -e`, master.cf services appended, maps built with `postmap`,
//! `postfix check` (any output is a failure) plus the checks `postfix check` does not make,
//! and only then the swap into place and `postfix reload`.

use super::bundle::{Bundle, MAPS};
use super::validate::Checked;
use crate::render::{
    BOUNCE_FILTER, MAIN_CF, MANIFEST, MASTER_CF, PostfixVersion, TLS_POLICY, TRANSPORT,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Suffix of the pristine copies of the relay's own main.cf and master.cf: every apply
/// starts from them, so mailtls's additions never stack. Local changes go into these.
pub const BASE_SUFFIX: &str = ".mailtls-base";
/// Marks the block the agent appends to master.cf.
const MASTER_BEGIN: &str = "# BEGIN mailtls services (added by mailtls relay-agent)";
const MASTER_END: &str = "# END mailtls services";
/// Names the agent uses next to the live files; skipped when copying the config directory.
const STAGING: &str = ".mailtls-staging";
const MAPS_PREFIX: &str = ".mailtls-maps-";

/// Where things live on the relay.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The live Postfix `config_directory`.
    pub postfix_dir: PathBuf,
    /// Where the maps live (the render's `--config-dir`): a symlink to a versioned sibling
    /// directory, swapped in one rename.
    pub maps_dir: PathBuf,
}

/// A finished command's result.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Result<Ran, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e} (is Postfix installed?)", describe(cmd)))?;
    Ok(Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy())
        .chain(cmd.get_args().map(|a| a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a command that must succeed; warnings on stderr count as failure (Postfix warns and
/// still exits 0), and so does stdout when `quiet` (postfix check, postmap, postconf -e).
pub(super) fn run_checked(cmd: &mut Command, quiet: bool) -> Result<String, String> {
    let ran = run(cmd)?;
    let noise = ran.stderr.trim().to_string() + if quiet { ran.stdout.trim() } else { "" };
    if !ran.success || !noise.is_empty() {
        return Err(format!(
            "{}: {}",
            describe(cmd),
            if noise.is_empty() {
                "failed with no output".into()
            } else {
                noise
            }
        ));
    }
    Ok(ran.stdout)
}

/// Postfix programs read main.cf and master.cf only once they are two seconds old
/// ("pausing to let ... settle down": an editor may still be writing), in 0.3 s steps. The
/// agent writes these files whole, in directories nobody else edits, so it backdates them:
/// otherwise each of the dozen Postfix commands of one apply waits up to two seconds.
pub(super) fn settle(dir: &Path) {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    for name in [MAIN_CF, MASTER_CF] {
        if let Ok(file) = std::fs::File::options().write(true).open(dir.join(name)) {
            let _ = file.set_modified(past);
        }
    }
}

pub(super) fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// The destinations the installed configuration honours MTA-STS and DANE for through the
/// policy server (none when nothing is installed or it predates them).
pub fn installed_mta_sts(paths: &Paths) -> Result<crate::sts::scope::Scope, String> {
    let read = |name: &str| {
        let path = paths.maps_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io("cannot read", &path, e)),
        }
    };
    crate::sts::scope::Scope::parse(&read(crate::render::MTA_STS)?, &read(crate::render::DANE)?)
}

/// The hash of the configuration currently installed (from the manifest the agent copies
/// into the maps directory), if any.
pub fn installed_hash(paths: &Paths) -> Option<String> {
    let text = std::fs::read_to_string(paths.maps_dir.join(MANIFEST)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("hash")?.as_str().map(str::to_string)
}

/// Copy `from` into `to` recursively (files, directories, symlinks as links), leaving out
/// the agent's own entries and the maps directory.
pub(super) fn copy_tree(from: &Path, to: &Path, skip: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io("cannot read", from, e))? {
        let entry = entry.map_err(|e| io("cannot read", from, e))?;
        let name = entry.file_name();
        let src = entry.path();
        if src == skip || name.to_string_lossy().starts_with(".mailtls") {
            continue;
        }
        let dst = to.join(&name);
        let kind = entry.file_type().map_err(|e| io("cannot stat", &src, e))?;
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| io("cannot read link", &src, e))?;
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(|e| io("cannot create link", &dst, e))?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst, skip)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| io("cannot copy", &src, e))?;
        }
    }
    Ok(())
}

/// The pristine base of `file` (main.cf or master.cf): made from the live file on first
/// use. A master.cf that still carries an agent block (base lost) has it stripped.
fn base(paths: &Paths, file: &str) -> Result<String, String> {
    let base_path = paths.postfix_dir.join(format!("{file}{BASE_SUFFIX}"));
    if let Ok(text) = std::fs::read_to_string(&base_path) {
        return Ok(text);
    }
    let live = paths.postfix_dir.join(file);
    let text = std::fs::read_to_string(&live).map_err(|e| io("cannot read", &live, e))?;
    let text = strip_master_block(&text);
    std::fs::write(&base_path, &text).map_err(|e| io("cannot write", &base_path, e))?;
    tracing::info!(path = %base_path.display(), "saved the relay's own {file} as the base for every apply");
    Ok(text)
}

fn strip_master_block(text: &str) -> String {
    match (text.find(MASTER_BEGIN), text.find(MASTER_END)) {
        (Some(b), Some(e)) if e > b => {
            let end = text[e..].find('\n').map_or(text.len(), |i| e + i + 1);
            format!("{}{}", &text[..b], &text[end..])
        }
        _ => text.to_string(),
    }
}

/// Service names (`name/type`) defined in a master.cf, in order, duplicates included.
fn master_services(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ' ', '\t']))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// What `postfix check` does not catch (DESIGN §4): a service defined twice, and a
/// transport naming a service that does not exist.
fn cross_check(master: &str, checked: &Checked) -> Result<(), String> {
    let services = master_services(master);
    let mut seen = BTreeSet::new();
    for (name, kind) in &services {
        if !seen.insert((name, kind)) {
            return Err(format!("master.cf defines {name}/{kind} twice"));
        }
    }
    for wanted in &checked.transport_services {
        if !services
            .iter()
            .any(|(name, kind)| name == wanted && kind == "unix")
        {
            return Err(format!(
                "the {TRANSPORT} table names service {wanted:?}, which master.cf does not define"
            ));
        }
    }
    Ok(())
}

/// A fresh, unique name for a sibling of `path`.
fn sibling(path: &Path, prefix: &str, hash: &str) -> Result<PathBuf, String> {
    let parent = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    let short: String = hash
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(parent.join(format!("{prefix}{short}-{nanos}")))
}

/// Build, check and install. On error nothing live has changed (staging is removed).
/// `widened`: install this TLS policy table instead of the bundle's, and no manifest (so the
/// configuration does not count as installed); see [`widened_policy`].
pub fn install(
    bundle: &Bundle,
    checked: &Checked,
    paths: &Paths,
    widened: Option<&str>,
) -> Result<(), String> {
    // One apply at a time per config directory (a watching agent and a `--once` run share
    // the staging directory); the lock goes with the file handle.
    let lock_path = paths.postfix_dir.join(".mailtls-lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| io("cannot create", &lock_path, e))?;
    lock.lock().map_err(|e| io("cannot lock", &lock_path, e))?;
    let staging = paths.postfix_dir.join(STAGING);
    let new_maps = sibling(&paths.maps_dir, MAPS_PREFIX, &bundle.hash)?;
    let result = stage(bundle, checked, paths, &staging, &new_maps, widened)
        .and_then(|()| swap(paths, &staging, &new_maps));
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&new_maps);
    }
    result
}

fn stage(
    bundle: &Bundle,
    checked: &Checked,
    paths: &Paths,
    staging: &Path,
    new_maps: &Path,
    widened: Option<&str>,
) -> Result<(), String> {
    let main_base = base(paths, MAIN_CF)?;
    let master_base = base(paths, MASTER_CF)?;
    let _ = std::fs::remove_dir_all(staging);
    copy_tree(&paths.postfix_dir, staging, &paths.maps_dir)?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| io("cannot write", path, e))
    };
    write(&staging.join(MAIN_CF), &main_base)?;
    let mut master = master_base;
    if !master.ends_with('\n') && !master.is_empty() {
        master.push('\n');
    }
    master.push_str(MASTER_BEGIN);
    master.push('\n');
    let block = bundle.file(MASTER_CF);
    master.push_str(block);
    // Without it the end marker would run into the last service's last option.
    if !block.is_empty() && !block.ends_with('\n') {
        master.push('\n');
    }
    master.push_str(MASTER_END);
    master.push('\n');
    write(&staging.join(MASTER_CF), &master)?;
    settle(staging);
    cross_check(&master, checked)?;
    let mut main_cf = for_version(&checked.main_cf, local_version(staging)?);
    // A policy is in force from now on: release the hold relay-init put on delivery.
    main_cf.push(format!("{}=", super::hold::PARAM));
    run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(staging)
            .arg("-e")
            .args(&main_cf),
        true,
    )?;
    settle(staging);

    std::fs::create_dir_all(new_maps).map_err(|e| io("cannot create", new_maps, e))?;
    for (name, content) in &bundle.files {
        match (name.as_str(), widened) {
            (MANIFEST, Some(_)) => {}
            (TLS_POLICY, Some(policy)) => write(&new_maps.join(name), policy)?,
            _ => write(&new_maps.join(name), content)?,
        }
    }
    for map in MAPS {
        run_checked(
            Command::new("postmap").arg("-c").arg(staging).arg(format!(
                "{}:{}",
                bundle.map_type.as_str(),
                new_maps.join(map).display()
            )),
            true,
        )?;
    }
    // Compiles every pattern: a bad one is a warning on stderr. A key that matches nothing
    // exits 1, which is fine here.
    let mut probe = Command::new("postmap");
    probe
        .arg("-c")
        .arg(staging)
        .args(["-q", "4.7.0 mailtls probe"])
        .arg(format!("pcre:{}", new_maps.join(BOUNCE_FILTER).display()));
    let ran = run(&mut probe)?;
    if !ran.stderr.trim().is_empty() {
        return Err(format!("{}: {}", describe(&probe), ran.stderr.trim()));
    }
    postfix_check(staging)?;
    run_checked(
        Command::new("postconf").arg("-c").arg(staging).arg("-n"),
        false,
    )?;
    run_checked(
        Command::new("postconf").arg("-c").arg(staging).arg("-M"),
        false,
    )?;
    Ok(())
}

/// `postfix check`, whose warnings go to the mail log only (never to a pipe): run it with
/// the staging copy logging into a file of its own, whether or not the live Postfix runs,
/// and fail on any warning there. The staged main.cf is restored afterwards.
fn postfix_check(staging: &Path) -> Result<(), String> {
    let main = staging.join(MAIN_CF);
    let saved = std::fs::read_to_string(&main).map_err(|e| io("cannot read", &main, e))?;
    let log = staging.join("mailtls-check.log");
    run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(staging)
            .arg("-e")
            .arg(format!("maillog_file={}", log.display()))
            .arg(format!("maillog_file_prefixes={}", staging.display()))
            // While the live Postfix runs, its postlogd listens on the shared queue's
            // public/postlog socket and the check's warnings would go to the live log. With
            // no such socket the programs write the maillog_file themselves.
            .arg("postlog_service_name=mailtls-check-no-postlogd"),
        true,
    )?;
    settle(staging);
    let result = run_checked(
        Command::new("postfix").arg("-c").arg(staging).arg("check"),
        true,
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    std::fs::write(&main, saved).map_err(|e| io("cannot write", &main, e))?;
    settle(staging);
    let problems: Vec<&str> = logged
        .lines()
        .filter(|l| {
            ["warning:", "fatal:", "error:", "panic:"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    match (result, problems.is_empty()) {
        (Ok(_), true) => Ok(()),
        (Ok(_), false) => Err(format!("postfix check: {}", problems.join("; "))),
        (Err(e), _) => Err(if problems.is_empty() {
            e
        } else {
            format!("postfix check: {}", problems.join("; "))
        }),
    }
}

/// Maps first (one symlink rename), then master.cf (so the services exist), then main.cf.
fn swap(paths: &Paths, staging: &Path, new_maps: &Path) -> Result<(), String> {
    let maps = &paths.maps_dir;
    let target = new_maps
        .file_name()
        .ok_or_else(|| format!("{} has no file name", new_maps.display()))?;
    let old_target = match std::fs::symlink_metadata(maps) {
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(maps)
            .ok()
            .map(|t| maps.parent().map_or_else(|| t.clone(), |p| p.join(&t))),
        Ok(m) if m.is_dir() => {
            // First apply over a plain directory: move it aside so the link can take its
            // place (the one moment without maps; later swaps are atomic).
            let aside = sibling(maps, ".mailtls-maps-previous-", "")?;
            std::fs::rename(maps, &aside).map_err(|e| io("cannot move aside", maps, e))?;
            Some(aside)
        }
        Ok(_) => return Err(format!("{} exists and is not a directory", maps.display())),
        Err(_) => None,
    };
    let link = sibling(maps, ".mailtls-link-", "")?;
    std::os::unix::fs::symlink(target, &link).map_err(|e| io("cannot create link", &link, e))?;
    std::fs::rename(&link, maps).map_err(|e| io("cannot replace", maps, e))?;
    for file in [MASTER_CF, MAIN_CF] {
        let live = paths.postfix_dir.join(file);
        std::fs::rename(staging.join(file), &live).map_err(|e| io("cannot replace", &live, e))?;
    }
    if let Some(old) = old_target
        && old.as_path() != new_maps
    {
        let _ = std::fs::remove_dir_all(old);
    }
    // Versions left behind by an agent that died mid-apply.
    if let Some(parent) = maps.parent()
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for entry in entries.flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with(MAPS_PREFIX)
                && entry.path() != new_maps;
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// `postfix reload` when this Postfix runs; a stopped one reads the files when it starts.
pub fn reload(paths: &Paths) -> Result<bool, String> {
    let postfix = |command: &str| {
        let mut cmd = Command::new("postfix");
        cmd.arg("-c").arg(&paths.postfix_dir).arg(command);
        cmd
    };
    if !run(&mut postfix("status"))?.success {
        return Ok(false);
    }
    // Only the exit status counts: postfix-script may echo its log line on stderr.
    let ran = run(&mut postfix("reload"))?;
    if !ran.success {
        return Err(format!("postfix reload failed: {}", ran.stderr.trim()));
    }
    Ok(true)
}

/// The Postfix release installed here (`mail_version`).
fn local_version(config: &Path) -> Result<PostfixVersion, String> {
    let out = run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(config)
            .args(["-h", "mail_version"]),
        false,
    )?;
    out.trim()
        .parse()
        .map_err(|e| format!("postconf -h mail_version: {e}"))
}

/// main.cf settings for the Postfix that runs here, whatever release the renderer assumed:
/// from 3.10 on `tls_required_enable = no` always (a `TLS-Required: no` header must never
/// switch TLS off), before 3.10 never (the parameter does not exist there and would be
/// refused as unused).
fn for_version(main_cf: &[String], version: PostfixVersion) -> Vec<String> {
    let mut out: Vec<String> = main_cf
        .iter()
        .filter(|a| !a.starts_with("tls_required_enable="))
        .cloned()
        .collect();
    if version.has_tls_required_header() {
        out.push("tls_required_enable=no".into());
    }
    out
}

/// Whether this Postfix runs.
pub fn running(paths: &Paths) -> Result<bool, String> {
    let mut status = Command::new("postfix");
    status.arg("-c").arg(&paths.postfix_dir).arg("status");
    Ok(run(&mut status)?.success)
}

/// The TLS policy table of the first of two swaps: every row of `bundle`'s table plus the
/// rows of the installed table whose next hop the new one no longer has. `None` when
/// nothing would be kept (no configuration installed, or no row lost).
///
/// Why: the swap replaces the maps at once, and Postfix's processes reopen a changed map at
/// their next request, but main.cf and master.cf take effect only at the reload. In between,
/// mail the running configuration routes to a gateway (its relayhost, a `smtp:[gw]` route)
/// would find that gateway's row gone and be sent with the default, opportunistic TLS. So
/// first the new configuration with this widened table, reload, wait until the queue
/// manager and the address resolver of the old configuration have exited; only then the
/// exact table. A row both configurations have takes the new value at once: that is the
/// change being applied, and after the reload it holds anyway.
pub fn widened_policy(paths: &Paths, bundle: &Bundle) -> Option<String> {
    let installed = std::fs::read_to_string(paths.maps_dir.join(TLS_POLICY)).ok()?;
    let new = bundle.file(TLS_POLICY);
    let keys: BTreeSet<&str> = rows(new).map(|(k, _)| k).collect();
    let kept: Vec<&str> = installed
        .lines()
        .filter(|l| rows(l).next().is_some_and(|(k, _)| !keys.contains(k)))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut text = new.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# Rows of the previous configuration, kept until Postfix has reloaded.\n");
    for line in kept {
        text.push_str(line);
        text.push('\n');
    }
    Some(text)
}

/// `(key, value)` of a table's rows.
fn rows(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
}

/// Postfix's queue_directory, when postconf says.
fn queue_directory(paths: &Paths) -> Option<String> {
    run(Command::new("postconf")
        .arg("-c")
        .arg(&paths.postfix_dir)
        .args(["-h", "queue_directory"]))
    .map(|r| r.stdout.trim().to_string())
    .ok()
    .filter(|q| !q.is_empty())
}

/// The Postfix queues the agent reports on /metrics.
pub const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];

/// Messages in each of [`QUEUES`] (files under the queue's directory, hashed
/// subdirectories included); `None` when the queue directory cannot be found.
pub fn queue_sizes(paths: &Paths) -> Option<[u64; 5]> {
    let queue = queue_directory(paths)?;
    fn count(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => count(&e.path()),
                Ok(t) if t.is_file() => 1,
                _ => 0,
            })
            .sum()
    }
    Some(QUEUES.map(|q| count(&Path::new(&queue).join(q))))
}

/// The processes of a running Postfix that decide where mail goes (queue manager, address
/// resolver): they are replaced at a reload.
fn routing_processes(paths: &Paths) -> Vec<u32> {
    let queue = queue_directory(paths).unwrap_or_default();
    let master = std::fs::read_to_string(Path::new(&queue).join("pid/master.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let Some(master) = master else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
            let (head, tail) = stat.rsplit_once(')').unwrap_or_default();
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            ppid == Some(master) && matches!(comm, "qmgr" | "trivial-rewrite")
        })
        .collect()
}

/// How long a reload may take to replace the routing processes.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `postfix reload`, then wait until the routing processes that ran before have exited, so
/// no mail is routed by the previous configuration any more. False: Postfix does not run.
pub fn reload_and_wait(paths: &Paths) -> Result<bool, String> {
    let before = routing_processes(paths);
    if !reload(paths)? {
        return Ok(false);
    }
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    while before
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the previous queue manager or address resolver was still running {}s after \
                 the reload",
                RELOAD_WAIT.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_block_is_stripped_once() {
        let text = format!(
            "smtp inet n - y - - smtpd\n{MASTER_BEGIN}\nx unix - - n - - smtp\n{MASTER_END}\ntail unix - - n - - smtp\n"
        );
        assert_eq!(
            strip_master_block(&text),
            "smtp inet n - y - - smtpd\ntail unix - - n - - smtp\n"
        );
    }

    #[test]
    fn cross_check_finds_duplicates_and_missing_services() {
        let mut checked = Checked::default();
        assert!(cross_check("a unix - - n - - smtp\na unix - - n - - smtp\n", &checked).is_err());
        assert!(cross_check("a unix - - n - - smtp\na inet n - n - - smtpd\n", &checked).is_ok());
        checked.transport_services.insert("b".into());
        assert!(cross_check("a unix - - n - - smtp\n", &checked).is_err());
    }

    #[test]
    fn tls_required_enable_follows_the_local_version() {
        let rendered = |extra: &[&str]| -> Vec<String> {
            ["relayhost=", "smtp_tls_loglevel=1"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let v = |minor| PostfixVersion { major: 3, minor };
        for input in [
            rendered(&[]),
            rendered(&["tls_required_enable=no"]),
            rendered(&["tls_required_enable=yes"]),
        ] {
            assert_eq!(for_version(&input, v(7)), rendered(&[]), "{input:?}");
            assert_eq!(for_version(&input, v(9)), rendered(&[]), "{input:?}");
            for minor in [10, 11] {
                let out = for_version(&input, v(minor));
                assert_eq!(out, rendered(&["tls_required_enable=no"]), "{input:?}");
            }
        }
        let four = PostfixVersion { major: 4, minor: 0 };
        assert!(for_version(&rendered(&[]), four).contains(&"tls_required_enable=no".to_string()));
    }

    #[test]
    fn widened_policy_keeps_rows_the_new_table_drops() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let paths = Paths {
            postfix_dir: tmp.path().to_path_buf(),
            maps_dir: tmp.path().join("maps"),
        };
        let mut bundle = Bundle {
            hash: String::new(),
            map_type: crate::render::MapType::Lmdb,
            config_dir: String::new(),
            files: Default::default(),
        };
        let new = "# new\n[gw.example]:587 encrypt\nb.example verify\n";
        bundle.files.insert(TLS_POLICY.into(), new.into());
        assert_eq!(widened_policy(&paths, &bundle), None, "nothing installed");
        std::fs::create_dir(&paths.maps_dir).expect("maps");
        let old = "# old\nsmarthost.example encrypt\nb.example secure\n";
        std::fs::write(paths.maps_dir.join(TLS_POLICY), old).expect("old");
        let widened = widened_policy(&paths, &bundle).expect("a row is kept");
        assert!(widened.starts_with(new), "{widened}");
        let rows: Vec<_> = rows(&widened).collect();
        assert_eq!(
            rows,
            [
                ("[gw.example]:587", "encrypt"),
                ("b.example", "verify"),
                ("smarthost.example", "encrypt")
            ]
        );
        std::fs::write(paths.maps_dir.join(TLS_POLICY), "b.example secure\n").expect("old");
        assert_eq!(widened_policy(&paths, &bundle), None, "no row lost");
    }
}
