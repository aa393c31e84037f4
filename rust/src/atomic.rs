//! The one atomic-write policy of the Rust writers (`python/lmrs/atomic.py` is its
//! Python twin; DESIGN.md states it):
//!
//! 1. write into a temporary name in the target's own directory, `.NAME.tmp-PID-NANOS-SEQ`
//!    (the same filesystem, so the rename is atomic),
//! 2. fsync the file, 3. rename it over the target, 4. fsync the directory,
//! 5. remove this target's leftovers of earlier crashes: `.NAME.tmp-*` files and
//!    directories and `NAME.old-*` directories whose process is gone.
//!
//! A reader, or a crash at any point, sees the old content or the new, never a mix; after
//! step 4 the new content survives a power cut. Files are created like any normal output
//! (mode `0o666 & !umask`, directories `0o777 & !umask`), never 0600.
//!
//! A shard directory is replaced whole ([`replace_dir`]): on Linux by exchanging the two
//! names in one `renameat2(RENAME_EXCHANGE)`, so the target always holds a complete
//! directory; elsewhere the old one is first renamed aside to `NAME.old-*`.
//!
//! Each commit passes the fault points `<what>.before_rename` and `<what>.after_rename`
//! ([`crate::fault`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{fault, Error, Result};

/// The directory `target` lives in and its file name.
fn dir_and_name(target: &Path) -> Result<(PathBuf, String)> {
    let name = target.file_name().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: not a file name that can be written",
            target.display()
        ))
    })?;
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// `PID-NANOS-SEQ`: unique among live processes (PID) and within one (SEQ); NANOS keeps a
/// dead process's leftover from being reused by a new process with the same id.
fn unique_suffix() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh temporary path beside `target`: `DIR/.NAME.tmp-PID-NANOS-SEQ`.
pub fn temp_path(target: &Path) -> Result<PathBuf> {
    let (dir, name) = dir_and_name(target)?;
    Ok(dir.join(format!(".{name}.tmp-{}", unique_suffix())))
}

/// Where an old directory is put aside while a new one takes its name (non-Linux only).
fn old_path(target: &Path) -> Result<PathBuf> {
    let (dir, name) = dir_and_name(target)?;
    Ok(dir.join(format!("{name}.old-{}", unique_suffix())))
}

/// Creates a new, empty temporary file (mode `0o666 & !umask`); fails if it exists.
pub fn create_temp(tmp: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| Error::io(tmp, e))
}

/// Makes the entries of `dir` (a rename, a new file) durable. Filesystems that cannot
/// sync a directory say so with EINVAL; there is nothing more to do on them.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let result = File::open(dir).and_then(|d| d.sync_all());
    match result {
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Err(Error::io(dir, e))
        }
        _ => Ok(()),
    }
}

/// Steps 2 to 5 for a temporary file whose content is complete: fsync it, rename it over
/// `target`, fsync the directory, remove `target`'s leftovers. `what` names the fault
/// points (`<what>.before_rename`, `<what>.after_rename`).
pub fn commit(tmp: &Path, target: &Path, what: &str) -> Result<()> {
    let (dir, _) = dir_and_name(target)?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(tmp, e))?;
    fault::point(&format!("{what}.before_rename"));
    std::fs::rename(tmp, target).map_err(|e| Error::io(target, e))?;
    fault::point(&format!("{what}.after_rename"));
    sync_dir(&dir)?;
    remove_leftovers(target);
    Ok(())
}

/// Writes `data` to `target` by the policy above.
pub fn write_file(target: &Path, data: &[u8], what: &str) -> Result<()> {
    let tmp = temp_path(target)?;
    let result = create_temp(&tmp).and_then(|mut file| {
        file.write_all(data).map_err(|e| Error::io(target, e))?;
        commit(&tmp, target, what)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Puts the complete directory `new` in place of `target` (absent, or a directory that
/// may be replaced: the caller checks). The old directory's content is removed afterwards.
pub fn replace_dir(new: &Path, target: &Path, what: &str) -> Result<()> {
    let (dir, _) = dir_and_name(target)?;
    sync_dir(new)?;
    fault::point(&format!("{what}.before_rename"));
    let put_aside = if exchange(new, target).map_err(|e| Error::io(target, e))? {
        // `new` now holds the old directory
        Some(new.to_path_buf())
    } else if target.exists() {
        let old = old_path(target)?;
        std::fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
        if let Err(e) = std::fs::rename(new, target) {
            // put the old directory back rather than leave the target missing
            let _ = std::fs::rename(&old, target);
            return Err(Error::io(target, e));
        }
        Some(old)
    } else {
        std::fs::rename(new, target).map_err(|e| Error::io(target, e))?;
        None
    };
    fault::point(&format!("{what}.after_rename"));
    sync_dir(&dir)?;
    if let Some(old) = put_aside {
        let _ = std::fs::remove_dir_all(old);
    }
    remove_leftovers(target);
    Ok(())
}

/// Swaps the names `a` and `b` in one step where the system can (Linux 3.15+ on local
/// filesystems); Ok(false) where it cannot or `b` does not exist.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (to_c(a)?, to_c(b)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call, and
    // renameat2 only reads them. The raw syscall, not glibc's wrapper, keeps the module
    // loadable on glibc older than 2.28.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOSYS | libc::EINVAL | libc::ENOTSUP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// The process id in a leftover's suffix `PID-NANOS-SEQ`, or None if the suffix is not
/// one of ours (another target's temporary can share a prefix: `.a.tmp-` and `.a.tmp-x`).
fn owner(suffix: &str) -> Option<u32> {
    let parts: Vec<&str> = suffix.split('-').collect();
    let all_digits = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(all_digits) {
        return None;
    }
    parts[0].parse().ok()
}

/// True when process `pid` exists on this machine (ours included): its temporary files
/// may still be in use. A process of another user counts as existing.
#[cfg(unix)]
fn is_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists; it sends nothing
    // and touches no memory.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn is_running(pid: u32) -> bool {
    pid == std::process::id()
}

/// Removes `target`'s leftovers of crashed writes (`.NAME.tmp-*`, `NAME.old-*`) whose
/// process is gone; returns how many. Best effort: a leftover that cannot be removed
/// stays for the next writer.
pub fn remove_leftovers(target: &Path) -> usize {
    let Ok((dir, name)) = dir_and_name(target) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let (tmp_prefix, old_prefix) = (format!(".{name}.tmp-"), format!("{name}.old-"));
    let mut removed = 0;
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let suffix = entry_name
            .strip_prefix(&tmp_prefix)
            .or_else(|| entry_name.strip_prefix(&old_prefix));
        let Some(pid) = suffix.and_then(owner) else {
            continue;
        };
        if is_running(pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let gone = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lmrs-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A process id that is certainly not running: above the kernel's pid limit.
    const DEAD_PID: u32 = 999_999_999;

    #[test]
    fn temp_names_sit_beside_the_target() {
        let t = temp_path(Path::new("a/b/out")).unwrap();
        assert_eq!(t.parent(), Some(Path::new("a/b")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".out.tmp-"), "{name}");
        assert_eq!(
            owner(name.strip_prefix(".out.tmp-").unwrap()),
            Some(std::process::id())
        );
        // a directory given with a trailing slash, or a bare name: still beside it
        assert_eq!(
            temp_path(Path::new("a/dir/")).unwrap().parent(),
            Some(Path::new("a"))
        );
        assert_eq!(
            temp_path(Path::new("dir")).unwrap().parent(),
            Some(Path::new("."))
        );
        assert!(temp_path(Path::new("/")).is_err());
        assert!(temp_path(Path::new("a/..")).is_err());
    }

    #[test]
    fn write_file_replaces_with_normal_permissions_and_collects_dead_leftovers() {
        let dir = tmp_dir("write");
        let target = dir.join("t.json");
        std::fs::write(&target, "old").unwrap();
        // leftovers of a crashed writer of this target, of a live one, and of others
        let dead_tmp = format!(".t.json.tmp-{DEAD_PID}-1-0");
        let live_tmp = format!(".t.json.tmp-{}-1-0", std::process::id());
        let dead_old = format!("t.json.old-{DEAD_PID}-1-0");
        let other = format!(".t.json.tmp-x.tmp-{DEAD_PID}-1-0");
        let python = ".t.json.abcd1234.tmp".to_string();
        for name in [&dead_tmp, &live_tmp, &other, &python] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.join(&dead_old)).unwrap();
        std::fs::write(dir.join(&dead_old).join("inner"), "x").unwrap();
        write_file(&target, b"new", "tokenizer").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mut expected = vec![live_tmp, other, python, "t.json".to_string()];
        expected.sort();
        assert_eq!(names(&dir), expected);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A plain create gets 0o666 less the umask: the mode of any normal output.
            let plain = dir.join("plain");
            std::fs::write(&plain, "x").unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&target), mode(&plain));
            assert_ne!(mode(&target), 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replace_dir_swaps_a_whole_directory() {
        let dir = tmp_dir("dir");
        let target = dir.join("shards");
        for round in 0..3 {
            let new = temp_path(&target).unwrap();
            std::fs::create_dir(&new).unwrap();
            std::fs::write(new.join("f"), format!("{round}")).unwrap();
            replace_dir(&new, &target, "token_file.dir").unwrap();
            assert_eq!(
                std::fs::read_to_string(target.join("f")).unwrap(),
                format!("{round}")
            );
            assert_eq!(names(&dir), vec!["shards".to_string()]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
