//! Seeding the live config directory at pod start (edge): the image's Postfix configuration
//! plus the relay's own settings ([`BaseSettings`]). The live directory is an `emptyDir`, so
//! each pod starts from the image and the chart's values, never from a previous pod's edits.

use super::base::BaseSettings;
use super::install::{copy_tree, io, run_checked, settle};
use super::{BASE_SUFFIX, Paths};
use crate::render::MAIN_CF;
use std::path::Path;
use std::process::Command;

/// Replace the live directory's contents with a copy of `image_dir` (unless they are the
/// same directory), then set the relay's settings in main.cf, and in the agent's saved base
/// of main.cf when there is one (so the next apply keeps them).
pub fn seed(image_dir: &Path, paths: &Paths, settings: &BaseSettings) -> Result<(), String> {
    let same =
        std::fs::canonicalize(image_dir).ok() == std::fs::canonicalize(&paths.postfix_dir).ok();
    if !same {
        if !image_dir.join(MAIN_CF).is_file() {
            return Err(format!("{} has no {MAIN_CF}", image_dir.display()));
        }
        clear(&paths.postfix_dir)?;
        copy_tree(image_dir, &paths.postfix_dir, &paths.maps_dir)?;
    }
    let assignments: Vec<String> = settings
        .params()
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    set_params(paths, &assignments)
}

/// Set `name=value` assignments in the live main.cf and in the agent's saved base of it,
/// when there is one (so the next apply keeps them).
pub fn set_params(paths: &Paths, assignments: &[String]) -> Result<(), String> {
    set(&paths.postfix_dir, assignments)?;
    let base = paths.postfix_dir.join(format!("{MAIN_CF}{BASE_SUFFIX}"));
    if base.is_file() {
        set_in_file(&base, assignments)?;
    }
    Ok(())
}

/// `postconf -e` in `dir`: replaces each parameter where it is defined, appends the others.
fn set(dir: &Path, assignments: &[String]) -> Result<(), String> {
    run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(dir)
            .arg("-e")
            .args(assignments),
        true,
    )?;
    settle(dir);
    Ok(())
}

/// `postconf -e` on a file not named main.cf: edited as main.cf of a scratch directory.
fn set_in_file(file: &Path, assignments: &[String]) -> Result<(), String> {
    let parent = file.parent().unwrap_or(Path::new("."));
    let scratch = parent.join(".mailtls-seed");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| io("cannot create", &scratch, e))?;
    let result = std::fs::copy(file, scratch.join(MAIN_CF))
        .map_err(|e| io("cannot copy", file, e))
        .and_then(|_| set(&scratch, assignments))
        .and_then(|()| {
            std::fs::copy(scratch.join(MAIN_CF), file)
                .map(|_| ())
                .map_err(|e| io("cannot write", file, e))
        });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Remove everything inside `dir` (a mount point stays).
fn clear(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))? {
        let path = entry.map_err(|e| io("cannot read", dir, e))?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| io("cannot remove", &path, e))?;
    }
    Ok(())
}
