//! What a valid file cannot tell by itself: whether the user running the
//! gateway can write where the configuration says it will write (`pid_file`,
//! `upgrade_sock` and a file `access_log.path`).
//!
//! `gateway -t` and a start run the same [`check`], so a start as a user that
//! cannot write `/run/gateway` fails at once with the key, exit code 2, instead
//! of later with a Pingora panic or a bare I/O error. The checks use
//! `faccessat(2)` with the effective ids, so they reflect the running user (as
//! root almost everything is writable; a read-only file system or a path
//! through a regular file still fails).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Invalid, LogTarget, ENV_PREFIX};

/// Every path problem of `config`, each naming its key; empty when the running
/// user can create (or already has) the directories and write the files.
/// Changes nothing on disk.
///
/// A file `access_log.path` is checked even with `access_log.enabled: false`:
/// a reload can enable the log, but its path is read at start only.
pub fn check(config: &Config) -> Vec<Invalid> {
    files(config)
        .into_iter()
        .filter_map(|(key, path, must_write_file)| {
            check_path(path, must_write_file)
                .err()
                .map(|why| invalid(key, path, &why))
        })
        .collect()
}

/// Creates the missing directories of those paths (at start, after [`check`]):
/// Pingora binds `upgrade_sock` without creating its directory.
pub fn prepare(config: &Config) -> Vec<Invalid> {
    files(config)
        .into_iter()
        .filter_map(|(key, path, _)| {
            let dir = parent(path);
            std::fs::create_dir_all(&dir).err().map(|e| {
                invalid(
                    key,
                    path,
                    &format!("cannot create directory {}: {e}", dir.display()),
                )
            })
        })
        .collect()
}

/// `(key, path, whether an existing file itself must be writable)`.
fn files(config: &Config) -> Vec<(&'static str, &Path, bool)> {
    // The pid file is replaced by a rename and the socket re-created: only
    // their directory matters. The access log is appended to.
    let mut v = vec![
        ("pid_file", config.pid_file.as_path(), false),
        ("upgrade_sock", config.upgrade_sock.as_path(), false),
    ];
    if let LogTarget::File(p) = &config.access_log.target {
        v.push(("access_log.path", p.as_path(), true));
    }
    v
}

fn invalid(key: &str, path: &Path, why: &str) -> Invalid {
    let var = format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase());
    Invalid {
        key: key.to_owned(),
        message: format!(
            "{:?}: {why}; set {key} (or {var}) to a path this user can write",
            path.display().to_string()
        ),
    }
}

/// `Ok` when the running user can write `path`'s directory (existing, or
/// creatable from its nearest existing ancestor) and, with `must_write_file`,
/// an existing `path` itself.
fn check_path(path: &Path, must_write_file: bool) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => return Err("is a directory".into()),
        Ok(_) if must_write_file => writable(path, libc::W_OK)?,
        _ => {}
    }
    let dir = parent(path);
    let mut ancestor = dir.as_path();
    loop {
        match std::fs::metadata(ancestor) {
            Ok(md) if !md.is_dir() => {
                return Err(format!(
                    "directory {} cannot be created: {} is not a directory",
                    dir.display(),
                    ancestor.display()
                ));
            }
            Ok(_) => {
                return writable(ancestor, libc::W_OK | libc::X_OK).map_err(|why| {
                    if ancestor == dir {
                        format!("directory {why}")
                    } else {
                        format!("directory {} cannot be created: {why}", dir.display())
                    }
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                match ancestor.parent() {
                    Some(p) if !p.as_os_str().is_empty() => ancestor = p,
                    _ => ancestor = Path::new("."),
                }
            }
            Err(e) => return Err(format!("cannot access {}: {e}", ancestor.display())),
        }
    }
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `faccessat(path, mode, AT_EACCESS)`: may the effective user do `mode`?
fn writable(path: &Path, mode: libc::c_int) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    Err(format!(
        "{} is not writable by this user (uid {uid}): {e}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_through_a_regular_file_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = check_path(&file.join("sub/gateway.pid"), false).unwrap_err();
        assert!(
            err.contains(&format!("{} is not a directory", file.display())),
            "{err}"
        );
    }

    #[test]
    fn missing_directories_under_a_writable_one_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_path(&dir.path().join("a/b/gateway.pid"), false).is_ok());
        assert!(check_path(&dir.path().join("gateway.pid"), false).is_ok());
        assert_eq!(check_path(dir.path(), false).unwrap_err(), "is a directory");
    }

    #[test]
    fn the_message_names_the_key_and_its_variable() {
        let i = invalid("access_log.path", Path::new("/x/y.log"), "why");
        assert_eq!(i.key, "access_log.path");
        assert_eq!(
            i.message,
            "\"/x/y.log\": why; set access_log.path (or GATEWAY_ACCESS_LOG__PATH) to a path this user can write"
        );
    }
}
