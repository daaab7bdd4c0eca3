//! The PKI's file handling: private directories (0700), atomic writes (temp file, fsync,
//! rename, fsync of the directory) so a crash never leaves a half-written key, an exclusive
//! lock so two processes never create or rotate a CA at once, and size-bounded reads.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::PkiError;

/// Mode of directories holding keys.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates and other public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Largest PKI file read (certificates, keys, state). Real ones are a few KiB; a bigger file
/// is corrupt or hostile.
pub(crate) const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Creates `dir` (and parents) if missing and makes sure it is 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir).map_err(|e| PkiError::io("create directory", dir, e))?;
    #[cfg(unix)]
    {
        // A directory that already existed keeps its mode under `create`; tighten it.
        let meta = fs::metadata(dir).map_err(|e| PkiError::io("inspect directory", dir, e))?;
        if meta.permissions().mode() & 0o777 != DIR_MODE {
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| PkiError::io("restrict permissions of", dir, e))?;
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically with the given mode: a reader sees the old content or
/// the new, never a mix, even across a crash or power loss.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().ok_or_else(|| PkiError::bad_file(path, "has no parent directory"))?;
    let name = path.file_name().ok_or_else(|| PkiError::bad_file(path, "has no file name"))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(PkiError::Random)?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), hex::encode(suffix)));
    let result = write_then_rename(&tmp, path, data, mode);
    if result.is_err() {
        // Best effort: the temp file is garbage either way; the real error is reported.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

fn write_then_rename(tmp: &Path, path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(tmp).map_err(|e| PkiError::io("create temporary file", tmp, e))?;
    file.write_all(data).map_err(|e| PkiError::io("write", tmp, e))?;
    file.sync_all().map_err(|e| PkiError::io("sync", tmp, e))?;
    drop(file);
    fs::rename(tmp, path).map_err(|e| PkiError::io("rename into place", path, e))
}

/// fsyncs a directory so a rename in it survives a power loss.
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| PkiError::io("sync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a whole PKI file, refusing anything over [`MAX_FILE_LEN`].
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, PkiError> {
    let file = File::open(path).map_err(|e| PkiError::io("open", path, e))?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut buf).map_err(|e| PkiError::io("read", path, e))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_FILE_LEN {
        return Err(PkiError::bad_file(path, format!("larger than {MAX_FILE_LEN} bytes")));
    }
    Ok(buf)
}

/// Reads a PKI file as UTF-8 text (PEM, JSON).
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    String::from_utf8(read_bounded(path)?).map_err(|_| PkiError::bad_file(path, "is not UTF-8"))
}

/// Reads a private key file, warning if group or others can read it.
pub(crate) fn read_private(path: &Path) -> Result<String, PkiError> {
    #[cfg(unix)]
    {
        let meta = fs::metadata(path).map_err(|e| PkiError::io("inspect", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "private key is readable by group or others; chmod 600 it"
            );
        }
    }
    read_text(path)
}

/// Whether `path` exists (an error other than "not found" is reported, not guessed at).
pub(crate) fn exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PkiError::io("inspect", path, e)),
    }
}

/// An exclusive advisory lock on `<dir>/.lock`, held while the CA set is created or changed.
pub(crate) struct DirLock {
    file: File,
}

impl DirLock {
    /// Blocks until the lock on `dir` is held.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, PkiError> {
        let path = dir.join(".lock");
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        opts.mode(KEY_MODE);
        let file = opts.open(&path).map_err(|e| PkiError::io("open lock file", &path, e))?;
        file.lock().map_err(|e| PkiError::io("lock", &path, e))?;
        Ok(DirLock { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking explicitly just makes it prompt.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k.key");
        write_atomic(&path, b"one", KEY_MODE)?;
        write_atomic(&path, b"two", KEY_MODE)?;
        assert_eq!(fs::read(&path)?, b"two");
        let names: Vec<_> = fs::read_dir(dir.path())?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, KEY_MODE);
        Ok(())
    }

    #[test]
    fn oversized_files_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big");
        let len = usize::try_from(MAX_FILE_LEN)? + 1;
        fs::write(&path, vec![b'a'; len])?;
        assert!(matches!(read_bounded(&path), Err(PkiError::BadFile { .. })));
        Ok(())
    }
}
