//! Where a projection's checkpoint lives: one file per projection, `<store dir>/projections/<name>.ckpt`,
//! replaced atomically — write `<name>.ckpt.tmp`, fdatasync it, rename it over `<name>.ckpt`, fsync the
//! directory — so a crash leaves either the old checkpoint or the new one, never a mix.
//!
//! Why a file and not a sled value: sled 0.34 keeps each rewrite of a value as another delta of its page
//! until the page is consolidated (after up to 10 deltas), and reading the page materialises every one of
//! them. The snapshots projection's state is tens of MB; read back from sled it cost five times its size
//! (235 MB for a 47 MB state in the W6 heap profile). A file is read once, at its size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// A projection's checkpoint file.
#[derive(Debug)]
pub(crate) struct CheckpointFile {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl CheckpointFile {
    /// The checkpoint file of projection `name` under `store_dir` (its directory is created, 0700).
    pub(crate) fn open(store_dir: &Path, name: &str) -> io::Result<CheckpointFile> {
        let dir = store_dir.join("projections");
        fs::create_dir_all(&dir)?;
        set_private_dir(&dir)?;
        Ok(CheckpointFile { path: dir.join(format!("{name}.ckpt")), tmp: dir.join(format!("{name}.ckpt.tmp")), dir })
    }

    /// The file's path (for messages and tests).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint's bytes, or `None` if none was written.
    pub(crate) fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the checkpoint with `parts` concatenated, durably and atomically.
    pub(crate) fn write(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&self.tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_data()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Removes the checkpoint (the projection is then rebuilt from the log at the next open).
    pub(crate) fn clear(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(unix)]
fn set_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn set_private_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
