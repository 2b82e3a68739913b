//! The delegate configs saved at ADD for DEL, one file per container: `dataDir/<containerID>`,
//! directory mode 0700, file mode 0600, the same place and format as flannel's plugin, so
//! either plugin can delete what the other added.
//!
//! DEL needs exactly what ADD sent (the IPAM must release the right address even if
//! subnet.env changed or vanished in between), hence saving rather than rebuilding.
//! Unlike flannel, weft writes the file atomically (temporary file, fsync, rename, fsync of
//! the directory): a crash mid-write would otherwise leave a truncated file that DEL cannot
//! use, leaking the pod's address.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// Where the config of `container_id` lives. The ID must already be validated (CNI's
    /// rule: an alphanumeric, then alphanumerics, `_`, `.`, `-`), so it is a plain file name.
    pub fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(container_id)
    }

    /// Saves `config` for `container_id`, replacing any earlier one.
    pub fn save(&self, container_id: &str, config: &[u8]) -> io::Result<()> {
        check_id(container_id)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.path(container_id);
        // A leading dot cannot start a valid container ID, so this never clashes with one.
        let tmp = self
            .dir
            .join(format!(".{container_id}.{}.tmp", std::process::id()));
        let written = write_synced(&tmp, config).and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        File::open(&self.dir)?.sync_all()
    }

    /// The saved config, or `None` if there is none.
    pub fn load(&self, container_id: &str) -> io::Result<Option<Vec<u8>>> {
        check_id(container_id)?;
        match fs::read(self.path(container_id)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets the config of `container_id`; already gone is fine.
    pub fn remove(&self, container_id: &str) -> io::Result<()> {
        check_id(container_id)?;
        match fs::remove_file(self.path(container_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Defence in depth: the CNI layer validates IDs, but a path component must never escape
/// the directory whoever calls this.
fn check_id(container_id: &str) -> io::Result<()> {
    if container_id.is_empty() || container_id.starts_with('.') || container_id.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid container ID {container_id:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn save_load_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let store = Store::new(&dir);
        assert_eq!(store.load("c1").unwrap(), None);
        store.save("c1", b"{\"x\":1}").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("c1")), 0o600);
        assert_eq!(store.load("c1").unwrap().unwrap(), b"{\"x\":1}");
        store.save("c1", b"{}").unwrap();
        assert_eq!(store.load("c1").unwrap().unwrap(), b"{}");
        // Only the saved file is left behind, no temporary files.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        store.remove("c1").unwrap();
        assert_eq!(store.load("c1").unwrap(), None);
        store.remove("c1").unwrap();
    }

    #[test]
    fn a_replaced_file_gets_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        fs::write(tmp.path().join("c1"), "old").unwrap();
        fs::set_permissions(tmp.path().join("c1"), fs::Permissions::from_mode(0o644)).unwrap();
        store.save("c1", b"new").unwrap();
        assert_eq!(mode(&tmp.path().join("c1")), 0o600);
    }

    #[test]
    fn ids_cannot_escape_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("d"));
        for id in ["", "..", ".x", "a/b", "../x"] {
            assert_eq!(
                store.save(id, b"{}").unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert!(store.load(id).is_err());
            assert!(store.remove(id).is_err());
        }
    }
}
