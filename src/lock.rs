//! One writer per database: the daemon and `--backfill` hold an exclusive OS lock on a file
//! beside the database for their whole life (docs/reliability.md, "One writer").

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: exit 75 (EX_TEMPFAIL), try again later.
    #[error(
        "another contact-sync process{} is writing {}; only one may (try again once it has stopped)",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        database.display()
    )]
    Held {
        database: PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process dying, however it dies) releases it. The file
/// itself may stay behind: it is the kernel's lock that counts, so a stale file is harmless.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// The lock file of the database at `database`: `<database>.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl WriterLock {
    /// Take the lock at once or fail naming the holder; never waits. The database's directory
    /// must exist (see `store::prepare_database_file`).
    pub fn acquire(database: &Path) -> Result<Self, LockError> {
        let path = lock_path(database);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    database: database.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // The pid is only for the second process's message; the lock is the flock.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = WriterLock::acquire(&db).unwrap();
        match WriterLock::acquire(&db) {
            Err(held @ LockError::Held { .. }) => {
                let text = held.to_string();
                assert!(text.contains("state.db"), "{text}");
                assert!(text.contains(&std::process::id().to_string()), "{text}");
            }
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        drop(first);
        WriterLock::acquire(&db).expect("released when the holder drops it");
    }
}
