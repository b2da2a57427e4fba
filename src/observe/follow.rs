//! Reading Postfix's mail log file (edge): once, or followed like `tail -F` from its start,
//! with every line fed to [`Observed`] and, if asked, echoed to standard output (so the
//! container log still shows the mail log). The follower also keeps the file small: past
//! `rotate_at` bytes it renames the file, reloads Postfix so its log daemon (postlogd)
//! opens a new one, reads the old one to its end and deletes it. No line is skipped.

use super::{Observed, Shared};
use crate::relay::Paths;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A log file renamed for rotation, read to its end before it is deleted.
const OLD_SUFFIX: &str = ".mailtls-old";
/// How often the end of the file is looked at again.
const POLL: Duration = Duration::from_millis(250);
/// Lines fed per lock of the shared observations.
const BATCH: usize = 4096;

/// What to follow and how.
#[derive(Clone, Debug)]
pub struct Follow {
    pub path: PathBuf,
    /// Write every line read to standard output.
    pub echo: bool,
    /// Rotate once the file is this large (bytes).
    pub rotate_at: u64,
    /// The Postfix whose log it is (reloaded at a rotation).
    pub postfix: Paths,
}

/// Unix seconds now.
pub fn now() -> i64 {
    crate::probe::now_unix()
}

/// Feed every complete line of `path` to `observed`, read at `now`.
pub fn read_all(path: &Path, observed: &mut Observed, now: i64) -> std::io::Result<()> {
    for_each_line(path, |line| observed.feed(line, now))
}

/// Call `f` with every line of `path` (without its newline), invalid UTF-8 taken lossily.
pub fn for_each_line(path: &Path, mut f: impl FnMut(&str)) -> std::io::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(&mut reader, &mut line)? == 0 {
            return Ok(());
        }
        f(line.trim_end_matches('\n'));
    }
}

/// `read_line` that takes invalid UTF-8 (a mangled log line) as a lossy line.
fn read_line(reader: &mut impl BufRead, line: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let n = reader.read_until(b'\n', &mut bytes)?;
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}

/// An open log file and how far it has been read.
struct Reader {
    reader: BufReader<File>,
    inode: u64,
    pos: u64,
    /// Lines ending at or before this offset were in the file when the agent started: they
    /// are counted but not echoed, so a restarted agent does not repeat the log it showed.
    quiet_until: u64,
    /// A line whose end has not been written yet.
    partial: String,
}

impl Reader {
    fn open(path: &Path) -> std::io::Result<Reader> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Reader {
            reader: BufReader::new(file),
            inode,
            pos: 0,
            quiet_until: 0,
            partial: String::new(),
        })
    }

    /// Complete lines available now (at most [`BATCH`]), and whether they are quiet (see
    /// `quiet_until`; a batch never mixes quiet lines and others).
    fn lines(&mut self) -> std::io::Result<(Vec<String>, bool)> {
        let quiet = self.pos < self.quiet_until;
        let mut out = Vec::new();
        while out.len() < BATCH && !(quiet && self.pos >= self.quiet_until) {
            let n = read_line(&mut self.reader, &mut self.partial)?;
            if n == 0 {
                break;
            }
            self.pos += n as u64;
            if self.partial.ends_with('\n') {
                self.partial.pop();
                out.push(std::mem::take(&mut self.partial));
            }
        }
        Ok((out, quiet))
    }

    /// Take what `lines` returned: counted, and echoed unless quiet.
    fn take(&mut self, echo: bool, observed: &Shared) -> std::io::Result<bool> {
        let (lines, quiet) = self.lines()?;
        take(&lines, echo && !quiet, observed);
        Ok(!lines.is_empty())
    }
}

/// Follow the log for good (a thread of the agent). Errors are logged and retried.
pub fn follow(opts: &Follow, observed: &Shared) {
    let old = old_path(&opts.path);
    if old.exists() {
        // Left by a rotation the previous run did not finish.
        drain_file(&old, opts.echo, observed);
        let _ = std::fs::remove_file(&old);
    }
    let mut waiting_said = false;
    let mut first = true;
    loop {
        let mut reader = match Reader::open(&opts.path) {
            Ok(r) => r,
            Err(e) => {
                if !waiting_said {
                    tracing::info!(path = %opts.path.display(), "waiting for the mail log: {e}");
                    waiting_said = true;
                    // No log: nothing to catch up on.
                    caught_up(observed);
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        waiting_said = false;
        tracing::info!(path = %opts.path.display(), "reading the mail log");
        if std::mem::take(&mut first) {
            reader.quiet_until = std::fs::metadata(&opts.path).map_or(0, |m| m.len());
        }
        if let Err(e) = follow_one(opts, observed, &mut reader) {
            tracing::warn!(path = %opts.path.display(), "mail log: {e}; reopening");
            std::thread::sleep(POLL);
        }
    }
}

/// Read one file until it is replaced, removed or rotated (then `Ok`).
fn follow_one(opts: &Follow, observed: &Shared, reader: &mut Reader) -> std::io::Result<()> {
    loop {
        if reader.take(opts.echo, observed)? {
            continue;
        }
        if reader.pos >= reader.quiet_until {
            caught_up(observed);
        }
        match std::fs::metadata(&opts.path) {
            Ok(m) if m.ino() != reader.inode => return drain(reader, opts.echo, observed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return drain(reader, opts.echo, observed);
            }
            Ok(m) if m.len() < reader.pos => {
                // Truncated by someone else: start over at its beginning.
                reader.reader.seek(SeekFrom::Start(0))?;
                reader.pos = 0;
                reader.partial.clear();
            }
            _ if reader.pos >= opts.rotate_at => return rotate(opts, observed, reader),
            _ => {}
        }
        std::thread::sleep(POLL);
    }
}

/// Rename the file, make Postfix open a new one, and read the old one to its end.
fn rotate(opts: &Follow, observed: &Shared, reader: &mut Reader) -> std::io::Result<()> {
    let old = old_path(&opts.path);
    std::fs::rename(&opts.path, &old)?;
    // Postfix goes on writing into the renamed file until its log daemon reopens.
    if let Err(e) = crate::relay::reload_postfix(&opts.postfix) {
        tracing::warn!("mail log rotated, but Postfix was not reloaded: {e}");
    }
    for _ in 0..40 {
        if opts.path.exists() {
            break;
        }
        reader.take(opts.echo, observed)?;
        std::thread::sleep(POLL);
    }
    drain(reader, opts.echo, observed)?;
    std::fs::remove_file(&old)?;
    tracing::debug!(path = %opts.path.display(), "mail log rotated");
    Ok(())
}

/// Read what is left, once more after a pause for writes still in flight.
fn drain(reader: &mut Reader, echo: bool, observed: &Shared) -> std::io::Result<()> {
    for _ in 0..2 {
        while reader.take(echo, observed)? {}
        std::thread::sleep(POLL);
    }
    if !reader.partial.is_empty() {
        take(&[std::mem::take(&mut reader.partial)], echo, observed);
    }
    Ok(())
}

fn drain_file(path: &Path, echo: bool, observed: &Shared) {
    match Reader::open(path) {
        Ok(mut r) => {
            if let Err(e) = drain(&mut r, echo, observed) {
                tracing::warn!(path = %path.display(), "{e}");
            }
        }
        Err(e) => tracing::warn!(path = %path.display(), "{e}"),
    }
}

fn take(lines: &[String], echo: bool, observed: &Shared) {
    if echo {
        let mut out = std::io::stdout().lock();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    let now = now();
    if let Ok(mut o) = observed.lock() {
        for l in lines {
            o.feed(l, now);
        }
        o.prune(now);
    }
}

fn caught_up(observed: &Shared) {
    if let Ok(mut o) = observed.lock() {
        o.set_caught_up();
    }
}

fn old_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(OLD_SUFFIX);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(i: usize) -> String {
        format!(
            "Dec  2 16:35:01 relay postfix/smtp[1]: Q{i}: to=<u@d{}.test>, relay=none, dsn=2.0.0, status=sent (ok)\n",
            i % 3
        )
    }

    /// Appending, a line written in two parts, a truncation and a replacement: every
    /// complete line is counted once.
    #[test]
    fn every_line_once_across_partial_writes_and_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("maillog");
        std::fs::write(&path, sent(0)).expect("write");
        let mut r = Reader::open(&path).expect("open");
        assert_eq!(r.lines().expect("read").0.len(), 1);
        let line = sent(1);
        let (a, b) = line.split_at(20);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(a.as_bytes()).expect("write");
        assert!(r.lines().expect("read").0.is_empty(), "half a line");
        f.write_all(b.as_bytes()).expect("write");
        assert_eq!(r.lines().expect("read").0, [line.trim_end()]);

        let observed: Shared = Default::default();
        let opts = Follow {
            path: path.clone(),
            echo: false,
            rotate_at: u64::MAX,
            postfix: Paths {
                postfix_dir: dir.path().join("none"),
                maps_dir: dir.path().join("none"),
            },
        };
        // Replaced (a new inode): the old file is drained, then the follower returns.
        let new = dir.path().join("maillog.new");
        std::fs::write(&new, sent(2)).expect("write");
        f.write_all(sent(3).as_bytes()).expect("write");
        std::fs::rename(&new, &path).expect("replace");
        follow_one(&opts, &observed, &mut r).expect("follow");
        assert_eq!(
            observed.lock().expect("lock").lines(),
            1,
            "the old file's last line"
        );
        let mut r = Reader::open(&path).expect("reopen");
        assert_eq!(r.lines().expect("read").0.len(), 1);
    }

    /// What the file held when the agent started is counted but never echoed; what comes
    /// after is both, and one batch never mixes the two.
    #[test]
    fn lines_present_at_start_are_quiet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("maillog");
        std::fs::write(&path, sent(0) + &sent(1)).expect("write");
        let mut r = Reader::open(&path).expect("open");
        r.quiet_until = std::fs::metadata(&path).expect("len").len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(sent(2).as_bytes()).expect("write");
        let (old, quiet) = r.lines().expect("read");
        assert_eq!((old.len(), quiet), (2, true));
        let (new, quiet) = r.lines().expect("read");
        assert_eq!((new, quiet), (vec![sent(2).trim_end().to_string()], false));
    }

    #[test]
    fn read_all_counts_complete_and_mangled_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("maillog");
        let mut text = (0..5).map(sent).collect::<String>().into_bytes();
        text.extend_from_slice(b"\xff\xfe broken\n");
        std::fs::write(&path, text).expect("write");
        let mut o = Observed::default();
        read_all(&path, &mut o, 0).expect("read");
        assert_eq!(o.lines(), 6);
        assert_eq!(o.totals().plaintext, 5);
        assert!(read_all(&dir.path().join("missing"), &mut o, 0).is_err());
    }
}
