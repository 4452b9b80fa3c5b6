//! A lock file shared by processes (several test binaries may set up the same driver
//! environment at once): created with `create_new`, holding the owner's pid so a lock left by a
//! dead process is taken over instead of waited on.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{LocalPgError, Result};

/// Held while alive; removes the lock file on drop.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
}

impl FileLock {
    /// Waits up to `timeout` to create `path` exclusively.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        let deadline = Instant::now() + timeout;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(FileLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if is_stale(path) {
                        tracing::warn!(lock = %path.display(), "removing a stale lock");
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(LocalPgError::Timeout {
                            what: format!(
                                "the lock {} (another test process is installing; remove the \
                                 file if no such process runs)",
                                path.display()
                            ),
                            seconds: timeout.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(LocalPgError::io(format!("create {}", path.display()), e));
                }
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A lock whose owner is gone, or that has stayed empty (owner died before writing) for a while.
fn is_stale(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match text.trim().parse::<i32>() {
        // SAFETY: kill with signal 0 only checks for existence.
        Ok(pid) => unsafe {
            libc::kill(pid, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        },
        Err(_) => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(30)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_stale_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let err = FileLock::acquire(&path, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("x.lock"), "{err}");
        drop(held);
        assert!(!path.exists());
        // A lock owned by a pid that cannot exist is taken over.
        std::fs::write(&path, "2147483646\n").unwrap();
        let _again = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
    }
}
